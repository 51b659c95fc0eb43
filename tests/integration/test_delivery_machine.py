"""A document reaches its recipient once, and its sender is told the truth, whatever the order.

A Hypothesis state machine drives the delivery rows of a small network, in one process, on real
SQLite databases: the province ``h49`` (hosting the sender agency H49) sends to its parent
``central`` (hosting G12 and G22; nobody serves G99, so central fails that recipient and sends
the sender a failure notice). The real code does everything; the machine only chooses the
order, as the field does by timing: two dispatcher workers of the province (two processes)
claim, send and record batches step by step (``Dispatcher._claim``, ``_prepare``, the
transport, ``_record`` or ``_failed``, as the race tests of ``test_relay.py`` do) or in whole
rounds (``run_peer``); central's answer to a batch comes back at once, late (after central's
delivered notice) or never (lost after central stored the batch); central is down; central's
notices (delivered, failed) reach the province on time, early, twice or not at all; an admin
requeues dead letters; a worker restarts with its leases outstanding; time passes beyond the
backoffs, the lease and the age budget, and housekeeping runs.

After every step both databases are read back and must show what docs/network.md ("The
outbox") promises:

- a delivery the province knows was delivered (its timeline says ``delivered``) stays
  ``delivered``; one central has given its receipt for is never waiting or failed again; no row
  out of the dispatchers' hands (delivered, failed, ...) keeps a lease or a next attempt;
- while a worker's lease runs, only news (central's notices) takes its rows from it;
- no worker claims a delivery the province knew was delivered or had failed (only a batch
  claimed before may still go out);
- central stores each package once (one document, one ``relay_in``, one ``deliver``);
- the sender agency gets at most one failure notice per (document, recipient) and try (a try
  ends with an admin's requeue), and none that is false when it is made: none about a delivery
  the province knew was done, none after central's receipt, none from central about a
  recipient it delivered to, and none for a package central has since delivered;
- every timeline of both nodes replays through the rules and ends in its row's state
  (``test_timelines.check_timelines``).

What the province cannot know is allowed, and only that, as named in :data:`KNOWN_GAPS`;
without a name there, the machine reports that case when it meets it (the lost answer within a
few hundred examples, the stale batch more rarely).

Each example starts from copies of two migrated, empty databases (built once per module).
75 examples of up to 30 steps: about 20 s on two idle cores.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest
from direct import Direct
from factory import document, signed
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from sqlalchemy import func, select
from support import DevPKI
from test_relay import Clock, Ticks, _node
from test_timelines import check_timelines

from gateway.agency import AgencyCode
from gateway.errors import DeliveryNotFailed, PeerUnavailable, RecipientUnreachable
from gateway.network.dispatcher import Dispatcher
from gateway.network.notices import mark_delivered_many
from gateway.network.outbox import UNROUTABLE
from gateway.network.routing import Peer
from gateway.network.wire import ItemResult, RelayItem
from gateway.node.admin import requeue
from gateway.node.container import Node
from gateway.node.dedup import package_key
from gateway.node.ingest import ingest_document
from gateway.node.transitions import AT_RECIPIENT, WAITING_STATES
from gateway.settings import Settings
from gateway.storage import db
from gateway.storage.tables import audit_log, deliveries, documents, events
from gateway.trust.caller import Identity

H49 = "000.00.00.H49"  # the sender agency, at the province
G12 = "000.00.00.G12"  # recipients at central
G22 = "000.00.00.G22"
G99 = "000.00.00.G99"  # routed up to central, where no node serves it
PROVINCE, CENTRAL = "h49", "central"

LEASE = 30
MAX_AGE = 600
DELIVERY = {
    "backoff_initial": 5,
    "backoff_max": 20,
    "backoff_jitter": 1,
    "max_attempts": 3,
    "max_age": MAX_AGE,
    "lease": LEASE,
    "breaker_threshold": 3,
    "breaker_probe_interval": 1.0,
}

#: What the province cannot know, allowed narrowly (see ``_judge_notices``). Empty: the two
#: gaps this machine found are closed, and naming one again here lets the machine show it:
#:
#: ``lost-answer``: every answer of central about a row was lost (a timeout after central had
#: stored the batch) when the row reached its last attempt or its age budget; the province
#: dead-lettered it and told the sender it failed, though central had it. Closed: a batch that
#: may have reached the peer leaves its rows ``outcome_unknown``, never dead-lettered.
#:
#: ``stale-batch``: a batch still out when its rows were dead-lettered (its worker's lease ran
#: out) was sent after all. Closed: a worker whose lease ran out before sending sends nothing.
KNOWN_GAPS: frozenset[str] = frozenset()

#: (dedup key, recipient): one delivery, named the same way on both nodes
Key = tuple[str, str]
T = TypeVar("T")


@dataclass
class Link(Direct):
    """:class:`Direct`, plus ``lose``: the peer stores the batch but its answer never comes
    back (a timeout after the request went out). Each item handed over is noted in
    ``carried``: (dedup key, recipients)."""

    lose: bool = False
    carried: list[tuple[str, list[str]]] = field(default_factory=list)

    def send(self, peer: Peer, items: Sequence[RelayItem]) -> list[ItemResult]:
        results = super().send(peer, items)  # a peer that is down raises before it stores
        for item in items:
            hop = item.hops[-1]["hop"]
            key = package_key(hop["sender"], hop["document_id"], hop["sha256"])
            self.carried.append((key, list(hop["recipients"])))
        if self.lose:
            raise PeerUnavailable(f"{peer.name} did not answer in time (it stored the batch)")
        return results

    def mode(self, mode: str) -> None:
        """``ok``, ``down`` (nothing reaches the peer) or ``lost`` (its answer is lost)."""
        self.down, self.lose = mode == "down", mode == "lost"


@dataclass
class Network:
    """The PKI and two migrated, empty databases, built once; each example copies them."""

    pki: DevPKI
    root: Path
    settings: dict[str, Settings]

    @classmethod
    def build(cls, pki: DevPKI, root: Path) -> Network:
        """Write both nodes' settings and migrate their databases (the slow part, once)."""
        built = [
            _node(
                root / PROVINCE,
                pki,
                f"sqlite:///{root / PROVINCE}.db",
                Clock(),
                name=PROVINCE,
                agencies=[H49],
                tier="province",
                parent={"name": CENTRAL, "url": "https://127.0.0.1:1"},
                extra={"delivery": DELIVERY},
            ),
            _node(
                root / CENTRAL,
                pki,
                f"sqlite:///{root / CENTRAL}.db",
                Clock(),
                name=CENTRAL,
                agencies=[G12, G22],
                tier="central",
                children=[{"name": PROVINCE, "url": "https://127.0.0.1:2", "serves": [H49]}],
                extra={"delivery": DELIVERY},
            ),
        ]
        for node in built:
            node.engine.dispose()
            shutil.copyfile(root / f"{node.name}.db", root / f"{node.name}.template")
        return cls(pki=pki, root=root, settings={node.name: node.settings for node in built})

    def fresh(self, name: str, clock: Clock) -> Node:
        """Node ``name`` on an empty database: always the same file, as the process keeps the
        descriptor of its writer lock (``db.sqlite_writer_lock``) per path."""
        path = self.root / f"{name}.db"
        for stale in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            stale.unlink(missing_ok=True)
        shutil.copyfile(self.root / f"{name}.template", path)
        settings_ = self.settings[name]
        return replace(Node.from_settings(settings_, db.make_engine(settings_)), clock=clock)


@pytest.fixture(autouse=True, scope="module")
def _network(pki: DevPKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The machine's network, made with the session's PKI."""
    DeliveryMachine.network = Network.build(pki, tmp_path_factory.mktemp("delivery-machine"))
    yield
    DeliveryMachine.network = None


@dataclass
class Batch:
    """Rows a worker claimed and has not recorded yet; with ``results``, central has stored
    them and its answer is on the way back."""

    worker: str
    claimed: list[Any]
    #: the step it was claimed in
    step: int
    #: when its lease runs out
    lease_until: dt.datetime
    results: list[ItemResult] | None = None
    #: a restart freed every lease (``release_leases``)
    released: bool = False
    #: ids of the rows its worker still holds
    held: set[int] = field(default_factory=set)


@dataclass(frozen=True)
class View:
    """Both databases as a step left them, read once for all the invariants."""

    #: the province's delivery rows of documents
    rows: dict[Key, Any] = field(default_factory=dict)
    #: all the province's delivery rows (notices too), by id
    by_id: dict[int, Any] = field(default_factory=dict)
    #: (node, row) of either node: out of the dispatchers' hands, yet leased or waiting
    stuck: list[tuple[str, Any]] = field(default_factory=list)
    #: the province's timeline says delivered
    delivered: frozenset[Key] = frozenset()
    #: the province's timeline shows central's receipt (in_transit at central)
    receipted: frozenset[Key] = frozenset()
    #: the province's row is failed
    failed: frozenset[Key] = frozenset()
    #: admins' requeues at the province (each starts a new try)
    requeues: dict[Key, int] = field(default_factory=dict)
    #: central has a delivery row for it (it stored the package, whatever came of it)
    at_central: frozenset[Key] = frozenset()
    #: central's row is delivered (fetched, acknowledged): in the recipient's inbox
    stored: frozenset[Key] = frozenset()
    #: central's documents (gateway id, dedup key), and its relay_in and deliver audit
    #: entries per (event, gateway id)
    central_documents: list[tuple[str, str]] = field(default_factory=list)
    central_audit: dict[tuple[str, str], int] = field(default_factory=dict)
    #: the province's notices stored after the ones already judged: (seq, notice)
    notices: list[tuple[int, dict[str, Any]]] = field(default_factory=list)


def read(province: Node, central: Node, *, notices_after: int) -> View:
    """What both databases say now."""
    with province.reader.connect() as conn:
        keys = _keys(conn)
        rows = conn.execute(select(deliveries)).all()
        timeline = conn.execute(
            select(
                events.c.document_seq,
                events.c.recipient,
                events.c.code,
                events.c.node,
                events.c.actor,
            )
        ).all()
        notices = conn.execute(
            select(documents.c.seq, documents.c.envelope)
            .where((documents.c.kind == "notice") & (documents.c.seq > notices_after))
            .order_by(documents.c.seq)
        ).all()
    with central.reader.connect() as conn:
        central_keys = _keys(conn)
        central_rows = conn.execute(select(deliveries)).all()
        central_documents = conn.execute(
            select(documents.c.id, documents.c.dedup_key).where(documents.c.kind == "document")
        ).all()
        central_audit = conn.execute(
            select(audit_log.c.event, audit_log.c.subject, func.count())
            .where(audit_log.c.event.in_(["relay_in", "deliver"]))
            .group_by(audit_log.c.event, audit_log.c.subject)
        ).all()
    mine = [(keys[e.document_seq], e) for e in timeline if e.document_seq in keys]
    return View(
        rows={(keys[r.document_seq], r.recipient): r for r in rows if r.document_seq in keys},
        by_id={r.id: r for r in rows},
        stuck=[
            (node, r)
            for node, node_rows in ((PROVINCE, rows), (CENTRAL, central_rows))
            for r in node_rows
            if r.state not in WAITING_STATES
            and (r.leased_by, r.lease_until, r.next_attempt_at) != (None, None, None)
        ],
        delivered=frozenset((k, e.recipient) for k, e in mine if e.code == "delivered"),
        receipted=frozenset(
            (k, e.recipient) for k, e in mine if (e.code, e.node) == ("in_transit", CENTRAL)
        ),
        failed=frozenset(
            (keys[r.document_seq], r.recipient)
            for r in rows
            if r.document_seq in keys and r.state == "failed"
        ),
        requeues=_count(
            (k, e.recipient)
            for k, e in mine
            if e.code == "requeued" and e.actor.startswith("admin:")
        ),
        at_central=frozenset(
            (central_keys[r.document_seq], r.recipient)
            for r in central_rows
            if r.document_seq in central_keys
        ),
        stored=frozenset(
            (central_keys[r.document_seq], r.recipient)
            for r in central_rows
            if r.document_seq in central_keys and r.state in AT_RECIPIENT
        ),
        central_documents=[(gid, key) for gid, key in central_documents],
        central_audit={(event, subject): count for event, subject, count in central_audit},
        notices=[(seq, json.loads(bytes(body))["notice"]) for seq, body in notices],
    )


def _keys(conn: Any) -> dict[int, str]:
    """Each document's dedup key (the same at both nodes), by its seq here."""
    return {
        r.seq: r.dedup_key
        for r in conn.execute(
            select(documents.c.seq, documents.c.dedup_key).where(documents.c.kind == "document")
        )
    }


def _count(keys: Iterable[Key]) -> dict[Key, int]:
    counts: dict[Key, int] = {}
    for key in keys:
        counts[key] = counts.get(key, 0) + 1
    return counts


RECIPIENTS = st.sampled_from([(G12,), (G22,), (G12, G22), (G99,), (G12, G99)])
WORKERS = st.sampled_from(["w1", "w2"])
MODES = st.sampled_from(["ok", "ok", "ok", "down", "lost"])
PICK = st.integers(0, 7)
NODES = st.sampled_from([PROVINCE, CENTRAL])


class DeliveryMachine(RuleBasedStateMachine):
    """The province sends to central, in any order the field can produce; checked each step."""

    network: ClassVar[Network | None] = None

    def __init__(self) -> None:
        super().__init__()
        network = self.network
        assert network is not None, "made by the module's _network fixture"
        self.pki = network.pki
        self.clock, self.ticks = Clock(), Ticks()
        self.a = network.fresh(PROVINCE, self.clock)
        self.b = network.fresh(CENTRAL, self.clock)
        nodes = {PROVINCE: self.a, CENTRAL: self.b}
        self.link, self.back = Link(nodes, self.a), Link(nodes, self.b)
        assert self.a.directory is not None
        peer = self.a.directory.peer(CENTRAL)
        assert peer is not None
        self.peer = peer
        self.workers = {name: self._dispatcher(name) for name in ("w1", "w2")}
        self.central = Dispatcher(self.b, self.back, worker="c1", monotonic=self.ticks)
        self.sender = Identity(
            kind="agency", agency=AgencyCode.parse(H49), certificate=self.pki.key(H49).certificate
        )
        self.batches: list[Batch] = []
        self.restarts = 0
        #: the step the rules are in: a step ends with each check of the invariants
        self.step = 0
        #: the databases when the previous step ended
        self.seen = View()
        #: the view the invariants of this check share, and which of them have read it
        self._view: View | None = None
        self._readers: set[str] = set()
        #: (key, recipient) -> the step at whose end the province first knew it delivered
        self.delivered_at: dict[Key, int] = {}
        #: (key, recipient) -> the step since whose end its row has been failed
        self.failed_at: dict[Key, int] = {}
        #: items handed to central and not judged yet: (step claimed, key, recipients)
        self.sends: list[tuple[int, str, list[str]]] = []
        #: deliveries a batch sent after they had failed (the batch was out already)
        self.sent_failed: set[Key] = set()
        #: (key, recipient) -> who told the sender agency it failed, in this try
        self.told: dict[Key, list[str]] = {}
        #: (key, recipient) -> admins' requeues so far
        self.tries: dict[Key, int] = {}
        #: the last notice judged (its seq at the province)
        self.notices_after = 0

    def _dispatcher(self, name: str) -> Dispatcher:
        return Dispatcher(self.a, self.link, worker=name, monotonic=self.ticks)

    def teardown(self) -> None:
        for node in (self.a, self.b):
            node.engine.dispose()

    # -- the sender -----------------------------------------------------------------------

    @initialize(first=st.lists(RECIPIENTS, min_size=1, max_size=3))
    def documents_waiting(self, first: list[tuple[str, ...]]) -> None:
        """The sender agency's first documents are waiting at the province."""
        for to in first:
            self.ingest(to)

    @rule(to=RECIPIENTS)
    def ingest(self, to: tuple[str, ...]) -> None:
        """The sender agency hands the province a document for recipients beyond central."""
        data = signed(document(H49, list(to)), self.pki.key(H49))
        ingest_document(self.a, data, caller=self.sender)

    # -- the province's workers, step by step ---------------------------------------------

    def _idle(self, worker: str) -> bool:
        return all(b.worker != self.workers[worker].worker for b in self.batches)

    def _batch(self, pick: int, *, answered: bool) -> Batch:
        batches = [b for b in self.batches if (b.results is not None) == answered]
        return batches[pick % len(batches)]

    def _owner(self, batch: Batch) -> Dispatcher:
        return next(d for d in self.workers.values() if d.worker == batch.worker)

    def _carrying(self, claimed: int, send: Callable[[], T]) -> T:
        """Run ``send``, noting the items it hands to central as claimed in step ``claimed``."""
        before = len(self.link.carried)
        try:
            return send()
        finally:
            self.sends.extend((claimed, k, r) for k, r in self.link.carried[before:])

    @rule(worker=WORKERS)
    def claim(self, worker: str) -> None:
        """A worker claims the rows due (a lease); one batch at a time per worker."""
        self._claim(worker)

    def _claim(self, worker: str) -> Batch | None:
        if not self._idle(worker):
            return None
        claimed = self.workers[worker]._claim(self.peer, probe=False)
        if not claimed:
            return None
        lease_until = self.clock.now + dt.timedelta(seconds=LEASE)
        batch = Batch(self.workers[worker].worker, claimed, self.step, lease_until)
        batch.held = {r.id for c in claimed for r in c.rows}
        self.batches.append(batch)
        return batch

    @precondition(lambda self: any(b.results is None for b in self.batches))
    @rule(pick=PICK)
    def hand_over(self, pick: int) -> None:
        """A worker sends the batch it claimed earlier; central stores it, its answer is on
        the way back."""
        self._hand_over(self._batch(pick, answered=False))

    @rule(worker=WORKERS)
    def claim_and_hand_over(self, worker: str) -> None:
        """A worker claims the rows due and sends them at once (as its round does); central
        stores them, its answer is on the way back."""
        batch = self._claim(worker)
        if batch is not None:
            self._hand_over(batch)

    def _hand_over(self, batch: Batch) -> None:
        owner = self._owner(batch)
        owner._prepare(self.peer, batch.claimed)
        if owner._lease_lapsed(self.peer, batch.claimed):  # as its round checks before sending
            self.batches.remove(batch)
            return
        items = [c.item for c in batch.claimed if c.item is not None]
        batch.results = self._carrying(batch.step, lambda: self.link.send(self.peer, items))

    @precondition(lambda self: any(b.results is None for b in self.batches))
    @rule(pick=PICK)
    def central_down(self, pick: int) -> None:
        """A worker's batch finds central down: nothing stored there; the rows are
        rescheduled, or dead-lettered at their last attempt or past the age budget."""
        batch = self._batch(pick, answered=False)
        self.batches.remove(batch)
        dispatcher = self._owner(batch)
        dispatcher._prepare(self.peer, batch.claimed)
        if dispatcher._lease_lapsed(self.peer, batch.claimed):
            return
        self.link.mode("down")
        try:
            self.link.send(self.peer, [c.item for c in batch.claimed if c.item is not None])
        except PeerUnavailable as exc:
            dispatcher._failed(self.peer, batch.claimed, exc, probe=False)
        finally:
            self.link.mode("ok")

    @precondition(lambda self: any(b.results is not None for b in self.batches))
    @rule(pick=PICK)
    def answer_arrives(self, pick: int) -> None:
        """Central's answer reaches the worker (maybe after the delivered notice did)."""
        batch = self._batch(pick, answered=True)
        assert batch.results is not None
        self.batches.remove(batch)
        self._owner(batch)._record(self.peer, batch.claimed, batch.results)

    @precondition(lambda self: any(b.results is not None for b in self.batches))
    @rule(pick=PICK)
    def answer_lost(self, pick: int) -> None:
        """Central stored the batch but its answer is lost: the worker sees a timeout."""
        batch = self._batch(pick, answered=True)
        self.batches.remove(batch)
        timeout = PeerUnavailable(f"{CENTRAL} did not answer in time")
        self._owner(batch)._failed(self.peer, batch.claimed, timeout, probe=False)

    @rule(worker=WORKERS, mode=MODES)
    def worker_round(self, worker: str, mode: str) -> None:
        """A worker's whole round, as its scheduler job runs it: claim, send, record, again
        while rows are due (after failures the breaker holds it back, then probes)."""
        if not self._idle(worker):
            return
        self.link.mode(mode)
        try:
            self._carrying(self.step, lambda: self.workers[worker].run_peer(CENTRAL))
        finally:
            self.link.mode("ok")

    @rule(worker=WORKERS, release=st.booleans())
    def restart(self, worker: str, release: bool) -> None:
        """A worker's process dies with its batches out and starts again: on SQLite it frees
        the leases at once (``release``), else they run out."""
        old = self.workers[worker].worker
        self.batches = [b for b in self.batches if b.worker != old]
        self.restarts += 1
        self.workers[worker] = self._dispatcher(f"{worker}-{self.restarts}")
        if release:
            self.workers[worker].release_leases()
            for batch in self.batches:
                batch.released = True

    # -- central, the admin, time ---------------------------------------------------------

    @rule(mode=MODES)
    def central_reports(self, mode: str) -> None:
        """Central's dispatcher sends the province its notices (delivered, failed); the
        province's answer may be lost (central sends the notice again) or the province down."""
        self.back.mode(mode)
        try:
            self.central.run_peer(PROVINCE)
        finally:
            self.back.mode("ok")

    @precondition(lambda self: self.seen.at_central)
    @rule(pick=st.integers(0, 31))
    def delivered_notice_applied(self, pick: int) -> None:
        """One of central's delivered notices is applied at the province, as the relay does on
        arrival: before the batch's answer, before central sends it, or once more."""
        with self.b.reader.connect() as conn:
            bodies = [
                json.loads(bytes(body))["notice"]
                for (body,) in conn.execute(
                    select(documents.c.envelope)
                    .where(documents.c.kind == "notice")
                    .order_by(documents.c.seq)
                )
            ]
        delivered = [n for n in bodies if (n["event"], n["node"]) == ("delivered", CENTRAL)]
        if not delivered:
            return
        notice = delivered[pick % len(delivered)]
        with self.a.writing() as conn:
            seqs = {key: seq for seq, key in _keys(conn).items()}
            packages = [
                (seqs[key], item["recipients"], item["path"])
                for item in notice["items"]
                if (key := package_key(notice["sender"], item["document_id"], item["sha256"]))
                in seqs
            ]
            mark_delivered_many(
                conn, self.a, packages, at_node=notice["node"], actor=f"node:{CENTRAL}"
            )

    @rule(node=NODES, pick=st.integers(0, 63), failed_only=st.booleans())
    def admin_requeue(self, node: str, pick: int, failed_only: bool) -> None:
        """An admin requeues a delivery: a failed one goes again, any other is refused."""
        target = self.a if node == PROVINCE else self.b
        with target.reader.connect() as conn:
            rows = conn.execute(
                select(deliveries.c.id, deliveries.c.state, deliveries.c.next_hop).order_by(
                    deliveries.c.id
                )
            ).all()
        if failed_only:
            rows = [r for r in rows if r.state == "failed"]
        if not rows:
            return
        row = rows[pick % len(rows)]
        try:
            assert requeue(target, [row.id], actor="admin:machine") == [row.id]
        except DeliveryNotFailed:
            assert row.state != "failed", row
        except RecipientUnreachable:
            assert (row.state, row.next_hop) == ("failed", UNROUTABLE), row
        else:
            assert row.state == "failed", row

    @rule(seconds=st.sampled_from([25, 25, LEASE + 1, MAX_AGE + 1]))
    def time_passes(self, seconds: int) -> None:
        """Backoffs run out (25 s), then leases (31 s), then the age budget (601 s); the
        breaker's probe interval too."""
        self.clock.advance(seconds)
        self.ticks.advance(seconds)

    @rule(node=NODES)
    def housekeeping(self, node: str) -> None:
        """A node's housekeeping dead-letters the waiting rows past the age budget."""
        (self.workers["w1"] if node == PROVINCE else self.central).housekeeping()

    # -- what a user is promised ----------------------------------------------------------

    def _now(self, reader: str) -> View:
        """Both databases now, read once per check of the invariants: an invariant that asks
        again is in the next check."""
        if self._view is None or reader in self._readers:
            self._view = read(self.a, self.b, notices_after=self.notices_after)
            self._readers = set()
        self._readers.add(reader)
        return self._view

    @invariant()
    def timelines_replay(self) -> None:
        """What the status view shows is what the rules allow, and the row's state."""
        for node in (self.a, self.b):
            check_timelines(node)

    @invariant()
    def settled_rows_leave_the_dispatchers_hands(self) -> None:
        """A delivered or failed row is nobody's to send: no lease, no next attempt."""
        stuck = self._now("settled").stuck
        assert stuck == [], f"rows out of the dispatchers' hands, still leased or due: {stuck}"

    @invariant()
    def central_stores_each_package_once(self) -> None:
        """However often a package is sent, the recipient finds it once in its inbox."""
        now = self._now("once")
        assert len({key for _, key in now.central_documents}) == len(now.central_documents)
        for gid, key in now.central_documents:
            assert now.central_audit.get(("relay_in", gid)) == 1, (key, now.central_audit)
            assert now.central_audit.get(("deliver", gid), 0) <= 1, (key, now.central_audit)

    @invariant()
    def known_deliveries_stay_delivered(self) -> None:
        """Once the sender's status view says delivered, it stays so; once central gave its
        receipt for a package it delivered, the province never waits for or fails it."""
        now = self._now("delivered")
        for key, row in now.rows.items():
            if key in now.delivered:
                assert row.state == "delivered", (key, row)
            if key in now.receipted and key in now.stored:
                # central gave its receipt and has it: never failed, never waiting again
                assert row.state in ("in_transit", "delivered"), (key, row)
                assert row.next_attempt_at is None, (key, row)

    @invariant()
    def a_live_lease_is_respected(self) -> None:
        """While a worker's lease runs, only news takes its rows from it: central's delivered
        notice, or its failure notice (a restart's release and the lease's end free them)."""
        now = self._now("lease")
        for batch in self.batches:
            if batch.released or batch.lease_until < self.clock.now:
                continue
            for row_id in sorted(batch.held):
                row = now.by_id[row_id]
                if row.leased_by == batch.worker:
                    continue
                news = row.state == "delivered" or (
                    row.state == "failed" and str(row.last_error).endswith(f" at {CENTRAL}")
                )
                assert news, f"{row} was taken from {batch.worker} while its lease ran"
                batch.held.discard(row_id)

    @invariant()
    def the_sender_is_told_the_truth(self) -> None:
        """Judge what the step that just ended sent and told; then the next step begins."""
        now = self._now("truth")
        self._judge_sends()
        self._judge_notices(now)
        for key in now.delivered:
            self.delivered_at.setdefault(key, self.step)
        for key in now.failed:
            self.failed_at.setdefault(key, self.step)
        for key in set(self.failed_at) - now.failed:
            del self.failed_at[key]
        self.seen = now
        self.step += 1

    def _judge_sends(self) -> None:
        """No worker claims a delivery the province knew was delivered or had failed (a batch
        claimed before may still go out: the window between a claim and its send)."""
        for claimed, key, recipients in self.sends:
            for recipient in recipients:
                for what, since in (
                    ("delivered", self.delivered_at.get((key, recipient))),
                    ("failed", self.failed_at.get((key, recipient))),
                ):
                    assert since is None or since >= claimed, (
                        f"{key} for {recipient} was claimed in step {claimed} and sent, though "
                        f"the province knew it {what} since step {since}"
                    )
                if (key, recipient) in self.failed_at:
                    self.sent_failed.add((key, recipient))
        self.sends.clear()

    def _judge_notices(self, now: View) -> None:
        """Each failure notice the sender agency got in this step is true when made; and it
        hears of a failure once per try, and never of one central has since delivered."""
        for key, count in now.requeues.items():
            if count != self.tries.get(key, 0):
                self.tries[key] = count
                self.told.pop(key, None)
                self.sent_failed.discard(key)
        for seq, notice in now.notices:
            self.notices_after = max(self.notices_after, seq)
            if notice["event"] != "failed":
                continue
            by = notice["node"]
            package = package_key(notice["sender"], notice["document_id"], notice["sha256"])
            for recipient in notice["recipients"]:
                key = (package, recipient)
                assert key not in self.seen.delivered, (
                    f"a failure notice from {by} about {key}, which the province knew delivered"
                )
                if by == CENTRAL:
                    assert key not in now.stored, f"central says {key} failed, yet delivered it"
                elif key in now.at_central:
                    assert key not in self.seen.receipted | now.receipted or recipient == G99, (
                        f"the province dead-lettered {key} after central's receipt for it"
                    )
                    there = "delivered" if key in now.stored else "failed"
                    assert "lost-answer" in KNOWN_GAPS, (
                        f"the province dead-lettered {key}, which central had stored ({there} "
                        "there), and told the sender it failed"
                    )
                    continue  # central's own word on it is what counts
                self.told[key] = [*self.told.get(key, []), by]
        for key, told in self.told.items():
            if key in self.sent_failed and "stale-batch" in KNOWN_GAPS:
                continue
            assert len(told) <= 1, f"the sender was told {len(told)} times that {key} failed"
            assert key not in now.stored, (
                f"the sender was told {key} failed ({told}); with no requeue since, central "
                "has delivered it"
            )


DeliveryMachine.TestCase.settings = settings(
    max_examples=75,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestDeliveryMachine = DeliveryMachine.TestCase
