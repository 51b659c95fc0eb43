"""Receiving a relay batch from a neighbour node: check everything again, store, answer receipts.

A node believes nothing it is told by another node without checking it: for every item of a
batch it verifies the hop chain (:func:`gateway.evidence.hops.verify_hops`: signatures, node
certificates, digests, no loop, the last hop from the caller to this node), the receipts of the
earlier hops, and the package itself (:class:`gateway.trust.verification.Verifier`, every check, as
at ingest) or, for a failure notice, the notice's signature. Items that pass are stored in ONE
transaction, in order (so a batch keeps the sender's order), each with its hop records, its
delivery rows (deliver here, or on to the next node) and its audit entry; then each gets a
receipt signed by this node. An item already stored (same sender and DocumentId, same bytes)
gets its original receipt back: receive is idempotent, a retried relay is never a second
document. A refused item is answered with its stable code and recorded in the audit log.

Usage::

    require_neighbour(node, caller)          # before the body is read (gateway.api.app)
    results = receive_batch(node, caller, decode_batch(body, max_items=500))
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import and_, bindparam, select, update
from sqlalchemy.engine import Connection

from gateway import jsonsafe
from gateway.agency import AgencyCode
from gateway.envelope.model import DocumentPackage, PackageKind, StatusCode, StatusPackage
from gateway.errors import (
    DocumentConflict,
    Forbidden,
    GatewayError,
    HopChainBroken,
    PeerUnknown,
    ReceiptInvalid,
    StatusError,
)
from gateway.evidence import audit
from gateway.evidence.hops import trusted_chain, verify_hops, verify_notice
from gateway.evidence.nodekey import canonical_json, certificates_from_pem, parse_utc
from gateway.evidence.receipts import make_receipt, verify_receipt
from gateway.network import notices, outbox
from gateway.network.wire import RelayItem
from gateway.node.container import Node
from gateway.node.ingest import timeline_of
from gateway.node.status import TransportState, apply_status, apply_transport
from gateway.storage.tables import deliveries, documents, events, hops
from gateway.trust.binding import describe
from gateway.trust.caller import Identity

__all__ = ["receive_batch", "require_neighbour"]

log = structlog.get_logger("gateway.relay")


@dataclass(slots=True)
class _Checked:
    """An item that passed every check, with what storing it needs."""

    index: int
    item: RelayItem
    #: the hop records' signed fields, in order
    hops: list[dict[str, Any]]
    sha256: str
    sender: str
    document_id: str | None
    #: the recipients the last hop carried it for
    recipients: list[str]
    signer: dict[str, Any]
    package: DocumentPackage | StatusPackage | None = None
    notice: dict[str, Any] | None = None
    signing_time: Any = None
    subject: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _refusal(exc: GatewayError) -> dict[str, Any]:
    return {"ok": False, "code": exc.code, "message": exc.message, "detail": exc.detail}


def _check(node: Node, caller: str, index: int, item: RelayItem) -> _Checked:
    data = item.body
    sha256 = hashlib.sha256(data).hexdigest()
    chain = verify_hops(
        item.hops,
        trust=node.trust,
        sha256=sha256,
        size=len(data),
        to_node=node.name,
        from_node=caller,
    )
    first, last = chain[0], chain[-1]
    for hop in chain:
        if (hop["kind"], hop["sender"], hop["document_id"]) != (
            item.kind,
            first["sender"],
            first["document_id"],
        ):
            raise HopChainBroken(
                "the hop records disagree about the package (kind, sender or DocumentId)"
            )
    if len(item.receipts) != len(chain) - 1:
        raise HopChainBroken(
            f"{len(chain)} hops need {len(chain) - 1} receipts, not {len(item.receipts)}",
            detail={"hops": len(chain), "receipts": len(item.receipts)},
        )
    for position, (receipt, hop) in enumerate(zip(item.receipts, chain, strict=False), 1):
        try:
            fields = verify_receipt(receipt, trust=None)  # signature and node binding
            leaf, *extra = certificates_from_pem(receipt["certificate"])
            trusted_chain(node.trust, leaf, extra, parse_utc(fields["received_at"]))
        except GatewayError as exc:
            raise ReceiptInvalid(
                f"the receipt of hop {position} does not verify: {exc.message}",
                detail={"hop": position, "cause": exc.code},
            ) from None
        if fields["node"] != hop["to"] or fields["sha256"] != sha256:
            raise ReceiptInvalid(
                f"the receipt of hop {position} is not {hop['to']}'s receipt for these bytes",
                detail={"hop": position},
            )
    recipients = list(dict.fromkeys(last["recipients"]))
    for recipient in recipients:
        AgencyCode.parse(recipient)
    checked = _Checked(
        index=index,
        item=item,
        hops=chain,
        sha256=sha256,
        sender=first["sender"],
        document_id=first["document_id"],
        recipients=recipients,
        signer={},
    )
    if item.kind == "notice":
        try:
            # a neighbour signs the hops of whatever it sends: the notice is hostile JSON too
            notice = jsonsafe.loads(data, max_depth=node.settings.limits.max_json_depth)
        except ValueError:
            raise HopChainBroken("the failure notice is not JSON") from None
        fields = verify_notice(notice, trust=node.trust)
        if fields["sender"] != checked.sender or recipients != [checked.sender]:
            raise HopChainBroken("a failure notice travels to the sender of the failed package")
        leaf = certificates_from_pem(notice["certificate"])[0]
        checked.notice = fields
        checked.signer = describe(leaf)
        checked.subject = (
            "delivered" if fields["event"] == "delivered" else f"delivery failed: {fields['code']}"
        )
        checked.signing_time = parse_utc(fields["at"])
        return checked
    report = node.verifier.verify(data, now=parse_utc(first["at"]))
    package, signer = report.accepted()
    expected = PackageKind.DOCUMENT if item.kind == "document" else PackageKind.STATUS
    if package.kind is not expected or package.from_.organ_id != checked.sender:
        raise HopChainBroken(
            "the hop records describe another package than the one relayed (kind or sender)"
        )
    if isinstance(package, DocumentPackage):
        if package.document_id != checked.document_id:
            raise HopChainBroken("the hop records name another DocumentId than the package")
        addressed = {org.organ_id for org in package.to}
        stray = [r for r in recipients if r not in addressed]
        if stray:
            raise HopChainBroken(
                f"the hop carries the document for {stray[0]}, who is not among its recipients",
                detail={"recipients": stray},
            )
        checked.subject = package.subject
        own = [t for t in package.trace_headers if t.organ_id.strip() == checked.sender]
        checked.signing_time = own[-1].timestamp if own else None
    else:
        checked.subject = package.description
        checked.signing_time = package.timestamp
    checked.package = package
    checked.signer = describe(signer)
    return checked


def require_neighbour(node: Node, caller: Identity) -> str:
    """The calling node's name, if it is this node's parent or child; refused (and audited)
    otherwise.

    Usage: ``require_neighbour(node, caller)`` before reading a relay body: any node
    certificate of the deployment passes TLS, but only a neighbour may have its batch parsed.
    """
    if caller.kind != "node" or caller.node is None:
        raise Forbidden("only a neighbour node may relay packages")
    directory = node.directory
    if directory is None or directory.peer(caller.node) is None:
        with node.writing() as conn:
            audit.append(
                conn,
                event="relay_refuse",
                actor=f"node:{caller.node}",
                subject=None,
                data={"code": PeerUnknown.code},
            )
        raise PeerUnknown(
            f"node {caller.node} is not a neighbour of {node.name} in its directory",
            detail={"node": caller.node},
        )
    return caller.node


def receive_batch(node: Node, caller: Identity, items: Sequence[RelayItem]) -> list[dict[str, Any]]:
    """Check and store a relay batch from ``caller`` (a neighbour node); one result per item."""
    require_neighbour(node, caller)
    assert caller.node is not None
    actor = f"node:{caller.node}"
    results: list[dict[str, Any] | None] = [None] * len(items)
    checked: list[_Checked] = []
    for index, item in enumerate(items):
        try:
            checked.append(_check(node, caller.node, index, item))
        except GatewayError as exc:
            results[index] = _refusal(exc)
    refused = [(i, r) for i, r in enumerate(results) if r is not None]
    with node.writing() as conn:
        audit.append_many(
            conn,
            [
                audit.Entry(
                    "relay_refuse",
                    actor,
                    None,
                    {
                        "code": result["code"],
                        "kind": items[index].kind,
                        "size": len(items[index].body),
                        "sha256": hashlib.sha256(items[index].body).hexdigest(),
                    },
                )
                for index, result in refused
            ],
        )
        batch = _Batch(conn, node, actor, checked)
        for c in checked:
            try:
                results[c.index] = batch.add(c)
            except GatewayError as exc:
                results[c.index] = _refusal(exc)
                batch.flush()
                audit.append(
                    conn,
                    event="relay_refuse",
                    actor=actor,
                    subject=None,
                    data={"code": exc.code, "kind": c.item.kind, "sha256": c.sha256},
                )
        batch.flush()
        # one "delivered" notice per sender for the whole batch, not one per package
        for sender, delivered in batch.arrivals.items():
            batch.woken |= outbox.notify_delivered(conn, node, sender, delivered)
    for index, result in refused:
        log.info("relay.refused", peer=caller.node, item=index, code=result["code"])
    node.wake(batch.woken)
    out = [r for r in results if r is not None]
    assert len(out) == len(items)
    return out


def _dedup_key(c: _Checked) -> str:
    if c.item.kind == "notice":
        return f"notice|sha256:{c.sha256}"
    if c.document_id:
        return f"{c.sender}|id:{c.document_id}"
    return f"{c.sender}|sha256:{c.sha256}"


#: per sender agency: (package seq, recipients hosted here, path) of packages delivered here
_Arrivals = dict[str, list[tuple[int, list[str], list[list[str]]]]]

_EXISTING = select(
    documents.c.seq, documents.c.id, documents.c.sha256, documents.c.receipt, documents.c.dedup_key
).where(documents.c.dedup_key.in_(bindparam("keys", expanding=True)))
_INSERT_DOCUMENTS = documents.insert().returning(documents.c.seq, sort_by_parameter_order=True)
_INSERT_HOPS = hops.insert()
_INSERT_EVENT = events.insert()
_RECIPIENTS_OF = select(deliveries.c.recipient).where(deliveries.c.document_seq == bindparam("seq"))
_NOTICE_HANDLED = (
    update(deliveries)
    .where(and_(deliveries.c.document_seq == bindparam("seq"), deliveries.c.next_hop == "local"))
    .values(state=TransportState.ACKNOWLEDGED.value)
)


@dataclass(slots=True)
class _Pending:
    """A new document of the batch, stored at the next :meth:`_Batch.flush`."""

    checked: _Checked
    row: dict[str, Any]
    receipt: dict[str, Any]


class _Batch:
    """Stores the checked items of one relay batch, in order, in the caller's transaction.

    New documents (the bulk of any batch) are stored together: one insert each for their
    document rows, hop records, delivery rows, events and audit entries, whatever their
    number. Anything else (a repeat, a status, a notice) is stored on its own, after the
    documents before it, so the batch keeps its order.
    """

    def __init__(
        self, conn: Connection, node: Node, actor: str, checked: Sequence[_Checked]
    ) -> None:
        self.conn, self.node, self.actor = conn, node, actor
        self.arrivals: _Arrivals = {}
        self.woken: set[str] = set()
        self._pending: list[_Pending] = []
        self._keys: set[str] = set()
        keys = sorted({_dedup_key(c) for c in checked})
        self._existing: dict[str, Any] = (
            {r.dedup_key: r for r in conn.execute(_EXISTING, {"keys": keys})} if keys else {}
        )

    def add(self, c: _Checked) -> dict[str, Any]:
        """Store ``c`` (now, or at the next flush); its result for the sending node."""
        key = _dedup_key(c)
        if key in self._keys:  # twice in one batch: the second is a repeat of the first
            self.flush()
            self._existing.update(
                {r.dedup_key: r for r in self.conn.execute(_EXISTING, {"keys": [key]})}
            )
        existing = self._existing.get(key)
        if existing is not None:
            self.flush()
            return self._repeat(c, existing)
        self._keys.add(key)
        if c.item.kind != "document":
            self.flush()
            return self._store_one(c, key)
        row, receipt = _document_row(self.node, self.actor, c, key, about=None)
        self._pending.append(_Pending(c, row, receipt))
        return {"ok": True, "receipt": receipt, "duplicate": False}

    def flush(self) -> None:
        """Store the new documents added since the last flush."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        conn, node, actor = self.conn, self.node, self.actor
        seqs = [seq for (seq,) in conn.execute(_INSERT_DOCUMENTS, [p.row for p in pending]).all()]
        hop_rows: list[dict[str, Any]] = []
        packages: list[tuple[int, Sequence[str], Sequence[str]]] = []
        entries: list[audit.Entry] = []
        for p, seq in zip(pending, seqs, strict=True):
            c = p.checked
            last_digest = _hop_rows(hop_rows, seq, c, p.receipt)
            packages.append((seq, c.recipients, [hop["from"] for hop in c.hops]))
            here = [r for r in c.recipients if r in node.hosted]
            if here:
                path = [[hop["from"], hop["to"], hop["at"]] for hop in c.hops]
                self.arrivals.setdefault(c.sender, []).append((seq, here, path))
            entries.append(_relay_in(actor, p.row["id"], c, last_digest))
        conn.execute(_INSERT_HOPS, hop_rows)
        audit.append_many(conn, entries)
        self.woken |= outbox.add_deliveries_many(conn, node, packages, actor, in_transit=True)

    def _repeat(self, c: _Checked, existing: Any) -> dict[str, Any]:
        """The same package again (a retried relay): its original receipt; new recipients."""
        conn, node, actor = self.conn, self.node, self.actor
        if existing.sha256 != c.sha256:
            raise DocumentConflict(
                "a package with this sender and DocumentId is already stored with different bytes",
                detail={"existing": existing.id, "dedup_key": existing.dedup_key},
            )
        present = set(conn.execute(_RECIPIENTS_OF, {"seq": existing.seq}).scalars())
        added = [r for r in c.recipients if r not in present]
        if added:
            self.woken |= outbox.add_deliveries(
                conn,
                node,
                existing.seq,
                added,
                actor,
                in_transit=True,
                came_through=[hop["from"] for hop in c.hops],
            )
        self.woken |= outbox.rearm_failed(conn, node, existing.seq, c.recipients, actor)
        audit.append(
            conn,
            event="relay_repeat",
            actor=actor,
            subject=existing.id,
            data={"sha256": c.sha256, "added_recipients": added},
        )
        return {"ok": True, "receipt": json.loads(existing.receipt), "duplicate": True}

    def _store_one(self, c: _Checked, key: str) -> dict[str, Any]:
        """A status or a notice: stored, then applied to the timeline it is about."""
        conn, node, actor = self.conn, self.node, self.actor
        about = _about(conn, c)
        row, receipt = _document_row(node, actor, c, key, about=about)
        seq = conn.execute(_INSERT_DOCUMENTS, row).scalar_one()
        hop_rows: list[dict[str, Any]] = []
        last_digest = _hop_rows(hop_rows, seq, c, receipt)
        conn.execute(_INSERT_HOPS, hop_rows)
        audit.append_many(conn, [_relay_in(actor, row["id"], c, last_digest)])
        handled_here = c.notice is not None and c.notice["event"] == "delivered"
        self.woken |= outbox.add_deliveries(
            conn,
            node,
            seq,
            c.recipients,
            actor,
            in_transit=True,
            came_through=[hop["from"] for hop in c.hops],
            audit_local=not handled_here,
        )
        if c.notice is not None and c.notice["event"] == "delivered":
            self._apply_delivered(c.notice)
            # the node's own business: never in the sender's DMS inbox
            conn.execute(_NOTICE_HANDLED, {"seq": seq})
        if about is not None:
            if c.notice is not None:
                notices.mark_failed(
                    conn,
                    node,
                    about,
                    c.notice["recipients"],
                    code=c.notice["code"],
                    message=c.notice["message"],
                    at_node=c.notice["node"],
                    actor=actor,
                )
            elif isinstance(c.package, StatusPackage):
                _apply_status(conn, node, about, c.package, actor, seq)
        return {"ok": True, "receipt": receipt, "duplicate": False}

    def _apply_delivered(self, notice: dict[str, Any]) -> None:
        """The packages a delivered notice lists, as this node knows them: delivered."""
        sender = notice["sender"]
        keyed = [
            (
                f"{sender}|id:{item['document_id']}"
                if item["document_id"]
                else f"{sender}|sha256:{item['sha256']}",
                item,
            )
            for item in notice["items"]
        ]
        keys = sorted({key for key, _ in keyed})
        seqs = {r.dedup_key: r.seq for r in self.conn.execute(_EXISTING, {"keys": keys})}
        notices.mark_delivered_many(
            self.conn,
            self.node,
            [(seqs[key], item["recipients"], item["path"]) for key, item in keyed if key in seqs],
            at_node=notice["node"],
            actor=self.actor,
        )


def _document_row(
    node: Node, actor: str, c: _Checked, key: str, *, about: int | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``documents`` row of a new package and the receipt this node signs for it."""
    now = node.now()
    gid = node.new_id()
    size = len(c.item.body)
    receipt = make_receipt(
        node.key,
        node=node.name,
        document=gid,
        sender=c.sender,
        document_id=c.document_id,
        sha256=c.sha256,
        size=size,
        received_at=now,
        received_from=actor,
    )
    row = {
        "id": gid,
        "kind": c.item.kind,
        "sender": c.sender,
        "document_id": c.document_id,
        "dedup_key": key,
        "sha256": c.sha256,
        "size": size,
        "envelope": c.item.body,
        "subject": c.subject,
        "status_code": c.package.status_code.value
        if isinstance(c.package, StatusPackage)
        else None,
        "about_seq": about,
        "signer": json.dumps(c.signer, ensure_ascii=False, sort_keys=True),
        "signing_time": c.signing_time,
        "received_at": now,
        "received_from": actor,
        "receipt": canonical_json(receipt).decode("utf-8"),
    }
    return row, receipt


def _hop_rows(out: list[dict[str, Any]], seq: int, c: _Checked, receipt: dict[str, Any]) -> str:
    """Append the ``hops`` rows of a received package to ``out``; the last record's digest."""
    carried = [*c.item.receipts, receipt]
    digest = ""
    for position, (hop, record) in enumerate(zip(c.hops, c.item.hops, strict=True), 1):
        text = canonical_json(record)
        digest = hashlib.sha256(text).hexdigest()  # = hop_digest(record)
        out.append(
            {
                "document_seq": seq,
                "direction": "in",
                "position": position,
                "from_node": hop["from"],
                "to_node": hop["to"],
                "at": parse_utc(hop["at"]),
                "digest": digest,
                "record": text.decode("utf-8"),
                "receipt": canonical_json(carried[position - 1]).decode("utf-8"),
            }
        )
    return digest


def _relay_in(actor: str, gid: str, c: _Checked, last_digest: str) -> audit.Entry:
    return audit.Entry(
        "relay_in",
        actor,
        gid,
        {
            "kind": c.item.kind,
            "sender": c.sender,
            "document_id": c.document_id,
            "sha256": c.sha256,
            "size": len(c.item.body),
            "recipients": c.recipients,
            "hops": len(c.hops),
            "hop_digest": last_digest,
        },
    )


def _about(conn: Connection, c: _Checked) -> int | None:
    """The seq of the document a status or notice is about, when this node has it."""
    if c.notice is not None:
        fields = c.notice
        if fields["event"] == "delivered":
            return None  # about several packages: see its items
        if fields["document_id"]:
            key = f"{fields['sender']}|id:{fields['document_id']}"
        else:
            key = f"{fields['sender']}|sha256:{fields['sha256']}"
    elif isinstance(c.package, StatusPackage):
        target = c.package.response_for
        if target is None or not target.document_id or not target.organ_id:
            return None
        key = f"{target.organ_id}|id:{target.document_id}"
    else:
        return None
    seq: int | None = conn.execute(
        select(documents.c.seq).where(documents.c.dedup_key == key)
    ).scalar()
    return seq


def _apply_status(
    conn: Connection, node: Node, about: int, package: StatusPackage, actor: str, status_seq: int
) -> None:
    """Record a relayed business status on the document's timeline here, when it fits.

    The recipient's node already judged the status; a relay node only keeps its copy of the
    timeline in step. A status from the recipient proves delivery, so ``delivered`` is applied
    first (and a delivery this node had marked failed is put right). A status that does not fit
    this node's copy (it arrived before an earlier one) is still relayed, not refused.
    """
    row = conn.execute(select(documents.c.sender).where(documents.c.seq == about)).first()
    if row is None:
        return
    reporter = package.from_.organ_id
    recipients = [
        r
        for (r,) in conn.execute(
            select(deliveries.c.recipient).where(deliveries.c.document_seq == about)
        )
    ]
    if package.status_code is StatusCode.TAKE_BACK_REQUESTED:
        concerned = recipients
    else:
        concerned = [reporter] if reporter in recipients else []
    now = node.now()
    for recipient in concerned:
        timeline = timeline_of(conn, about, row.sender, recipient)
        try:
            if package.status_code is not StatusCode.TAKE_BACK_REQUESTED:
                if timeline.transport is TransportState.FAILED:
                    conn.execute(
                        _INSERT_EVENT,
                        outbox.event_row(
                            about, recipient, now, "transport", "accepted", node.name, actor
                        ),
                    )
                    timeline = timeline_of(conn, about, row.sender, recipient)
                if timeline.transport in (TransportState.ACCEPTED, TransportState.IN_TRANSIT):
                    apply_transport(timeline, TransportState.DELIVERED)
                    conn.execute(
                        _INSERT_EVENT,
                        outbox.event_row(
                            about, recipient, now, "transport", "delivered", node.name, actor
                        ),
                    )
                    conn.execute(
                        update(deliveries)
                        .where(
                            and_(
                                deliveries.c.document_seq == about,
                                deliveries.c.recipient == recipient,
                            )
                        )
                        .values(
                            state=TransportState.DELIVERED.value,
                            next_attempt_at=None,
                            updated_at=now,
                        )
                    )
                    timeline = timeline_of(conn, about, row.sender, recipient)
            before = timeline
            after = apply_status(timeline, package.status_code, reporter=reporter)
        except StatusError as exc:
            log.info("relay.status_not_applied", code=exc.code, recipient=recipient)
            continue
        if after != before:
            event = outbox.event_row(
                about,
                recipient,
                now,
                "status",
                package.status_code.value,
                node.name,
                f"agency:{reporter}",
                status_seq=status_seq,
            )
            conn.execute(_INSERT_EVENT, event)
