"""The outbox: delivery rows of stored packages, their timeline events, notices, dead letters.

Every package a node stores gets one delivery row per recipient (:func:`add_deliveries`; the
row and its first timeline events are made by :meth:`gateway.node.timeline.TimelineWriter.open`):
``delivered`` at once for an agency hosted here (its DMS pulls it), a waiting row whose
``next_hop`` is a neighbour node (:mod:`gateway.network.dispatcher` sends it), or ``failed`` for a
recipient no node serves or that would loop, with a signed failure notice to the sender.
After the retry budget a delivery is :func:`dead_letter`-ed and the sender notified; only an
operator requeues it (:mod:`gateway.node.admin`). What notices coming back do to the rows is
:mod:`gateway.network.notices`.

Usage::

    woken = add_deliveries(conn, node, seq, sender, ["000.00.00.G12"], actor, in_transit=False)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import and_, bindparam, select
from sqlalchemy.engine import Connection

from gateway.agency import AgencyCode
from gateway.errors import (
    GatewayError,
    RecipientUnreachable,
    RouteLoop,
    UnverifiedRefused,
)
from gateway.evidence import audit
from gateway.evidence.hops import PROGRESS_STATES, sign_notice
from gateway.evidence.nodekey import canonical_json, format_utc
from gateway.evidence.receipts import make_receipt
from gateway.network.routing import would_loop
from gateway.node import webhooks
from gateway.node.container import LOCAL, Node
from gateway.node.dedup import notice_key
from gateway.node.status import (
    REFUSALS,
    Requeue,
    Timeline,
    TransportEvent,
    TransportState,
    apply,
)
from gateway.node.timeline import REQUEUED, TimelineWriter, deliver_entry
from gateway.node.transitions import (
    WAITING_STATES,
    compare_and_set,
    compare_and_set_rows,
    log_stale,
)
from gateway.storage.tables import deliveries, documents, events, hops
from gateway.trust.binding import describe

__all__ = [
    "UNROUTABLE",
    "add_deliveries",
    "add_deliveries_many",
    "dead_letter",
    "mark_sent",
    "notify_delivered",
    "progress_due",
    "rearm_failed",
    "report_progress",
]

log = structlog.get_logger("gateway.outbox")

#: ``deliveries.next_hop`` of a recipient no node serves (the row is failed at once)
UNROUTABLE = "unroutable"
# --- rows ------------------------------------------------------------------------------------


#: built once: SQLAlchemy compiles a statement per distinct construct, not per row
_INSERT_DELIVERIES = deliveries.insert()


@dataclass(frozen=True, slots=True)
class Stored:
    """A package stored in this transaction, whose recipients are to be routed.

    Usage: ``add_deliveries_many(conn, node, [Stored(seq, sender, recipients)], actor, ...)``
    """

    #: the package's ``documents.seq``
    seq: int
    #: its sender agency (the timelines' sender)
    sender: str
    #: the recipients to route (each gets one delivery row)
    recipients: Sequence[str]
    #: the nodes it came through, oldest first (a next hop among them would be a loop)
    came_through: Sequence[str] = ()
    #: delivered here whatever the directory says (a confirmation back at the node it is for)
    here: bool = False
    #: the arrival event's description (an attested package says so)
    note: str | None = None
    #: its sender signature was not verified (an intake attestation instead): a hosted agency
    #: in ``[hub] refuse_attested`` refuses it
    attested: bool = False


@dataclass(slots=True)
class _Routed:
    """Delivery rows for packages stored in one transaction; their events are in ``timelines``."""

    timelines: TimelineWriter
    rows: list[dict[str, Any]] = field(default_factory=list)
    #: (package seq, error code) -> (recipients, messages) that cannot be routed
    failures: dict[tuple[int, str], tuple[list[str], list[str]]] = field(default_factory=dict)
    woken: set[str] = field(default_factory=set)


def _route(
    routed: _Routed, node: Node, package: Stored, actor: str, now: dt.datetime, *, in_transit: bool
) -> None:
    arrived = TransportState.IN_TRANSIT if in_transit else TransportState.ACCEPTED
    seq, came_through = package.seq, package.came_through
    refusing = node.settings.hub.refuse_attested
    for recipient in package.recipients:
        failure: GatewayError | None = None
        try:
            hop = LOCAL if package.here else node.next_hop(AgencyCode.parse(recipient))
        except RecipientUnreachable as exc:
            hop, failure = UNROUTABLE, exc
        if hop == LOCAL and package.attested and recipient in refusing:
            failure = UnverifiedRefused(
                f"{recipient} takes only packages whose sender signature verified; this one "
                "was accepted under an intake attestation",
                detail={"recipient": recipient},
            )
        elif hop != UNROUTABLE and would_loop(came_through, hop):
            failure = RouteLoop(
                f"{recipient} would go back to {hop}, which the package came through: no node "
                "hosts it (or the directories disagree)",
                detail={"recipient": recipient, "node": hop},
            )
            hop = UNROUTABLE
        outcome: TransportState | None = None
        if hop == LOCAL and failure is None:
            outcome = TransportState.DELIVERED
        elif failure is not None:
            outcome = TransportState.FAILED
            failed, messages = routed.failures.setdefault((seq, failure.code), ([], []))
            failed.append(recipient)
            messages.append(failure.message)
        else:
            routed.woken.add(hop)
        routed.rows.append(
            routed.timelines.open(
                seq,
                package.sender,
                recipient,
                hop=hop,
                arrived=arrived,
                outcome=outcome,
                at=now,
                actor=actor,
                failure=None if failure is None else f"{failure.code}: {failure.message}",
                note=package.note,
            )
        )


_IDS_OF_SEQS = select(documents.c.seq, documents.c.id).where(
    documents.c.seq.in_(bindparam("seqs", expanding=True))
)


def _insert_routed(
    conn: Connection, node: Node, routed: _Routed, *, audit_local: bool = True
) -> set[str]:
    if routed.rows:
        conn.execute(_INSERT_DELIVERIES, routed.rows)
    routed.timelines.flush()
    here: dict[int, list[str]] = {}
    for row in routed.rows:
        if row["next_hop"] == LOCAL:
            here.setdefault(row["document_seq"], []).append(row["recipient"])
    if here and audit_local:
        ids = dict(conn.execute(_IDS_OF_SEQS, {"seqs": sorted(here)}).all())
        audit.append_many(
            conn, [deliver_entry(node.name, ids[seq], names) for seq, names in here.items()]
        )
    if audit_local:  # not a delivered notice the node handles itself: it is in no inbox
        # the DMS's nudge, in the transaction that puts the package in its inbox
        webhooks.enqueue(
            conn,
            node,
            [
                (row["document_seq"], row["recipient"])
                for row in routed.rows
                if row["next_hop"] == LOCAL and row["state"] == TransportState.DELIVERED.value
            ],
        )
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
    sender: str,
    recipients: Sequence[str],
    actor: str,
    *,
    in_transit: bool,
    came_through: Sequence[str] = (),
    audit_local: bool = True,
    here: bool = False,
    note: str | None = None,
    attested: bool = False,
) -> set[str]:
    """Route ``recipients`` of a stored package and insert their delivery rows and events.

    A hosted recipient's row is ``delivered`` at once (its DMS pulls it); a recipient beyond a
    peer gets a waiting outbox row; a recipient nobody serves, or whose next hop is a node the
    package already passed through (``came_through``: a loop), gets a ``failed`` row and the
    sender a failure notice. Returns the peers to wake. A delivery to a hosted agency's inbox
    is audited (``deliver``) unless ``audit_local`` is False (a package the node handles itself).
    ``here``: every recipient is delivered here (a confirmation back at the node it is for).

    Usage: ``woken = add_deliveries(conn, node, seq, sender, recipients, actor, in_transit=True)``
    """
    return add_deliveries_many(
        conn,
        node,
        [Stored(seq, sender, recipients, came_through, here, note, attested)],
        actor,
        in_transit=in_transit,
        audit_local=audit_local,
    )


def add_deliveries_many(
    conn: Connection,
    node: Node,
    packages: Sequence[Stored],
    actor: str,
    *,
    in_transit: bool,
    audit_local: bool = True,
) -> set[str]:
    """:func:`add_deliveries` for several stored packages, with one insert of all their rows
    and one of all their events.

    Usage: ``woken = add_deliveries_many(conn, node, [Stored(seq, sender, rs)], actor, ...)``
    """
    routed = _Routed(TimelineWriter(conn, node.name))
    now = node.now()
    for package in packages:
        _route(routed, node, package, actor, now, in_transit=in_transit)
    return _insert_routed(conn, node, routed, audit_local=audit_local)


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
            "dedup_key": notice_key(sha256),
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
    return add_deliveries(conn, node, notice_seq, sender, [sender], actor, in_transit=False)


def _node_signer(node: Node) -> str:
    return json.dumps(describe(node.key.certificate), sort_keys=True)


def notify_delivered(
    conn: Connection,
    node: Node,
    sender: str,
    arrivals: Sequence[tuple[int, Sequence[str], Sequence[Sequence[str]]]],
    *,
    notices: bool = False,
) -> set[str]:
    """Tell ``sender``'s node, in one notice, that its packages reached recipients here.

    ``arrivals``: (package seq, the recipients hosted here, the path of hops it took).

    With ``notices``, the arrivals are failure notices that reached the agency they were for,
    and ``sender`` is an agency they failed for: the delivered notice goes the way the failed
    package went (the reverse of the notices' path), and the node that gave up, which is on
    that way, keeps it (:func:`gateway.network.relay.receive_batch`). Each node it passes
    marks the notices delivered. A delivered notice is not itself confirmed end to end (that
    would never end): every node on its way applies it, so the next node's signed receipt
    settles it (:func:`mark_sent`).
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
            **({"kind": "notice"} if notices else {}),
        }
        for seq, recipients, path in arrivals
    ]
    return _confirm(
        conn,
        node,
        "delivered",
        sender,
        items,
        message=f"{len(items)} package(s) delivered to the recipient's node",
        facts={"notices": notices},
    )


def _confirm(
    conn: Connection,
    node: Node,
    event: str,
    sender: str,
    items: Sequence[dict[str, Any]],
    *,
    message: str,
    facts: dict[str, Any] | None = None,
) -> set[str]:
    """Sign a confirmation (``delivered`` or ``progress``: one notice, many packages) for
    ``sender``'s node, store it and route it; peers to wake."""
    sealed = sign_notice(
        node.key,
        event=event,
        kind="document",
        sender=sender,
        document_id=None,
        sha256=items[0]["sha256"],
        recipients=sorted({r for item in items for r in item["recipients"]}),
        node=node.name,
        code=event.upper(),
        message=message,
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
        subject=event,
        facts={"event": event, "packages": len(items), **(facts or {})},
    )


#: rows whose progress the sender's node has not heard of, with what the notice needs
_PROGRESS_DUE = (
    select(
        deliveries.c.id,
        deliveries.c.document_seq,
        deliveries.c.recipient,
        documents.c.sender,
        documents.c.document_id,
        documents.c.sha256,
    )
    .join(documents, documents.c.seq == deliveries.c.document_seq)
    .where(deliveries.c.progress_due.is_(True))
    .order_by(deliveries.c.document_seq, deliveries.c.id)
)
_PROGRESS_EVENTS = (
    select(events.c.document_seq, events.c.recipient, events.c.code, events.c.at)
    .add_columns(events.c.description)
    .where(
        and_(
            events.c.document_seq.in_(bindparam("seqs", expanding=True)),
            events.c.kind == "transport",
            events.c.code.in_(PROGRESS_STATES),
        )
    )
    .order_by(events.c.id)
)
_PATHS_IN = (
    select(hops.c.document_seq, hops.c.from_node, hops.c.to_node, hops.c.at)
    .where(
        and_(hops.c.document_seq.in_(bindparam("seqs", expanding=True)), hops.c.direction == "in")
    )
    .order_by(hops.c.document_seq, hops.c.position)
)


def progress_due(conn: Connection, *, peer: str | None = None) -> bool:
    """Whether any recipient's fetch or acknowledgement is still owed to a sender's node (of a
    package that came from ``peer``, when given): a cheap read, before taking the write lock."""
    query = select(deliveries.c.id).where(deliveries.c.progress_due.is_(True))
    if peer is not None:
        query = query.join(documents, documents.c.seq == deliveries.c.document_seq).where(
            documents.c.received_from == f"node:{peer}"
        )
    return conn.execute(query.limit(1)).first() is not None


def report_progress(
    conn: Connection, node: Node, *, peer: str | None = None, limit: int = 500
) -> set[str]:
    """Tell senders' nodes what recipients' systems here did with their packages: one signed
    ``progress`` notice per sender, its items the ``fetched`` and ``acknowledged`` events (with
    time and description: the hub protocol's done, fail or processing) of every row marked
    ``progress_due`` (:mod:`gateway.node.inbox`); the rows are unmarked in the same
    transaction. ``peer``: only packages that came from that node (its dispatcher round);
    None: all (housekeeping). Returns the peers to wake.

    Like a delivered notice, a progress notice goes the way the packages came, every node on
    its way applies it (:func:`gateway.network.notices.mark_progress_many`), the next node's
    receipt settles each hop, and the sender's node keeps it.

    Usage: ``woken = report_progress(conn, node, peer="district-hl")``
    """
    query = _PROGRESS_DUE
    if peer is not None:
        query = query.where(documents.c.received_from == f"node:{peer}")
    query = query.limit(limit)
    if node.engine.dialect.name == "postgresql":
        # two dispatchers never report the same rows: one takes them, the other skips them
        query = query.with_for_update(of=deliveries, skip_locked=True)
    rows = conn.execute(query).all()
    if not rows:
        return set()
    seqs = sorted({r.document_seq for r in rows})
    said: dict[tuple[int, str], list[list[str]]] = {}
    for e in conn.execute(_PROGRESS_EVENTS, {"seqs": seqs}):
        said.setdefault((e.document_seq, e.recipient), []).append(
            [e.code, format_utc(e.at), e.description or ""]
        )
    paths: dict[int, list[list[str]]] = {}
    for h in conn.execute(_PATHS_IN, {"seqs": seqs}):
        paths.setdefault(h.document_seq, []).append([h.from_node, h.to_node, format_utc(h.at)])
    per_sender: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        told = said.get((r.document_seq, r.recipient))
        if not told:  # nothing to say (cannot happen: the mark comes with the event)
            continue
        per_sender.setdefault(r.sender, []).append(
            {
                "document_id": r.document_id,
                "sha256": r.sha256,
                "recipients": [r.recipient],
                "path": paths.get(r.document_seq, []),
                "events": told,
            }
        )
    conn.execute(
        deliveries.update()
        .where(and_(deliveries.c.id.in_([r.id for r in rows]), deliveries.c.progress_due.is_(True)))
        .values(progress_due=False)
    )
    woken: set[str] = set()
    for sender, items in per_sender.items():
        woken |= _confirm(
            conn,
            node,
            "progress",
            sender,
            items,
            message=f"what recipients' systems did with {len(items)} delivered package(s)",
        )
    log.info("outbox.progress", senders=len(per_sender), rows=len(rows))
    return woken


def dead_letter(
    conn: Connection,
    node: Node,
    rows: Sequence[Any],
    *,
    code: str,
    message: str,
    peer: str | None,
    attempted: bool = False,
    worker: str | None = None,
) -> set[str]:
    """Give up on ``rows``: failed, with the reason; one notice per package to its sender.

    ``attempted``: the rows were just tried once more (counted in ``attempts``). ``worker``:
    the dispatcher that holds the rows' lease (only rows it still holds fail); without it
    (housekeeping) only rows nobody holds, or whose lease ran out, fail.

    Only rows still waiting change (:func:`compare_and_set`): a row a delivered notice settled
    meanwhile (the peer committed, its answer was lost) has reached its recipient, and a
    delivered document cannot fail; its sender gets no failure notice.
    """
    if not rows:
        return set()
    now = node.now()
    actor = f"node:{node.name}"
    reason = f"{code}: {message}"
    failed = TransportEvent(state=TransportState.FAILED)
    with TimelineWriter(conn, node.name) as timelines:
        timelines.load(r.document_seq for r in rows)
        # the rules first (nothing written): a timeline that cannot fail leaves its row alone
        allowed = [r for r in rows if _accepts(timelines.timeline(r.document_seq, r.recipient))]
        log_stale(
            conn,
            {r.id for r in rows} - {r.id for r in allowed},
            change="dead_letter",
            states=WAITING_STATES,
            worker=worker,
        )
        changed = set(
            compare_and_set(
                conn,
                [r.id for r in allowed],
                {
                    "attempts": deliveries.c.attempts + (1 if attempted else 0),
                    "state": TransportState.FAILED.value,
                    "next_attempt_at": None,
                    "leased_by": None,
                    "lease_until": None,
                    "outcome_unknown": False,
                    "last_error": reason[:2000],
                    "updated_at": now,
                },
                states=WAITING_STATES,
                worker=worker,
                unleased_at=None if worker is not None else now,
                change="dead_letter",
            )
        )
        rows = [r for r in allowed if r.id in changed]
        for r in rows:
            timelines.record(
                r.document_seq,
                r.recipient,
                failed,
                at=now,
                actor=actor,
                description=reason,
                strict=False,
            )
    if not rows:
        return set()
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


def _accepts(timeline: Timeline) -> bool:
    """The rules let ``timeline`` fail now (it is still on its way)."""
    try:
        apply(timeline, TransportEvent(state=TransportState.FAILED))
    except REFUSALS:
        return False
    return True


def mark_sent(
    conn: Connection,
    node: Node,
    ids: Sequence[int],
    *,
    worker: str,
    peer: str,
    at: dict[int, dt.datetime],
    settled: frozenset[int] = frozenset(),
) -> None:
    """Peer ``peer`` gave its receipt for delivery rows ``ids``: ``in_transit`` there, from the
    time of this node's hop record (``at``, per package seq). Returns nothing to wake.

    ``settled``: package seqs of delivered and progress notices. Every node on such a notice's
    way is one of its addressees (each applies it to its own rows), so the receipt of the next
    one, which applied it in the transaction that signed the receipt, settles it here:
    ``delivered`` at the peer, not left ``in_transit`` waiting for a confirmation of the
    confirmation.

    Usage: ``mark_sent(conn, node, [17], worker=dispatcher.worker, peer="central", at=sent)``

    Only rows still waiting and still leased by ``worker`` move: a "delivered" notice may have
    come back first, and a worker whose lease ran out must not undo another's work.
    """
    moved = compare_and_set_rows(
        conn,
        ids,
        {
            "state": TransportState.IN_TRANSIT.value,
            "next_attempt_at": None,
            "leased_by": None,
            "lease_until": None,
            "last_error": None,
            "outcome_unknown": False,
            "attempts": deliveries.c.attempts + 1,
            "updated_at": node.now(),
        },
        states=WAITING_STATES,
        worker=worker,
        change="in_transit",
    )
    if not moved:
        return
    # not strict: the peer has the package whatever this node's copy of the timeline says,
    # and a refusal must not undo the receipts just stored
    done: list[int] = []
    with TimelineWriter(conn, node.name) as timelines:
        timelines.load(r.document_seq for r in moved)
        for row_id, seq, recipient in sorted(moved):
            timelines.record(
                seq,
                recipient,
                TransportEvent(state=TransportState.IN_TRANSIT, node=peer),
                at=at[seq],
                actor=f"node:{node.name}",
                strict=False,
            )
            if seq in settled and (
                timelines.record(
                    seq,
                    recipient,
                    TransportEvent(state=TransportState.DELIVERED, node=peer),
                    at=at[seq],
                    actor=f"node:{node.name}",
                    description="a confirmation: applied by the next node, which carries it on",
                    strict=False,
                )
                is not None
            ):
                done.append(row_id)
    compare_and_set(
        conn,
        done,
        {"state": TransportState.DELIVERED.value, "updated_at": node.now()},
        states=[TransportState.IN_TRANSIT.value],
        change="notice_settled",
    )


def rearm_failed(
    conn: Connection,
    node: Node,
    seq: int,
    requeued: Mapping[str, str],
    actor: str,
    *,
    came_through: Sequence[str] = (),
) -> set[str]:
    """The previous node sent a package again for recipients whose delivery failed here, after
    it requeued them (``requeued``: recipient -> which requeue, ``<n>@<time>``, from the relay
    item): try them again, with a fresh budget, once per requeue. Returns peers to wake.

    Usage: ``woken |= rearm_failed(conn, node, seq, {r: "1@2026-...Z"}, "node:h49", ...)``

    Each timeline records ``requeued`` (back to ``accepted``, as the row), "sent again" naming
    the upstream requeue; the same requeue sent again (its answer was lost) changes nothing.
    A recipient that failed here without a peer (no node serves it, or it refuses attested
    packages) is decided here again: routed afresh when the directory now serves it, else
    failed again, and the sender gets a new failure notice (the requeue upstream waits for one).
    """
    notes = {r: f"sent again (requeued {at} by {actor})"[:500] for r, at in requeued.items()}
    seen = {
        (r.recipient, r.description)
        for r in conn.execute(
            select(events.c.recipient, events.c.description).where(
                and_(
                    events.c.document_seq == seq,
                    events.c.recipient.in_(list(notes)),
                    events.c.code == REQUEUED,
                )
            )
        )
    }
    recipients = [r for r, note in notes.items() if (r, note) not in seen]
    if not recipients:
        return set()
    now = node.now()
    # locked until the transitions below, in id order, so no delivered notice changes a row
    # between the timeline written from its state and the row's own change
    rows = conn.execute(
        select(deliveries.c.id, deliveries.c.recipient, deliveries.c.next_hop)
        .where(
            and_(
                deliveries.c.document_seq == seq,
                deliveries.c.recipient.in_(list(recipients)),
                deliveries.c.state == TransportState.FAILED.value,
            )
        )
        .order_by(deliveries.c.id)
        .with_for_update()
    ).all()
    if not rows:
        return set()
    woken: set[str] = set()
    next_hops: dict[int, str] = {}
    failing: dict[str, tuple[list[Any], list[str]]] = {}
    attested = (
        conn.execute(select(documents.c.attestation).where(documents.c.seq == seq)).scalar()
        is not None
    )
    for r in rows:
        hop, failure = _decide_again(node, r, came_through, attested=attested)
        if failure is not None:
            failed, messages = failing.setdefault(failure.code, ([], []))
            failed.append(r)
            messages.append(failure.message)
        elif hop is not None:
            next_hops[r.id] = hop
    with TimelineWriter(conn, node.name) as timelines:
        timelines.load([seq])
        again = {
            r.id
            for r in rows
            if (r.id in next_hops or any(r in f for f, _ in failing.values()))
            and timelines.record(
                seq,
                r.recipient,
                Requeue(),
                at=now,
                actor=actor,
                description=notes[r.recipient],
                strict=False,
            )
            is not None
        }
        for code, (failed, messages) in failing.items():
            for r, message in zip(failed, messages, strict=True):
                if r.id in again:
                    timelines.record(
                        seq,
                        r.recipient,
                        TransportEvent(state=TransportState.FAILED),
                        at=now,
                        actor=actor,
                        description=f"{code}: {message}",
                        strict=False,
                    )
    for code, (failed, messages) in failing.items():
        told = [r.recipient for r in failed if r.id in again]
        if told:
            conn.execute(
                deliveries.update()
                .where(deliveries.c.id.in_([r.id for r in failed if r.id in again]))
                .values(updated_at=now, last_error=f"{code} again"[:2000])
            )
            woken |= _notify(
                conn, node, seq, told, code=code, message="; ".join(messages), failed_hop=None
            )
    rearmed = [r for r in rows if r.id in next_hops and r.id in again]
    for hop in sorted({next_hops[r.id] for r in rearmed}):
        changed = compare_and_set(
            conn,
            [r.id for r in rearmed if next_hops[r.id] == hop],
            {
                "state": TransportState.ACCEPTED.value,
                "next_hop": hop,
                "attempts": 0,
                "created_at": now,
                "updated_at": now,
                "next_attempt_at": now,
                "last_error": None,
                "leased_by": None,
                "lease_until": None,
            },
            states=[TransportState.FAILED.value],
            change="rearm",
        )
        if changed:
            woken.add(hop)
    return woken


def _decide_again(
    node: Node, row: Any, came_through: Sequence[str], *, attested: bool
) -> tuple[str | None, GatewayError | None]:
    """Where a failed row goes when its package is sent again: (next hop, None) to send it
    there, (None, failure) when it fails again here, (None, None) to leave it (a hosted
    recipient that no longer refuses it is an operator's requeue here, not a relay's)."""
    if row.next_hop == LOCAL:
        if attested and row.recipient in node.settings.hub.refuse_attested:
            return None, UnverifiedRefused(
                f"{row.recipient} takes only packages whose sender signature verified",
                detail={"recipient": row.recipient},
            )
        return None, None
    if row.next_hop != UNROUTABLE:
        return row.next_hop, None
    try:
        hop = node.next_hop(AgencyCode.parse(row.recipient))
    except RecipientUnreachable as exc:
        return None, exc
    if hop == LOCAL:
        return None, None  # hosted here now: an operator's requeue here delivers it
    if would_loop(came_through, hop):
        return None, RouteLoop(
            f"{row.recipient} would go back to {hop}, which the package came through",
            detail={"recipient": row.recipient, "node": hop},
        )
    return hop, None
