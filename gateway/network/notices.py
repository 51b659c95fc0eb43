"""Notices coming back to a node: what the next nodes report about packages it relayed.

A ``delivered`` notice lists packages that reached their recipients' node; a ``failed`` notice
says a node gave up on some recipients; a ``progress`` notice says what the recipients' systems
did with delivered packages (fetched, acknowledged: the hub protocol's processing, done, fail).
All are node-signed (:mod:`gateway.evidence.hops`) and checked on arrival
(:mod:`gateway.network.relay`); here their news is applied to this node's delivery rows and
timelines. Creating notices is the outbox's business
(:mod:`gateway.network.outbox`). News from another node is applied through the rules
(:class:`gateway.node.timeline.TimelineWriter`, not strict): what does not fit this node's
timeline (a late report, a race) is logged and left out, and so is its row's change.

Usage::

    mark_delivered_many(conn, node, [(seq, ["000.00.00.G12"], path)], at_node="central",
                        actor="node:h49")
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, bindparam, select
from sqlalchemy.engine import Connection

from gateway.evidence.nodekey import parse_utc
from gateway.node.container import Node
from gateway.node.status import Requeue, TransportEvent, TransportState
from gateway.node.timeline import TimelineWriter
from gateway.node.transitions import WAITING_STATES, compare_and_set
from gateway.storage.tables import deliveries, events

__all__ = ["mark_delivered", "mark_delivered_many", "mark_failed", "mark_progress_many"]


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
    """Record a failure reported by ``at_node`` (a notice) on this node's rows and timeline.

    Usage: ``mark_failed(conn, node, seq, [r], code=c, message=m, at_node="h49", actor=a)``
    """
    now = node.now()
    # locked (PostgreSQL) in id order until the change below: the timeline is written from
    # these states, so they must not move in between
    rows = conn.execute(
        select(deliveries.c.id, deliveries.c.recipient, deliveries.c.state)
        .where(and_(deliveries.c.document_seq == seq, deliveries.c.recipient.in_(list(recipients))))
        .order_by(deliveries.c.id)
        .with_for_update()
    ).all()
    # delivered is final for transport, and a failure already recorded is not recorded twice
    failing = [r for r in rows if r.state in WAITING_STATES]
    if not failing:
        return
    with TimelineWriter(conn, node.name) as timelines:
        timelines.load([seq])
        failing = [
            r
            for r in failing
            if timelines.record(
                seq,
                r.recipient,
                TransportEvent(state=TransportState.FAILED, node=at_node),
                at=now,
                actor=actor,
                description=f"{code}: {message}",
                strict=False,
            )
            is not None
        ]
    compare_and_set(
        conn,
        [r.id for r in failing],
        {
            "state": TransportState.FAILED.value,
            "next_attempt_at": None,
            "leased_by": None,
            "lease_until": None,
            "last_error": f"{code} at {at_node}"[:2000],
            "updated_at": now,
        },
        states=WAITING_STATES,
        change="failed_notice",
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
    show yet (its node and time), then ``delivered``.

    Usage: ``mark_delivered(conn, node, seq, [r], path=[[a, b, at]], at_node=b, actor=act)``
    """
    mark_delivered_many(conn, node, [(seq, recipients, path)], at_node=at_node, actor=actor)


#: locked (PostgreSQL; SQLite has one writer) from this read to the update, in id order, so the
#: rows' states do not change under the timelines written from them
_DELIVERY_ROWS_OF = (
    select(deliveries.c.id, deliveries.c.document_seq, deliveries.c.recipient, deliveries.c.state)
    .where(deliveries.c.document_seq.in_(bindparam("seqs", expanding=True)))
    .order_by(deliveries.c.id)
    .with_for_update()
)
_IN_TRANSIT_SEEN = select(events.c.document_seq, events.c.recipient, events.c.node).where(
    and_(
        events.c.document_seq.in_(bindparam("seqs", expanding=True)),
        events.c.code == TransportState.IN_TRANSIT.value,
    )
)
#: what a delivered notice moves: a row still waiting, or failed here while the package went on
#: (requeued downstream); ``delivered`` is final for transport, so nothing else
_MOVABLE = (*WAITING_STATES, TransportState.FAILED.value)


def mark_delivered_many(
    conn: Connection,
    node: Node,
    packages: Sequence[tuple[int, Sequence[str], Sequence[Sequence[str]]]],
    *,
    at_node: str,
    actor: str,
    delivered_at: dt.datetime | None = None,
) -> None:
    """:func:`mark_delivered` for the packages of one delivered notice, (seq, recipients,
    path) each, in a handful of statements whatever their number. ``delivered_at``: when
    ``at_node`` delivered them (the signed notice's time); None: now, as this node learns it.

    Usage: ``mark_delivered_many(conn, node, [(seq, [r], path)], at_node="h41", actor=a)``
    """
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
    moved: dict[int, None] = {}  # ordered, and a fast membership test
    timelines = TimelineWriter(conn, node.name)
    timelines.load(seqs)
    for seq, recipients, path in packages:
        for recipient in recipients:
            r = rows.get((seq, recipient))
            if r is None or r.state not in _MOVABLE or r.id in moved:
                continue
            if r.state == TransportState.FAILED.value:
                # requeued downstream after a failure notice: the delivery proves it went on
                timelines.record(
                    seq,
                    recipient,
                    Requeue(),
                    at=now,
                    actor=actor,
                    node=at_node,
                    description="requeued",
                    strict=False,
                )
            for sent_from, to, at in path:
                # the last hop's in_transit is implied by delivered there; except the hop from
                # this node: that is the dispatcher's own in_transit, which this notice
                # overtook (the peer's answer was late or lost), so it is recorded here, in
                # its place before delivered, and the dispatcher's comes too late to move the row
                if (seq, recipient, to) in seen or (to == at_node and sent_from != node.name):
                    continue
                timelines.record(
                    seq,
                    recipient,
                    TransportEvent(state=TransportState.IN_TRANSIT, node=to),
                    at=parse_utc(at),
                    actor=actor,
                    strict=False,
                )
            done = timelines.record(
                seq,
                recipient,
                TransportEvent(state=TransportState.DELIVERED, node=at_node),
                at=delivered_at or now,
                actor=actor,
                strict=False,
            )
            if done is not None:
                moved[r.id] = None
    timelines.flush()
    # the row leaves the dispatcher's hands: no lease, no next attempt (a batch still out
    # finds the row delivered and leaves it alone, see compare_and_set)
    compare_and_set(
        conn,
        list(moved),
        {
            "state": TransportState.DELIVERED.value,
            "next_attempt_at": None,
            "leased_by": None,
            "lease_until": None,
            "updated_at": now,
        },
        states=_MOVABLE,
        change="delivered",
    )


#: what a progress notice moves: a row at the recipient's node, not yet acknowledged
_PROGRESSING = (TransportState.DELIVERED.value, TransportState.FETCHED.value)


def mark_progress_many(
    conn: Connection,
    node: Node,
    packages: Sequence[tuple[int, Sequence[str], Sequence[Sequence[str]], Sequence[Sequence[str]]]],
    *,
    at_node: str,
    actor: str,
) -> None:
    """Record what recipients' systems at ``at_node`` did with packages: (seq, recipients,
    path, events) each, ``events`` the ``[state, at, description]`` of their fetch and
    acknowledgement. A row still waiting here is marked delivered first (the progress notice
    overtook the delivered one); a repeated notice adds nothing.

    Usage: ``mark_progress_many(conn, node, [(seq, [r], path, [["fetched", at, ""]])], ...)``
    """
    if not packages:
        return
    # delivered no later than the first thing its system did with it
    first = min(parse_utc(at) for _, _, _, said in packages for _, at, _ in said)
    mark_delivered_many(
        conn,
        node,
        [(seq, recipients, path) for seq, recipients, path, _ in packages],
        at_node=at_node,
        actor=actor,
        delivered_at=first,
    )
    seqs = sorted({seq for seq, _, _, _ in packages})
    rows: dict[tuple[int, str], Any] = {
        (r.document_seq, r.recipient): r for r in conn.execute(_DELIVERY_ROWS_OF, {"seqs": seqs})
    }
    now = node.now()
    moved: dict[str, list[int]] = {}
    with TimelineWriter(conn, node.name) as timelines:
        timelines.load(seqs)
        for seq, recipients, _, said in packages:
            for recipient in recipients:
                r = rows.get((seq, recipient))
                if r is None or r.state not in _PROGRESSING:
                    continue
                reached = None
                for state, at, description in said:
                    after = timelines.record(
                        seq,
                        recipient,
                        TransportEvent(state=TransportState(state), node=at_node),
                        at=parse_utc(at),
                        actor=actor,
                        description=description or None,
                        strict=False,
                        repeats=False,
                    )
                    if after is not None:
                        reached = after.transport
                if reached is not None and reached.value != r.state:
                    moved.setdefault(reached.value, []).append(r.id)
    for state, ids in moved.items():
        compare_and_set(
            conn,
            ids,
            {"state": state, "updated_at": now},
            states=_PROGRESSING,
            change=f"progress_{state}",
        )
