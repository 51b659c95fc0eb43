"""Delivery to neighbour nodes: the dispatcher that sends the outbox, retries and trips.

A delivery row (:mod:`gateway.network.outbox`) whose ``next_hop`` is a peer and whose
``next_attempt_at`` is set is waiting to be sent. The :class:`Dispatcher` (ticked by
APScheduler, woken at once by a new package) works one peer at a time per process:

1. **claim** the oldest waiting rows for the peer (document order), if the first is due:
   ``FOR UPDATE SKIP LOCKED`` on PostgreSQL plus a lease (``leased_by``, ``lease_until``), so two
   dispatcher processes never send one row at once and a dead worker's rows come back when its
   lease runs out;
2. **send** them as one relay batch (:mod:`adapters.peer`), each package with its hop chain and
   a new hop record signed by this node;
3. **record** each peer receipt (checked: signature, node, digest) with the hop record, and mark
   the rows ``in_transit`` at the peer; or, for a refusal with a stable code, **dead-letter** the
   rows and send the sender a failure notice; or, when the peer is unreachable, answers 5xx or
   times out, schedule the next attempt: exponential backoff with jitter, capped (tenacity's
   wait functions compute it), stored in the row.

A **circuit breaker** per peer: after ``breaker_threshold`` consecutive failures the peer is
"down" and only probed every ``breaker_probe_interval`` seconds (a probe does not use up a row's
attempts); when a probe succeeds every waiting row for that peer is made due at once, so the
backlog drains at full speed rather than at each row's backoff. After ``max_attempts`` attempts or
``max_age`` seconds a delivery is dead-lettered, the sender is notified, and an admin can
requeue it (:func:`gateway.node.admin.requeue`).

Usage::

    dispatcher = Dispatcher(node, HttpsPeerTransport(settings))
    dispatcher.run_peer("h49-province")       # what the scheduler's job calls
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import structlog
import tenacity
from sqlalchemy import Table, and_, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from gateway.errors import GatewayError, PeerUnavailable, ReceiptInvalid
from gateway.evidence import audit
from gateway.evidence.hops import CONFIRMATIONS, sign_hop, trusted_chain
from gateway.evidence.nodekey import canonical_json, certificates_from_pem, format_utc, parse_utc
from gateway.evidence.receipts import verify_receipt
from gateway.network.outbox import dead_letter, mark_sent, progress_due, report_progress
from gateway.network.routing import Peer
from gateway.network.wire import ItemResult, RelayItem
from gateway.node.container import Node
from gateway.node.timeline import REQUEUED
from gateway.node.transitions import WAITING_STATES, compare_and_set
from gateway.storage.tables import breakers, deliveries, documents, events, hops

__all__ = ["Dispatcher", "Transport", "backoff"]

log = structlog.get_logger("gateway.delivery")

_INSERT_HOPS = hops.insert()


class Transport(Protocol):
    """Sends a relay batch to a peer (:class:`adapters.peer.HttpsPeerTransport`)."""

    def send(self, peer: Peer, items: Sequence[RelayItem]) -> list[ItemResult]: ...


def backoff(node: Node, attempts: int) -> float:
    """Seconds to wait after ``attempts`` failed attempts: exponential, capped, with jitter."""
    delivery = node.settings.delivery
    wait = tenacity.wait_exponential(
        multiplier=delivery.backoff_initial, max=delivery.backoff_max
    ) + tenacity.wait_random(0, delivery.backoff_jitter)
    state = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = max(1, attempts)
    return float(wait(state))


@dataclass(slots=True)
class _Breaker:
    failures: int = 0
    open: bool = False
    next_probe: float = 0.0


#: a lease that does not end (rows built by hand in tests)
_NEVER: Final = dt.datetime.max.replace(tzinfo=dt.UTC)


@dataclass(slots=True)
class _Claimed:
    """Rows of one package claimed for one peer."""

    seq: int
    rows: list[Any]
    item: RelayItem | None = None
    record: dict[str, Any] | None = None
    position: int = 0
    sha256: str = ""
    gid: str = ""
    #: a delivered or progress notice: settled by the peer's receipt (:func:`outbox.mark_sent`)
    settles: bool = False
    #: when this worker's lease on the rows ends
    lease_until: dt.datetime = _NEVER


@dataclass
class Dispatcher:
    """Sends waiting rows to peers; one instance per process, thread-safe per peer."""

    node: Node
    transport: Transport
    worker: str = field(
        default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    )
    #: called with a peer name to run its job now (the scheduler sets it)
    waker: Callable[[str], None] | None = None
    #: the circuit breaker's clock, in seconds: monotonic, so a probe interval does not jump
    #: with the wall clock (``node.now``); tests pass one they move by hand
    monotonic: Callable[[], float] = time.monotonic
    _breakers: dict[str, _Breaker] = field(default_factory=dict)
    _running: set[str] = field(default_factory=set)
    _dirty: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.node.on_wake(self.wake)

    def load_breakers(self) -> list[str]:
        """At start: the peers this node held down when its previous process stopped (or that
        another process of the node holds down) are down here too, probed at once. Their
        ``peer_down`` stays open in the audit log until a probe succeeds (``peer_up``).

        Usage: ``dispatcher.load_breakers()`` (the scheduler calls it); the peers found down.
        """
        with self.node.reader.connect() as conn:
            down = list(
                conn.execute(
                    select(breakers.c.peer, breakers.c.failures).where(
                        breakers.c.opened_at.is_not(None)
                    )
                )
            )
        for peer, failures in down:
            self._breakers[peer] = _Breaker(
                failures=max(failures, 1), open=True, next_probe=self.monotonic()
            )
        if down:
            log.info("outbox.breakers_loaded", down=sorted(p for p, _ in down))
        return sorted(p for p, _ in down)

    def release_leases(self) -> int:
        """At start on SQLite (one process per database): rows this node's previous process
        had claimed when it died are free again at once, not after their lease, so they keep
        their place in the order. Not on PostgreSQL, where other live workers hold leases."""
        if self.node.engine.dialect.name != "sqlite":
            return 0
        with self.node.writing() as conn:
            released = conn.execute(
                update(deliveries)
                .where(deliveries.c.leased_by.is_not(None))
                .values(leased_by=None, lease_until=None)
            ).rowcount
        if released:
            log.info("outbox.leases_released", rows=released)
        return int(released or 0)

    # -- scheduling ---------------------------------------------------------------------------

    def wake(self, peers: Iterable[str]) -> None:
        """New rows for ``peers``: run their jobs now, or once more if they are running."""
        for peer in peers:
            with self._lock:
                self._dirty.add(peer)
                if peer in self._running:
                    continue
            if self.waker is not None:
                self.waker(peer)

    def breaker(self, peer: str) -> dict[str, Any]:
        """The peer's circuit breaker as the admin API shows it."""
        b = self._breakers.get(peer, _Breaker())
        return {"state": "open" if b.open else "closed", "consecutive_failures": b.failures}

    def run_peer(self, peer_name: str) -> int:
        """Send everything due for one peer; the number of packages the peer accepted."""
        directory = self.node.directory
        peer = directory.peer(peer_name) if directory is not None else None
        if peer is None:
            return 0
        with self._lock:
            self._running.add(peer_name)
            self._dirty.discard(peer_name)
        sent = 0
        try:
            self.report_progress(peer_name)
            while True:
                progress = self._once(peer)
                sent += max(progress, 0)
                if progress <= 0:
                    with self._lock:
                        if peer_name in self._dirty and progress == 0:
                            self._dirty.discard(peer_name)
                            continue
                        self._running.discard(peer_name)
                        return sent
        except BaseException:
            with self._lock:
                self._running.discard(peer_name)
            raise

    def report_progress(self, peer_name: str | None = None) -> None:
        """Turn the fetches and acknowledgements owed to senders' nodes (of packages that came
        from ``peer_name``; None: from anywhere) into progress notices, queued like any
        package (:func:`outbox.report_progress`). The common case, nothing owed, is one read."""
        node = self.node
        with node.reader.connect() as conn:
            if not progress_due(conn, peer=peer_name):
                return
        with node.writing() as conn:
            woken = report_progress(conn, node, peer=peer_name)
        node.wake(woken - {peer_name} if peer_name is not None else woken)

    # -- one batch ----------------------------------------------------------------------------

    def _once(self, peer: Peer) -> int:
        """Claim, send and record one batch: packages accepted; 0 nothing due; -1 failure."""
        breaker = self._breakers.setdefault(peer.name, _Breaker())
        probe = False
        if breaker.open:
            if self.monotonic() < breaker.next_probe:
                return -1
            probe = True
            breaker.next_probe = (
                self.monotonic() + self.node.settings.delivery.breaker_probe_interval
            )
        claimed = self._claim(peer, probe=probe)
        if not claimed:
            return 0
        try:
            self._prepare(peer, claimed)
            if self._lease_lapsed(peer, claimed):
                return 0
            results = self.transport.send(peer, [c.item for c in claimed if c.item is not None])
        except PeerUnavailable as exc:
            self._failed(peer, claimed, exc, probe=probe)
            return -1
        except GatewayError as exc:
            self._release(claimed)
            log.error("outbox.prepare_failed", peer=peer.name, code=exc.code, message=exc.message)
            return -1
        except Exception:
            self._release(claimed)
            raise
        return self._record(peer, claimed, results)

    def _claim(self, peer: Peer, *, probe: bool) -> list[_Claimed]:
        node = self.node
        delivery = node.settings.delivery
        now = node.now()
        pending = and_(
            deliveries.c.next_hop == peer.name,
            deliveries.c.next_attempt_at.is_not(None),
            deliveries.c.state.in_(WAITING_STATES),
            or_(deliveries.c.lease_until.is_(None), deliveries.c.lease_until < now),
        )
        head_query = (
            select(deliveries.c.next_attempt_at)
            .where(pending)
            .order_by(deliveries.c.document_seq, deliveries.c.id)
            .limit(1)
        )
        with node.reader.connect() as conn:
            head = conn.execute(head_query).scalar()
        if head is None or (not probe and head > now):
            return []
        query = (
            select(
                deliveries.c.id,
                deliveries.c.document_seq,
                deliveries.c.recipient,
                deliveries.c.attempts,
                deliveries.c.created_at,
                deliveries.c.next_attempt_at,
                deliveries.c.outcome_unknown,
            )
            .where(pending)
            .order_by(deliveries.c.document_seq, deliveries.c.id)
            .limit(1 if probe else delivery.batch_size)
        )
        if node.engine.dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        with node.writing(chain=False) as conn:  # a claim writes no audit entry
            rows = conn.execute(query).all()
            if not rows or (not probe and rows[0].next_attempt_at > now):
                return []
            sizes = dict(
                conn.execute(
                    select(documents.c.seq, documents.c.size).where(
                        documents.c.seq.in_({r.document_seq for r in rows})
                    )
                ).all()
            )
            claimed: list[_Claimed] = []
            total = 0
            for row in rows:
                if claimed and claimed[-1].seq == row.document_seq:
                    claimed[-1].rows.append(row)
                    continue
                total += sizes[row.document_seq]
                if claimed and total > delivery.batch_bytes:
                    break
                claimed.append(_Claimed(seq=row.document_seq, rows=[row]))
            ids = [r.id for c in claimed for r in c.rows]
            # the rows are locked (PostgreSQL) or the only writer's (SQLite) since the read;
            # the lease is still a compare-and-set, like every change of a delivery row
            leased = set(
                compare_and_set(
                    conn,
                    ids,
                    {
                        "leased_by": self.worker,
                        "lease_until": now + dt.timedelta(seconds=delivery.lease),
                        # from now on the batch may reach the peer: should this process die
                        # before it records the answer, the row must not look unsent (it would
                        # be dead-lettered though the peer may have it). Settled by the answer;
                        # handed back as it was when nothing was sent (_release, _failed)
                        "outcome_unknown": True,
                    },
                    states=WAITING_STATES,
                    unleased_at=now,
                    change="claim",
                )
            )
        for c in claimed:
            c.rows = [r for r in c.rows if r.id in leased]
            c.lease_until = now + dt.timedelta(seconds=delivery.lease)
        return [c for c in claimed if c.rows]

    def _prepare(self, peer: Peer, claimed: list[_Claimed]) -> None:
        """Read each package and its incoming hops; sign this node's hop record for it."""
        node = self.node
        seqs = [c.seq for c in claimed]
        with node.reader.connect() as conn:
            docs = {
                r.seq: r
                for r in conn.execute(
                    select(
                        documents.c.seq,
                        documents.c.id,
                        documents.c.kind,
                        documents.c.sender,
                        documents.c.document_id,
                        documents.c.sha256,
                        documents.c.envelope,
                        documents.c.attestation,
                    ).where(documents.c.seq.in_(seqs))
                )
            }
            incoming: dict[int, list[Any]] = {}
            for r in conn.execute(
                select(hops.c.document_seq, hops.c.digest, hops.c.record, hops.c.receipt)
                .where(and_(hops.c.document_seq.in_(seqs), hops.c.direction == "in"))
                .order_by(hops.c.document_seq, hops.c.position)
            ):
                incoming.setdefault(r.document_seq, []).append(r)
            # each claimed delivery ever requeued here: which requeue this is (their number
            # and the latest's time, unique even when two share a clock reading)
            requeues: dict[tuple[int, str], str] = {
                (r.document_seq, r.recipient): f"{r.n}@{format_utc(r.at)}"
                for r in conn.execute(
                    select(
                        events.c.document_seq,
                        events.c.recipient,
                        func.count().label("n"),
                        func.max(events.c.at).label("at"),
                    )
                    .where(
                        and_(
                            events.c.document_seq.in_(seqs),
                            events.c.kind == "transport",
                            events.c.code == REQUEUED,
                        )
                    )
                    .group_by(events.c.document_seq, events.c.recipient)
                )
            }
        now = node.now()
        for c in claimed:
            doc = docs[c.seq]
            chain = incoming.get(c.seq, [])
            record = sign_hop(
                node.key,
                kind=doc.kind,
                sender=doc.sender,
                document_id=doc.document_id,
                sha256=doc.sha256,
                size=len(doc.envelope),
                from_node=node.name,
                to_node=peer.name,
                recipients=[r.recipient for r in c.rows],
                at=now,
                prev=chain[-1].digest if chain else None,
            )
            c.record, c.position, c.sha256, c.gid = record, len(chain) + 1, doc.sha256, doc.id
            c.settles = (
                doc.kind == "notice"
                and json.loads(bytes(doc.envelope))["notice"]["event"] in CONFIRMATIONS
            )
            c.item = RelayItem(
                kind=doc.kind,
                body=bytes(doc.envelope),
                hops=[*(json.loads(h.record) for h in chain), record],
                receipts=[json.loads(h.receipt) for h in chain],
                attestation=None if doc.attestation is None else json.loads(doc.attestation),
                requeued={
                    r.recipient: requeues[(c.seq, r.recipient)]
                    for r in c.rows
                    if (c.seq, r.recipient) in requeues
                },
            )

    def _lease_lapsed(self, peer: Peer, claimed: list[_Claimed]) -> bool:
        """True (and the rows handed back) when this worker's lease ran out before its batch
        left, as a stalled process's does: the rows may be another worker's, or dead-lettered
        with the sender told, by now; what is not ours is never sent."""
        if self.node.now() < min(c.lease_until for c in claimed):
            return False
        log.warning("outbox.lease_lapsed", peer=peer.name, packages=len(claimed))
        self._release(claimed)
        return True

    def _release(self, claimed: list[_Claimed]) -> None:
        """Hand rows back unsent: no lease, and ``outcome_unknown`` as it was before the
        claim (nothing of this attempt reached the peer)."""
        rows = [r for c in claimed for r in c.rows]
        with self.node.writing(chain=False) as conn:
            for unknown in (False, True):
                ids = [r.id for r in rows if bool(r.outcome_unknown) is unknown]
                if not ids:
                    continue
                conn.execute(
                    update(deliveries)
                    .where(and_(deliveries.c.id.in_(ids), deliveries.c.leased_by == self.worker))
                    .values(leased_by=None, lease_until=None, outcome_unknown=unknown)
                )

    def _failed(
        self, peer: Peer, claimed: list[_Claimed], exc: GatewayError, *, probe: bool
    ) -> None:
        """The peer could not take the batch: reschedule (or dead-letter) its rows."""
        node = self.node
        delivery = node.settings.delivery
        breaker = self._breakers.setdefault(peer.name, _Breaker())
        breaker.failures += 1
        tripped = False
        if not breaker.open and breaker.failures >= delivery.breaker_threshold:
            breaker.open = True
            breaker.next_probe = self.monotonic() + delivery.breaker_probe_interval
            tripped = True
        now = node.now()
        expired: list[Any] = []
        woken: set[str] = set()
        # the batch may have reached the peer (sent, then the answer was lost or timed out):
        # its rows are never dead-lettered while so, since the package may be delivered; they
        # keep being retried until an answer settles it (a receipt, or a refusal)
        sent = exc.detail.get("sent", True) is not False
        with node.writing() as conn:
            for c in claimed:
                for row in sorted(c.rows, key=lambda r: r.id):
                    attempts = row.attempts if probe else row.attempts + 1
                    too_old = (now - row.created_at).total_seconds() >= delivery.max_age
                    unknown = sent or bool(row.outcome_unknown)
                    if (attempts >= delivery.max_attempts or too_old) and not unknown:
                        expired.append(row)
                        continue
                    # only a row still waiting and still ours: a delivered notice may have
                    # settled it while the batch was out (the peer committed, its answer was
                    # lost), and a delivered row must not look "waiting" again
                    compare_and_set(
                        conn,
                        [row.id],
                        {
                            "attempts": attempts,
                            "next_attempt_at": now
                            + dt.timedelta(seconds=backoff(node, max(attempts, 1))),
                            "last_error": (
                                f"{exc.message} (outcome unknown: {peer.name} may have it; "
                                "retried until it answers, never reported failed)"
                                if unknown
                                else exc.message
                            )[:2000],
                            "outcome_unknown": unknown,
                            "leased_by": None,
                            "lease_until": None,
                            "updated_at": now,
                        },
                        states=WAITING_STATES,
                        worker=self.worker,
                        change="reschedule",
                    )
            if expired:
                woken = dead_letter(
                    conn,
                    node,
                    expired,
                    code=PeerUnavailable.code,
                    message=f"gave up after {delivery.max_attempts} attempts or "
                    f"{delivery.max_age} s: {exc.message}",
                    peer=peer.name,
                    attempted=not probe,
                    worker=self.worker,
                )
            if tripped and _open_breaker(conn, peer.name, now, breaker.failures):
                # once per outage for the node: another process may have opened it already
                audit.append(
                    conn,
                    event="peer_down",
                    actor=f"node:{node.name}",
                    subject=peer.name,
                    data={"failures": breaker.failures, "error": exc.message[:500]},
                )
        log.warning(
            "outbox.peer_failed",
            peer=peer.name,
            packages=len(claimed),
            failures=breaker.failures,
            breaker="open" if breaker.open else "closed",
            error=exc.message,
            probe=probe,
        )
        node.wake(woken)

    def _record(self, peer: Peer, claimed: list[_Claimed], results: list[ItemResult]) -> int:
        """Store the receipts of accepted items; dead-letter refused ones."""
        node = self.node
        now = node.now()
        actor = f"node:{node.name}"
        checked: list[tuple[_Claimed, ItemResult, str | None]] = []
        items = [c for c in claimed if c.item is not None]
        for c, result in zip(items, results, strict=True):
            problem = None
            if result.ok and result.hub_doc_id is not None and result.receipt is None:
                pass  # a hub parent: its DocId is all it gives (the hop's record says so)
            elif result.ok:
                try:
                    fields = verify_receipt(result.receipt or {}, trust=None)
                    leaf, *extra = certificates_from_pem(str(result.receipt["certificate"]))  # type: ignore[index]
                    trusted_chain(node.trust, leaf, extra, parse_utc(fields["received_at"]))
                    if fields["node"] != peer.name or fields["sha256"] != c.sha256:
                        problem = "the receipt names another node or other bytes"
                except GatewayError as exc:
                    problem = f"{exc.code}: {exc.message}"
            checked.append((c, result, problem))
        bad_receipts = [c for c, _, problem in checked if problem]
        breaker = self._breakers.setdefault(peer.name, _Breaker())
        recovered = breaker.failures > 0 or breaker.open
        woken: set[str] = set()
        accepted = 0
        hop_rows: list[dict[str, Any]] = []
        entries: list[audit.Entry] = []
        moving: list[int] = []
        sent_at: dict[int, dt.datetime] = {}
        with node.writing() as conn:
            for c, result, problem in checked:
                if problem:
                    continue
                if not result.ok:
                    woken |= dead_letter(
                        conn,
                        node,
                        c.rows,
                        code=result.code or "RELAY_ERROR",
                        message=f"{peer.name} refused it: {result.message}",
                        peer=peer.name,
                        attempted=True,
                        worker=self.worker,
                    )
                    continue
                assert c.record is not None
                accepted += 1
                text = canonical_json(c.record)
                digest = hashlib.sha256(text).hexdigest()  # = hop_digest(c.record)
                hop_rows.append(
                    {
                        "document_seq": c.seq,
                        "direction": "out",
                        "position": c.position,
                        "from_node": node.name,
                        "to_node": peer.name,
                        "at": now,
                        "digest": digest,
                        "record": text.decode("utf-8"),
                        "receipt": canonical_json(
                            result.receipt
                            if result.receipt is not None
                            else {"hub": peer.name, "DocId": result.hub_doc_id, "signed": False}
                        ).decode("utf-8"),
                    }
                )
                moving.extend(r.id for r in c.rows)
                sent_at[c.seq] = parse_utc(c.record["hop"]["at"])
                entries.append(
                    audit.Entry(
                        "relay_out",
                        actor,
                        c.gid,
                        {
                            "to": peer.name,
                            "sha256": c.sha256,
                            "recipients": [r.recipient for r in c.rows],
                            "hop_digest": digest,
                            "duplicate": result.duplicate,
                        },
                    )
                )
            if hop_rows:
                conn.execute(_INSERT_HOPS, hop_rows)
                mark_sent(
                    conn,
                    node,
                    moving,
                    worker=self.worker,
                    peer=peer.name,
                    at=sent_at,
                    settled=frozenset(
                        c.seq for c, result, problem in checked if c.settles and result.ok
                    ),
                )
                audit.append_many(conn, entries)
            if bad_receipts:
                compare_and_set(
                    conn,
                    [r.id for c in bad_receipts for r in c.rows],
                    {
                        "leased_by": None,
                        "lease_until": None,
                        "next_attempt_at": now + dt.timedelta(seconds=backoff(node, 1)),
                        "last_error": ReceiptInvalid.code,
                    },
                    states=WAITING_STATES,
                    worker=self.worker,
                    change="bad_receipt",
                )
            if recovered and accepted:
                # the peer is back: everything waiting for it is due now, in order
                conn.execute(
                    update(deliveries)
                    .where(
                        and_(
                            deliveries.c.next_hop == peer.name,
                            deliveries.c.state.in_(WAITING_STATES),
                            deliveries.c.next_attempt_at > now,
                        )
                    )
                    .values(next_attempt_at=now)
                )
            if accepted and _close_breaker(conn, peer.name, now):
                # whoever closes the node's breaker writes its peer_up: one per peer_down,
                # across restarts and processes
                audit.append(
                    conn,
                    event="peer_up",
                    actor=actor,
                    subject=peer.name,
                    data={"after_failures": breaker.failures},
                )
        if accepted:
            if recovered:
                log.info("outbox.peer_recovered", peer=peer.name, failures=breaker.failures)
            breaker.failures, breaker.open = 0, False
        log.info(
            "outbox.sent",
            peer=peer.name,
            packages=len(items),
            accepted=accepted,
            bad_receipts=len(bad_receipts),
        )
        node.wake(woken)
        return accepted if accepted else (-1 if bad_receipts else len(items))

    # -- housekeeping -------------------------------------------------------------------------

    def housekeeping(self) -> int:
        """Dead-letter waiting rows older than ``max_age`` (a peer down for days); count them.
        Progress owed for packages from any node is reported too (a node that is no longer a
        neighbour has no round of its own)."""
        self.report_progress()
        node = self.node
        now = node.now()
        oldest = now - dt.timedelta(seconds=node.settings.delivery.max_age)
        with node.writing() as conn:
            rows = conn.execute(
                select(
                    deliveries.c.id,
                    deliveries.c.document_seq,
                    deliveries.c.recipient,
                    deliveries.c.next_hop,
                )
                .where(
                    and_(
                        deliveries.c.next_attempt_at.is_not(None),
                        deliveries.c.state.in_(WAITING_STATES),
                        deliveries.c.created_at < oldest,
                        # may be delivered (an answer was lost): never reported failed
                        deliveries.c.outcome_unknown.is_(False),
                        or_(deliveries.c.lease_until.is_(None), deliveries.c.lease_until < now),
                    )
                )
                .limit(1000)
            ).all()
            woken = dead_letter(
                conn,
                node,
                rows,
                code=PeerUnavailable.code,
                message=f"not delivered within {node.settings.delivery.max_age} s",
                peer=None,
            )
        node.wake(woken)
        return len(rows)


def _open_breaker(conn: Connection, peer: str, now: dt.datetime, failures: int) -> bool:
    """Mark ``peer`` down for the node; True if this call opened it (it was closed)."""
    opened = conn.execute(
        update(breakers)
        .where(and_(breakers.c.peer == peer, breakers.c.opened_at.is_(None)))
        .values(opened_at=now, failures=failures, updated_at=now)
    ).rowcount
    if opened:
        return True
    if conn.execute(select(breakers.c.peer).where(breakers.c.peer == peer)).first() is not None:
        return False  # already open
    inserted = conn.execute(
        _insert_new(conn, breakers).values(
            peer=peer, opened_at=now, failures=failures, updated_at=now
        )
    ).rowcount
    return bool(inserted)


def _close_breaker(conn: Connection, peer: str, now: dt.datetime) -> bool:
    """Mark ``peer`` up for the node; True if this call closed it (it was open)."""
    return bool(
        conn.execute(
            update(breakers)
            .where(and_(breakers.c.peer == peer, breakers.c.opened_at.is_not(None)))
            .values(opened_at=None, updated_at=now)
        ).rowcount
    )


def _insert_new(conn: Connection, table: Table) -> Any:
    """An INSERT that does nothing when the key is taken (two processes tripping at once)."""
    if conn.dialect.name == "postgresql":
        return postgresql_insert(table).on_conflict_do_nothing()
    return sqlite_insert(table).on_conflict_do_nothing()
