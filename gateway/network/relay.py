"""Receiving a relay batch from a neighbour node: check everything again, store, answer receipts.

A node believes nothing it is told by another node without checking it: every item of a batch
is checked first (:mod:`gateway.network.relay_check`: the hop chain, the earlier hops' receipts,
the package or notice itself), with nothing stored. Items that pass are stored in ONE
transaction, in order (so a batch keeps the sender's order), each with its hop records, its
delivery rows (deliver here, or on to the next node), its timeline events (through the rules:
:class:`gateway.node.timeline.TimelineWriter`) and its audit entry; then each gets a
receipt signed by this node. An item already stored (same sender and DocumentId, same bytes)
gets its original receipt back: receive is idempotent, a retried relay is never a second
document. A refused item is answered with its stable code and recorded in the audit log.

Usage::

    require_neighbour(node, caller)          # before the body is read (gateway.api.app)
    results = receive_batch(node, caller, decode_batch(body, max_items=500))
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import and_, bindparam, select
from sqlalchemy.engine import Connection

from gateway.envelope.model import StatusCode, StatusPackage
from gateway.errors import DocumentConflict, Forbidden, GatewayError, PeerUnknown
from gateway.evidence import audit
from gateway.evidence.attestations import summary as attestation_summary
from gateway.evidence.hops import CONFIRMATIONS
from gateway.evidence.nodekey import canonical_json, parse_utc
from gateway.evidence.receipts import make_receipt
from gateway.network import notices, outbox
from gateway.network.relay_check import Checked, check_item
from gateway.network.wire import RelayItem
from gateway.node.container import LOCAL, Node
from gateway.node.dedup import notice_key, package_key
from gateway.node.status import Requeue, StatusReport, TransportEvent, TransportState
from gateway.node.timeline import TimelineWriter
from gateway.node.transitions import WAITING_STATES, compare_and_set
from gateway.storage.tables import deliveries, documents, hops
from gateway.trust.caller import Identity

__all__ = ["apply_status", "receive_batch", "require_neighbour"]

log = structlog.get_logger("gateway.relay")


def _refusal(exc: GatewayError) -> dict[str, Any]:
    return {"ok": False, "code": exc.code, "message": exc.message, "detail": exc.detail}


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
    checked: list[Checked] = []
    for index, item in enumerate(items):
        try:
            checked.append(check_item(node, caller.node, index, item))
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
        # and one per way back for the failure notices that reached their agency here
        for toward, delivered in batch.notices_arrived.items():
            batch.woken |= outbox.notify_delivered(conn, node, toward, delivered, notices=True)
    for index, result in refused:
        log.info("relay.refused", peer=caller.node, item=index, code=result["code"])
    node.wake(batch.woken)
    out = [r for r in results if r is not None]
    assert len(out) == len(items)
    return out


#: per sender agency: (package seq, recipients hosted here, path) of packages delivered here
_Arrivals = dict[str, list[tuple[int, list[str], list[list[str]]]]]

_EXISTING = select(
    documents.c.seq, documents.c.id, documents.c.sha256, documents.c.receipt, documents.c.dedup_key
).where(documents.c.dedup_key.in_(bindparam("keys", expanding=True)))
_INSERT_DOCUMENTS = documents.insert().returning(documents.c.seq, sort_by_parameter_order=True)
_INSERT_HOPS = hops.insert()
_RECIPIENTS_OF = select(deliveries.c.recipient).where(deliveries.c.document_seq == bindparam("seq"))
_HERE = select(deliveries.c.id, deliveries.c.recipient).where(
    and_(deliveries.c.document_seq == bindparam("seq"), deliveries.c.next_hop == LOCAL)
)


@dataclass(slots=True)
class _Pending:
    """A new document of the batch, stored at the next :meth:`_Batch.flush`."""

    checked: Checked
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
        self, conn: Connection, node: Node, actor: str, checked: Sequence[Checked]
    ) -> None:
        self.conn, self.node, self.actor = conn, node, actor
        self.arrivals: _Arrivals = {}
        #: failure notices delivered here, by an agency they failed for (their way back)
        self.notices_arrived: _Arrivals = {}
        self.woken: set[str] = set()
        self._pending: list[_Pending] = []
        self._keys: set[str] = set()
        keys = sorted({c.key for c in checked})
        self._existing: dict[str, Any] = (
            {r.dedup_key: r for r in conn.execute(_EXISTING, {"keys": keys})} if keys else {}
        )

    def add(self, c: Checked) -> dict[str, Any]:
        """Store ``c`` (now, or at the next flush); its result for the sending node."""
        key = c.key
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
        packages: list[outbox.Stored] = []
        entries: list[audit.Entry] = []
        for p, seq in zip(pending, seqs, strict=True):
            c = p.checked
            last_digest = _hop_rows(hop_rows, seq, c, p.receipt)
            packages.append(
                outbox.Stored(
                    seq,
                    c.sender,
                    c.recipients,
                    [hop["from"] for hop in c.hops],
                    note=_attested_note(c),
                    attested=c.attestation is not None,
                )
            )
            here = _delivered_here(node, c)
            if here:
                path = [[hop["from"], hop["to"], hop["at"]] for hop in c.hops]
                self.arrivals.setdefault(c.sender, []).append((seq, here, path))
            entries.append(_relay_in(actor, p.row["id"], c, last_digest))
        conn.execute(_INSERT_HOPS, hop_rows)
        audit.append_many(conn, entries)
        self.woken |= outbox.add_deliveries_many(conn, node, packages, actor, in_transit=True)

    def _repeat(self, c: Checked, existing: Any) -> dict[str, Any]:
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
                c.sender,
                added,
                actor,
                in_transit=True,
                came_through=[hop["from"] for hop in c.hops],
            )
        if c.item.requeued:  # requeued upstream after a failure: decided here once more
            self.woken |= outbox.rearm_failed(
                conn,
                node,
                existing.seq,
                c.item.requeued,
                actor,
                came_through=[hop["from"] for hop in c.hops],
            )
        audit.append(
            conn,
            event="relay_repeat",
            actor=actor,
            subject=existing.id,
            data={"sha256": c.sha256, "added_recipients": added},
        )
        return {"ok": True, "receipt": json.loads(existing.receipt), "duplicate": True}

    def _store_one(self, c: Checked, key: str) -> dict[str, Any]:
        """A status or a notice: stored, then applied to the timeline it is about."""
        conn, node, actor = self.conn, self.node, self.actor
        about = _about(conn, c)
        row, receipt = _document_row(node, actor, c, key, about=about)
        seq = conn.execute(_INSERT_DOCUMENTS, row).scalar_one()
        hop_rows: list[dict[str, Any]] = []
        last_digest = _hop_rows(hop_rows, seq, c, receipt)
        conn.execute(_INSERT_HOPS, hop_rows)
        audit.append_many(conn, [_relay_in(actor, row["id"], c, last_digest)])
        # a confirmation (delivered, progress): applied here, and kept at its sender's node
        handled_here = c.notice is not None and c.notice["event"] in CONFIRMATIONS
        self.woken |= outbox.add_deliveries(
            conn,
            node,
            seq,
            c.sender,
            c.recipients,
            actor,
            in_transit=True,
            came_through=[hop["from"] for hop in c.hops],
            audit_local=not handled_here,
            # a confirmation of failure notices this node gave: it ends here
            here=handled_here and self._confirms_own_notices(c.notice),
            note=_attested_note(c),
            attested=c.attestation is not None,
        )
        # a status or a failure notice at its agency's node: confirmed back, like a document
        here = _delivered_here(node, c)
        path = [[hop["from"], hop["to"], hop["at"]] for hop in c.hops]
        if here and isinstance(c.package, StatusPackage):
            self.arrivals.setdefault(c.sender, []).append((seq, here, path))
        elif here and c.notice is not None and c.notice["event"] == "failed":
            toward = c.notice["recipients"][0]  # the failed package went this way
            self.notices_arrived.setdefault(toward, []).append((seq, here, path))
        if handled_here:
            assert c.notice is not None
            if c.notice["event"] == "progress":
                self._apply_progress(c.notice)
            else:
                self._apply_delivered(c.notice)
            self._handled(seq)
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
                apply_status(conn, node, about, c.package, actor, seq)
        return {"ok": True, "receipt": receipt, "duplicate": False}

    def _handled(self, seq: int) -> None:
        """A delivered notice that reached its sender's node is the node's own business: never
        in the sender DMS's inbox. Its delivery here is ``acknowledged`` (by this node); at a
        relay node the notice goes on, untouched."""
        now = self.node.now()
        with TimelineWriter(self.conn, self.node.name) as timelines:
            for row in self.conn.execute(_HERE, {"seq": seq}).all():
                done = timelines.record(
                    seq,
                    row.recipient,
                    TransportEvent(state=TransportState.ACKNOWLEDGED),
                    at=now,
                    actor=f"node:{self.node.name}",
                    strict=False,
                )
                if done is not None:
                    compare_and_set(
                        self.conn,
                        [row.id],
                        {"state": TransportState.ACKNOWLEDGED.value, "updated_at": now},
                        states=[TransportState.DELIVERED.value],
                        change="notice_handled",
                    )

    def _confirms_own_notices(self, notice: dict[str, Any] | None) -> bool:
        """``notice`` confirms failure notices, all of them given by this node."""
        if notice is None or not notice["items"]:
            return False
        if any(item.get("kind") != "notice" for item in notice["items"]):
            return False
        keys = sorted({notice_key(item["sha256"]) for item in notice["items"]})
        own = self.conn.execute(
            select(documents.c.received_from).where(documents.c.dedup_key.in_(keys))
        ).scalars()
        given = [sender == f"node:{self.node.name}" for sender in own]
        return len(given) == len(keys) and all(given)

    def _apply_progress(self, notice: dict[str, Any]) -> None:
        """What the recipients' systems did with packages a progress notice lists, as this
        node knows them: fetched, acknowledged."""
        sender = notice["sender"]
        keyed = [
            (package_key(sender, item["document_id"], item["sha256"]), item)
            for item in notice["items"]
            if item.get("kind", "package") == "package"
        ]
        keys = sorted({key for key, _ in keyed})
        seqs = {r.dedup_key: r.seq for r in self.conn.execute(_EXISTING, {"keys": keys})}
        notices.mark_progress_many(
            self.conn,
            self.node,
            [
                (seqs[key], item["recipients"], item["path"], item["events"])
                for key, item in keyed
                if key in seqs
            ],
            at_node=notice["node"],
            actor=self.actor,
        )

    def _apply_delivered(self, notice: dict[str, Any]) -> None:
        """The packages a delivered notice lists, as this node knows them: delivered."""
        sender = notice["sender"]
        keyed = [
            (
                notice_key(item["sha256"])
                if item.get("kind") == "notice"
                else package_key(sender, item["document_id"], item["sha256"]),
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
            delivered_at=parse_utc(notice["at"]),
        )


def _delivered_here(node: Node, c: Checked) -> list[str]:
    """The recipients of ``c`` whose inbox is here and who take it (an agency in ``[hub]
    refuse_attested`` does not take a package whose sender signature was not verified)."""
    refusing = node.settings.hub.refuse_attested if c.attestation is not None else ()
    return [r for r in c.recipients if r in node.hosted and r not in refusing]


def _attested_note(c: Checked) -> str | None:
    """The words every timeline shows for a package whose sender signature was not verified."""
    if c.attestation is None:
        return None
    return attestation_summary(c.attestation["attestation"])


def _document_row(
    node: Node, actor: str, c: Checked, key: str, *, about: int | None
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
        "attestation": None
        if c.attestation is None
        else canonical_json(c.attestation).decode("utf-8"),
    }
    return row, receipt


def _hop_rows(out: list[dict[str, Any]], seq: int, c: Checked, receipt: dict[str, Any]) -> str:
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


def _relay_in(actor: str, gid: str, c: Checked, last_digest: str) -> audit.Entry:
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


def _about(conn: Connection, c: Checked) -> int | None:
    """The seq of the document a status or notice is about, when this node has it."""
    if c.notice is not None:
        fields = c.notice
        if fields["event"] in CONFIRMATIONS:
            return None  # about several packages: see its items
        key = package_key(fields["sender"], fields["document_id"], fields["sha256"])
    elif isinstance(c.package, StatusPackage):
        target = c.package.response_for
        if target is None or not target.document_id or not target.organ_id:
            return None
        key = package_key(target.organ_id, target.document_id, "")
    else:
        return None
    seq: int | None = conn.execute(
        select(documents.c.seq).where(documents.c.dedup_key == key)
    ).scalar()
    return seq


def apply_status(
    conn: Connection, node: Node, about: int, package: StatusPackage, actor: str, status_seq: int
) -> None:
    """Record a relayed business status on the document's timeline here, when it fits.

    The recipient's node already judged the status; a relay node only keeps its copy of the
    timeline in step. A status from the recipient proves delivery, so ``delivered`` is applied
    first (a delivery this node had marked failed was requeued downstream: ``requeued`` comes
    before it). A status that does not fit this node's copy (it arrived before an earlier one)
    is still relayed, not refused: the rules leave it out of the timeline here.
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
    with TimelineWriter(conn, node.name) as timelines:
        timelines.load([about])
        for recipient in concerned:
            if package.status_code is not StatusCode.TAKE_BACK_REQUESTED:
                _delivered_by_status(timelines, about, recipient, now, actor)
            timelines.record(
                about,
                recipient,
                StatusReport(code=package.status_code, reporter=reporter),
                at=now,
                actor=actor,
                status_seq=status_seq,
                strict=False,
                repeats=False,
            )


def _delivered_by_status(
    timelines: TimelineWriter, about: int, recipient: str, now: dt.datetime, actor: str
) -> None:
    """The recipient's status proves its node has the document: ``delivered`` here too."""
    conn = timelines.conn
    # locked (PostgreSQL) until its change below: the timeline is written from its state
    row = conn.execute(
        select(deliveries.c.id)
        .where(and_(deliveries.c.document_seq == about, deliveries.c.recipient == recipient))
        .with_for_update()
    ).first()
    if row is None:
        return
    t = timelines.timeline(about, recipient)
    if t.transport is TransportState.FAILED:
        timelines.record(about, recipient, Requeue(), at=now, actor=actor, strict=False)
        t = timelines.timeline(about, recipient)
    if t.transport not in (TransportState.ACCEPTED, TransportState.IN_TRANSIT):
        return
    if (
        timelines.record(
            about,
            recipient,
            TransportEvent(state=TransportState.DELIVERED),
            at=now,
            actor=actor,
            strict=False,
        )
        is None
    ):
        return
    # out of the dispatcher's hands (no lease, no next attempt): a batch still out with this
    # row then finds it delivered and leaves it alone
    compare_and_set(
        conn,
        [row.id],
        {
            "state": TransportState.DELIVERED.value,
            "next_attempt_at": None,
            "leased_by": None,
            "lease_until": None,
            "updated_at": now,
        },
        # failed too: the requeue just recorded (the package went on downstream)
        states=[*WAITING_STATES, TransportState.FAILED.value],
        change="delivered_by_status",
    )
