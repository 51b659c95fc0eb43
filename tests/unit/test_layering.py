"""The import-linter contracts in pyproject.toml bite: a wrong import makes ``lint-imports`` fail.

``tests/run`` runs ``lint-imports`` on the tree; these tests run it on a copy of the tree with one
wrong import added, so a contract that could never fail would be noticed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).parent / "lint-imports"
CONTRACTS = {
    "core": "The core knows nothing of HTTP frameworks, adapters or the tooling",
    "layers": "Layers in data-flow order",
}


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT), "--no-cache"],
        cwd=tree,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(tree)},
        timeout=120,
    )


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """gateway/, adapters/ and pyproject.toml, copied; the copy passes as the tree does."""
    copy = tmp_path_factory.mktemp("tree")
    for package in ("gateway", "adapters"):
        shutil.copytree(
            ROOT / package,
            copy / package,
            symlinks=True,
            ignore=shutil.ignore_patterns("__pycache__"),
        )
    shutil.copy(ROOT / "pyproject.toml", copy)
    done = lint(copy)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "BROKEN" not in done.stdout
    return copy


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("gateway/envelope/model.py", "import starlette", "core"),
        ("gateway/node/ingest.py", "import fastapi.responses", "core"),
        ("gateway/network/outbox.py", "import adapters.peer", "core"),
        ("gateway/storage/db.py", "import gateway.dev.pki", "core"),
        ("gateway/envelope/codec.py", "import gateway.trust.signing", "layers"),
        ("gateway/trust/store.py", "import gateway.evidence.hops", "layers"),
        ("gateway/evidence/hops.py", "import gateway.node.container", "layers"),
        ("gateway/api/app.py", "import gateway.dev.network", "layers"),
        ("adapters/peer.py", "import gateway.api.app", "layers"),
    ],
)
def test_a_wrong_import_breaks_a_contract(
    tree: Path, module: str, line: str, contract: str
) -> None:
    path = tree / module
    original = path.read_text(encoding="utf-8")
    path.write_text(f"{original}\n{line}  # noqa\n", encoding="utf-8")
    try:
        done = lint(tree)
    finally:
        path.write_text(original, encoding="utf-8")
    assert done.returncode == 1, done.stdout + done.stderr
    broken = [row for row in done.stdout.splitlines() if " BROKEN" in row]
    assert any(row.startswith(CONTRACTS[contract]) for row in broken), done.stdout
