"""The outbox and the relay, in one process: two nodes, real databases, the real framing.

The transport between them is the only stand-in: it hands the encoded batch to the other
node's :func:`gateway.network.relay.receive_batch` (the HTTPS path is covered by the acceptance
tests), or raises :class:`PeerUnavailable` as a dead network would. The sending node runs on each
engine (``db_url``); the receiving node on SQLite.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog.testing
from direct import Direct
from factory import document, signed
from sqlalchemy import and_, func, select, update
from support import DevPKI

from gateway.dev.nodeconfig import write_node_config
from gateway.errors import HopChainBroken, PeerUnavailable
from gateway.evidence.attestations import verify_attestation
from gateway.evidence.hops import verify_hops, verify_notice
from gateway.evidence.receipts import verify_receipt
from gateway.network.dispatcher import Dispatcher
from gateway.network.notices import mark_delivered_many
from gateway.network.outbox import dead_letter
from gateway.network.routing import Peer
from gateway.network.wire import RelayItem
from gateway.node.admin import list_deliveries, requeue
from gateway.node.container import Node
from gateway.node.inbox import acknowledge, fetch, list_inbox, status_view
from gateway.node.ingest import Attest, ingest_document
from gateway.settings import load_settings
from gateway.storage import db
from gateway.storage.tables import audit_log, deliveries, documents, events, hops
from gateway.trust.caller import Identity

G12 = "000.00.00.G12"
H49 = "000.00.00.H49"


class Clock:
    """The nodes' clock, moved by hand: backoff and age budgets without sleeping."""

    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


class Ticks:
    """A monotonic clock moved by hand: the circuit breaker's probe interval without sleeping."""

    def __init__(self) -> None:
        self.seconds = 1000.0

    def __call__(self) -> float:
        return self.seconds

    def advance(self, seconds: float) -> None:
        self.seconds += seconds


def _node(tmp: Path, pki: DevPKI, url: str, clock: Clock, **sections: Any) -> Node:
    tmp.mkdir(parents=True, exist_ok=True)
    config = write_node_config(
        tmp / "node.toml",
        node=pki.issue(sections["name"], key_type="ec-p256"),
        ca=pki.ca,
        database_url=url,
        **sections,
    )
    settings = load_settings(config, environ={})
    engine = db.make_engine(settings)
    db.upgrade(engine)
    return dataclasses.replace(Node.from_settings(settings, engine), clock=clock)


DELIVERY = {
    "backoff_initial": 10,
    "backoff_max": 100,
    "backoff_jitter": 1,
    "breaker_threshold": 3,
    "breaker_probe_interval": 0.2,
    "max_attempts": 5,
    "max_age": 5000,
}


@dataclass
class Pair:
    province: Node
    central: Node
    clock: Clock
    ticks: Ticks
    transport: Direct
    back: Direct
    dispatcher: Dispatcher
    central_dispatcher: Dispatcher
    pki: DevPKI

    def push(self, sender: str, recipients: list[str]) -> bytes:
        data = signed(document(sender, recipients), self.pki.key(sender))
        node = self.province if sender == H49 else self.central
        ingest_document(node, data, caller=_agency(self, sender))
        return data


def _code(text: str) -> Any:
    from gateway.agency import AgencyCode

    return AgencyCode.parse(text)


@pytest.fixture
def pair(db_url: str, tmp_path: Path, pki: DevPKI) -> Iterator[Pair]:
    made = _make_pair(db_url, tmp_path, pki)
    yield made
    made.province.engine.dispose()
    made.central.engine.dispose()


def _make_pair(
    db_url: str, tmp_path: Path, pki: DevPKI, *, central_hub: dict[str, Any] | None = None
) -> Pair:
    """The province (on ``db_url``) and central (SQLite), linked in-process."""
    clock = Clock()
    central_url = "https://127.0.0.1:1"
    province_url = "https://127.0.0.1:2"
    province = _node(
        tmp_path / "h49",
        pki,
        db_url,
        clock,
        name="h49",
        agencies=[H49],
        tier="province",
        parent={"name": "central", "url": central_url},
        extra={"delivery": DELIVERY},
    )
    central = _node(
        tmp_path / "central",
        pki,
        f"sqlite:///{tmp_path / 'central.db'}",
        clock,
        name="central",
        agencies=[G12],
        tier="central",
        children=[{"name": "h49", "url": province_url, "serves": [H49]}],
        extra={"delivery": DELIVERY, "hub": dict(central_hub or {})},
    )
    nodes = {"h49": province, "central": central}
    transport = Direct(nodes, province)
    back = Direct(nodes, central)
    ticks = Ticks()
    return Pair(
        province=province,
        central=central,
        clock=clock,
        ticks=ticks,
        transport=transport,
        back=back,
        dispatcher=Dispatcher(province, transport, monotonic=ticks),
        central_dispatcher=Dispatcher(central, back, monotonic=ticks),
        pki=pki,
    )


def _agency(pair: Pair, code: str) -> Identity:
    return Identity(kind="agency", agency=_code(code), certificate=pair.pki.key(code).certificate)


def _rows(node: Node) -> list[Any]:
    with node.reader.connect() as conn:
        return list(conn.execute(select(deliveries).order_by(deliveries.c.id)))


def test_a_relayed_document_arrives_with_signed_hops_and_the_sender_sees_delivered(
    pair: Pair,
) -> None:
    data = pair.push(H49, [G12])
    assert pair.dispatcher.run_peer("central") == 1
    inbox = list_inbox(pair.central, _agency(pair, G12)).items
    assert len(inbox) == 1
    assert fetch(pair.central, _agency(pair, G12), inbox[0]["id"]) == data  # byte for byte
    # the province keeps its hop record and central's receipt; central keeps the chain
    with pair.province.reader.connect() as conn:
        out = conn.execute(select(hops).where(hops.c.direction == "out")).one()
    receipt = verify_receipt(json.loads(out.receipt), trust=pair.pki.trust())
    assert receipt["node"] == "central"
    with pair.central.reader.connect() as conn:
        chain = conn.execute(select(hops).where(hops.c.direction == "in")).all()
    fields = verify_hops(
        [json.loads(h.record) for h in chain],
        trust=pair.pki.trust(),
        sha256=receipt["sha256"],
        size=len(data),
        to_node="central",
    )
    assert [(f["from"], f["to"]) for f in fields] == [("h49", "central")]
    # central tells the province it delivered, and that G12's system fetched it: the
    # sender's timeline shows both (a delivered notice, then a progress notice)
    assert pair.central_dispatcher.run_peer("h49") == 2
    sent = status_view(pair.province, _agency(pair, H49), _doc_id(pair.province))
    events = [(e["code"], e["node"]) for e in sent["recipients"][0]["events"]]
    assert events == [
        ("accepted", "h49"),
        ("in_transit", "central"),
        ("delivered", "central"),
        ("fetched", "central"),
    ]
    assert sent["recipients"][0]["transport"] == "fetched"
    # the notices are the node's business, not the sender DMS's
    assert list_inbox(pair.province, _agency(pair, H49)).items == []
    # both audit logs say what happened: relayed out, relayed in, delivered to G12's inbox;
    # the province delivered nothing to an inbox of its own
    assert [(e, s) for e, s, _ in _audit(pair.central) if e in ("relay_in", "deliver")] == [
        ("relay_in", inbox[0]["id"]),
        ("deliver", inbox[0]["id"]),
    ]
    deliver = next(d for e, _, d in _audit(pair.central) if e == "deliver")
    assert deliver == {"recipients": [G12]}
    province = [e for e, _, _ in _audit(pair.province)]
    assert "relay_out" in province and "deliver" not in province


def _audit(node: Node) -> list[tuple[str, str | None, dict[str, Any]]]:
    with node.reader.connect() as conn:
        rows = conn.execute(
            select(audit_log.c.event, audit_log.c.subject, audit_log.c.data).order_by(
                audit_log.c.seq
            )
        ).all()
    return [(r.event, r.subject, json.loads(r.data)) for r in rows]


def _doc_id(node: Node) -> str:
    with node.reader.connect() as conn:
        return str(
            conn.execute(
                select(documents.c.id).where(documents.c.kind == "document").limit(1)
            ).scalar_one()
        )


def test_a_retried_relay_is_the_same_document_with_the_same_receipt(pair: Pair) -> None:
    pair.push(H49, [G12])
    pair.dispatcher.run_peer("central")
    with pair.province.reader.connect() as conn:
        doc = conn.execute(select(documents).where(documents.c.kind == "document")).one()
        chain = conn.execute(select(hops)).all()
    record = json.loads(chain[0].record)
    item = RelayItem(kind="document", body=bytes(doc.envelope), hops=[record], receipts=[])
    again = pair.transport.send(Peer("central", "https://x"), [item])
    assert again[0].ok and again[0].duplicate
    assert again[0].receipt == json.loads(chain[0].receipt)
    with pair.central.reader.connect() as conn:
        stored = conn.execute(
            select(func.count()).select_from(documents).where(documents.c.kind == "document")
        ).scalar()
        rows = conn.execute(select(func.count()).select_from(deliveries)).scalar()
    assert (stored, rows) == (1, 2)  # the document for G12, and the delivered notice back


def test_an_unreachable_peer_is_retried_with_backoff_then_tripped_and_drained_in_order(
    pair: Pair,
) -> None:
    pair.transport.down = True
    sent = [pair.push(H49, [G12]) for _ in range(4)]
    assert pair.dispatcher.run_peer("central") == 0
    rows = _rows(pair.province)
    assert [r.attempts for r in rows] == [1, 1, 1, 1]
    waits = [(r.next_attempt_at - pair.clock.now).total_seconds() for r in rows]
    assert all(10 <= w <= 11 for w in waits), waits  # backoff_initial 10 s + jitter <= 1 s
    assert all("ConnectError" in r.last_error for r in rows)
    calls = len(pair.transport.calls)
    pair.dispatcher.run_peer("central")
    assert len(pair.transport.calls) == calls, "nothing is due: the peer is not hammered"
    for _ in range(2):  # two more failures trip the breaker (threshold 3)
        pair.clock.advance(200)
        pair.dispatcher.run_peer("central")
    assert pair.dispatcher.breaker("central")["state"] == "open"
    attempts = [r.attempts for r in _rows(pair.province)]
    pair.clock.advance(10_000)  # every row due: the open breaker still holds them back
    calls = len(pair.transport.calls)
    pair.dispatcher.run_peer("central")
    assert len(pair.transport.calls) == calls
    pair.ticks.advance(0.15)  # the probe interval (0.2 s) has not passed: still held back
    pair.dispatcher.run_peer("central")
    assert len(pair.transport.calls) == calls
    pair.ticks.advance(0.1)  # now it has: one probe goes out
    pair.transport.down = False
    pair.clock.advance(-10_000)  # the rows' backoff is not over: the probe ignores it
    assert pair.dispatcher.run_peer("central") == 4
    assert pair.dispatcher.breaker("central")["state"] == "closed"
    assert max(attempts) == 3
    inbox = list_inbox(pair.central, _agency(pair, G12)).items
    order = [fetch(pair.central, _agency(pair, G12), i["id"]) for i in inbox]
    assert order == sent, "the backlog arrives in the order it was sent"
    with pair.province.reader.connect() as conn:
        logged = [e for (e,) in conn.execute(select(audit_log.c.event))]
    assert "peer_down" in logged and "peer_up" in logged


def _breaker_events(node: Node) -> list[str]:
    return [e for e, subject, _ in _audit(node) if e in ("peer_down", "peer_up")]


def test_a_breaker_open_at_a_stop_is_open_after_the_restart_and_its_audit_balances(
    pair: Pair,
) -> None:
    """A node stopped while its parent was down still holds it down when it starts again
    (probing at once, not hammering), and the audit log reads one outage: one ``peer_down``,
    one ``peer_up``, whatever the restarts and the processes that saw it."""
    pair.transport.down = True
    pair.push(H49, [G12])
    for _ in range(3):  # threshold 3
        pair.dispatcher.run_peer("central")
        pair.clock.advance(200)
    assert pair.dispatcher.breaker("central")["state"] == "open"
    assert _breaker_events(pair.province) == ["peer_down"]

    # the process is killed; its successor finds the peer down
    restarted = Dispatcher(pair.province, pair.transport, worker="restarted", monotonic=pair.ticks)
    assert restarted.breaker("central")["state"] == "closed"
    assert restarted.load_breakers() == ["central"]
    assert restarted.breaker("central")["state"] == "open"
    calls = len(pair.transport.calls)
    restarted.run_peer("central")  # the probe at once: still down
    assert len(pair.transport.calls) == calls + 1
    restarted.run_peer("central")  # then only every probe interval
    assert len(pair.transport.calls) == calls + 1
    # another process of the node trips on its own: the outage is already in the log
    other = Dispatcher(pair.province, pair.transport, worker="other", monotonic=pair.ticks)
    pair.push(H49, [G12])  # fresh attempts (the first document is near its budget)
    for _ in range(3):
        pair.clock.advance(200)
        other.run_peer("central")
    assert other.breaker("central")["state"] == "open"
    assert _breaker_events(pair.province) == ["peer_down"]

    pair.transport.down = False
    pair.ticks.advance(1)
    assert restarted.run_peer("central") >= 1
    pair.push(H49, [G12])
    pair.ticks.advance(1)
    assert other.run_peer("central") >= 1
    assert _breaker_events(pair.province) == ["peer_down", "peer_up"]
    assert Dispatcher(pair.province, pair.transport).load_breakers() == []


def test_after_the_retry_budget_the_delivery_is_dead_lettered_and_the_sender_told(
    pair: Pair,
) -> None:
    pair.transport.down = True
    pair.push(H49, [G12])
    for _ in range(5):  # max_attempts 5; a fresh dispatcher each time (a restarted process),
        # so the breaker (threshold 3, whose probes do not use up attempts) stays closed
        Dispatcher(pair.province, pair.transport).run_peer("central")
        pair.clock.advance(1000)
    row = _rows(pair.province)[0]
    assert row.state == "failed", row
    assert row.last_error.startswith("RELAY_PEER_UNAVAILABLE")
    notices = list_inbox(pair.province, _agency(pair, H49)).items
    assert [n["kind"] for n in notices] == ["notice"]
    notice = json.loads(fetch(pair.province, _agency(pair, H49), notices[0]["id"]))
    fields = verify_notice(notice, trust=pair.pki.trust())
    assert (fields["event"], fields["code"], fields["recipients"]) == (
        "failed",
        "RELAY_PEER_UNAVAILABLE",
        [G12],
    )
    view = status_view(pair.province, _agency(pair, H49), _doc_id(pair.province))
    assert view["recipients"][0]["transport"] == "failed"
    # an admin requeues it once the peer is back: delivered exactly once
    pair.transport.down = False
    failed = [d["id"] for d in list_deliveries(pair.province, state="failed")]
    assert requeue(pair.province, failed, actor="admin:test") == failed
    assert pair.dispatcher.run_peer("central") == 1
    assert len(list_inbox(pair.central, _agency(pair, G12)).items) == 1


def test_a_peer_down_longer_than_the_age_budget_dead_letters_its_backlog(pair: Pair) -> None:
    pair.transport.down = True
    pair.push(H49, [G12])
    pair.push(H49, [G12])
    pair.dispatcher.run_peer("central")
    assert pair.dispatcher.housekeeping() == 0
    pair.clock.advance(DELIVERY["max_age"] + 1)
    assert pair.dispatcher.housekeeping() == 2
    assert {r.state for r in _rows(pair.province) if r.recipient == G12} == {"failed"}
    notices = list_inbox(pair.province, _agency(pair, H49)).items
    assert [n["kind"] for n in notices] == ["notice", "notice"]


def test_a_package_tampered_in_transit_is_refused_and_dead_lettered_with_the_code(
    pair: Pair,
) -> None:
    pair.transport.tamper = True
    pair.push(H49, [G12])
    pair.dispatcher.run_peer("central")
    row = _rows(pair.province)[0]
    assert row.state == "failed"
    assert row.last_error.startswith("RELAY_ENVELOPE_TAMPERED")
    assert list_inbox(pair.central, _agency(pair, G12)).items == []
    with pair.central.reader.connect() as conn:
        refused = [
            json.loads(d)["code"]
            for (d,) in conn.execute(
                select(audit_log.c.data).where(audit_log.c.event == "relay_refuse")
            )
        ]
    assert refused == ["RELAY_ENVELOPE_TAMPERED"]


def test_a_lease_keeps_rows_from_a_second_worker_until_it_runs_out(pair: Pair) -> None:
    for _ in range(3):
        pair.push(H49, [G12])
    first = Dispatcher(pair.province, pair.transport, worker="a")
    second = Dispatcher(pair.province, pair.transport, worker="b")
    peer = Peer("central", "https://x")
    claimed = first._claim(peer, probe=False)
    assert len(claimed) == 3
    assert second._claim(peer, probe=False) == []
    pair.clock.advance(pair.province.settings.delivery.lease + 1)  # worker a died
    assert len(second._claim(peer, probe=False)) == 3


# --- races between a batch in flight and the delivered notice --------------------------------
# Each test interleaves by hand what the field interleaves by timing: the dispatcher claims a
# batch, the peer commits it, its answer is lost or late, and the delivered notice (sent by the
# recipient's node on another connection) is applied before the dispatcher records the outcome.

CENTRAL = Peer("central", "https://x")


def _deliver_by_notice(pair: Pair, seq: int, at: dt.datetime) -> None:
    """What the delivered notice from central does at the province (relay.py applies it)."""
    with pair.province.writing() as conn:
        mark_delivered_many(
            conn,
            pair.province,
            [(seq, [G12], [["h49", "central", at.isoformat()]])],
            at_node="central",
            actor="node:central",
        )


def _transport_events(node: Node, seq: int) -> list[tuple[str, str]]:
    with node.reader.connect() as conn:
        return [
            (r.code, r.node)
            for r in conn.execute(
                select(events.c.code, events.c.node)
                .where(and_(events.c.document_seq == seq, events.c.kind == "transport"))
                .order_by(events.c.id)
            )
        ]


def _notices(pair: Pair) -> list[dict[str, Any]]:
    """The failure notices in the sender DMS's inbox, verified."""
    me = _agency(pair, H49)
    return [
        verify_notice(json.loads(fetch(pair.province, me, n["id"])), trust=pair.pki.trust())
        for n in list_inbox(pair.province, me).items
        if n["kind"] == "notice"
    ]


def _to_g12(pair: Pair) -> list[Any]:
    """The province's rows of documents to G12 (not of the notices to H49), in id order."""
    return [r for r in _rows(pair.province) if r.recipient == G12]


def _assert_no_leases(node: Node) -> None:
    leased = [(r.id, r.state) for r in _rows(node) if r.leased_by or r.lease_until]
    assert leased == [], "a row that left the worker's hands is still leased"


def _delivered_cleanly(row: Any) -> None:
    assert row.state == "delivered", row
    assert (row.next_attempt_at, row.leased_by, row.lease_until) == (None, None, None), row


#: a batch that never reached the peer (a lost answer is the other case: see the end)
_REFUSED_CONNECTION = PeerUnavailable("connection refused", detail={"sent": False})


def test_a_failed_batch_does_not_reschedule_a_row_the_delivered_notice_settled(
    pair: Pair,
) -> None:
    for _ in range(2):
        pair.push(H49, [G12])
    claimed = pair.dispatcher._claim(CENTRAL, probe=False)
    first, second = _to_g12(pair)
    assert first.leased_by == pair.dispatcher.worker
    _deliver_by_notice(pair, first.document_seq, pair.clock.now)
    pair.dispatcher._failed(CENTRAL, claimed, _REFUSED_CONNECTION, probe=False)
    first, second = _to_g12(pair)
    _delivered_cleanly(first)
    assert first.attempts == 0 and first.last_error is None
    assert second.state == "accepted" and second.attempts == 1  # rescheduled as before
    assert second.next_attempt_at > pair.clock.now
    assert second.last_error == "connection refused"
    _assert_no_leases(pair.province)
    assert _notices(pair) == []


def test_a_last_attempt_does_not_fail_a_row_the_delivered_notice_settled(pair: Pair) -> None:
    for _ in range(2):
        pair.push(H49, [G12])
    with pair.province.writing() as conn:  # both on their last attempt (max_attempts 5)
        conn.execute(update(deliveries).values(attempts=4))
    claimed = pair.dispatcher._claim(CENTRAL, probe=False)
    first, second = _to_g12(pair)
    _deliver_by_notice(pair, first.document_seq, pair.clock.now)
    pair.dispatcher._failed(CENTRAL, claimed, _REFUSED_CONNECTION, probe=False)
    first, second = _to_g12(pair)
    _delivered_cleanly(first)
    assert second.state == "failed" and second.attempts == 5
    _assert_no_leases(pair.province)
    assert [(n["event"], n["recipients"]) for n in _notices(pair)] == [("failed", [G12])]
    assert _transport_events(pair.province, first.document_seq) == [
        ("accepted", "h49"),
        ("in_transit", "central"),
        ("delivered", "central"),
    ]
    assert _transport_events(pair.province, second.document_seq)[-1] == ("failed", "h49")
    # one dead_letter entry, about the second package only
    assert [e for e, _, _ in _audit(pair.province)].count("dead_letter") == 1


def test_housekeeping_past_max_age_fails_only_rows_that_cannot_be_delivered(
    pair: Pair,
) -> None:
    for _ in range(3):
        pair.push(H49, [G12])
    pair.clock.advance(DELIVERY["max_age"] + 1)
    pair.dispatcher._claim(CENTRAL, probe=False)  # a live worker holds all three
    first, *_ = _to_g12(pair)
    _deliver_by_notice(pair, first.document_seq, pair.clock.now)
    assert pair.dispatcher.housekeeping() == 0  # the others are still leased
    assert {r.state for r in _to_g12(pair)} == {"delivered", "accepted"}
    pair.clock.advance(pair.province.settings.delivery.lease + 1)  # that worker died
    # ... maybe after sending them: they may be delivered, so they are never dead-lettered
    assert pair.dispatcher.housekeeping() == 0
    first, second, third = _to_g12(pair)
    _delivered_cleanly(first)
    assert (second.state, third.state) == ("accepted", "accepted")
    assert second.outcome_unknown and third.outcome_unknown
    assert _notices(pair) == []
    # a package no worker ever took, as old: failed, its sender told
    pair.push(H49, [G12])
    pair.clock.advance(DELIVERY["max_age"] + 1)
    assert pair.dispatcher.housekeeping() == 1
    assert [r.state for r in _to_g12(pair)] == ["delivered", "accepted", "accepted", "failed"]
    assert len(_notices(pair)) == 1
    # the next round settles the two: central's receipts
    assert pair.dispatcher.run_peer("central") == 2
    assert [r.state for r in _to_g12(pair)][1:3] == ["in_transit", "in_transit"]
    _assert_no_leases(pair.province)


def test_a_dead_letter_that_finds_a_delivered_row_changes_nothing_and_says_so(
    pair: Pair, capsys: pytest.CaptureFixture[str]
) -> None:
    pair.push(H49, [G12])
    claimed = pair.dispatcher._claim(CENTRAL, probe=False)
    (row,) = _to_g12(pair)
    _deliver_by_notice(pair, row.document_seq, pair.clock.now)
    with structlog.testing.capture_logs() as logs, pair.province.writing() as conn:
        woken = dead_letter(
            conn,
            pair.province,
            claimed[0].rows,
            code="RELAY_X",
            message="refused",
            peer="central",
            worker=pair.dispatcher.worker,
        )
    assert woken == set()
    _delivered_cleanly(_to_g12(pair)[0])
    stale = [e for e in logs if e["event"] == "delivery.stale_update"]
    assert [(e["id"], e["change"], e["found"]) for e in stale] == [
        (row.id, "dead_letter", "delivered")
    ]
    assert _notices(pair) == []


def test_a_late_answer_after_the_delivered_notice_keeps_one_in_transit_before_delivered(
    pair: Pair,
) -> None:
    pair.push(H49, [G12])
    claimed = pair.dispatcher._claim(CENTRAL, probe=False)
    pair.dispatcher._prepare(CENTRAL, claimed)
    results = pair.transport.send(CENTRAL, [c.item for c in claimed if c.item is not None])
    assert claimed[0].record is not None
    sent_at = claimed[0].record["hop"]["at"]
    (row,) = _to_g12(pair)
    _deliver_by_notice(pair, row.document_seq, pair.clock.now)  # overtakes central's answer
    assert pair.dispatcher._record(CENTRAL, claimed, results) == 1
    (row,) = _to_g12(pair)
    _delivered_cleanly(row)
    assert row.attempts == 0  # the late receipt moved nothing
    assert _transport_events(pair.province, row.document_seq) == [
        ("accepted", "h49"),
        ("in_transit", "central"),
        ("delivered", "central"),
    ]
    with pair.province.reader.connect() as conn:
        at = conn.execute(select(events.c.at).where(events.c.code == "in_transit")).scalar_one()
    assert at == dt.datetime.fromisoformat(sent_at).replace(tzinfo=at.tzinfo)
    assert _notices(pair) == []


def test_no_row_stays_leased_however_it_leaves_the_worker(pair: Pair) -> None:
    pair.push(H49, [G12])
    assert pair.dispatcher.run_peer("central") == 1  # sent
    _assert_no_leases(pair.province)
    assert pair.central_dispatcher.run_peer("h49") == 1  # delivered by notice
    _assert_no_leases(pair.province)
    pair.push(H49, [G12])
    claimed = pair.dispatcher._claim(CENTRAL, probe=False)
    pair.dispatcher._release(claimed)  # released (a batch that could not be prepared)
    _assert_no_leases(pair.province)
    pair.transport.down = True
    pair.dispatcher.run_peer("central")  # failed: rescheduled
    _assert_no_leases(pair.province)
    with pair.province.writing() as conn:
        conn.execute(update(deliveries).values(attempts=4))
    pair.clock.advance(1000)
    Dispatcher(pair.province, pair.transport).run_peer("central")  # dead-lettered
    assert [r.state for r in _to_g12(pair) if r.recipient == G12][-1] == "failed"
    _assert_no_leases(pair.province)
    failed = [d["id"] for d in list_deliveries(pair.province, state="failed")]
    assert requeue(pair.province, failed, actor="admin:test") == failed  # requeued
    _assert_no_leases(pair.province)
    pair.transport.down = False
    pair.push(H49, [G12])
    claimed = pair.dispatcher._claim(CENTRAL, probe=False)
    for c in claimed:  # delivered by notice while leased
        _deliver_by_notice(pair, c.seq, pair.clock.now)
    _assert_no_leases(pair.province)
    pair.clock.advance(DELIVERY["max_age"] + 1)
    assert pair.dispatcher.housekeeping() == 0  # past max_age: a delivered row never fails
    _assert_no_leases(pair.province)
    assert [r.state for r in _to_g12(pair)] == ["delivered"] * 3, _to_g12(pair)


# --- attested packages (the hub API's attest policy) travel with their attestation ----------


def _attested_push(pair: Pair) -> bytes:
    """An unsigned document from H49, accepted at h49 under ``attest`` (SIGNATURE_MISSING)."""
    data = document(H49, [G12])
    ingest_document(pair.province, data, caller=_agency(pair, H49), attest=Attest("vxp.h49"))
    return data


def test_an_attested_package_travels_with_its_attestation_and_says_so_everywhere(
    pair: Pair,
) -> None:
    data = _attested_push(pair)
    assert pair.dispatcher.run_peer("central") == 1
    items = list_inbox(pair.central, _agency(pair, G12)).items
    assert [(i["kind"], i["attested_by"]) for i in items] == [("document", "h49")]
    assert fetch(pair.central, _agency(pair, G12), items[0]["id"]) == data  # untouched
    with pair.central.reader.connect() as conn:
        sealed = json.loads(conn.execute(select(documents.c.attestation)).scalars().first())
    fields = verify_attestation(sealed, trust=pair.pki.trust())
    assert (fields["node"], fields["systemid"], fields["failed"]) == (
        "h49",
        "vxp.h49",
        ["SIGNATURE_MISSING"],
    )
    # the sender's node: delivered and fetched, and the timeline says the signature was not
    # verified
    pair.central_dispatcher.run_peer("h49")
    with pair.province.reader.connect() as conn:
        gid = conn.execute(
            select(documents.c.id).where(documents.c.kind == "document")
        ).scalar_one()
    view = status_view(pair.province, _agency(pair, H49), gid)
    assert view["attested_by"] == "h49"
    assert view["recipients"][0]["transport"] == "fetched"
    assert "intake attested by node h49" in view["recipients"][0]["events"][0]["description"]


def test_an_attested_package_without_a_valid_attestation_is_refused(pair: Pair) -> None:
    """The attestation is what lets an unverified signature through: one that does not verify
    (changed after sealing) refuses the package at the next node; and without one, the
    unsigned package is refused as on the node's own API."""
    _attested_push(pair)
    pair.dispatcher.run_peer("central")
    with pair.province.reader.connect() as conn:
        doc = conn.execute(select(documents).where(documents.c.kind == "document")).one()
        chain = conn.execute(select(hops)).all()
    record = json.loads(chain[0].record)
    sealed = json.loads(doc.attestation)
    sealed["attestation"]["systemid"] = "vxp.other"  # changed after sealing
    forged = RelayItem(
        kind="document", body=bytes(doc.envelope), hops=[record], receipts=[], attestation=sealed
    )
    bare = dataclasses.replace(forged, attestation=None)
    with pair.central.engine.begin() as conn:  # a fresh central: forget the first relay
        conn.execute(update(documents).values(dedup_key=documents.c.dedup_key + "|old"))
    refused = pair.transport.send(Peer("central", "https://x"), [forged, bare])
    assert [(r.ok, r.code) for r in refused] == [
        (False, "RELAY_HOP_CHAIN_BROKEN"),
        (False, "SIGNATURE_MISSING"),
    ]


def test_a_recipient_that_refuses_attested_packages_fails_them_and_the_sender_is_told(
    db_url: str, tmp_path: Path, pki: DevPKI
) -> None:
    """[hub] refuse_attested at the recipient's node: the package is stored (its evidence
    kept) but not delivered to that agency; the sender gets a failure notice with the code."""
    pair = _make_pair(db_url, tmp_path, pki, central_hub={"refuse_attested": [G12]})
    try:
        _refused_then_verified(pair)
    finally:
        pair.province.engine.dispose()
        pair.central.engine.dispose()


def _refused_then_verified(pair: Pair) -> None:
    _attested_push(pair)
    assert pair.dispatcher.run_peer("central") == 1
    assert list_inbox(pair.central, _agency(pair, G12)).items == []
    pair.central_dispatcher.run_peer("h49")
    notices = list_inbox(pair.province, _agency(pair, H49)).items
    assert [n["kind"] for n in notices] == ["notice"]
    notice = json.loads(fetch(pair.province, _agency(pair, H49), notices[0]["id"]))
    fields = verify_notice(notice, trust=pair.pki.trust())
    assert (fields["event"], fields["code"], fields["recipients"]) == (
        "failed",
        "SIGNATURE_UNVERIFIED_REFUSED",
        [G12],
    )
    # a verified document still reaches G12
    pair.push(H49, [G12])
    pair.dispatcher.run_peer("central")
    assert len(list_inbox(pair.central, _agency(pair, G12)).items) == 1


# --- a batch that may have reached the peer is never reported failed -------------------------


class _LosesAnswers(Direct):
    """The peer stores the batch, then its answer is lost (a read timeout after sending)."""

    def send(self, peer: Peer, items: Any) -> Any:
        super().send(peer, items)
        raise PeerUnavailable(f"{peer.name} did not answer in time: ReadTimeout")


def test_a_lost_answer_at_the_last_attempt_is_never_reported_failed(pair: Pair) -> None:
    """Past its age budget, a batch whose answer was lost may be delivered: the row is not
    dead-lettered and the sender gets no failure notice; it is retried, and the peer's
    answer (a repeat's receipt) or its delivered notice settles it."""
    pair.push(H49, [G12])
    pair.clock.advance(6000)  # past max_age (5000 s)
    losing = Dispatcher(
        pair.province, _LosesAnswers(pair.transport.nodes, pair.province), monotonic=pair.ticks
    )
    losing.run_peer("central")
    assert len(list_inbox(pair.central, _agency(pair, G12)).items) == 1  # central has it
    (row,) = _rows(pair.province)
    assert row.state == "accepted" and row.next_attempt_at is not None
    assert row.outcome_unknown and "outcome unknown" in row.last_error
    assert list_inbox(pair.province, _agency(pair, H49)).items == []  # no failure notice
    pair.dispatcher.housekeeping()  # past max_age too: still not failed
    assert _rows(pair.province)[0].state == "accepted"
    # the next attempt gets central's answer: the original receipt, a repeat
    pair.clock.advance(200)
    assert pair.dispatcher.run_peer("central") == 1
    (row,) = _rows(pair.province)
    assert (row.state, row.outcome_unknown) == ("in_transit", False)
    pair.central_dispatcher.run_peer("h49")
    assert _rows(pair.province)[0].state == "delivered"
    assert list_inbox(pair.province, _agency(pair, H49)).items == []
    assert len(list_inbox(pair.central, _agency(pair, G12)).items) == 1  # stored once


def test_a_peer_down_before_anything_was_sent_is_still_dead_lettered(pair: Pair) -> None:
    """The other side of the rule: a connection never made cannot have delivered anything,
    so the budget still ends in a dead letter and a (true) failure notice."""
    pair.transport.down = True
    pair.push(H49, [G12])
    pair.clock.advance(6000)
    pair.dispatcher.run_peer("central")
    (row,) = [r for r in _rows(pair.province) if r.recipient == G12 and r.next_hop == "central"]
    assert (row.state, row.outcome_unknown) == ("failed", False)
    assert [n["kind"] for n in list_inbox(pair.province, _agency(pair, H49)).items] == ["notice"]


def test_a_batch_whose_lease_ran_out_before_sending_is_not_sent(pair: Pair) -> None:
    """A stalled worker wakes after its lease: its claim may have been taken over, so its
    batch must not go out. Meanwhile nothing fails the claimed rows (the claim may have sent
    them, as far as housekeeping knows); given back, they go out with the next round."""
    pair.push(H49, [G12])
    stalled = Dispatcher(pair.province, pair.transport, worker="stalled", monotonic=pair.ticks)
    peer = Peer("central", "https://127.0.0.1:1")
    claimed = stalled._claim(peer, probe=False)
    assert claimed
    pair.clock.advance(6000)  # the lease (120 s) and the age budget run out
    assert pair.dispatcher.housekeeping() == 0
    assert _rows(pair.province)[0].outcome_unknown  # claimed: it may have been sent
    calls = len(pair.transport.calls)
    stalled._prepare(peer, claimed)
    assert stalled._lease_lapsed(peer, claimed)
    assert len(pair.transport.calls) == calls  # nothing sent
    (row,) = _rows(pair.province)
    assert (row.state, row.leased_by, row.outcome_unknown) == ("accepted", None, False)
    assert pair.dispatcher.run_peer("central") == 1
    assert len(list_inbox(pair.central, _agency(pair, G12)).items) == 1


# --- what the recipient's system did, back at the sender's node (progress notices) ---------


def _sender_view(pair: Pair) -> dict[str, Any]:
    view = status_view(pair.province, _agency(pair, H49), _doc_id(pair.province))
    entry: dict[str, Any] = view["recipients"][0]
    return entry


def _transport(entry: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    return [
        (e["code"], e["node"], e["description"])
        for e in entry["events"]
        if e["kind"] == "transport"
    ]


def _waiting(node: Node) -> list[Any]:
    return [r for r in _rows(node) if r.state in ("accepted", "in_transit")]


def test_processing_done_and_fail_reach_the_senders_timeline_in_the_recipients_words(
    pair: Pair,
) -> None:
    """The recipient's system fetches ("processing") then acknowledges ("done") on central:
    the province, where the sender's node is, records both with their time and words, its
    row ends acknowledged, and nothing is left on its way on either node."""
    pair.push(H49, [G12])
    pair.dispatcher.run_peer("central")
    [item] = list_inbox(pair.central, _agency(pair, G12)).items
    fetch(pair.central, _agency(pair, G12), item["id"], note="processing: reading it")
    pair.clock.advance(5)
    acknowledge(pair.central, _agency(pair, G12), item["id"], note="done: filed")
    # one round: the delivered notice and one progress notice with both events
    assert pair.central_dispatcher.run_peer("h49") == 2
    entry = _sender_view(pair)
    assert _transport(entry)[-3:] == [
        ("delivered", "central", None),
        ("fetched", "central", "processing: reading it"),
        ("acknowledged", "central", "done: filed"),
    ]
    at = {e["code"]: e["at"] for e in entry["events"]}
    assert at["fetched"] < at["acknowledged"]  # the recipient's times, not the arrival's
    assert entry["transport"] == "acknowledged"
    [row] = [r for r in _rows(pair.province) if r.recipient == G12]
    assert row.state == "acknowledged"
    # the notices stay the nodes' business: nothing in the sender's inbox
    assert list_inbox(pair.province, _agency(pair, H49)).items == []
    # settled everywhere, and nothing more to say: no further notice
    pair.dispatcher.run_peer("central")
    assert _waiting(pair.province) == [] and _waiting(pair.central) == []
    assert not [r for r in _rows(pair.central) if r.progress_due]
    assert pair.central_dispatcher.run_peer("h49") == 0
    # acknowledging again (the SDK retries) says nothing new
    acknowledge(pair.central, _agency(pair, G12), item["id"], note="done: filed")
    assert pair.central_dispatcher.run_peer("h49") == 0
    assert len(_transport(_sender_view(pair))) == len(_transport(entry))


def test_a_progress_notice_that_overtakes_the_delivered_one_records_delivered_first(
    pair: Pair,
) -> None:
    """The delivered notice is held back (another worker holds its row, as a stalled one
    would); the progress notice arrives first: the sender's timeline still reads delivered,
    then acknowledged, and the late delivered notice changes nothing."""
    pair.push(H49, [G12])
    pair.dispatcher.run_peer("central")
    with pair.central.writing() as conn:
        conn.execute(
            update(deliveries)
            .where(deliveries.c.next_hop == "h49")
            .values(leased_by="stalled", lease_until=pair.clock() + dt.timedelta(hours=1))
        )
    [item] = list_inbox(pair.central, _agency(pair, G12)).items
    acknowledge(pair.central, _agency(pair, G12), item["id"], note="fail: unreadable")
    assert pair.central_dispatcher.run_peer("h49") == 1  # the progress notice alone
    entry = _sender_view(pair)
    assert [c for c, _, _ in _transport(entry)] == [
        "accepted",
        "in_transit",
        "delivered",
        "acknowledged",
    ]
    assert _transport(entry)[-1] == ("acknowledged", "central", "fail: unreadable")
    pair.clock.advance(3601)
    assert pair.central_dispatcher.run_peer("h49") == 1  # the delivered notice, late
    assert _transport(_sender_view(pair)) == _transport(entry)
    [row] = [r for r in _rows(pair.province) if r.recipient == G12]
    assert row.state == "acknowledged"
    assert _waiting(pair.province) == [] and _waiting(pair.central) == []


def test_a_progress_notice_is_node_signed_and_its_events_are_checked(pair: Pair) -> None:
    """The notice central stores is a sealed progress notice an auditor can verify; one whose
    events are not fetched/acknowledged at a time is refused."""
    pair.push(H49, [G12])
    pair.dispatcher.run_peer("central")
    [item] = list_inbox(pair.central, _agency(pair, G12)).items
    acknowledge(pair.central, _agency(pair, G12), item["id"])
    pair.central_dispatcher.run_peer("h49")
    with pair.province.reader.connect() as conn:
        bodies = [
            json.loads(bytes(r.envelope))
            for r in conn.execute(select(documents).where(documents.c.kind == "notice"))
        ]
    [progress] = [b for b in bodies if b["notice"]["event"] == "progress"]
    fields = verify_notice(progress, trust=pair.pki.trust())
    assert fields["node"] == "central" and fields["sender"] == H49
    [entry] = fields["items"]
    assert entry["recipients"] == [G12]
    assert [e[0] for e in entry["events"]] == ["acknowledged"]
    for events_ in ([], [["deleted", entry["events"][0][1], ""]], [["fetched", "yesterday", ""]]):
        forged = json.loads(json.dumps(progress))
        forged["notice"]["items"][0]["events"] = events_
        with pytest.raises(HopChainBroken):
            verify_notice(forged, trust=pair.pki.trust())
    for path in ([["h49", "central"]], [["h49", "central", "yesterday"]], "h49>central"):
        forged = json.loads(json.dumps(progress))
        forged["notice"]["items"][0]["path"] = path
        with pytest.raises(HopChainBroken):
            verify_notice(forged, trust=pair.pki.trust())


def test_a_requeued_package_for_a_recipient_nobody_serves_fails_again_with_a_new_notice(
    pair: Pair,
) -> None:
    """Central serves no G99: the province's delivery fails on central's notice. An operator
    requeues it at the province; central, which decided "no route" itself, decides it again
    and says so with a new notice, so the province's row is failed again, never left in
    transit waiting for an answer that would not come (found by the timelines property test)."""
    g99 = "000.00.00.G99"
    pair.push(H49, [g99])
    pair.dispatcher.run_peer("central")
    pair.central_dispatcher.run_peer("h49")
    [row] = _document_rows(pair.province, g99)
    assert row.state == "failed"
    assert requeue(pair.province, [row.id], actor="admin:test") == [row.id]
    pair.dispatcher.run_peer("central")  # a repeat: central answers with its first receipt
    pair.central_dispatcher.run_peer("h49")  # the new failure notice
    pair.dispatcher.run_peer("central")  # its confirmation
    [row] = _document_rows(pair.province, g99)
    assert row.state == "failed"
    codes = _transport_codes(pair.province, row.document_seq, g99)
    assert codes == ["accepted", "in_transit", "failed", "requeued", "in_transit", "failed"]
    [central_row] = _document_rows(pair.central, g99)
    assert central_row.state == "failed"
    assert _transport_codes(pair.central, central_row.document_seq, g99) == [
        "in_transit",
        "failed",
        "requeued",
        "failed",
    ]
    # the sender's DMS has both failure notices
    notices = [i for i in list_inbox(pair.province, _agency(pair, H49)).items]
    assert [i["kind"] for i in notices] == ["notice", "notice"]
    assert _waiting(pair.province) == [] and _waiting(pair.central) == []


def _document_rows(node: Node, recipient: str) -> list[Any]:
    """``recipient``'s delivery rows of documents (not of the notices routed toward it)."""
    with node.reader.connect() as conn:
        return list(
            conn.execute(
                select(deliveries)
                .join(documents, documents.c.seq == deliveries.c.document_seq)
                .where(and_(documents.c.kind == "document", deliveries.c.recipient == recipient))
            )
        )


def _transport_codes(node: Node, seq: int, recipient: str) -> list[str]:
    with node.reader.connect() as conn:
        return list(
            conn.execute(
                select(events.c.code)
                .where(
                    and_(
                        events.c.document_seq == seq,
                        events.c.recipient == recipient,
                        events.c.kind == "transport",
                    )
                )
                .order_by(events.c.id)
            ).scalars()
        )
