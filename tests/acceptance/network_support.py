"""Helpers for the network acceptance tests (tests/acceptance/test_network.py).

Everything here talks to a running :class:`gateway.dev.network.Network` the way a user or an auditor
would: over its HTTPS API with the dev PKI's certificates, or by reading a node's SQLite file
read-only (the audit log, the documents table).
"""

from __future__ import annotations

import json
import signal
import sqlite3
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import httpx

from gateway.dev.network import Network, wait_for
from gateway.evidence.nodekey import NodeKey
from gateway.trust.store import TrustStore

__all__ = [
    "WAIT",
    "admin_deliveries",
    "audit_events",
    "client_as",
    "documents_named",
    "documents_stored",
    "inbox_items",
    "node_key",
    "status_of",
    "stop_all",
    "trust_store",
    "wait_inbox",
    "wait_quiet",
    "wait_status",
]

#: seconds to wait for anything that travels between nodes (a 2-core machine shared with
#: other test runs: generous)
WAIT = 60.0


def trust_store(net: Network) -> TrustStore:
    """The deployment's trust store, as an auditor configures it: the dev root (and CRLs)."""
    assert net.ca is not None
    return TrustStore.from_pem_files(
        [net.ca.root_cert], crls=[net.ca.crl], intermediates=[net.ca.intermediate_cert]
    )


def node_key(net: Network, name: str) -> NodeKey:
    """A node's signing key, loaded from the dev PKI folder (dev networks keep keys there)."""
    return NodeKey.load(net.pki / f"{name}.key.pem", net.pki / f"{name}.cert.pem")


def client_as(net: Network, who: str, to_node: str) -> httpx.Client:
    """An HTTPS client presenting ``who``'s certificate (node or agency) to ``to_node``."""
    assert net.ca is not None
    context = ssl.create_default_context(cafile=str(net.ca.root_cert))
    context.load_cert_chain(str(net.pki / f"{who}.cert.pem"), str(net.pki / f"{who}.key.pem"))
    return httpx.Client(base_url=net.url(to_node), verify=context, timeout=30)


@contextmanager
def _read_only(net: Network, name: str) -> Iterator[sqlite3.Connection]:
    path = Path(net.root) / name / "node.db"
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as conn:
        yield conn


def audit_events(net: Network, name: str, event: str) -> list[dict[str, Any]]:
    """The ``data`` of every audit-log entry of kind ``event`` on node ``name``, oldest first."""
    with _read_only(net, name) as conn:
        rows = conn.execute(
            "SELECT data FROM audit_log WHERE event = ? ORDER BY seq", (event,)
        ).fetchall()
    return [json.loads(data) for (data,) in rows]


def documents_stored(net: Network, name: str) -> int:
    """How many packages (any kind) node ``name`` stores."""
    with _read_only(net, name) as conn:
        (count,) = conn.execute("SELECT count(*) FROM documents").fetchone()
    return int(count)


def wait_quiet(net: Network) -> None:
    """Wait until no node has anything waiting to be sent, twice in a row half a second apart
    (a package in flight is stored by its receiver before its sender marks it sent)."""

    def quiet() -> bool:
        return not any(
            admin_deliveries(net, name, state="waiting") for name in net.nodes if net.running(name)
        )

    def twice() -> bool:
        if not quiet():
            return False
        time.sleep(0.5)
        return quiet()

    wait_for(twice, timeout=WAIT, every=0.2)


def documents_named(net: Network, name: str, document_id: str, kind: str = "document") -> int:
    """How many packages of ``kind`` node ``name`` stores with ``document_id``."""
    with _read_only(net, name) as conn:
        (count,) = conn.execute(
            "SELECT count(*) FROM documents WHERE document_id = ? AND kind = ?",
            (document_id, kind),
        ).fetchone()
    return int(count)


def inbox_items(net: Network, agency: str, document_id: str, kind: str) -> list[dict[str, Any]]:
    """``agency``'s inbox items of ``kind`` about ``document_id``."""
    return [
        item
        for item in net.inbox(agency)
        if item["document_id"] == document_id and item["kind"] == kind
    ]


def wait_inbox(
    net: Network, agency: str, document_id: str, kind: str = "document", *, count: int = 1
) -> list[dict[str, Any]]:
    """Wait until ``agency``'s inbox holds at least ``count`` such items; return them."""

    def check() -> list[dict[str, Any]] | None:
        items = inbox_items(net, agency, document_id, kind)
        return items if len(items) >= count else None

    return wait_for(check, timeout=WAIT, every=0.2)


def status_of(net: Network, sender: str, gid: str) -> dict[str, dict[str, Any]]:
    """The sender's status view of its document ``gid``, per recipient."""
    response = net.client(sender).get(f"/api/v1/documents/{gid}/status")
    assert response.status_code == 200, response.text
    return {r["recipient"]: r for r in response.json()["recipients"]}


def wait_status(
    net: Network, sender: str, gid: str, recipient: str, done: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """Wait until the sender's view of ``recipient`` satisfies ``done``; return that view."""

    def check() -> dict[str, Any] | None:
        view = status_of(net, sender, gid).get(recipient)
        return view if view is not None and done(view) else None

    try:
        return wait_for(check, timeout=WAIT, every=0.2)
    except TimeoutError:
        raise AssertionError(f"status never settled: {status_of(net, sender, gid)}") from None


def admin_deliveries(
    net: Network, node: str, *, state: str | None = None, document_id: str | None = None
) -> list[dict[str, Any]]:
    """Delivery rows on ``node`` through its admin API (the node's own certificate)."""
    params: dict[str, Any] = {"limit": 1000}
    if state is not None:
        params["state"] = state
    response = net.client(node).get("/api/v1/admin/deliveries", params=params)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    if document_id is not None:
        items = [i for i in items if i["document_id"] == document_id]
    return items


def stop_all(net: Network) -> None:
    """Stop every node at once: SIGTERM to all, then wait (each may take its 3 s graceful
    shutdown while a neighbour holds a keep-alive connection; in parallel, 3 s in all)."""
    processes = [r.process for r in net.nodes.values() if r.process is not None]
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    net.close()
