"""adapters.peer.HttpsPeerTransport against real HTTPS servers with the dev PKI's certificates.

Two servers: a real node (tests/integration/served.py: the gateway's app under uvicorn, with
its TLS identity and relay route) for what a node answers, and a scripted HTTPS server in a
thread (``http.server`` over ``ssl``, client certificates required) for what a node does not
answer on demand: a 5xx, an answer too late, and for observing the TLS connections themselves.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from factory import document, signed
from served import H49, NODE, PARENT, STRANGER, Served, serve_node
from support import DevPKI

from adapters.peer import HttpsPeerTransport
from gateway.dev.network import free_port
from gateway.dev.nodeconfig import write_node_config
from gateway.envelope.model import DocumentPackage
from gateway.errors import PeerUnavailable
from gateway.evidence.hops import sign_hop
from gateway.evidence.receipts import verify_receipt
from gateway.network.routing import Peer
from gateway.network.wire import RELAY_CONTENT_TYPE, RELAY_PATH, RelayItem, decode_batch
from gateway.settings import load_settings

G12 = "000.00.00.G12"
#: the transport's answer timeout here, in seconds (``[delivery] timeout``)
TIMEOUT = 0.5


def transport_for(pki: DevPKI, directory: Path, name: str) -> HttpsPeerTransport:
    """The transport of node ``name``, built from its settings file as a node builds it."""
    directory.mkdir(parents=True, exist_ok=True)
    config = write_node_config(
        directory / f"{name}.toml",
        name=name,
        agencies=[G12],
        node=pki.issue(name),
        ca=pki.ca,
        database_url=f"sqlite:///{directory / 'unused.db'}",
        tier="central",
        extra={"delivery": {"timeout": TIMEOUT, "connect_timeout": 2.0}},
    )
    return HttpsPeerTransport(load_settings(config, environ={}))


def relay_item(pki: DevPKI, sender_node: str, to_node: str) -> RelayItem:
    """A document from G12 to H49 as ``sender_node`` relays it to ``to_node``: signed, one hop."""
    body = signed(document(G12, [H49]), pki.key(G12))
    package, _ = pki.verifier().verify(body).accepted()
    assert isinstance(package, DocumentPackage)
    hop = sign_hop(
        pki.node_key(sender_node),
        kind="document",
        sender=G12,
        document_id=package.document_id,
        sha256=hashlib.sha256(body).hexdigest(),
        size=len(body),
        from_node=sender_node,
        to_node=to_node,
        recipients=[H49],
        at=dt.datetime.now(dt.UTC),
        prev=None,
    )
    return RelayItem(kind="document", body=body, hops=[hop], receipts=[])


# --- against a real node -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node(pki: DevPKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serve_node(pki, tmp_path_factory.mktemp("peer-transport-node")) as served:
        yield served


def test_a_batch_reaches_a_real_node_and_each_result_carries_its_receipt(
    node: Served, pki: DevPKI, tmp_path: Path
) -> None:
    transport = transport_for(pki, tmp_path, PARENT)
    items = [relay_item(pki, PARENT, NODE) for _ in range(2)]
    try:
        results = transport.send(Peer(NODE, node.base_url), items)
    finally:
        transport.close()
    assert [(r.ok, r.duplicate, r.code) for r in results] == [(True, False, None)] * 2, results
    for result, item in zip(results, items, strict=True):
        assert result.receipt is not None
        fields = verify_receipt(result.receipt, pki.trust())
        assert fields["node"] == NODE
        assert fields["sha256"] == hashlib.sha256(item.body).hexdigest()
        # the node saw this transport's certificate: it records the caller as the parent node
        assert fields["received_from"] == f"node:{PARENT}"


def test_a_whole_request_refused_with_4xx_refuses_every_item_with_the_nodes_code(
    node: Served, pki: DevPKI, tmp_path: Path
) -> None:
    """A node of the same PKI that is not a neighbour passes TLS; the relay route refuses it."""
    transport = transport_for(pki, tmp_path, STRANGER)
    items = [relay_item(pki, STRANGER, NODE) for _ in range(3)]
    try:
        results = transport.send(Peer(NODE, node.base_url), items)
    finally:
        transport.close()
    assert len(results) == 3
    assert {(r.ok, r.code) for r in results} == {(False, "RELAY_PEER_UNKNOWN")}
    assert all(r.message and STRANGER in r.message for r in results), results
    assert all(r.detail == {"status": 403} for r in results), results


def test_a_port_nobody_listens_on_is_peer_unavailable(pki: DevPKI, tmp_path: Path) -> None:
    transport = transport_for(pki, tmp_path, PARENT)
    peer = Peer("nobody", f"https://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(PeerUnavailable) as info:
            transport.send(peer, [relay_item(pki, PARENT, "nobody")])
    finally:
        transport.close()
    assert info.value.code == "RELAY_PEER_UNAVAILABLE"
    # never connected: the peer cannot have the batch (dead-lettered when its budget ends)
    assert info.value.detail == {"peer": "nobody", "error": "ConnectError", "sent": False}


# --- against a scripted HTTPS server -------------------------------------------------------------


@dataclass
class Scripted:
    """What the scripted server saw, and how it answers the next relay request."""

    port: int
    #: the node name each TLS connection's client certificate binds, in accept order
    connections: list[str] = field(default_factory=list)
    #: (connection index, path, content type, items in the batch) per request
    requests: list[tuple[int, str, str, int]] = field(default_factory=list)
    #: (status, JSON answer, seconds to wait first) for a batch of n items
    answer: Callable[[int], tuple[int, Any, float]] = lambda n: (200, {"results": []}, 0.0)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


def _node_name(cert: dict[str, Any]) -> str:
    uris = [value for kind, value in cert.get("subjectAltName", ()) if kind == "URI"]
    nodes = [u.removeprefix("urn:gateway-node:") for u in uris if u.startswith("urn:gateway-node:")]
    return nodes[0] if nodes else "?"


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, context: ssl.SSLContext, script: Scripted | None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.context = context
        self.script = script or Scripted(port=self.server_address[1])
        self.lock = threading.Lock()

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The handshake runs in the connection's own thread; a client that fails it fails alone.
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        with self.lock:
            self.script.connections.append(_node_name(tls.getpeercert() or {}))
            index = len(self.script.connections) - 1
        try:
            _Handler(tls, client_address, self, index)  # type: ignore[call-arg]
        finally:
            tls.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a node serves
    server: _Server

    def __init__(self, request: Any, address: Any, server: _Server, index: int = -1) -> None:
        self.index = index
        super().__init__(request, address, server)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        items = len(decode_batch(body, max_items=1000))
        script = self.server.script
        with self.server.lock:
            script.requests.append(
                (self.index, self.path, self.headers.get("content-type", ""), items)
            )
        status, answer, wait = script.answer(items)
        time.sleep(wait)
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: pytest shows what the tests assert."""


@pytest.fixture
def scripted(pki: DevPKI) -> Iterator[Scripted]:
    issued = pki.issue("scripted-peer")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca.root_cert))
    context.verify_mode = ssl.CERT_REQUIRED  # as a node's relay port requires
    context.load_cert_chain(str(issued.cert), str(issued.key))
    server = _Server(context, None)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server.script
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def _accept_all(n: int) -> tuple[int, Any, float]:
    receipt = {"receipt": {"v": 1}, "alg": "ES256", "signature": "", "certificate": ""}
    return 200, {"results": [{"ok": True, "receipt": receipt, "duplicate": False}] * n}, 0.0


def test_the_transport_presents_the_node_certificate_and_keeps_one_connection_alive(
    scripted: Scripted, pki: DevPKI, tmp_path: Path
) -> None:
    scripted.answer = _accept_all
    transport = transport_for(pki, tmp_path, PARENT)
    peer = Peer("scripted-peer", scripted.url)
    try:
        first = transport.send(peer, [relay_item(pki, PARENT, "scripted-peer")])
        second = transport.send(peer, [relay_item(pki, PARENT, "scripted-peer")] * 2)
    finally:
        transport.close()
    assert [r.ok for r in first] == [True] and [r.ok for r in second] == [True, True]
    assert scripted.connections == [PARENT], "one TLS connection, with the node's certificate"
    assert scripted.requests == [
        (0, RELAY_PATH, RELAY_CONTENT_TYPE, 1),
        (0, RELAY_PATH, RELAY_CONTENT_TYPE, 2),
    ]


def test_item_refusals_keep_each_items_code_message_and_detail(
    scripted: Scripted, pki: DevPKI, tmp_path: Path
) -> None:
    refused = {
        "ok": False,
        "code": "RELAY_ENVELOPE_TAMPERED",
        "message": "hop 1 describes other bytes",
        "detail": {"hop": 1},
    }
    scripted.answer = lambda n: (200, {"results": [_accept_all(1)[1]["results"][0], refused]}, 0)
    transport = transport_for(pki, tmp_path, PARENT)
    try:
        results = transport.send(
            Peer("scripted-peer", scripted.url), [relay_item(pki, PARENT, "scripted-peer")] * 2
        )
    finally:
        transport.close()
    assert results[0].ok and results[0].receipt is not None
    assert (results[1].ok, results[1].code, results[1].message, results[1].detail) == (
        False,
        "RELAY_ENVELOPE_TAMPERED",
        "hop 1 describes other bytes",
        {"hop": 1},
    )


def test_a_4xx_or_an_item_refusal_without_a_code_gets_relay_peer_refused(
    scripted: Scripted, pki: DevPKI, tmp_path: Path
) -> None:
    """Every code a node records is in the error tree, whatever the peer answers."""
    transport = transport_for(pki, tmp_path, PARENT)
    peer = Peer("scripted-peer", scripted.url)
    items = [relay_item(pki, PARENT, "scripted-peer")] * 2
    try:
        scripted.answer = lambda n: (413, {"error": "too big"}, 0.0)
        whole = transport.send(peer, items)
        scripted.answer = lambda n: (200, {"results": [{"ok": False}] * n}, 0.0)
        each = transport.send(peer, items)
    finally:
        transport.close()
    assert [(r.ok, r.code, r.detail) for r in whole] == [
        (False, "RELAY_PEER_REFUSED", {"status": 413})
    ] * 2
    assert [(r.ok, r.code) for r in each] == [(False, "RELAY_PEER_REFUSED")] * 2


@pytest.mark.parametrize("status", [500, 502, 503])
def test_a_5xx_is_peer_unavailable(
    scripted: Scripted, pki: DevPKI, tmp_path: Path, status: int
) -> None:
    scripted.answer = lambda n: (status, {"code": "INTERNAL_ERROR", "message": "x"}, 0.0)
    transport = transport_for(pki, tmp_path, PARENT)
    try:
        with pytest.raises(PeerUnavailable) as info:
            transport.send(
                Peer("scripted-peer", scripted.url), [relay_item(pki, PARENT, "scripted-peer")]
            )
    finally:
        transport.close()
    # 503 (not ready) refuses before storing; another 5xx may come after the peer stored it
    assert info.value.detail == {
        "peer": "scripted-peer",
        "status": status,
        "sent": status != 503,
    }


def test_an_answer_later_than_the_timeout_is_peer_unavailable(
    scripted: Scripted, pki: DevPKI, tmp_path: Path
) -> None:
    scripted.answer = lambda n: (*_accept_all(n)[:2], TIMEOUT * 4)
    transport = transport_for(pki, tmp_path, PARENT)
    started = time.monotonic()
    try:
        with pytest.raises(PeerUnavailable) as info:
            transport.send(
                Peer("scripted-peer", scripted.url), [relay_item(pki, PARENT, "scripted-peer")]
            )
    finally:
        transport.close()
    # sent, no answer: the peer may have it (never reported failed by the dispatcher)
    assert info.value.detail == {"peer": "scripted-peer", "error": "ReadTimeout", "sent": True}
    assert time.monotonic() - started < TIMEOUT * 3, "the transport waited past its timeout"
    assert len(scripted.requests) == 1, "the request did reach the peer"
