"""The one owner of delivery-row transitions: every change of a row's state is a compare-and-set.

A delivery row (``deliveries``, one per package and recipient) is changed by several actors at
once: the dispatcher's batch (claim, answer, retry, dead letter), notices coming back from the
next nodes (delivered, failed), housekeeping, an admin's requeue. Each change says which states
it expects (and, for a dispatcher, the lease it holds) in the UPDATE itself
(:func:`compare_and_set`), so a change that finds another state does nothing and says so in the
log (``delivery.stale_update``); ``delivered`` is final for transport, and nothing moves a
delivered row back. Writers that read rows first lock them in id order
(:func:`lock_in_order`, PostgreSQL), so two transactions never deadlock on the same rows.

docs/network.md ("Delivery state under races") walks through the races this settles.

Usage::

    changed = compare_and_set(conn, ids, {"state": "failed", ...}, states=WAITING_STATES,
                              worker=dispatcher.worker, change="dead_letter")
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import structlog
from sqlalchemy import and_, bindparam, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from gateway.node.status import TransportState
from gateway.storage.tables import deliveries

__all__ = [
    "AT_RECIPIENT",
    "WAITING_STATES",
    "compare_and_set",
    "compare_and_set_rows",
    "lock_in_order",
    "log_stale",
]

log = structlog.get_logger("gateway.outbox")

#: states of a row that still has to be handed on (by this node, or by the next one)
WAITING_STATES = (TransportState.ACCEPTED.value, TransportState.IN_TRANSIT.value)
#: states of a row whose package is at the recipient's node
AT_RECIPIENT = (
    TransportState.DELIVERED.value,
    TransportState.FETCHED.value,
    TransportState.ACKNOWLEDGED.value,
)


def compare_and_set(
    conn: Connection,
    ids: Sequence[int],
    values: dict[str, Any],
    *,
    states: Sequence[str],
    worker: str | None = None,
    unleased_at: dt.datetime | None = None,
    change: str,
) -> list[int]:
    """Apply ``values`` to the delivery rows ``ids`` that are still in one of ``states`` (and,
    with ``worker``, still leased by it; with ``unleased_at``, not leased or whose lease ran out
    by then); the ids it changed.

    Usage: ``changed = compare_and_set(conn, ids, {...}, states=WAITING_STATES, worker=w,
    change="reschedule")``

    Every transition of a delivery row goes through here: the condition is in the UPDATE
    itself, so a delivered notice committed by another transaction between the caller's read
    and this write (PostgreSQL re-checks the WHERE of a row it waited for) is never undone.
    A row found in another state is left alone and logged (``delivery.stale_update``); the
    caller acts (timeline, notice) only on the ids returned.
    """
    return [
        row.id
        for row in compare_and_set_rows(
            conn,
            ids,
            values,
            states=states,
            worker=worker,
            unleased_at=unleased_at,
            change=change,
        )
    ]


def compare_and_set_rows(
    conn: Connection,
    ids: Sequence[int],
    values: dict[str, Any],
    *,
    states: Sequence[str],
    worker: str | None = None,
    unleased_at: dt.datetime | None = None,
    change: str,
) -> list[Any]:
    """:func:`compare_and_set`, returning the changed rows' ``id``, ``document_seq`` and
    ``recipient`` (for the caller's timeline events), in one statement.

    Usage: ``moved = compare_and_set_rows(conn, ids, {...}, states=..., change="in_transit")``
    """
    if not ids:
        return []
    lock_in_order(conn, ids)
    where: list[ColumnElement[bool]] = [
        deliveries.c.id.in_(list(ids)),
        deliveries.c.state.in_(list(states)),
    ]
    if worker is not None:
        where.append(deliveries.c.leased_by == worker)
    if unleased_at is not None:
        where.append(
            or_(deliveries.c.lease_until.is_(None), deliveries.c.lease_until < unleased_at)
        )
    changed = conn.execute(
        update(deliveries)
        .where(and_(*where))
        .values(**values)
        .returning(deliveries.c.id, deliveries.c.document_seq, deliveries.c.recipient)
    ).all()
    log_stale(
        conn, set(ids) - {row.id for row in changed}, change=change, states=states, worker=worker
    )
    return list(changed)


#: the rows a transition is about to change, locked in id order (PostgreSQL; SQLite has one
#: writer and ignores FOR UPDATE)
_LOCK_IN_ORDER = (
    select(deliveries.c.id)
    .where(deliveries.c.id.in_(bindparam("ids", expanding=True)))
    .order_by(deliveries.c.id)
    .with_for_update()
)


def lock_in_order(conn: Connection, ids: Sequence[int]) -> None:
    """Lock rows ``ids`` in id order before changing them (PostgreSQL), as every writer of
    delivery rows does, so two transactions changing overlapping rows wait for each other
    instead of deadlocking."""
    if len(ids) > 1 and conn.dialect.name == "postgresql":
        conn.execute(_LOCK_IN_ORDER, {"ids": sorted(set(ids))}).all()


def log_stale(
    conn: Connection, ids: set[int], *, change: str, states: Sequence[str], worker: str | None
) -> None:
    """Log the rows a compare-and-set left alone, with the state it found them in."""
    if not ids:
        return
    for row in conn.execute(
        select(deliveries.c.id, deliveries.c.state, deliveries.c.leased_by).where(
            deliveries.c.id.in_(sorted(ids))
        )
    ):
        # normal on slow links (a delivered notice overtook the batch's answer): info
        log.info(
            "delivery.stale_update",
            id=row.id,
            change=change,
            expected=list(states),
            found=row.state,
            leased_by=row.leased_by,
            worker=worker,
        )
