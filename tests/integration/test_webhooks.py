"""Webhooks end to end: a package lands in an inbox, a real HTTPS receiver gets it signed.

The receiver is a real HTTPS server in a thread (the dev PKI's certificate, trusted through
``[webhooks] ca_file``) that checks every request independently: with the Standard Webhooks
project's own library (``standardwebhooks``) and by hand with ``hmac`` from the spec. The node
runs on each engine (``db_url``); the sender through the real transport
(``adapters.webhooks``) and, in the first test, the node's real scheduler.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import os
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from direct import Direct
from factory import document, signed, status
from sqlalchemy import select
from standardwebhooks import Webhook
from support import DevPKI

from adapters.webhooks import HttpsWebhookTransport
from gateway.agency import AgencyCode
from gateway.dev.network import free_port
from gateway.dev.nodeconfig import write_node_config
from gateway.errors import DigestMismatch
from gateway.network import scheduler
from gateway.network.dispatcher import Dispatcher
from gateway.node import ingest
from gateway.node.admin import requeue
from gateway.node.container import Node
from gateway.node.inbox import list_inbox
from gateway.node.ingest import Attest, ingest_document, ingest_status
from gateway.node.webhooks import FAILED, PENDING, SENT, Sender
from gateway.settings import load_settings
from gateway.storage import db
from gateway.storage.tables import audit_log, deliveries, documents, webhooks

G12 = "000.00.00.G12"
H49 = "000.00.00.H49"
PUBLIC = "https://gateway.test.example:8443"


# --- the receiver ----------------------------------------------------------------------------


@dataclass
class Seen:
    """One request the receiver got, and what its own checks made of it."""

    path: str
    headers: dict[str, str]
    body: bytes
    #: the standardwebhooks library verified it (signature and timestamp)
    library_ok: bool
    #: an HMAC-SHA256 computed here from the spec matched one of its signatures
    by_hand_ok: bool


@dataclass
class Receiver:
    """A DMS's webhook endpoint: answers ``statuses`` in turn (then the last one for ever)."""

    port: int
    secret: str
    statuses: list[int] = field(default_factory=lambda: [200])
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/dms/hook?tenant=g12"

    def answer(self) -> int:
        with self.lock:
            return self.statuses[min(len(self.seen), len(self.statuses) - 1)]

    def ids(self) -> list[str]:
        return [s.headers["webhook-id"] for s in self.seen]


def by_hand(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """The spec, read independently: HMAC-SHA256(base64-decoded secret after "whsec_",
    "{id}.{timestamp}.{body}"), base64, compared with each "v1,<sig>" of the header."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    content = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
    for candidate in headers["webhook-signature"].split(" "):
        version, _, signature = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(signature, expected):
            return True
    return False


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, context: ssl.SSLContext, receiver: Receiver) -> None:
        super().__init__(("127.0.0.1", receiver.port), _Handler)
        self.context = context
        self.receiver = receiver

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            _Handler(tls, client_address, self)
        finally:
            tls.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_POST(self) -> None:
        receiver = self.server.receiver
        body = self.rfile.read(int(self.headers["content-length"]))
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            Webhook(receiver.secret).verify(body, headers)
            library_ok = True
        except Exception:
            library_ok = False
        status_code = receiver.answer()
        with receiver.lock:
            receiver.seen.append(
                Seen(self.path, headers, body, library_ok, by_hand(receiver.secret, headers, body))
            )
        answer = b'{"ok": true}' if status_code < 300 else b'{"error": "try later"}'
        self.send_response(status_code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


def _secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


@pytest.fixture
def receiver(pki: DevPKI) -> Iterator[Receiver]:
    issued = pki.issue("webhook-dms")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(issued.cert), str(issued.key))
    made = Receiver(port=free_port(), secret=_secret())
    server = _Server(context, made)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield made
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


# --- the node --------------------------------------------------------------------------------

#: fast retries: 0.05 s, 0.1 s, ... (plus up to 0.05 s), at most 0.2 s
FAST = {
    "tick_interval": 0.05,
    "timeout": 5.0,
    "backoff_initial": 0.05,
    "backoff_max": 0.2,
    "max_attempts": 5,
    "max_age": 3600,
}


def _node(
    directory: Path,
    pki: DevPKI,
    url: str,
    *,
    endpoints: dict[str, Receiver] | None = None,
    name: str = "webhook-node",
    agencies: tuple[str, ...] = (G12, H49),
    webhooks_extra: dict[str, Any] | None = None,
    **sections: Any,
) -> Node:
    """A node hosting ``agencies``, with a webhook endpoint for each agency of ``endpoints``."""
    directory.mkdir(parents=True, exist_ok=True)
    listed = []
    for agency, receiver in (endpoints or {}).items():
        secret_file = directory / f"{agency}.whsec"
        secret_file.write_text(receiver.secret + "\n")
        listed.append({"agency": agency, "url": receiver.url, "secret_file": secret_file.name})
    extra = dict(sections.pop("extra", {}))
    extra["webhooks"] = {
        **FAST,
        "endpoints": listed,
        "public_url": PUBLIC,
        "ca_file": pki.ca.root_cert,
        **(webhooks_extra or {}),
    }
    config = write_node_config(
        directory / "node.toml",
        name=name,
        agencies=list(agencies),
        node=pki.issue(name, key_type="ec-p256"),
        ca=pki.ca,
        database_url=url,
        extra=extra,
        **sections,
    )
    settings = load_settings(config, environ={})
    engine = db.make_engine(settings)
    db.upgrade(engine)
    return Node.from_settings(settings, engine)


@dataclass
class Made:
    """The nodes and transports a test made: closed afterwards."""

    nodes: list[Node] = field(default_factory=list)
    transports: list[HttpsWebhookTransport] = field(default_factory=list)

    def append(self, node: Node) -> None:
        self.nodes.append(node)

    def transport(self, node: Node) -> HttpsWebhookTransport:
        self.transports.append(HttpsWebhookTransport(node.settings))
        return self.transports[-1]


@pytest.fixture
def made() -> Iterator[Made]:
    made = Made()
    yield made
    for transport in made.transports:
        transport.close()
    for node in made.nodes:
        node.engine.dispose()


def _caller(pki: DevPKI, code: str) -> Any:
    from gateway.trust.caller import Identity

    return Identity(
        kind="agency", agency=AgencyCode.parse(code), certificate=pki.key(code).certificate
    )


def _push(node: Node, pki: DevPKI, sender: str, recipients: list[str]) -> str:
    data = signed(document(sender, recipients), pki.key(sender))
    return ingest_document(node, data, caller=_caller(pki, sender)).id


def _rows(node: Node) -> list[Any]:
    with node.reader.connect() as conn:
        return list(conn.execute(select(webhooks).order_by(webhooks.c.id)))


def _audited(node: Node, event: str) -> list[tuple[str | None, dict[str, Any]]]:
    with node.reader.connect() as conn:
        rows = conn.execute(
            select(audit_log.c.subject, audit_log.c.data)
            .where(audit_log.c.event == event)
            .order_by(audit_log.c.seq)
        ).all()
    return [(r.subject, json.loads(r.data)) for r in rows]


def _until(condition: Callable[[], bool], seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _drive(sender: Sender, agency: str, done: Callable[[], bool], seconds: float = 10.0) -> None:
    """Run the sender for ``agency`` as its job would, tick after tick, until ``done``."""
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, "timed out"
        sender.run(agency)
        time.sleep(0.02)


# --- the tests -------------------------------------------------------------------------------


def test_an_arrival_is_notified_exactly_once_signed_after_retries_by_the_scheduler(
    db_url: str, tmp_path: Path, pki: DevPKI, receiver: Receiver, made: Made
) -> None:
    """500, 500, then 200: three attempts of the same signed notification, then no more."""
    receiver.statuses = [500, 500, 200]
    node = _node(tmp_path / "node", pki, db_url, endpoints={G12: receiver})
    made.append(node)
    gid = _push(node, pki, H49, [G12])
    _push(node, pki, G12, [H49])  # for H49, which has no webhook: no row
    rows = _rows(node)
    assert [(r.agency, r.state, r.attempts) for r in rows] == [(G12, PENDING, 0)]
    transport = made.transport(node)
    jobs = scheduler.start(node, None, primary=False, webhooks=Sender(node, transport))
    try:
        _until(lambda: _rows(node)[0].state == SENT)
        time.sleep(0.3)  # several more ticks: nothing is sent again
    finally:
        jobs.shutdown(wait=True)
    row = _rows(node)[0]
    assert (row.state, row.attempts, row.next_attempt_at, row.leased_by) == (SENT, 3, None, None)
    assert len(receiver.seen) == 3
    assert receiver.ids() == [row.message_id] * 3  # the same webhook-id: one event
    assert row.message_id.startswith("msg_") and "." not in row.message_id
    for seen in receiver.seen:
        assert seen.library_ok and seen.by_hand_ok  # both independent checks
        assert seen.path == "/dms/hook?tenant=g12"
        assert seen.body == row.payload.encode()  # the same bytes on every attempt
        assert seen.headers["content-type"] == "application/json"
        assert seen.headers["webhook-timestamp"].isdigit()
        assert abs(int(seen.headers["webhook-timestamp"]) - time.time()) < 60
        assert seen.headers["webhook-signature"].startswith("v1,")
    with node.reader.connect() as conn:
        doc = conn.execute(select(documents).where(documents.c.id == gid)).one()
    body = json.loads(receiver.seen[0].body)
    assert body == {
        "type": "inbox.arrived",
        "timestamp": body["timestamp"],
        "data": {
            "id": gid,
            "kind": "document",
            "agency": G12,
            "from": H49,
            "document_id": doc.document_id,
            "status_code": None,
            "sha256": doc.sha256,
            "links": {
                "package": f"{PUBLIC}/api/v1/documents/{gid}",
                "ack": f"{PUBLIC}/api/v1/documents/{gid}/ack",
                "evidence": f"{PUBLIC}/api/v1/documents/{gid}/evidence",
                "statuses": f"{PUBLIC}/api/v1/statuses",
                "inbox": f"{PUBLIC}/api/v1/inbox",
            },
        },
    }
    assert dt.datetime.fromisoformat(body["timestamp"]) == doc.received_at
    # the webhook is a nudge: the package waits in the inbox until the DMS fetches and acks it
    assert [i["id"] for i in list_inbox(node, _caller(pki, G12)).items] == [gid]
    assert _audited(node, "webhook_failed") == []


def test_a_status_for_a_hosted_agency_is_notified_and_a_repeat_makes_no_second_row(
    db_url: str, tmp_path: Path, pki: DevPKI, receiver: Receiver, made: Made
) -> None:
    node = _node(tmp_path / "node", pki, db_url, endpoints={G12: receiver})
    made.append(node)
    data = signed(document(G12, [H49]), pki.key(G12))
    ingest_document(node, data, caller=_caller(pki, G12))
    assert _rows(node) == []  # for H49: no URL, no row
    with node.reader.connect() as conn:
        document_id = conn.execute(select(documents.c.document_id)).scalar_one()
    answer = signed(status(H49, sender=G12, document_id=document_id, code="01"), pki.key(H49))
    accepted = ingest_status(node, answer, caller=_caller(pki, H49))
    again = ingest_status(node, answer, caller=_caller(pki, H49))
    assert again.duplicate and again.id == accepted.id
    rows = _rows(node)
    assert [(r.agency, r.state) for r in rows] == [(G12, PENDING)]  # one, despite the repeat
    data_ = json.loads(rows[0].payload)["data"]
    assert (data_["id"], data_["kind"], data_["from"], data_["status_code"]) == (
        accepted.id,
        "status",
        H49,
        "01",
    )
    assert "statuses" not in data_["links"]  # a status is not answered with a status
    sender = Sender(node, made.transport(node))
    _drive(sender, G12, lambda: _rows(node)[0].state == SENT)
    assert len(receiver.seen) == 1 and receiver.seen[0].library_ok


def test_the_row_is_written_in_the_delivering_transaction(
    db_url: str,
    tmp_path: Path,
    pki: DevPKI,
    receiver: Receiver,
    made: Made,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An ingest that fails after the row was written leaves neither package nor row; a refused
    package none either."""
    node = _node(tmp_path / "node", pki, db_url, endpoints={G12: receiver})
    made.append(node)
    enqueued: list[int] = []
    real_enqueue = ingest.webhooks.enqueue

    def enqueue(conn: Any, node_: Node, arrivals: Any, **kwargs: Any) -> int:
        enqueued.append(real_enqueue(conn, node_, arrivals, **kwargs))
        return enqueued[-1]

    def broken(*args: Any, **kwargs: Any) -> int:
        raise RuntimeError("the disk is full")

    monkeypatch.setattr(ingest.webhooks, "enqueue", enqueue)
    monkeypatch.setattr(ingest.audit, "append_many", broken)  # after the row, same transaction
    with pytest.raises(RuntimeError):
        _push(node, pki, H49, [G12])
    assert enqueued == [1]  # the row was written ...
    monkeypatch.undo()
    with node.reader.connect() as conn:  # ... and rolled back with the package
        assert conn.execute(select(documents.c.seq)).all() == []
    assert _rows(node) == []
    original = signed(document(H49, [G12], subject="Webhook test"), pki.key(H49))
    tampered = original.replace(b"Webhook test", b"Webhook tesT", 1)
    assert tampered != original
    with pytest.raises(DigestMismatch):
        ingest_document(node, tampered, caller=_caller(pki, H49))
    assert _rows(node) == []
    _push(node, pki, H49, [G12])  # and a normal ingest has its row
    assert len(_rows(node)) == 1


def test_giving_up_after_max_attempts_is_audited(
    db_url: str, tmp_path: Path, pki: DevPKI, receiver: Receiver, made: Made
) -> None:
    receiver.statuses = [503]
    node = _node(
        tmp_path / "node",
        pki,
        db_url,
        endpoints={G12: receiver},
        webhooks_extra={"max_attempts": 3},
    )
    made.append(node)
    gid = _push(node, pki, H49, [G12])
    sender = Sender(node, made.transport(node))
    _drive(sender, G12, lambda: _rows(node)[0].state == FAILED)
    row = _rows(node)[0]
    assert (row.attempts, row.last_error, row.next_attempt_at) == (3, "HTTP 503", None)
    assert len(receiver.seen) == 3 and len(set(receiver.ids())) == 1
    assert _audited(node, "webhook_failed") == [
        (
            gid,
            {
                "webhook_id": row.message_id,
                "agency": G12,
                "attempts": 3,
                "reason": "max_attempts",
                "last_error": "HTTP 503",
            },
        )
    ]
    sender.run(G12)
    assert len(receiver.seen) == 3  # given up: never sent again


def test_an_unreachable_endpoint_holds_back_the_rest_and_410_gives_up_at_once(
    db_url: str, tmp_path: Path, pki: DevPKI, receiver: Receiver, made: Made
) -> None:
    gone = Receiver(port=free_port(), secret=receiver.secret)  # nobody listens there
    node = _node(tmp_path / "node", pki, db_url, endpoints={G12: gone})
    made.append(node)
    for _ in range(3):
        _push(node, pki, H49, [G12])
    transport = made.transport(node)
    sender = Sender(node, transport)
    assert sender.run(G12) == 0
    rows = _rows(node)
    assert [r.attempts for r in rows] == [1, 0, 0]  # one attempt spent, the others wait
    assert rows[0].last_error.startswith("ConnectError")
    assert all(r.state == PENDING and r.leased_by is None for r in rows)
    assert sender.run(G12) == 0  # paused until the failed one is due: nothing tried
    assert [r.attempts for r in _rows(node)] == [1, 0, 0]
    # the DMS answers 410 Gone: that notification is given up at once, the others go through
    receiver.statuses = [410, 200]
    moved = dataclasses.replace(
        node.settings,
        webhooks=dataclasses.replace(
            node.settings.webhooks,
            endpoints=tuple(
                dataclasses.replace(e, url=receiver.url) for e in node.settings.webhooks.endpoints
            ),
        ),
    )
    node = dataclasses.replace(node, settings=moved)
    sender = Sender(node, transport)
    time.sleep(0.3)  # the failed one is due again (backoff at most 0.2 s + 0.05 s): first in line
    _drive(sender, G12, lambda: all(r.state != PENDING for r in _rows(node)))
    assert [(r.state, r.attempts) for r in _rows(node)] == [(FAILED, 2), (SENT, 1), (SENT, 1)]
    assert [d["reason"] for _, d in _audited(node, "webhook_failed")] == ["gone"]


def test_housekeeping_gives_up_old_notifications_and_those_of_removed_endpoints(
    db_url: str, tmp_path: Path, pki: DevPKI, receiver: Receiver, made: Made
) -> None:
    node = _node(tmp_path / "node", pki, db_url, endpoints={G12: receiver, H49: receiver})
    made.append(node)
    _push(node, pki, H49, [G12])
    _push(node, pki, G12, [H49])
    sender = Sender(node, made.transport(node))
    assert sender.housekeeping() == 0  # young, configured: nothing to do
    later = dataclasses.replace(node, clock=lambda: dt.datetime.now(dt.UTC) + dt.timedelta(hours=2))
    without_h49 = dataclasses.replace(
        later.settings,
        webhooks=dataclasses.replace(
            later.settings.webhooks,
            endpoints=tuple(e for e in later.settings.webhooks.endpoints if e.agency == G12),
        ),
    )
    assert (
        Sender(dataclasses.replace(later, settings=without_h49), sender.transport).housekeeping()
        == 2
    )
    reasons = {d["agency"]: d["reason"] for _, d in _audited(node, "webhook_failed")}
    assert reasons == {G12: "max_age", H49: "endpoint_removed"}
    assert {r.state for r in _rows(node)} == {FAILED}
    assert receiver.seen == []


def test_an_admin_requeue_that_delivers_here_is_notified(
    db_url: str, tmp_path: Path, pki: DevPKI, receiver: Receiver, made: Made
) -> None:
    """G12 refuses attested packages: the delivery fails here (no inbox, no row); an operator
    requeues it and it lands in the inbox: now the DMS is told."""
    node = _node(
        tmp_path / "node",
        pki,
        db_url,
        endpoints={G12: receiver},
        extra={"hub": {"refuse_attested": [G12]}},
    )
    made.append(node)
    unsigned = document(H49, [G12])
    accepted = ingest_document(node, unsigned, caller=_caller(pki, H49), attest=Attest("vxp.h49"))
    with node.reader.connect() as conn:
        delivery = conn.execute(select(deliveries.c.id, deliveries.c.state)).one()
    assert delivery.state == "failed"
    assert _rows(node) == []
    assert requeue(node, [delivery.id], actor="admin:test") == [delivery.id]
    rows = _rows(node)
    assert [(r.agency, json.loads(r.payload)["data"]["id"]) for r in rows] == [(G12, accepted.id)]


def test_relayed_arrivals_and_failure_notices_are_notified_but_delivered_notices_are_not(
    db_url: str, tmp_path: Path, pki: DevPKI, receiver: Receiver, made: Made
) -> None:
    """A province (on ``db_url``, H49 with a webhook) and central (G12 with a webhook): a relayed
    document is notified at central; the delivered notice that comes back to the province is
    the node's own business (no row); a failure notice in H49's inbox is notified."""
    province = _node(
        tmp_path / "h49",
        pki,
        db_url,
        endpoints={H49: receiver},
        name="h49",
        agencies=(H49,),
        parent={"name": "central", "url": "https://127.0.0.1:1"},
    )
    central = _node(
        tmp_path / "central",
        pki,
        f"sqlite:///{tmp_path / 'central.db'}",
        endpoints={G12: receiver},
        name="central",
        agencies=(G12,),
        tier="central",
        children=[{"name": "h49", "url": "https://127.0.0.1:2", "serves": [H49]}],
    )
    made.append(province)
    made.append(central)
    nodes = {"h49": province, "central": central}
    up = Dispatcher(province, Direct(nodes, province))
    down = Dispatcher(central, Direct(nodes, central))
    gid = _push(province, pki, H49, [G12])
    assert up.run_peer("central") == 1
    with province.reader.connect() as conn:
        sha256 = conn.execute(select(documents.c.sha256).where(documents.c.id == gid)).scalar()
    at_central = _rows(central)  # central's own id for it: the same bytes
    assert [(r.agency, json.loads(r.payload)["data"]["sha256"]) for r in at_central] == [
        (G12, sha256)
    ]
    # central's delivered notice goes back: the province applies it and keeps it to itself
    assert down.run_peer("h49") == 1
    with province.reader.connect() as conn:
        notice = conn.execute(
            select(documents.c.seq).where(documents.c.subject == "delivered")
        ).scalar_one()
        handled = conn.execute(
            select(deliveries.c.recipient, deliveries.c.state).where(
                deliveries.c.document_seq == notice
            )
        ).all()
    assert [tuple(r) for r in handled] == [(H49, "acknowledged")]
    assert _rows(province) == []
    # a document for an agency nobody serves: central gives up, the failure notice lands in
    # H49's inbox, and that is worth a nudge
    _push(province, pki, H49, ["000.00.00.X99"])
    assert up.run_peer("central") == 1
    assert down.run_peer("h49") == 1
    rows = _rows(province)
    assert len(rows) == 1
    data_ = json.loads(rows[0].payload)["data"]
    assert (data_["kind"], data_["agency"]) == ("notice", H49)
    assert data_["id"] in [i["id"] for i in list_inbox(province, _caller(pki, H49)).items]
