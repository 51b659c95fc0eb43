"""What the wheel declares: every package gateway/ and adapters/ import, and nothing else.

A package imported but not declared works in the dev venv (something else pulled it in) and
breaks the day that something drops it; one declared but never imported is weight in every
install.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))

#: declared though no module imports it, and why
RUNTIME_ONLY = {
    "psycopg": "the PostgreSQL driver SQLAlchemy loads for postgresql+psycopg:// URLs",
}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> set[str]:
    names = set()
    for requirement in PYPROJECT["project"]["dependencies"]:
        match = re.match(r"[A-Za-z0-9._-]+", requirement)
        assert match is not None, requirement
        names.add(_normal(match.group()))
    return names


def imported() -> dict[str, set[str]]:
    """Third-party distribution -> the modules of gateway/ and adapters/ that import it."""
    owners = packages_distributions()
    found: dict[str, set[str]] = {}
    for path in sorted([*ROOT.glob("gateway/**/*.py"), *ROOT.glob("adapters/**/*.py")]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                tops = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                tops = [node.module.split(".")[0]]
            else:
                continue
            for top in tops:
                if top in sys.stdlib_module_names or top in ("gateway", "adapters", "__future__"):
                    continue
                assert top in owners, f"{path.relative_to(ROOT)} imports {top}: not installed"
                for dist in owners[top]:
                    found.setdefault(_normal(dist), set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_imported_package_is_declared() -> None:
    missing = {dist: sorted(paths) for dist, paths in imported().items() if dist not in declared()}
    assert missing == {}, "add to [project] dependencies in pyproject.toml"


def test_every_declared_package_is_imported() -> None:
    unused = declared() - set(imported()) - set(RUNTIME_ONLY)
    assert unused == set(), "imported by nothing in gateway/ or adapters/: drop it"
