"""Admin actions on a node's deliveries: list them, requeue dead letters (CLI and admin API).

Usage::

    rows = list_deliveries(node, state="failed", peer="h49-halong")
    requeue(node, [row["id"] for row in rows], actor="admin:operator")

A requeue is audited with the operator's name; only a failed delivery is requeued. Its
timeline records ``requeued`` (the rules' :class:`~gateway.node.status.Requeue`: ``failed`` back
to ``accepted``), then ``delivered`` when the recipient is hosted here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import structlog
from sqlalchemy import select

from gateway.agency import AgencyCode
from gateway.errors import DeliveryNotFailed, DeliveryNotFound
from gateway.evidence import audit
from gateway.node import webhooks
from gateway.node.container import LOCAL, Node
from gateway.node.status import Requeue, TransportEvent, TransportState
from gateway.node.timeline import TimelineWriter
from gateway.node.transitions import compare_and_set
from gateway.storage.tables import deliveries, documents

__all__ = ["list_deliveries", "requeue"]

log = structlog.get_logger("gateway.admin")


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

    Usage: ``requeue(node, [17, 18], actor="admin:operator")``

    Raises :class:`~gateway.errors.DeliveryNotFound` for an unknown id and
    :class:`~gateway.errors.DeliveryNotFailed` for a delivery that has not failed; then nothing
    is requeued.
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
            )
            .where(deliveries.c.id.in_(list(ids)))
            # locked (PostgreSQL) in id order until the transitions below: the timelines are
            # written from these states
            .order_by(deliveries.c.id)
            .with_for_update()
        ).all()
        found = {r.id for r in rows}
        missing = [i for i in ids if i not in found]
        if missing:
            raise DeliveryNotFound(f"no delivery {missing[0]}", detail={"id": missing[0]})
        for row in rows:
            if row.state != TransportState.FAILED.value:
                raise DeliveryNotFailed(
                    f"delivery {row.id} is {row.state}, not failed: only a failed delivery is "
                    "requeued",
                    detail={"id": row.id, "state": row.state},
                )
        timelines = TimelineWriter(conn, node.name)
        timelines.load(row.document_seq for row in rows)
        # (package seq, recipient) delivered to an inbox here by this requeue
        arrived: list[tuple[int, str]] = []
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
                "outcome_unknown": False,
            }
            # the rules say where a requeue leads (accepted); strict: the row said failed, so
            # a timeline that disagrees is a bug to stop at, not to write over
            t = timelines.record(row.document_seq, row.recipient, Requeue(), at=now, actor=actor)
            if hop == LOCAL:
                t = timelines.record(
                    row.document_seq,
                    row.recipient,
                    TransportEvent(state=TransportState.DELIVERED),
                    at=now,
                    actor=actor,
                )
                values["next_attempt_at"] = None
                arrived.append((row.document_seq, row.recipient))
            else:
                values["next_attempt_at"] = now
                woken.add(hop)
            assert t is not None  # strict: a refusal raised
            values["state"] = t.transport.value
            if not compare_and_set(
                conn, [row.id], values, states=[TransportState.FAILED.value], change="requeue"
            ):  # pragma: no cover - the row is locked since it was read as failed
                raise DeliveryNotFailed(
                    f"delivery {row.id} changed while it was requeued: nothing requeued",
                    detail={"id": row.id, "state": "changed"},
                )
        timelines.flush()
        # the DMS's nudge, in the transaction that puts the package in its inbox
        webhooks.enqueue(conn, node, arrived)
        audit.append(
            conn, event="requeue", actor=actor, subject=None, data={"deliveries": sorted(found)}
        )
    log.info("outbox.requeued", deliveries=sorted(found), actor=actor)
    node.wake(woken)
    return sorted(found)
