"""The outbox: delivery rows waiting for a neighbour node, sent in order, retried, dead-lettered.

A delivery row whose ``next_hop`` is a peer and whose ``next_attempt_at`` is set is waiting to be
sent. The :class:`Dispatcher` (ticked by APScheduler, woken at once by a new package) works one
peer at a time per process:

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
:func:`requeue` it.

Usage::

    dispatcher = Dispatcher(node, HttpsPeerTransport(settings))
    dispatcher.run_peer("h49-province")       # what the scheduler's job calls
    requeue(node, [delivery_id], actor="admin:cli")
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
from typing import Any, Protocol

import structlog
import tenacity
from sqlalchemy import and_, bindparam, or_, select, update
from sqlalchemy.engine import Connection

from adapters.peer import ItemResult, RelayItem
from gateway import audit
from gateway.agency import AgencyCode
from gateway.binding import describe
from gateway.errors import (
    DeliveryNotFound,
    GatewayError,
    PeerUnavailable,
    RecipientUnreachable,
    RouteLoop,
    StatusTransitionInvalid,
)
from gateway.hops import sign_hop, sign_notice, trusted_chain
from gateway.node import LOCAL, Node
from gateway.nodekey import canonical_json, certificates_from_pem, parse_utc
from gateway.receipts import make_receipt, verify_receipt
from gateway.routing import Peer, would_loop
from gateway.status import TransportState
from gateway.tables import deliveries, documents, events, hops

__all__ = [
    "UNROUTABLE",
    "Dispatcher",
    "Transport",
    "add_deliveries",
    "add_deliveries_many",
    "backoff",
    "list_deliveries",
    "mark_delivered",
    "mark_delivered_many",
    "mark_failed",
    "notify_delivered",
    "requeue",
]

log = structlog.get_logger("gateway.outbox")

#: ``deliveries.next_hop`` of a recipient no node serves (the row is failed at once)
UNROUTABLE = "unroutable"
#: states of a row that still has to be handed on
_WAITING_STATES = (TransportState.ACCEPTED.value, TransportState.IN_TRANSIT.value)
_AT_RECIPIENT = (
    TransportState.DELIVERED.value,
    TransportState.FETCHED.value,
    TransportState.ACKNOWLEDGED.value,
)


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


def _event(
    seq: int,
    recipient: str,
    at: dt.datetime,
    code: str,
    node: str,
    actor: str,
    description: str | None = None,
) -> dict[str, Any]:
    return {
        "document_seq": seq,
        "recipient": recipient,
        "at": at,
        "kind": "transport",
        "code": code,
        "node": node,
        "actor": actor,
        "description": description,
        "status_seq": None,
    }


# --- rows ------------------------------------------------------------------------------------


#: built once: SQLAlchemy compiles a statement per distinct construct, not per row
_INSERT_DELIVERIES = deliveries.insert()
_INSERT_EVENTS = events.insert()
_INSERT_HOPS = hops.insert()


@dataclass(slots=True)
class _Routed:
    """Delivery rows and timeline events for packages stored in one transaction."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    timeline: list[dict[str, Any]] = field(default_factory=list)
    #: (package seq, error code) -> (recipients, messages) that cannot be routed
    failures: dict[tuple[int, str], tuple[list[str], list[str]]] = field(default_factory=dict)
    woken: set[str] = field(default_factory=set)


def _route(
    routed: _Routed,
    node: Node,
    seq: int,
    recipients: Sequence[str],
    actor: str,
    now: dt.datetime,
    *,
    in_transit: bool,
    came_through: Sequence[str],
) -> None:
    arrived = TransportState.IN_TRANSIT if in_transit else TransportState.ACCEPTED
    for recipient in recipients:
        failure: GatewayError | None = None
        try:
            hop = node.next_hop(AgencyCode.parse(recipient))
        except RecipientUnreachable as exc:
            hop, failure = UNROUTABLE, exc
        if hop != UNROUTABLE and would_loop(came_through, hop):
            failure = RouteLoop(
                f"{recipient} would go back to {hop}, which the package came through: no node "
                "hosts it (or the directories disagree)",
                detail={"recipient": recipient, "node": hop},
            )
            hop = UNROUTABLE
        state = arrived
        if hop == LOCAL:
            state = TransportState.DELIVERED
        elif failure is not None:
            state = TransportState.FAILED
            failed, messages = routed.failures.setdefault((seq, failure.code), ([], []))
            failed.append(recipient)
            messages.append(failure.message)
        else:
            routed.woken.add(hop)
        waiting = hop not in (LOCAL, UNROUTABLE)
        routed.rows.append(
            {
                "document_seq": seq,
                "recipient": recipient,
                "next_hop": hop,
                "state": state.value,
                "created_at": now,
                "updated_at": now,
                "attempts": 0,
                "next_attempt_at": now if waiting else None,
                "last_error": None if failure is None else f"{failure.code}: {failure.message}",
                "leased_by": None,
                "lease_until": None,
            }
        )
        routed.timeline.append(_event(seq, recipient, now, arrived.value, node.name, actor))
        if state is not arrived:
            description = None if failure is None else f"{failure.code}: {failure.message}"
            routed.timeline.append(
                _event(seq, recipient, now, state.value, node.name, actor, description)
            )


def _insert_routed(conn: Connection, node: Node, routed: _Routed) -> set[str]:
    if routed.rows:
        conn.execute(_INSERT_DELIVERIES, routed.rows)
        conn.execute(_INSERT_EVENTS, routed.timeline)
    woken = set(routed.woken)
    for (seq, code), (failed, messages) in routed.failures.items():
        woken |= _notify(
            conn, node, seq, failed, code=code, message="; ".join(messages), failed_hop=None
        )
    return woken


def add_deliveries(
    conn: Connection,
    node: Node,
    seq: int,
    recipients: Sequence[str],
    actor: str,
    *,
    in_transit: bool,
    came_through: Sequence[str] = (),
) -> set[str]:
    """Route ``recipients`` of a stored package and insert their delivery rows and events.

    A hosted recipient's row is ``delivered`` at once (its DMS pulls it); a recipient beyond a
    peer gets a waiting outbox row; a recipient nobody serves, or whose next hop is a node the
    package already passed through (``came_through``: a loop), gets a ``failed`` row and the
    sender a failure notice. Returns the peers to wake.
    """
    return add_deliveries_many(
        conn, node, [(seq, recipients, came_through)], actor, in_transit=in_transit
    )


def add_deliveries_many(
    conn: Connection,
    node: Node,
    packages: Sequence[tuple[int, Sequence[str], Sequence[str]]],
    actor: str,
    *,
    in_transit: bool,
) -> set[str]:
    """:func:`add_deliveries` for several stored packages, (seq, recipients, came through)
    each, with one insert of all their rows and one of all their events."""
    routed = _Routed()
    now = node.now()
    for seq, recipients, came_through in packages:
        _route(
            routed,
            node,
            seq,
            recipients,
            actor,
            now,
            in_transit=in_transit,
            came_through=came_through,
        )
    return _insert_routed(conn, node, routed)


def mark_failed(
    conn: Connection,
    node: Node,
    seq: int,
    recipients: Sequence[str],
    *,
    code: str,
    message: str,
    at_node: str,
    actor: str,
) -> None:
    """Record a failure reported by ``at_node`` (a notice) on this node's rows and timeline."""
    now = node.now()
    rows = conn.execute(
        select(deliveries.c.id, deliveries.c.recipient, deliveries.c.state).where(
            and_(deliveries.c.document_seq == seq, deliveries.c.recipient.in_(list(recipients)))
        )
    ).all()
    failing = [r for r in rows if r.state not in (*_AT_RECIPIENT, TransportState.FAILED.value)]
    if not failing:
        return
    conn.execute(
        update(deliveries)
        .where(deliveries.c.id.in_([r.id for r in failing]))
        .values(
            state=TransportState.FAILED.value,
            next_attempt_at=None,
            leased_by=None,
            lease_until=None,
            last_error=f"{code} at {at_node}",
            updated_at=now,
        )
    )
    conn.execute(
        events.insert(),
        [
            _event(seq, r.recipient, now, "failed", at_node, actor, f"{code}: {message}")
            for r in failing
        ],
    )


def _notify(
    conn: Connection,
    node: Node,
    seq: int,
    recipients: Sequence[str],
    *,
    code: str,
    message: str,
    failed_hop: str | None,
) -> set[str]:
    """Store a failure notice for the sender of package ``seq`` and route it; peers to wake.

    This node gave up on ``recipients``; the notice lands in the sender's inbox. No notice is
    made about a notice (that could circle for ever): its failure is logged and audited only.
    """
    doc = conn.execute(
        select(
            documents.c.id,
            documents.c.kind,
            documents.c.sender,
            documents.c.document_id,
            documents.c.sha256,
        ).where(documents.c.seq == seq)
    ).one()
    if doc.kind == "notice":
        log.warning("outbox.notice_undeliverable", doc=doc.id, code=code)
        return set()
    sealed = sign_notice(
        node.key,
        event="failed",
        kind=doc.kind,
        sender=doc.sender,
        document_id=doc.document_id,
        sha256=doc.sha256,
        recipients=list(recipients),
        node=node.name,
        code=code,
        message=message[:2000],
        at=node.now(),
        failed_hop=failed_hop,
    )
    log.info("outbox.notice", about=doc.id, notice="failed", code=code, recipients=recipients)
    return _store_notice(
        conn,
        node,
        sealed,
        sender=doc.sender,
        document_id=doc.document_id,
        about=seq,
        subject=f"delivery failed: {code}",
        facts={"about": doc.id, "event": "failed", "code": code, "recipients": list(recipients)},
    )


def _store_notice(
    conn: Connection,
    node: Node,
    sealed: dict[str, Any],
    *,
    sender: str,
    document_id: str | None,
    about: int | None,
    subject: str,
    facts: dict[str, Any],
) -> set[str]:
    """Store a sealed notice as a package of this node, addressed to ``sender``; route it."""
    now = node.now()
    body = canonical_json(sealed)
    sha256 = hashlib.sha256(body).hexdigest()
    gid = node.new_id()
    actor = f"node:{node.name}"
    receipt = make_receipt(
        node.key,
        node=node.name,
        document=gid,
        sender=sender,
        document_id=document_id,
        sha256=sha256,
        size=len(body),
        received_at=now,
        received_from=actor,
    )
    notice_seq = conn.execute(
        documents.insert().returning(documents.c.seq),
        {
            "id": gid,
            "kind": "notice",
            "sender": sender,
            "document_id": document_id,
            "dedup_key": f"notice|sha256:{sha256}",
            "sha256": sha256,
            "size": len(body),
            "envelope": body,
            "subject": subject,
            "status_code": None,
            "about_seq": about,
            "signer": _node_signer(node),
            "signing_time": now,
            "received_at": now,
            "received_from": actor,
            "receipt": json.dumps(receipt, ensure_ascii=False, sort_keys=True),
        },
    ).scalar_one()
    audit.append(conn, event="notice", actor=actor, subject=gid, data=facts)
    return add_deliveries(conn, node, notice_seq, [sender], actor, in_transit=False)


def _node_signer(node: Node) -> str:
    return json.dumps(describe(node.key.certificate), sort_keys=True)


def notify_delivered(
    conn: Connection,
    node: Node,
    sender: str,
    arrivals: Sequence[tuple[int, Sequence[str], Sequence[Sequence[str]]]],
) -> set[str]:
    """Tell ``sender``'s node, in one notice, that its packages reached recipients here.

    ``arrivals``: (package seq, the recipients hosted here, the path of hops it took).
    """
    seqs = [seq for seq, _, _ in arrivals]
    docs = {
        r.seq: r
        for r in conn.execute(
            select(documents.c.seq, documents.c.document_id, documents.c.sha256).where(
                documents.c.seq.in_(seqs)
            )
        )
    }
    items = [
        {
            "document_id": docs[seq].document_id,
            "sha256": docs[seq].sha256,
            "recipients": list(recipients),
            "path": [list(step) for step in path],
        }
        for seq, recipients, path in arrivals
    ]
    sealed = sign_notice(
        node.key,
        event="delivered",
        kind="document",
        sender=sender,
        document_id=None,
        sha256=items[0]["sha256"],
        recipients=sorted({r for item in items for r in item["recipients"]}),
        node=node.name,
        code="DELIVERED",
        message=f"{len(items)} package(s) delivered to the recipient's node",
        at=node.now(),
        failed_hop=None,
        items=items,
    )
    return _store_notice(
        conn,
        node,
        sealed,
        sender=sender,
        document_id=None,
        about=None,
        subject="delivered",
        facts={"event": "delivered", "packages": len(items)},
    )


def mark_delivered(
    conn: Connection,
    node: Node,
    seq: int,
    recipients: Sequence[str],
    *,
    path: Sequence[Sequence[str]],
    at_node: str,
    actor: str,
) -> None:
    """Record a delivery reported by ``at_node``: each hop of ``path`` the timeline does not
    show yet (its node and time), then ``delivered``."""
    mark_delivered_many(conn, node, [(seq, recipients, path)], at_node=at_node, actor=actor)


_DELIVERY_ROWS_OF = select(
    deliveries.c.id, deliveries.c.document_seq, deliveries.c.recipient, deliveries.c.state
).where(deliveries.c.document_seq.in_(bindparam("seqs", expanding=True)))
_IN_TRANSIT_SEEN = select(events.c.document_seq, events.c.recipient, events.c.node).where(
    and_(
        events.c.document_seq.in_(bindparam("seqs", expanding=True)),
        events.c.code == TransportState.IN_TRANSIT.value,
    )
)
_MARK_DELIVERED = (
    update(deliveries)
    .where(deliveries.c.id.in_(bindparam("ids", expanding=True)))
    .values(
        state=TransportState.DELIVERED.value,
        next_attempt_at=None,
        updated_at=bindparam("now"),
    )
)


_MARK_IN_TRANSIT = (
    update(deliveries)
    .where(
        and_(
            deliveries.c.id.in_(bindparam("ids", expanding=True)),
            deliveries.c.leased_by == bindparam("worker"),
            deliveries.c.state.in_(_WAITING_STATES),
        )
    )
    .values(
        state=TransportState.IN_TRANSIT.value,
        next_attempt_at=None,
        leased_by=None,
        lease_until=None,
        last_error=None,
        attempts=deliveries.c.attempts + 1,
        updated_at=bindparam("now"),
    )
    .returning(deliveries.c.document_seq, deliveries.c.recipient)
)


def mark_delivered_many(
    conn: Connection,
    node: Node,
    packages: Sequence[tuple[int, Sequence[str], Sequence[Sequence[str]]]],
    *,
    at_node: str,
    actor: str,
) -> None:
    """:func:`mark_delivered` for the packages of one delivered notice, (seq, recipients,
    path) each, in a handful of statements whatever their number."""
    if not packages:
        return
    seqs = sorted({seq for seq, _, _ in packages})
    rows: dict[tuple[int, str], Any] = {
        (r.document_seq, r.recipient): r for r in conn.execute(_DELIVERY_ROWS_OF, {"seqs": seqs})
    }
    seen = {
        (r.document_seq, r.recipient, r.node)
        for r in conn.execute(_IN_TRANSIT_SEEN, {"seqs": seqs})
    }
    now = node.now()
    timeline: list[dict[str, Any]] = []
    moved: list[int] = []
    movable = (*_WAITING_STATES, TransportState.FAILED.value)
    for seq, recipients, path in packages:
        for recipient in recipients:
            r = rows.get((seq, recipient))
            if r is None or r.state not in movable or r.id in moved:
                continue
            moved.append(r.id)
            if r.state == TransportState.FAILED.value:
                # requeued downstream after a failure notice: the delivery proves it went on
                timeline.append(_event(seq, recipient, now, "accepted", at_node, actor, "requeued"))
            for _, to, at in path:
                if (seq, recipient, to) in seen or to == at_node:
                    continue
                timeline.append(_event(seq, recipient, parse_utc(at), "in_transit", to, actor))
            timeline.append(_event(seq, recipient, now, "delivered", at_node, actor))
    if moved:
        conn.execute(_INSERT_EVENTS, timeline)
        conn.execute(_MARK_DELIVERED, {"ids": moved, "now": now})


def _dead_letter(
    conn: Connection,
    node: Node,
    rows: Sequence[Any],
    *,
    code: str,
    message: str,
    peer: str | None,
    attempted: bool = False,
) -> set[str]:
    """Give up on ``rows``: failed, with the reason; one notice per package to its sender.

    ``attempted``: the rows were just tried once more (counted in ``attempts``)."""
    if not rows:
        return set()
    now = node.now()
    actor = f"node:{node.name}"
    conn.execute(
        update(deliveries)
        .where(deliveries.c.id.in_([r.id for r in rows]))
        .values(
            attempts=deliveries.c.attempts + (1 if attempted else 0),
            state=TransportState.FAILED.value,
            next_attempt_at=None,
            leased_by=None,
            lease_until=None,
            last_error=f"{code}: {message}"[:2000],
            updated_at=now,
        )
    )
    conn.execute(
        events.insert(),
        [
            _event(
                r.document_seq, r.recipient, now, "failed", node.name, actor, f"{code}: {message}"
            )
            for r in rows
        ],
    )
    woken: set[str] = set()
    per_doc: dict[int, list[str]] = {}
    for r in rows:
        per_doc.setdefault(r.document_seq, []).append(r.recipient)
    ids: dict[int, str] = {
        seq: gid
        for seq, gid in conn.execute(
            select(documents.c.seq, documents.c.id).where(documents.c.seq.in_(per_doc))
        )
    }
    for seq, recipients in per_doc.items():
        audit.append(
            conn,
            event="dead_letter",
            actor=actor,
            subject=ids.get(seq),
            data={"recipients": recipients, "code": code, "peer": peer},
        )
        woken |= _notify(conn, node, seq, recipients, code=code, message=message, failed_hop=peer)
    log.warning("outbox.dead_letter", rows=len(rows), code=code, peer=peer)
    return woken


# --- the dispatcher --------------------------------------------------------------------------


@dataclass(slots=True)
class _Breaker:
    failures: int = 0
    open: bool = False
    next_probe: float = 0.0


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
    _breakers: dict[str, _Breaker] = field(default_factory=dict)
    _running: set[str] = field(default_factory=set)
    _dirty: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.node.on_wake(self.wake)

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

    # -- one batch ----------------------------------------------------------------------------

    def _once(self, peer: Peer) -> int:
        """Claim, send and record one batch: packages accepted; 0 nothing due; -1 failure."""
        breaker = self._breakers.setdefault(peer.name, _Breaker())
        probe = False
        if breaker.open:
            if time.monotonic() < breaker.next_probe:
                return -1
            probe = True
            breaker.next_probe = (
                time.monotonic() + self.node.settings.delivery.breaker_probe_interval
            )
        claimed = self._claim(peer, probe=probe)
        if not claimed:
            return 0
        try:
            self._prepare(peer, claimed)
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
            deliveries.c.state.in_(_WAITING_STATES),
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
            )
            .where(pending)
            .order_by(deliveries.c.document_seq, deliveries.c.id)
            .limit(1 if probe else delivery.batch_size)
        )
        if node.engine.dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        with node.writing() as conn:
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
            conn.execute(
                update(deliveries)
                .where(deliveries.c.id.in_(ids))
                .values(
                    leased_by=self.worker,
                    lease_until=now + dt.timedelta(seconds=delivery.lease),
                )
            )
        return claimed

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
            c.item = RelayItem(
                kind=doc.kind,
                body=bytes(doc.envelope),
                hops=[*(json.loads(h.record) for h in chain), record],
                receipts=[json.loads(h.receipt) for h in chain],
            )

    def _release(self, claimed: list[_Claimed]) -> None:
        with self.node.writing() as conn:
            conn.execute(
                update(deliveries)
                .where(
                    and_(
                        deliveries.c.id.in_([r.id for c in claimed for r in c.rows]),
                        deliveries.c.leased_by == self.worker,
                    )
                )
                .values(leased_by=None, lease_until=None)
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
            breaker.next_probe = time.monotonic() + delivery.breaker_probe_interval
            tripped = True
        now = node.now()
        expired: list[Any] = []
        woken: set[str] = set()
        with node.writing() as conn:
            for c in claimed:
                for row in c.rows:
                    attempts = row.attempts if probe else row.attempts + 1
                    too_old = (now - row.created_at).total_seconds() >= delivery.max_age
                    if attempts >= delivery.max_attempts or too_old:
                        expired.append(row)
                        continue
                    conn.execute(
                        update(deliveries)
                        .where(
                            and_(deliveries.c.id == row.id, deliveries.c.leased_by == self.worker)
                        )
                        .values(
                            attempts=attempts,
                            next_attempt_at=now
                            + dt.timedelta(seconds=backoff(node, max(attempts, 1))),
                            last_error=exc.message[:2000],
                            leased_by=None,
                            lease_until=None,
                            updated_at=now,
                        )
                    )
            if expired:
                woken = _dead_letter(
                    conn,
                    node,
                    expired,
                    code=PeerUnavailable.code,
                    message=f"gave up after {delivery.max_attempts} attempts or "
                    f"{delivery.max_age} s: {exc.message}",
                    peer=peer.name,
                    attempted=not probe,
                )
            if tripped:
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
            if result.ok:
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
                    woken |= _dead_letter(
                        conn,
                        node,
                        c.rows,
                        code=result.code or "RELAY_ERROR",
                        message=f"{peer.name} refused it: {result.message}",
                        peer=peer.name,
                        attempted=True,
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
                        "receipt": canonical_json(result.receipt).decode("utf-8"),
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
                # only rows still waiting and still ours: a "delivered" notice may have come
                # back first, and a worker whose lease ran out must not undo another's work
                moved = conn.execute(
                    _MARK_IN_TRANSIT, {"ids": moving, "worker": self.worker, "now": now}
                ).all()
                if moved:
                    conn.execute(
                        _INSERT_EVENTS,
                        [
                            _event(seq, r, sent_at[seq], "in_transit", peer.name, actor)
                            for seq, r in sorted(moved)
                        ],
                    )
                audit.append_many(conn, entries)
            if bad_receipts:
                conn.execute(
                    update(deliveries)
                    .where(deliveries.c.id.in_([r.id for c in bad_receipts for r in c.rows]))
                    .values(
                        leased_by=None,
                        lease_until=None,
                        next_attempt_at=now + dt.timedelta(seconds=backoff(node, 1)),
                        last_error="RELAY_RECEIPT_INVALID",
                    )
                )
            if recovered and accepted:
                # the peer is back: everything waiting for it is due now, in order
                conn.execute(
                    update(deliveries)
                    .where(
                        and_(
                            deliveries.c.next_hop == peer.name,
                            deliveries.c.next_attempt_at > now,
                        )
                    )
                    .values(next_attempt_at=now)
                )
                if breaker.open:
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
        """Dead-letter waiting rows older than ``max_age`` (a peer down for days); count them."""
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
                        deliveries.c.created_at < oldest,
                        or_(deliveries.c.lease_until.is_(None), deliveries.c.lease_until < now),
                    )
                )
                .limit(1000)
            ).all()
            woken = _dead_letter(
                conn,
                node,
                rows,
                code=PeerUnavailable.code,
                message=f"not delivered within {node.settings.delivery.max_age} s",
                peer=None,
            )
        node.wake(woken)
        return len(rows)


# --- admin -----------------------------------------------------------------------------------


def list_deliveries(
    node: Node, *, state: str | None = None, peer: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """Outbox and delivery rows for admins, newest first (``state="failed"``: dead letters)."""
    query = (
        select(
            deliveries.c.id,
            documents.c.id.label("document"),
            documents.c.kind,
            documents.c.sender,
            documents.c.document_id,
            deliveries.c.recipient,
            deliveries.c.next_hop,
            deliveries.c.state,
            deliveries.c.attempts,
            deliveries.c.next_attempt_at,
            deliveries.c.last_error,
            deliveries.c.updated_at,
        )
        .join(documents, documents.c.seq == deliveries.c.document_seq)
        .order_by(deliveries.c.id.desc())
        .limit(max(1, min(limit, 1000)))
    )
    if state == "waiting":
        query = query.where(deliveries.c.next_attempt_at.is_not(None))
    elif state is not None:
        query = query.where(deliveries.c.state == state)
    if peer is not None:
        query = query.where(deliveries.c.next_hop == peer)
    with node.reader.connect() as conn:
        rows = conn.execute(query).all()
    return [
        {
            "id": r.id,
            "document": r.document,
            "kind": r.kind,
            "sender": r.sender,
            "document_id": r.document_id,
            "recipient": r.recipient,
            "next_hop": r.next_hop,
            "state": r.state,
            "attempts": r.attempts,
            "next_attempt_at": r.next_attempt_at.isoformat() if r.next_attempt_at else None,
            "last_error": r.last_error,
            "updated_at": r.updated_at.isoformat(),
        }
        for r in rows
    ]


def requeue(node: Node, ids: Sequence[int], *, actor: str) -> list[int]:
    """Send failed deliveries again: routed afresh, attempts and age budget reset; audited.

    Raises :class:`DeliveryNotFound` for an unknown id and
    :class:`~gateway.errors.StatusTransitionInvalid` for a delivery that has not failed.
    """
    now = node.now()
    woken: set[str] = set()
    with node.writing() as conn:
        rows = conn.execute(
            select(
                deliveries.c.id,
                deliveries.c.document_seq,
                deliveries.c.recipient,
                deliveries.c.state,
            ).where(deliveries.c.id.in_(list(ids)))
        ).all()
        found = {r.id for r in rows}
        missing = [i for i in ids if i not in found]
        if missing:
            raise DeliveryNotFound(f"no delivery {missing[0]}", detail={"id": missing[0]})
        for row in rows:
            if row.state != TransportState.FAILED.value:
                raise StatusTransitionInvalid(
                    f"delivery {row.id} is {row.state}, not failed: only a failed delivery is "
                    "requeued",
                    detail={"id": row.id, "state": row.state},
                )
        for row in rows:
            hop = node.next_hop(AgencyCode.parse(row.recipient))
            values: dict[str, Any] = {
                "next_hop": hop,
                "attempts": 0,
                "created_at": now,
                "updated_at": now,
                "last_error": None,
                "leased_by": None,
                "lease_until": None,
            }
            if hop == LOCAL:
                values |= {"state": TransportState.DELIVERED.value, "next_attempt_at": None}
            else:
                values |= {"state": TransportState.ACCEPTED.value, "next_attempt_at": now}
                woken.add(hop)
            conn.execute(update(deliveries).where(deliveries.c.id == row.id).values(**values))
            conn.execute(
                events.insert().values(
                    _event(row.document_seq, row.recipient, now, values["state"], node.name, actor)
                )
            )
        audit.append(
            conn, event="requeue", actor=actor, subject=None, data={"deliveries": sorted(found)}
        )
    log.info("outbox.requeued", deliveries=sorted(found), actor=actor)
    node.wake(woken)
    return sorted(found)


def rearm_failed(
    conn: Connection, node: Node, seq: int, recipients: Sequence[str], actor: str
) -> set[str]:
    """The previous node sent a package again for recipients whose delivery failed here (an
    admin requeued it upstream): try them again, with a fresh budget. Returns peers to wake."""
    now = node.now()
    rows = conn.execute(
        select(deliveries.c.id, deliveries.c.recipient, deliveries.c.next_hop).where(
            and_(
                deliveries.c.document_seq == seq,
                deliveries.c.recipient.in_(list(recipients)),
                deliveries.c.state == TransportState.FAILED.value,
                deliveries.c.next_hop.not_in([LOCAL, UNROUTABLE]),
            )
        )
    ).all()
    if not rows:
        return set()
    conn.execute(
        update(deliveries)
        .where(deliveries.c.id.in_([r.id for r in rows]))
        .values(
            state=TransportState.IN_TRANSIT.value,
            attempts=0,
            created_at=now,
            updated_at=now,
            next_attempt_at=now,
            last_error=None,
            leased_by=None,
            lease_until=None,
        )
    )
    conn.execute(
        events.insert(),
        [_event(seq, r.recipient, now, "accepted", node.name, actor, "sent again") for r in rows],
    )
    return {r.next_hop for r in rows}
