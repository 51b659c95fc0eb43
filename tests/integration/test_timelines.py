"""Every recorded timeline replays: random operations on two real nodes, checked after each.

A Hypothesis state machine drives three real nodes, the central node (hosting G12 and G22), a
province (``h49``, hosting H49) and a district below it (``h49-halong``, hosting Hạ Long), so
the province relays between the others, through what happens to documents: ingest (to a hosted
agency, to another node, to an agency no node serves), relay (the real framing and
``receive_batch``, as in
``test_relay.py``), a peer down or refusing, dead letters, the DMS's fetch and acknowledge, an
admin's requeue, and business statuses 01-16 from the parties. After every step, every timeline
of the documents stored during the run is read back from ``events`` and replayed by
:func:`gateway.node.status.replay`: it must replay without a refusal, and its transport state
must be its delivery row's state. A requeue of a delivery that has not failed must be refused
with ``DELIVERY_NOT_FAILED`` (409), and change nothing.

The nodes are built once per engine and kept across examples (building one costs more than a
whole example); each example checks the timelines of every document, the earlier examples'
too, when it ends. About 10-20 s per engine.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from direct import Direct
from factory import document, signed, status
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import select
from support import DevPKI

from gateway.agency import AgencyCode
from gateway.dev.nodeconfig import write_node_config
from gateway.errors import GatewayError
from gateway.network.dispatcher import Dispatcher
from gateway.node.admin import requeue
from gateway.node.container import Node
from gateway.node.inbox import acknowledge, fetch, list_inbox
from gateway.node.ingest import ingest_document, ingest_status
from gateway.node.status import replay
from gateway.node.timeline import decode
from gateway.settings import load_settings
from gateway.storage import db
from gateway.storage.tables import deliveries, documents, events
from gateway.trust.caller import Identity

H49 = "000.00.00.H49"
HALONG = "000.00.01.H49"  # below H49: reached through h49
G12 = "000.00.00.G12"
G22 = "000.00.00.G22"
#: routed up to central, where no node serves it: a failed delivery and a failure notice back
G99 = "000.00.00.G99"
HOME = {H49: "h49", HALONG: "h49-halong", G12: "central", G22: "central"}
#: (node, neighbour): the links a dispatcher sends on
LINKS = [("h49", "central"), ("h49", "h49-halong"), ("central", "h49"), ("h49-halong", "h49")]
CODES = ["01", "02", "03", "04", "05", "06", "13", "15", "16"]
#: the order a DMS usually reports in (04 and 05 skipped at times by the random codes)
NEXT = ["01", "03", "04", "05", "06"]
#: what a status package may be refused with (anything else is a bug)
STATUS_REFUSALS = {"STATUS_TARGET_UNKNOWN", "STATUS_NOT_ALLOWED", "STATUS_TRANSITION_INVALID"}

DELIVERY = {
    "backoff_initial": 10,
    "backoff_max": 100,
    "backoff_jitter": 1,
    "breaker_threshold": 1000,  # the breaker is test_relay.py's business: keep it closed
    "max_attempts": 2,
    "max_age": 5000,
}


class Clock:
    """The nodes' clock, moved by hand: backoff and age budgets without sleeping."""

    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


def set_mode(link: Direct, mode: str) -> None:
    """``ok``, ``down`` (PeerUnavailable: retried) or ``tamper`` (refused: dead letter)."""
    link.down, link.tamper = mode == "down", mode == "tamper"


@dataclass
class World:
    """Two nodes, their links and dispatchers: built once, used by every example."""

    nodes: dict[str, Node]
    links: dict[str, Direct]
    dispatchers: dict[str, Dispatcher]
    clock: Clock
    pki: DevPKI
    #: documents sent so far: (sender, DocumentId, recipients)
    sent: list[tuple[str, str, list[str]]] = field(default_factory=list)
    #: statuses accepted so far, per (DocumentId, reporter)
    said: dict[tuple[str, str], list[str]] = field(default_factory=dict)


def _node(tmp: Path, pki: DevPKI, url: str, clock: Clock, **sections: Any) -> Node:
    tmp.mkdir(parents=True, exist_ok=True)
    config = write_node_config(
        tmp / "node.toml",
        node=pki.issue(sections["name"], key_type="ec-p256"),
        ca=pki.ca,
        database_url=url,
        extra={"delivery": DELIVERY},
        **sections,
    )
    settings_ = load_settings(config, environ={})
    engine = db.make_engine(settings_)
    db.upgrade(engine)
    return dataclasses.replace(Node.from_settings(settings_, engine), clock=clock)


@pytest.fixture
def world(db_url: str, tmp_path: Path, pki: DevPKI) -> Iterator[World]:
    """The province (the relay in the middle) on ``db_url`` (each engine), the others on
    SQLite."""
    clock = Clock()
    province = _node(
        tmp_path / "h49",
        pki,
        db_url,
        clock,
        name="h49",
        agencies=[H49],
        tier="province",
        parent={"name": "central", "url": "https://127.0.0.1:1"},
        children=[{"name": "h49-halong", "url": "https://127.0.0.1:3", "serves": [HALONG]}],
    )
    district = _node(
        tmp_path / "h49-halong",
        pki,
        f"sqlite:///{tmp_path / 'h49-halong.db'}",
        clock,
        name="h49-halong",
        agencies=[HALONG],
        tier="district",
        parent={"name": "h49", "url": "https://127.0.0.1:2"},
    )
    central = _node(
        tmp_path / "central",
        pki,
        f"sqlite:///{tmp_path / 'central.db'}",
        clock,
        name="central",
        agencies=[G12, G22],
        tier="central",
        children=[{"name": "h49", "url": "https://127.0.0.1:2", "serves": [H49]}],
    )
    nodes = {"h49": province, "central": central, "h49-halong": district}
    links = {name: Direct(nodes, node) for name, node in nodes.items()}
    dispatchers = {name: Dispatcher(node, links[name]) for name, node in nodes.items()}
    yield World(nodes=nodes, links=links, dispatchers=dispatchers, clock=clock, pki=pki)
    for node in nodes.values():
        node.engine.dispose()


def _agency(world: World, code: str) -> Identity:
    return Identity(
        kind="agency", agency=AgencyCode.parse(code), certificate=world.pki.key(code).certificate
    )


def check_timelines(node: Node, *, after: int = 0) -> int:
    """Replay every timeline of the documents after seq ``after``; check each against its
    delivery row. Returns how many timelines were checked."""
    with node.reader.connect() as conn:
        senders: dict[int, str] = {
            r.seq: r.sender
            for r in conn.execute(
                select(documents.c.seq, documents.c.sender).where(documents.c.seq > after)
            )
        }
        stored: dict[tuple[int, str], list[tuple[str, str, str, str]]] = {}
        for r in conn.execute(
            select(
                events.c.document_seq,
                events.c.recipient,
                events.c.kind,
                events.c.code,
                events.c.node,
                events.c.actor,
            )
            .where(events.c.document_seq > after)
            .order_by(events.c.id)
        ):
            stored.setdefault((r.document_seq, r.recipient), []).append(
                (r.kind, r.code, r.node, r.actor)
            )
        rows = {
            (r.document_seq, r.recipient): r.state
            for r in conn.execute(
                select(deliveries.c.document_seq, deliveries.c.recipient, deliveries.c.state).where(
                    deliveries.c.document_seq > after
                )
            )
        }
    for (seq, recipient), recorded in stored.items():
        # raises the rules' refusal if the stored timeline does not replay; not ``legacy``: a
        # state written straight after "failed" (the old requeue) must fail this test
        timeline = replay(senders[seq], recipient, decode(recorded, legacy=False))
        assert (seq, recipient) in rows, f"{node.name}: events without a delivery row {seq}"
        assert timeline.transport.value == rows[(seq, recipient)], (
            node.name,
            seq,
            recipient,
            recorded,
            rows[(seq, recipient)],
        )
    assert set(rows) <= set(stored), f"{node.name}: a delivery row without its timeline"
    return len(stored)


def _max_seq(node: Node) -> int:
    with node.reader.connect() as conn:
        last = conn.execute(select(documents.c.seq).order_by(documents.c.seq.desc()).limit(1))
        return int(last.scalar() or 0)


def _deliveries(node: Node) -> list[Any]:
    with node.reader.connect() as conn:
        return list(
            conn.execute(
                select(deliveries.c.id, deliveries.c.state, deliveries.c.next_hop).order_by(
                    deliveries.c.id
                )
            )
        )


NODES = st.sampled_from(["h49", "central", "h49-halong"])
AGENCIES = st.sampled_from([H49, HALONG, G12, G22])


def test_every_recorded_timeline_replays(world: World) -> None:
    class Timelines(RuleBasedStateMachine):
        """Random operations on the two nodes; the timelines are checked after each."""

        def __init__(self) -> None:
            super().__init__()
            self.since = {name: _max_seq(node) for name, node in world.nodes.items()}
            self.counts: dict[str, int] = {}

        @initialize()
        def links_up(self) -> None:
            for link in world.links.values():
                set_mode(link, "ok")

        @rule(
            sender=AGENCIES,
            to=st.lists(st.sampled_from([H49, HALONG, G12, G22, G99]), min_size=1, max_size=3),
        )
        def ingest(self, sender: str, to: list[str]) -> None:
            recipients = [r for r in dict.fromkeys(to) if r != sender]
            if not recipients:
                return
            data = signed(document(sender, recipients), world.pki.key(sender))
            try:
                ingest_document(world.nodes[HOME[sender]], data, caller=_agency(world, sender))
            except GatewayError as exc:
                # central is the root: an agency no node serves is refused at its ingest
                assert exc.code == "REQUEST_RECIPIENT_UNREACHABLE", exc.code
                assert HOME[sender] == "central" and G99 in recipients
                return
            document_id = _document_id(data)
            world.sent.append((sender, document_id, recipients))
            self._count("ingest")

        @rule(
            link=st.sampled_from(LINKS), mode=st.sampled_from(["ok", "ok", "ok", "down", "tamper"])
        )
        def relay(self, link: tuple[str, str], mode: str) -> None:
            """A node's dispatcher sends what is due to a neighbour (relay receive there)."""
            node, peer = link
            set_mode(world.links[node], mode)
            world.dispatchers[node].run_peer(peer)
            set_mode(world.links[node], "ok")
            self._count(f"relay_{mode}")

        @rule()
        def settle(self) -> None:
            """Every link up and every dispatcher run, twice: what can arrive arrives (a
            document, its delivered notice, statuses), so that statuses find their target."""
            for _ in range(2):
                for node, peer in LINKS:
                    world.dispatchers[node].run_peer(peer)
            self._count("settle")

        @rule(seconds=st.sampled_from([200, 6000]))
        def time_passes(self, seconds: int) -> None:
            """Backoffs run out (200 s); past the age budget, housekeeping dead-letters."""
            world.clock.now += dt.timedelta(seconds=seconds)
            for dispatcher in world.dispatchers.values():
                dispatcher.housekeeping()

        @rule(agency=AGENCIES, pick=st.integers(0, 50), ack=st.booleans())
        def dms(self, agency: str, pick: int, ack: bool) -> None:
            """The agency's DMS fetches (and maybe acknowledges) one package of its inbox."""
            node, caller = world.nodes[HOME[agency]], _agency(world, agency)
            items = list_inbox(node, caller, limit=500).items
            if not items:
                return
            item = items[pick % len(items)]
            fetch(node, caller, item["id"])
            if ack:
                acknowledge(node, caller, item["id"])
            self._count("ack" if ack else "fetch")

        @rule(node=NODES, pick=st.integers(0, 200))
        def admin_requeue(self, node: str, pick: int) -> None:
            """An admin requeues one delivery: a failed one goes again, any other is refused."""
            rows = _deliveries(world.nodes[node])
            if not rows:
                return
            row = rows[pick % len(rows)]
            try:
                done = requeue(world.nodes[node], [row.id], actor="admin:property")
            except GatewayError as exc:
                if row.state == "failed":
                    # a recipient no node serves cannot be routed afresh either
                    assert (exc.code, row.next_hop) == (
                        "REQUEST_RECIPIENT_UNREACHABLE",
                        "unroutable",
                    )
                    return
                assert (exc.code, exc.http_status) == ("DELIVERY_NOT_FAILED", 409), exc.code
                after = {r.id: r.state for r in _deliveries(world.nodes[node])}
                assert after[row.id] == row.state  # a refused requeue changes nothing
                self._count("requeue_refused")
                return
            assert row.state == "failed", row
            assert done == [row.id]
            self._count("requeue")

        @rule(
            pick=st.integers(0, 200),
            code=st.sampled_from(CODES),
            which=st.integers(0, 2),
            follow=st.booleans(),
        )
        def business_status(self, pick: int, code: str, which: int, follow: bool) -> None:
            """A party reports a status about a document sent during the run: any code, or
            (``follow``) the next one a DMS would send, so that long timelines are reached."""
            if not world.sent:
                return
            sender, document_id, recipients = world.sent[pick % len(world.sent)]
            hosted = [r for r in recipients if r in HOME]
            if not hosted:
                return
            recipient = hosted[which % len(hosted)]
            if follow:
                done = world.said.get((document_id, recipient), [])
                code = next((c for c in NEXT if c not in done), "13")
            reporter = sender if code == "13" else recipient
            data = signed(
                status(reporter, sender=sender, document_id=document_id, code=code),
                world.pki.key(reporter),
            )
            try:
                ingest_status(world.nodes[HOME[reporter]], data, caller=_agency(world, reporter))
            except GatewayError as exc:
                assert exc.code in STATUS_REFUSALS, exc.code
                self._count(f"status_refused_{exc.code}")
                return
            world.said.setdefault((document_id, reporter), []).append(code)
            self._count("status")

        @invariant()
        def timelines_replay(self) -> None:
            for name, node in world.nodes.items():
                check_timelines(node, after=self.since[name])

        def teardown(self) -> None:
            for node in world.nodes.values():
                check_timelines(node)
            # the network goes quiet: every link up, every backoff over, everything due sent;
            # then nothing is left on its way anywhere (documents, statuses and notices all
            # confirmed back, or failed with their sender told)
            for link in world.links.values():
                set_mode(link, "ok")
            world.clock.now += dt.timedelta(seconds=200)
            _settle(world)
            # a notice dead-lettered on the way (its link tampered with) leaves the rows it was
            # about in transit upstream: the operator requeues it, as docs/network.md says
            for node in world.nodes.values():
                failed = _failed_notices(node)
                if failed:
                    requeue(node, failed, actor="admin:property")
                    self._count("notice_requeued")
            _settle(world)
            for node in world.nodes.values():
                assert _on_the_way(node) == [], _explain(world, node)
                check_timelines(node)
            # what every recipient's DMS did (fetched, acknowledged) is known at its sender's
            # node too, carried back by progress notices, and nothing is still owed
            assert _progress_not_back(world) == []
            for name, count in self.counts.items():
                TOTALS[name] = TOTALS.get(name, 0) + count

        def _count(self, name: str) -> None:
            self.counts[name] = self.counts.get(name, 0) + 1

    TOTALS: dict[str, int] = {}
    run_state_machine_as_test(
        Timelines,
        settings=settings(
            max_examples=50,
            stateful_step_count=25,
            deadline=None,
            # the same runs every time: the coverage check below must not depend on luck
            derandomize=True,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
    checked = {name: check_timelines(node) for name, node in world.nodes.items()}
    print(f"timelines: {checked} operations: {dict(sorted(TOTALS.items()))}")
    # the run reached what it is about (a generator that never fails or requeues tests little)
    for needed in ("ingest", "relay_ok", "requeue", "requeue_refused", "status", "ack"):
        assert TOTALS.get(needed, 0) > 0, (needed, TOTALS)


def _document_id(data: bytes) -> str:
    from lxml import etree

    root = etree.fromstring(data)
    found = root.find(".//{*}MessageHeader/{*}DocumentId")
    assert found is not None and found.text
    return str(found.text)


def _settle(world: World, rounds: int = 4) -> None:
    for _ in range(rounds):
        for node, peer in LINKS:
            world.dispatchers[node].run_peer(peer)


def _rows_of(node: Node, seq: int) -> list[Any]:
    with node.reader.connect() as conn:
        return list(
            conn.execute(
                select(
                    deliveries.c.recipient,
                    deliveries.c.state,
                    deliveries.c.next_attempt_at,
                    deliveries.c.leased_by,
                ).where(deliveries.c.document_seq == seq)
            )
        )


def _seq(node: Node, **where: Any) -> int:
    with node.reader.connect() as conn:
        query = select(documents.c.seq)
        for column, value in where.items():
            query = query.where(documents.c[column] == value)
        found = list(conn.execute(query).scalars())
    assert len(found) == 1, (node.name, where, found)
    return int(found[0])


def _explain(world: World, node: Node) -> str:
    """What every node knows of the packages ``node`` still has on their way (for a failure)."""
    lines = []
    for row in _on_the_way(node):
        with node.reader.connect() as conn:
            doc = conn.execute(
                select(documents.c.seq, documents.c.sha256)
                .join(deliveries, deliveries.c.document_seq == documents.c.seq)
                .where(deliveries.c.id == row.id)
            ).one()
        lines.append(f"{node.name}: {tuple(row)}")
        for name, other in world.nodes.items():
            with other.reader.connect() as conn:
                for seq in conn.execute(
                    select(documents.c.seq).where(documents.c.sha256 == doc.sha256)
                ).scalars():
                    for r in _rows_of(other, seq):
                        codes = [
                            (e.code, e.node, e.actor)
                            for e in conn.execute(
                                select(events.c.code, events.c.node, events.c.actor)
                                .where(
                                    (events.c.document_seq == seq)
                                    & (events.c.recipient == r.recipient)
                                )
                                .order_by(events.c.id)
                            )
                        ]
                        lines.append(f"  {name} seq {seq} {r.recipient} {r.state}: {codes}")
    return "\n".join(lines)


def _failed_notices(node: Node) -> list[int]:
    """Delivery rows of notices this node gave up on (an operator's to requeue)."""
    with node.reader.connect() as conn:
        return list(
            conn.execute(
                select(deliveries.c.id)
                .join(documents, documents.c.seq == deliveries.c.document_seq)
                .where(
                    (documents.c.kind == "notice")
                    & (deliveries.c.state == "failed")
                    & (deliveries.c.next_hop != "unroutable")
                )
            ).scalars()
        )


_AFTER = {"delivered": 0, "fetched": 1, "acknowledged": 2}


def _progress_not_back(world: World) -> list[tuple[str, str, str, str, str]]:
    """(DocumentId, recipient, state at the recipient's node, state at the sender's, rows
    still marked) for every document whose recipient's progress its sender's node lacks."""
    states: dict[str, dict[tuple[str, str, str], tuple[str, bool]]] = {}
    for name, node in world.nodes.items():
        with node.reader.connect() as conn:
            states[name] = {
                (r.sender, r.document_id, r.recipient): (r.state, r.progress_due)
                for r in conn.execute(
                    select(
                        documents.c.sender,
                        documents.c.document_id,
                        deliveries.c.recipient,
                        deliveries.c.state,
                        deliveries.c.progress_due,
                    )
                    .join(documents, documents.c.seq == deliveries.c.document_seq)
                    .where(documents.c.kind != "notice")
                )
            }
    wrong = []
    for name, rows in states.items():
        for (sender, document_id, recipient), (there, due) in rows.items():
            if due:  # owed anywhere, after the network went quiet
                wrong.append((document_id, recipient, there, name, "due"))
            if HOME.get(recipient) != name or HOME[sender] == name:
                continue  # only the recipient's node's row, of a package from elsewhere
            here, _ = states[HOME[sender]].get((sender, document_id, recipient), ("-", False))
            if there in ("fetched", "acknowledged") and _AFTER.get(here, -1) < _AFTER[there]:
                wrong.append((document_id, recipient, there, here, ""))
    return wrong


def _on_the_way(node: Node) -> list[Any]:
    """Rows this node still has to see through: waiting, in transit, or leased."""
    with node.reader.connect() as conn:
        return list(
            conn.execute(
                select(
                    deliveries.c.id,
                    documents.c.kind,
                    documents.c.subject,
                    deliveries.c.recipient,
                    deliveries.c.state,
                )
                .join(documents, documents.c.seq == deliveries.c.document_seq)
                .where(
                    deliveries.c.state.in_(["accepted", "in_transit"])
                    | deliveries.c.next_attempt_at.is_not(None)
                    | deliveries.c.leased_by.is_not(None)
                )
            )
        )


def _transport_codes(node: Node, seq: int, recipient: str) -> list[str]:
    with node.reader.connect() as conn:
        return list(
            conn.execute(
                select(events.c.code)
                .where(
                    (events.c.document_seq == seq)
                    & (events.c.recipient == recipient)
                    & (events.c.kind == "transport")
                )
                .order_by(events.c.id)
            ).scalars()
        )


def test_statuses_and_notices_are_confirmed_back_end_to_end(world: World) -> None:
    """Nothing a node sent stays "in transit" once the network is quiet: a status package
    shows ``delivered`` on its reporter's node and at the relay, a failure notice shows
    ``delivered`` back at the node that gave up, and a delivered notice is settled at each
    node by the next one's receipt (its last node handles it)."""
    halong, province, central = (world.nodes[n] for n in ("h49-halong", "h49", "central"))
    # Hạ Long sends to G12 (delivered at central) and to G99 (no node serves it: central
    # gives up, and its failure notice comes back through the province)
    data = signed(document(HALONG, [G12, G99]), world.pki.key(HALONG))
    ingest_document(halong, data, caller=_agency(world, HALONG))
    document_id = _document_id(data)
    _settle(world)
    # G12 (at central) reports "received" to Hạ Long: the status crosses the province
    report = signed(
        status(G12, sender=HALONG, document_id=document_id, code="01"), world.pki.key(G12)
    )
    ingest_status(central, report, caller=_agency(world, G12))
    _settle(world)

    for node in world.nodes.values():
        assert _on_the_way(node) == [], node.name
        check_timelines(node)

    # the status: delivered at Hạ Long's node, confirmed on the reporter's node and the relay
    status_seq = _seq(central, kind="status", sender=G12)
    assert [(r.recipient, r.state) for r in _rows_of(central, status_seq)] == [
        (HALONG, "delivered")
    ]
    assert _transport_codes(central, status_seq, HALONG)[-2:] == ["in_transit", "delivered"]
    relayed = _seq(province, kind="status", sender=G12)
    assert [r.state for r in _rows_of(province, relayed)] == ["delivered"]

    # the failure notice: in Hạ Long's inbox, and confirmed back at central, which gave it
    notice_here = _seq(
        halong, kind="notice", subject="delivery failed: REQUEST_RECIPIENT_UNREACHABLE"
    )
    assert [r.state for r in _rows_of(halong, notice_here)] == ["delivered"]
    items = list_inbox(halong, _agency(world, HALONG), limit=50).items
    assert [i["kind"] for i in items].count("notice") == 1
    given = _seq(central, kind="notice", subject="delivery failed: REQUEST_RECIPIENT_UNREACHABLE")
    assert [r.state for r in _rows_of(central, given)] == ["delivered"]
    assert _transport_codes(central, given, HALONG)[-1] == "delivered"
    # every delivered notice ended handled (acknowledged) where it was for, nowhere waiting
    for node in world.nodes.values():
        with node.reader.connect() as conn:
            states = set(
                conn.execute(
                    select(deliveries.c.state)
                    .join(documents, documents.c.seq == deliveries.c.document_seq)
                    .where(documents.c.subject == "delivered")
                ).scalars()
            )
        assert states <= {"delivered", "acknowledged"}, (node.name, states)
