"""Durable ingest: a package the node says yes to is never lost.

For a document: verify everything (:mod:`gateway.trust.verification`), authorise the caller, route
every recipient, then write the envelope bytes, one delivery row per recipient, the first
timeline events and the audit entry in ONE transaction; the receipt is returned only after that
commit. The same (sender, DocumentId) with the same bytes returns the original receipt; with
other bytes it is :class:`~gateway.errors.DocumentConflict`. A refusal stores nothing but its
audit entry.

A status package (01-06, 13, 15, 16) is stored the same way, applied to the timeline of the
document it answers (:mod:`gateway.node.status` says which transitions make sense) and delivered to
the other party.

Usage::

    accepted = ingest_document(node, body, caller=identity)
    accepted.receipt   # signed by the node; the 202's body carries it
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import bindparam, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from gateway.agency import AgencyCode
from gateway.envelope.model import DocumentPackage, PackageKind, StatusCode, StatusPackage
from gateway.errors import (
    DocumentConflict,
    Forbidden,
    GatewayError,
    SenderMismatch,
    StatusNotAllowed,
    StatusTargetUnknown,
    TooManyAttachments,
    TooManyRecipients,
    UnknownAgency,
    UnverifiedRefused,
    WrongPackageKind,
)
from gateway.evidence import audit
from gateway.evidence.attestations import make_attestation
from gateway.evidence.attestations import summary as attestation_summary
from gateway.evidence.nodekey import canonical_json
from gateway.evidence.receipts import make_receipt
from gateway.node import webhooks
from gateway.node.container import LOCAL, Node
from gateway.node.dedup import package_key
from gateway.node.status import StatusReport, TransportState
from gateway.node.timeline import TimelineWriter, deliver_entry
from gateway.storage.tables import deliveries, documents
from gateway.trust.attested import Unverified, verify_or_attest
from gateway.trust.caller import Identity
from gateway.trust.store import describe

__all__ = ["Accepted", "Attest", "actor_of", "ingest_document", "ingest_status"]

log = structlog.get_logger("gateway.ingest")


@dataclass(frozen=True, slots=True)
class Accepted:
    """What the node answers once a package is durably stored."""

    #: the gateway's id for the package
    id: str
    kind: PackageKind
    #: the receipt the node signed (JSON object)
    receipt: dict[str, Any]
    #: True when this exact package was already stored (idempotent repeat)
    duplicate: bool


def actor_of(caller: Identity) -> str:
    """``agency:<code>`` (``agency:<code> via hub:<systemid>`` for a connected system of the
    hub protocol) or ``node:<name>``: how the audit log and the timeline name a caller."""
    return str(caller)


def _refuse(node: Node, caller: Identity, error: GatewayError, data: bytes) -> GatewayError:
    """Record the refusal in the audit log (its own transaction) and hand the error back."""
    facts = {"code": error.code, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    with node.writing() as conn:
        audit.append(conn, event="refuse", actor=actor_of(caller), subject=None, data=facts)
    log.info("ingest.refused", actor=actor_of(caller), code=error.code, size=len(data))
    error.audited = True
    return error


@dataclass(frozen=True, slots=True)
class Attest:
    """The hub API's ``attest`` policy for a connected system (docs/hub.md): a package whose
    only failures are about its signature is accepted with an intake attestation."""

    #: the connected system the package came from
    systemid: str


@dataclass(frozen=True, slots=True)
class _Verified:
    package: DocumentPackage | StatusPackage
    #: the signer's certificate, described (subject, agency, issuer, serial, validity); for
    #: an attested package, who attested it instead
    signer: dict[str, Any]
    #: set when the sender's signature was not verified (the package was attested)
    unverified: Unverified | None = None
    attest: Attest | None = None


@dataclass(frozen=True, slots=True)
class _Plan:
    """Where a package goes, decided inside the storing transaction."""

    #: (recipient agency code, next hop) for each delivery row
    hops: Sequence[tuple[str, str]]
    subject: str | None
    #: for a status: the answered document's seq and the recipients whose timeline it changes
    about: tuple[int, Sequence[str]] | None = None


def _verified(
    node: Node, data: bytes, caller: Identity, kind: PackageKind, attest: Attest | None = None
) -> _Verified:
    try:
        if caller.kind != "agency" or caller.agency is None:
            raise Forbidden("only an agency's DMS may submit packages on this endpoint")
        if str(caller.agency) not in node.hosted:
            raise UnknownAgency(
                f"agency {caller.agency} is not hosted by node {node.name}",
                detail={"agency": str(caller.agency)},
            )
        # Refused with the first error (parse budgets, schema, signature, chain, upload
        # budget...); nothing is stored but the refusal's audit entry. Under ``attest`` the
        # signature's failures alone are forgiven (gateway.trust.attested).
        unverified: Unverified | None = None
        if attest is None:
            package, signer = node.verifier.verify(data, now=node.now()).accepted()
        else:
            report, unverified = verify_or_attest(
                node.verifier, data, now=node.now(), limits=node.settings.limits.xml_limits()
            )
            if unverified is None:
                package, signer = report.accepted()
            else:
                package = unverified.package
        if package.kind is not kind:
            raise WrongPackageKind(
                f"a {package.kind.value} package was sent where a {kind.value} was expected",
                detail={"expected": kind.value, "received": package.kind.value},
            )
        if package.from_.organ_id != str(caller.agency):
            raise SenderMismatch(
                f"the package is From {package.from_.organ_id} but the caller is {caller.agency}",
                detail={"from": package.from_.organ_id, "caller": str(caller.agency)},
            )
    except GatewayError as exc:
        raise _refuse(node, caller, exc, data) from None
    if unverified is not None:
        assert attest is not None
        attested = {"attested_by": node.name, "systemid": attest.systemid, "verified": False}
        return _Verified(package=package, signer=attested, unverified=unverified, attest=attest)
    return _Verified(package=package, signer=describe(signer))


_EXISTING = select(documents.c.id, documents.c.kind, documents.c.sha256, documents.c.receipt).where(
    documents.c.dedup_key == bindparam("key")
)


def _existing(conn: Connection, key: str, sha256: str) -> Accepted | None:
    row = conn.execute(_EXISTING, {"key": key}).first()
    if row is None:
        return None
    if row.sha256 != sha256:
        raise DocumentConflict(
            "a package with this sender and DocumentId is already stored with different bytes",
            detail={"existing": row.id, "dedup_key": key},
        )
    return Accepted(
        id=row.id, kind=PackageKind(row.kind), receipt=json.loads(row.receipt), duplicate=True
    )


#: built once: SQLAlchemy compiles a statement per distinct construct, not per row
_INSERT_DOCUMENT = documents.insert().returning(documents.c.seq)
_INSERT_DELIVERIES = deliveries.insert()


def _store(
    node: Node,
    data: bytes,
    caller: Identity,
    verified: _Verified,
    plan: Callable[[Connection], _Plan],
) -> Accepted:
    """One transaction: document row, deliveries, events, audit entry. Idempotent on repeat.

    ``plan`` runs inside the transaction (a status is checked against the timeline as it is
    when the row is written, not as it was a moment before). Everything that needs no database
    (hashing, the signed receipt, JSON) is done before the transaction opens.
    """
    package = verified.package
    sha256 = hashlib.sha256(data).hexdigest()
    document_id = package.document_id if isinstance(package, DocumentPackage) else None
    key = package_key(package.from_.organ_id, document_id, sha256)
    actor = actor_of(caller)
    now = node.now()
    gid = node.new_id()
    receipt = make_receipt(
        node.key,
        node=node.name,
        document=gid,
        sender=package.from_.organ_id,
        document_id=document_id,
        sha256=sha256,
        size=len(data),
        received_at=now.isoformat(),
        received_from=actor,
    )
    attestation: dict[str, Any] | None = None
    if verified.unverified is not None and verified.attest is not None:
        attestation = make_attestation(
            node.key,
            node=node.name,
            sha256=sha256,
            systemid=verified.attest.systemid,
            agency=str(caller.agency),
            at=now,
            failed=verified.unverified.failed,
            report=verified.unverified.report,
            undeclared_prefixes=verified.unverified.undeclared_prefixes,
        )
    row = {
        "id": gid,
        "kind": package.kind.value,
        "sender": package.from_.organ_id,
        "document_id": document_id,
        "dedup_key": key,
        "sha256": sha256,
        "size": len(data),
        "envelope": data,
        "status_code": package.status_code.value if isinstance(package, StatusPackage) else None,
        "signer": json.dumps(verified.signer, ensure_ascii=False, sort_keys=True),
        "signing_time": _signing_time(package),
        "received_at": now,
        "received_from": actor,
        "receipt": json.dumps(receipt, ensure_ascii=False, sort_keys=True),
        "attestation": None if attestation is None else canonical_json(attestation).decode(),
    }
    for attempt in (1, 2):
        try:
            with node.writing() as conn:
                found = _existing(conn, key, sha256)
                if found is not None:
                    audit.append(
                        conn,
                        event="ingest_repeat",
                        actor=actor,
                        subject=found.id,
                        data={"sha256": sha256},
                    )
                else:
                    planned = plan(conn)
                    recipients = _insert(node, conn, row, planned, actor)
        except GatewayError as exc:
            raise _refuse(node, caller, exc, data) from None
        except IntegrityError:
            # Two identical packages raced: the loser finds the winner's row on the retry.
            if attempt == 2:
                raise
            continue
        if found is not None:
            log.info("ingest.repeat", doc=found.id, actor=actor, sha256=sha256)
            return found
        node.wake(hop for _, hop in planned.hops)
        log.info(
            "ingest.accepted",
            doc=gid,
            kind=package.kind.value,
            sender=package.from_.organ_id,
            recipients=recipients,
            size=len(data),
        )
        return Accepted(id=gid, kind=package.kind, receipt=receipt, duplicate=False)
    raise AssertionError("unreachable")  # pragma: no cover


def _insert(node: Node, conn: Connection, row: dict[str, Any], plan: _Plan, actor: str) -> int:
    """Write the prepared document row, its deliveries, events and audit entry; count hops.

    A status is applied to the timelines it changes here, through the rules: a status that
    makes no sense raises, and the whole transaction (the status package too) rolls back.
    """
    now = row["received_at"]
    status_code = row["status_code"]
    note = None
    refusing: tuple[str, ...] = ()
    if row["attestation"] is not None:
        note = attestation_summary(json.loads(row["attestation"])["attestation"])
        refusing = node.settings.hub.refuse_attested
    seq = conn.execute(
        _INSERT_DOCUMENT,
        {**row, "subject": plan.subject, "about_seq": plan.about[0] if plan.about else None},
    ).scalar_one()
    with TimelineWriter(conn, node.name) as timelines:
        rows = [
            timelines.open(
                seq,
                row["sender"],
                recipient,
                hop=hop,
                arrived=TransportState.ACCEPTED,
                outcome=_outcome(hop, recipient in refusing),
                at=now,
                actor=actor,
                failure=_REFUSED_UNVERIFIED if recipient in refusing and hop == LOCAL else None,
                note=note,
            )
            for recipient, hop in plan.hops
        ]
        if plan.about is not None and status_code is not None:
            about_seq, about_recipients = plan.about
            timelines.load([about_seq])
            report = StatusReport(code=StatusCode(status_code), reporter=row["sender"])
            for recipient in about_recipients:
                timelines.record(about_seq, recipient, report, at=now, actor=actor, status_seq=seq)
        if rows:
            conn.execute(_INSERT_DELIVERIES, rows)
    entries = [
        audit.Entry(
            "ingest" if plan.about is None else "status",
            actor,
            row["id"],
            {
                "kind": row["kind"],
                "sender": row["sender"],
                "document_id": row["document_id"],
                "sha256": row["sha256"],
                "size": row["size"],
                "recipients": [r for r, _ in plan.hops],
                "status_code": status_code,
                "attested": row["attestation"] is not None,
            },
        )
    ]
    here = [r for r, hop in plan.hops if hop == LOCAL and r not in refusing]
    if here:
        entries.append(deliver_entry(node.name, row["id"], here))
        # the DMS's nudge, in the transaction that puts the package in its inbox
        webhooks.enqueue(conn, node, [(seq, r) for r in here], at=now)
    audit.append_many(conn, entries)
    return len(plan.hops)


#: the failure of a delivery here to an agency that refuses attested packages
_REFUSED_UNVERIFIED = (
    f"{UnverifiedRefused.code}: the recipient takes only packages whose sender signature "
    "verified; this one was accepted under an intake attestation"
)


def _outcome(hop: str, refuses: bool) -> TransportState | None:
    """A hosted recipient's delivery: delivered, or failed when it refuses the package."""
    if hop != LOCAL:
        return None
    return TransportState.FAILED if refuses else TransportState.DELIVERED


def _signing_time(package: DocumentPackage | StatusPackage) -> Any:
    if isinstance(package, StatusPackage):
        return package.timestamp
    own = [t for t in package.trace_headers if t.organ_id.strip() == package.from_.organ_id]
    return own[-1].timestamp if own else None


# --- documents -------------------------------------------------------------------------------


def ingest_document(
    node: Node, data: bytes, *, caller: Identity, attest: Attest | None = None
) -> Accepted:
    """Verify, authorise, route and durably store a signed document package (``attest``:
    a connected system's ``attest`` policy, docs/hub.md)."""
    verified = _verified(node, data, caller, PackageKind.DOCUMENT, attest)
    package = verified.package
    try:
        if not isinstance(package, DocumentPackage):  # _verified checked the kind
            raise WrongPackageKind(detail={"expected": PackageKind.DOCUMENT.value})
        recipients = list(dict.fromkeys(org.organ_id for org in package.to))
        limit = node.settings.limits.max_recipients
        if len(recipients) > limit:
            raise TooManyRecipients(
                f"{len(recipients)} recipients; this node accepts at most {limit}",
                detail={"recipients": len(recipients), "limit": limit},
            )
        most = node.settings.limits.max_attachments
        if len(package.attachments) > most:
            raise TooManyAttachments(
                f"{len(package.attachments)} attachments; this node accepts at most {most}",
                detail={"attachments": len(package.attachments), "limit": most},
            )
        hops = [(r, node.next_hop(AgencyCode.parse(r))) for r in recipients]
    except GatewayError as exc:
        raise _refuse(node, caller, exc, data) from None
    plan = _Plan(hops=hops, subject=package.subject)
    return _store(node, data, caller, verified, lambda _conn: plan)


# --- statuses --------------------------------------------------------------------------------


def ingest_status(
    node: Node, data: bytes, *, caller: Identity, attest: Attest | None = None
) -> Accepted:
    """Verify a status package, apply it to the document it answers, store and deliver it."""
    verified = _verified(node, data, caller, PackageKind.STATUS, attest)
    package = verified.package
    if not isinstance(package, StatusPackage):  # _verified checked the kind
        raise _refuse(
            node, caller, WrongPackageKind(detail={"expected": PackageKind.STATUS.value}), data
        )
    reporter = package.from_.organ_id
    target = package.response_for
    if target is None or not target.document_id or not target.organ_id:
        raise _refuse(
            node,
            caller,
            StatusTargetUnknown(
                "the status package's ResponseFor must name the document (OrganId and DocumentId)"
            ),
            data,
        )
    target_key = package_key(target.organ_id, target.document_id, "")

    def plan(conn: Connection) -> _Plan:
        # FOR UPDATE serialises statuses about one document on PostgreSQL; SQLite's writer
        # transaction (BEGIN IMMEDIATE) already does.
        row = conn.execute(
            select(documents.c.seq, documents.c.sender)
            .where(documents.c.dedup_key == target_key)
            .with_for_update()
        ).first()
        if row is None:
            raise StatusTargetUnknown(
                f"no document {target.document_id} from {target.organ_id} is known here",
                detail={"sender": target.organ_id, "document_id": target.document_id},
            )
        recipients = [
            r
            for (r,) in conn.execute(
                select(deliveries.c.recipient).where(deliveries.c.document_seq == row.seq)
            )
        ]
        if package.status_code is StatusCode.TAKE_BACK_REQUESTED:
            if reporter != row.sender:
                raise StatusNotAllowed(
                    f"only the sender ({row.sender}) may ask to take the document back",
                    detail={"reporter": reporter, "sender": row.sender},
                )
            concerned, deliver_to = recipients, recipients
        else:
            if reporter not in recipients:
                raise StatusNotAllowed(
                    f"{reporter} is not a recipient of this document",
                    detail={"reporter": reporter},
                )
            concerned, deliver_to = [reporter], [row.sender]
        # the status is checked against each timeline by the rules when it is recorded
        # (_insert): a refusal there rolls the whole transaction back
        hops = [(r, node.next_hop(AgencyCode.parse(r))) for r in deliver_to]
        return _Plan(hops=hops, subject=package.description, about=(row.seq, concerned))

    return _store(node, data, caller, verified, plan)
