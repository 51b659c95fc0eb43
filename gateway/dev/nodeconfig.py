"""Settings files for development nodes (demo, benchmarks, tests) made from the dev PKI.

Usage::

    write_node_config(
        Path("node.toml"),
        name="province-h49",
        agencies=["000.00.00.H49"],
        node=issue(pki_dir, node="province-h49"),
        ca=ca_paths,
        database_url="sqlite:///node.db",
        port=8443,
        extra={"limits": {"max_recipients": 5}},
    )

.. warning:: For development only: the dev PKI's root becomes the node's trust anchor.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gateway.dev.pki import CAPaths, IssuedPaths

__all__ = ["write_node_config"]


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, str | Path):
        return json.dumps(str(value), ensure_ascii=False)  # a TOML basic string
    if isinstance(value, Sequence):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} to TOML")


def write_node_config(
    path: Path,
    *,
    name: str,
    agencies: Sequence[str],
    node: IssuedPaths,
    ca: CAPaths,
    database_url: str,
    port: int = 8443,
    tier: str = "province",
    parent: Mapping[str, str] | None = None,
    children: Sequence[Mapping[str, Any]] = (),
    extra: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """Write a node's settings file: its key and certificate, HTTPS, the dev CA as trust.

    ``parent`` is ``{"name", "url"}``; each of ``children`` adds ``"serves"`` (agency codes).
    """
    sections: dict[str, dict[str, Any]] = {
        "node": {
            "name": name,
            "tier": tier,
            "agencies": list(agencies),
            "key": node.key,
            "cert": node.cert,
        },
        "tls": {"cert": node.cert, "key": node.key},
        "database": {"url": database_url},
        "server": {"host": "127.0.0.1", "port": port},
        "trust": {
            "anchors": [ca.root_cert],
            "crls": [ca.crl],
            "intermediates": [ca.intermediate_cert],
        },
    }
    if parent is not None or children:
        directory: dict[str, Any] = {}
        if parent is not None:
            directory["parent"] = dict(parent)
        if children:
            directory["children"] = [dict(c) for c in children]
        sections["directory"] = directory
    for section, values in (extra or {}).items():
        sections.setdefault(section, {}).update(values)
    lines: list[str] = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_value(value)}" for key, value in values.items())
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
