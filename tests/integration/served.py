"""A real node app served over real HTTPS in a thread: for tests of what reaches the wire.

The node is a province node (``limits-node``) hosting :data:`H49`, whose parent is
:data:`PARENT` (a neighbour: may relay) and which knows nothing of :data:`STRANGER` (a node of
the same PKI: passes TLS, may not relay). uvicorn runs with the gateway's own protocol classes
(:func:`gateway.api.server.make_config`), so the ``[server]`` limits apply as in production.

Usage::

    with serve_node(pki, tmp_path, server={"header_timeout": 0.5}) as served:
        served.client(H49).get("/api/v1/inbox")
        sock = served.raw(None)   # a TLS socket without a client certificate
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from support import DevPKI

from gateway.api.app import create_app
from gateway.api.server import make_config
from gateway.dev.network import free_port
from gateway.dev.nodeconfig import write_node_config
from gateway.node.container import Node
from gateway.settings import load_settings
from gateway.storage import db

NODE = "limits-node"
PARENT = "parent-node"
STRANGER = "stranger-node"
H49 = "000.00.00.H49"


@dataclass
class Served:
    """A running node app and ways to call it."""

    port: int
    pki: DevPKI
    node: Node
    clients: dict[str, httpx.Client] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def context(self, who: str | None) -> ssl.SSLContext:
        """A client TLS context trusting the dev CA, presenting ``who``'s certificate."""
        context = ssl.create_default_context(cafile=str(self.pki.ca.root_cert))
        if who is not None:
            issued = self.pki.issue(who)
            context.load_cert_chain(str(issued.cert), str(issued.key))
        return context

    def client(self, who: str | None) -> httpx.Client:
        """A kept-alive HTTPS client presenting ``who``'s certificate (None: none)."""
        key = who or "-"
        if key not in self.clients:
            self.clients[key] = httpx.Client(
                base_url=self.base_url, verify=self.context(who), timeout=30
            )
        return self.clients[key]

    def raw(self, who: str | None, *, timeout: float = 10.0) -> ssl.SSLSocket:
        """A connected TLS socket, for requests httpx will not send (slow, huge, malformed)."""
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        return self.context(who).wrap_socket(sock, server_hostname="127.0.0.1")


@contextmanager
def serve_node(
    pki: DevPKI,
    directory: Path,
    *,
    http: str = "httptools",
    server: Mapping[str, Any] | None = None,
    limits: Mapping[str, Any] | None = None,
    hub: Mapping[str, Any] | None = None,
    agencies: tuple[str, ...] = (H49,),
) -> Iterator[Served]:
    """Serve a fresh node (SQLite, migrated) until the block ends; ``hub``: its ``[hub]``
    settings (the hub-compatible API)."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = write_node_config(
        directory / "node.toml",
        name=NODE,
        agencies=list(agencies),
        node=pki.issue(NODE),
        ca=pki.ca,
        database_url=f"sqlite:///{directory / 'node.db'}",
        port=port,
        parent={"name": PARENT, "url": "https://127.0.0.1:1"},
        extra={"server": dict(server or {}), "limits": dict(limits or {}), "hub": dict(hub or {})},
    )
    settings = load_settings(config, environ={})
    engine = db.make_engine(settings)
    db.upgrade(engine)
    node = Node.from_settings(settings, engine)
    uvicorn_server = uvicorn.Server(make_config(create_app(node), settings, http=http))  # type: ignore[arg-type]
    thread = threading.Thread(target=uvicorn_server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not uvicorn_server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    served = Served(port=port, pki=pki, node=node)
    try:
        yield served
    finally:
        for client in served.clients.values():
            client.close()
        uvicorn_server.should_exit = True
        thread.join(15)
        engine.dispose()
