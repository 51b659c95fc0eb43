"""What an agency's DMS pulls: its inbox, the exact stored bytes, acknowledgements, timelines.

An agency sees only its own documents: those addressed to it (inbox, fetch, ack) and those it
sent (fetch, timeline). Everything else is :class:`~gateway.errors.DocumentNotFound`, the same
answer as for an id that does not exist, so ids cannot be probed.

Usage::

    page = list_inbox(node, caller, limit=50)
    data = fetch(node, caller, page.items[0]["id"])
    acknowledge(node, caller, page.items[0]["id"])
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import and_, select

from gateway.errors import DocumentNotFound, Forbidden, UnknownAgency
from gateway.evidence import audit
from gateway.node.container import LOCAL, Node
from gateway.node.ingest import actor_of
from gateway.node.status import TransportEvent, TransportState
from gateway.node.timeline import TimelineWriter
from gateway.node.transitions import compare_and_set
from gateway.storage.tables import deliveries, documents, events, hops
from gateway.trust.caller import Identity

__all__ = ["InboxPage", "acknowledge", "evidence_view", "fetch", "list_inbox", "status_view"]

log = structlog.get_logger("gateway.inbox")

#: transport states in which a delivery waits in the recipient's inbox
_WAITING = (TransportState.DELIVERED.value, TransportState.FETCHED.value)


@dataclass(frozen=True, slots=True)
class InboxPage:
    """One page of an inbox, oldest first; pass ``next_after`` to get the next page."""

    items: list[dict[str, Any]]
    next_after: int | None


def _agency(node: Node, caller: Identity) -> str:
    if caller.kind != "agency" or caller.agency is None:
        raise Forbidden("only an agency's DMS has an inbox")
    if str(caller.agency) not in node.hosted:
        # a relay node holds copies of documents in transit: they are not the agency's to pull
        raise UnknownAgency(
            f"agency {caller.agency} is not hosted by node {node.name}",
            detail={"agency": str(caller.agency)},
        )
    return str(caller.agency)


def list_inbox(node: Node, caller: Identity, *, limit: int = 50, after: int = 0) -> InboxPage:
    """Packages waiting for the caller (delivered or fetched, not yet acknowledged)."""
    agency = _agency(node, caller)
    limit = max(1, min(limit, 500))
    query = (
        select(
            documents.c.seq,
            documents.c.id,
            documents.c.kind,
            documents.c.sender,
            documents.c.document_id,
            documents.c.subject,
            documents.c.status_code,
            documents.c.size,
            documents.c.sha256,
            documents.c.received_at,
            documents.c.attestation,
            deliveries.c.state,
        )
        .join(deliveries, deliveries.c.document_seq == documents.c.seq)
        .where(
            and_(
                deliveries.c.recipient == agency,
                deliveries.c.next_hop == LOCAL,
                deliveries.c.state.in_(_WAITING),
                documents.c.seq > after,
            )
        )
        .order_by(documents.c.seq)
        .limit(limit + 1)
    )
    with node.reader.connect() as conn:
        rows = conn.execute(query).all()
    more = len(rows) > limit
    rows = rows[:limit]
    items = [
        {
            "id": r.id,
            "kind": r.kind,
            "sender": r.sender,
            "document_id": r.document_id,
            "subject": r.subject,
            "status_code": r.status_code,
            "size": r.size,
            "sha256": r.sha256,
            "received_at": r.received_at.isoformat(),
            "state": r.state,
            "attested_by": _attested_by(r.attestation),
        }
        for r in rows
    ]
    return InboxPage(items=items, next_after=rows[-1].seq if more and rows else None)


def _attested_by(attestation: str | None) -> str | None:
    """The node that attested a package whose sender signature was not verified, or None."""
    if attestation is None:
        return None
    return str(json.loads(attestation)["attestation"]["node"])


def _visible(conn: Any, doc_id: str, agency: str) -> Any:
    """The document row and the caller's delivery (None when the caller only sent it)."""
    row = conn.execute(
        select(
            documents.c.seq, documents.c.sender, documents.c.kind, documents.c.received_from
        ).where(documents.c.id == doc_id)
    ).first()
    if row is None:
        raise DocumentNotFound(detail={"id": doc_id})
    delivery = conn.execute(
        select(deliveries.c.id, deliveries.c.state).where(
            and_(deliveries.c.document_seq == row.seq, deliveries.c.recipient == agency)
        )
    ).first()
    if delivery is None and row.sender != agency:
        raise DocumentNotFound(detail={"id": doc_id})
    return row, delivery


def fetch(node: Node, caller: Identity, doc_id: str, *, note: str | None = None) -> bytes:
    """The exact stored bytes. A recipient's first fetch moves its delivery to ``fetched``
    (``note``: the event's description, e.g. the hub protocol's ``processing``)."""
    agency = _agency(node, caller)
    with node.reader.connect() as conn:  # reading 50 MB must not hold the write lock
        row, delivery = _visible(conn, doc_id, agency)
        stored = conn.execute(
            select(documents.c.envelope).where(documents.c.seq == row.seq)
        ).scalar_one()
    data = bytes(stored)
    if delivery is not None and delivery.state == TransportState.DELIVERED.value:
        with node.writing() as conn:
            row, delivery = _visible(conn, doc_id, agency)  # again, under the write lock
            if delivery.state == TransportState.DELIVERED.value:
                _advance(node, conn, row, agency, TransportState.FETCHED, actor_of(caller), note)
                audit.append(conn, event="fetch", actor=actor_of(caller), subject=doc_id, data={})
        _wake_sender_side(node, row)
    log.info("inbox.fetched", doc=doc_id, agency=agency, size=len(data))
    return data


def acknowledge(node: Node, caller: Identity, doc_id: str, *, note: str | None = None) -> str:
    """Record that the recipient's DMS has the document; idempotent. Returns the state.
    ``note``: the event's description (e.g. the hub protocol's ``fail``)."""
    agency = _agency(node, caller)
    with node.writing() as conn:
        row, delivery = _visible(conn, doc_id, agency)
        if delivery is None:
            raise Forbidden("only a recipient acknowledges a document", detail={"id": doc_id})
        moved = delivery.state != TransportState.ACKNOWLEDGED.value
        if moved:
            _advance(node, conn, row, agency, TransportState.ACKNOWLEDGED, actor_of(caller), note)
            audit.append(
                conn,
                event="ack",
                actor=actor_of(caller),
                subject=doc_id,
                data={"note": note} if note else {},
            )
    if moved:
        _wake_sender_side(node, row)
    log.info("inbox.acknowledged", doc=doc_id, agency=agency)
    return TransportState.ACKNOWLEDGED.value


def _from_node(row: Any) -> str | None:
    """The node a package came from, when its sender's node must hear what the recipient
    did with it (a progress notice); None for a package sent here, from a hub, or a notice."""
    source = row.received_from or ""
    if row.kind == "notice" or not source.startswith("node:"):
        return None
    return str(source[len("node:") :])


def _wake_sender_side(node: Node, row: Any) -> None:
    """Wake the dispatcher for the node the package came from: its round reports the
    progress due (:func:`gateway.network.outbox.report_progress`)."""
    peer = _from_node(row)
    if peer is not None:
        node.wake([peer])


def _advance(
    node: Node,
    conn: Any,
    doc: Any,
    recipient: str,
    state: TransportState,
    actor: str,
    note: str | None = None,
) -> None:
    """The recipient's DMS moved its delivery on: the rules check it, then row and event. For
    a package from another node the row is marked ``progress_due`` in the same transaction, so
    a crash loses nothing: the sender's node is told by a progress notice, made by the
    dispatcher woken after the commit (or by its next tick)."""
    now = node.now()
    # locked (PostgreSQL) until its change: the timeline is written from its state
    row = conn.execute(
        select(deliveries.c.id)
        .where(and_(deliveries.c.document_seq == doc.seq, deliveries.c.recipient == recipient))
        .with_for_update()
    ).one()
    with TimelineWriter(conn, node.name) as timelines:
        timelines.record(
            doc.seq, recipient, TransportEvent(state=state), at=now, actor=actor, description=note
        )
    compare_and_set(
        conn,
        [row.id],
        {
            "state": state.value,
            "updated_at": now,
            **({"progress_due": True} if _from_node(doc) is not None else {}),
        },
        states=_WAITING,
        change=state.value,
    )


def evidence_view(node: Node, caller: Identity, doc_id: str) -> dict[str, Any]:
    """Hop records and receipts of a package, for its sender, a recipient or the node's admin.

    An auditor checks each with :func:`gateway.evidence.hops.verify_hops` and
    :func:`gateway.evidence.receipts.verify_receipt`, and the envelope (``GET /documents/{id}``)
    with ``gateway verify``: nothing here needs to be believed.
    """
    admin = node.is_admin(caller)
    with node.reader.connect() as conn:
        if admin:
            row = conn.execute(
                select(documents.c.seq, documents.c.sender).where(documents.c.id == doc_id)
            ).first()
            if row is None:
                raise DocumentNotFound(detail={"id": doc_id})
        else:
            row, _ = _visible(conn, doc_id, _agency(node, caller))
        doc = conn.execute(
            select(
                documents.c.id,
                documents.c.kind,
                documents.c.sender,
                documents.c.document_id,
                documents.c.sha256,
                documents.c.size,
                documents.c.receipt,
                documents.c.received_from,
                documents.c.attestation,
            ).where(documents.c.seq == row.seq)
        ).one()
        chain = conn.execute(
            select(
                hops.c.direction,
                hops.c.position,
                hops.c.from_node,
                hops.c.to_node,
                hops.c.at,
                hops.c.record,
                hops.c.receipt,
            )
            .where(hops.c.document_seq == row.seq)
            .order_by(hops.c.position, hops.c.id)
        ).all()
    return {
        "id": doc.id,
        "kind": doc.kind,
        "sender": doc.sender,
        "document_id": doc.document_id,
        "sha256": doc.sha256,
        "size": doc.size,
        "node": node.name,
        "received_from": doc.received_from,
        "receipt": json.loads(doc.receipt),
        # the sender's signature was not verified: the intake node's sealed word instead
        # (gateway.evidence.attestations.verify_attestation checks it offline)
        "attestation": None if doc.attestation is None else json.loads(doc.attestation),
        "signature": "verified" if doc.attestation is None else "not verified (attested)",
        "hops": [
            {
                "direction": h.direction,
                "position": h.position,
                "from": h.from_node,
                "to": h.to_node,
                "at": h.at.isoformat(),
                "record": json.loads(h.record),
                "receipt": json.loads(h.receipt),
            }
            for h in chain
        ],
    }


def status_view(node: Node, caller: Identity, doc_id: str) -> dict[str, Any]:
    """The sender's view: per recipient, the transport state and every event with its time."""
    with node.reader.connect() as conn:
        row = conn.execute(
            select(
                documents.c.seq,
                documents.c.id,
                documents.c.sender,
                documents.c.document_id,
                documents.c.received_at,
                documents.c.attestation,
            ).where(documents.c.id == doc_id)
        ).first()
        admin = node.is_admin(caller)
        if row is None or not (admin or (caller.agency and str(caller.agency) == row.sender)):
            raise DocumentNotFound(detail={"id": doc_id})
        states = conn.execute(
            select(deliveries.c.recipient, deliveries.c.state, deliveries.c.next_hop)
            .where(deliveries.c.document_seq == row.seq)
            .order_by(deliveries.c.id)
        ).all()
        timeline = conn.execute(
            select(
                events.c.recipient,
                events.c.at,
                events.c.kind,
                events.c.code,
                events.c.node,
                events.c.actor,
                events.c.description,
            )
            .where(events.c.document_seq == row.seq)
            .order_by(events.c.id)
        ).all()
    per: dict[str, dict[str, Any]] = {
        s.recipient: {
            "recipient": s.recipient,
            "transport": s.state,
            "next_hop": s.next_hop,
            "status": None,
            "events": [],
        }
        for s in states
    }
    for e in timeline:
        entry = per.get(e.recipient)
        if entry is None:
            continue
        entry["events"].append(
            {
                "at": e.at.isoformat(),
                "kind": e.kind,
                "code": e.code,
                "node": e.node,
                "actor": e.actor,
                "description": e.description,
            }
        )
        if e.kind == "status":
            entry["status"] = e.code
    return {
        "id": row.id,
        "sender": row.sender,
        "document_id": row.document_id,
        "received_at": row.received_at.isoformat(),
        # set when the sender's signature was not verified (the node that attested the intake)
        "attested_by": _attested_by(row.attestation),
        "recipients": list(per.values()),
    }
