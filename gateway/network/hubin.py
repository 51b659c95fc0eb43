"""Packages pulled from a hub parent: checked, stored once, routed on (docs/hub.md "A hub as
parent").

A node whose ``[directory] parent`` is a national hub (``kind = "hub"``) pulls what the hub holds
for its agencies (:mod:`adapters.hub.parent` polls getReceivedEdocList and getEdoc) and hands
each package here. It is verified under the parent's policy (``require``: as on the node's own
API; ``attest``: the signature's failures alone forgiven, since hubs append TraceHeaders that
break enveloped signatures, with an intake attestation naming the hub), stored in one
transaction with its delivery rows, timeline events and audit entry (``hub_in``), and only then
does the poller acknowledge it to the hub (updateStatus ``done``). A crash in between leaves the
package stored and unacknowledged: the next poll gets it again, finds it stored (same sender and
DocumentId, same bytes) and acknowledges it. Nothing is lost, nothing stored twice.

The evidence says which bytes came from the hub: ``received_from`` is ``hub:<name>``, the
receipt is this node's, and the package came through no node of ours (no hop records).

Usage::

    outcome = store_from_hub(node, data, kind="edoc")   # (gateway id, duplicate)
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import structlog
from sqlalchemy import select

from gateway.envelope.model import DocumentPackage, StatusCode, StatusPackage
from gateway.errors import ConfigError, DocumentConflict, GatewayError, WrongPackageKind
from gateway.evidence import audit
from gateway.evidence.attestations import make_attestation
from gateway.evidence.attestations import summary as attestation_summary
from gateway.evidence.nodekey import canonical_json
from gateway.evidence.receipts import make_receipt
from gateway.network import outbox
from gateway.network.relay import apply_status
from gateway.node.container import Node
from gateway.node.dedup import package_key
from gateway.settings import PeerSettings
from gateway.storage.tables import deliveries, documents
from gateway.trust.attested import verify_or_attest
from gateway.trust.store import describe

__all__ = ["hub_parent", "store_from_hub"]

log = structlog.get_logger("gateway.hub")


def hub_parent(node: Node) -> PeerSettings | None:
    """The node's parent when it is a hub (``kind = "hub"``), else None."""
    parent = node.settings.directory.parent
    return parent if parent is not None and parent.kind == "hub" else None


def store_from_hub(node: Node, data: bytes, *, kind: str) -> tuple[str, bool]:
    """Verify and store a package pulled from the hub parent; (its gateway id, whether it was
    stored already). Raises the refusal (a :class:`GatewayError`), audited ``hub_in_refuse``;
    the caller tells the hub ``fail``."""
    parent = hub_parent(node)
    if parent is None:
        raise ConfigError("this node's parent is not a hub")
    actor = f"hub:{parent.name}"
    try:
        return _store(node, parent, data, kind, actor)
    except GatewayError as exc:
        with node.writing() as conn:
            audit.append(
                conn,
                event="hub_in_refuse",
                actor=actor,
                subject=None,
                data={
                    "code": exc.code,
                    "kind": kind,
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "size": len(data),
                },
            )
        log.warning("hub.pull_refused", hub=parent.name, code=exc.code)
        raise


def _store(
    node: Node, parent: PeerSettings, data: bytes, kind: str, actor: str
) -> tuple[str, bool]:
    now = node.now()
    sha256 = hashlib.sha256(data).hexdigest()
    attestation: dict[str, Any] | None = None
    if parent.policy == "attest":
        report, unverified = verify_or_attest(
            node.verifier, data, now=now, limits=node.settings.limits.xml_limits()
        )
        if unverified is None:
            package, signer = report.accepted()
            described = describe(signer)
        else:
            package = unverified.package
            described = {"attested_by": node.name, "systemid": parent.systemid, "verified": False}
            attestation = make_attestation(
                node.key,
                node=node.name,
                sha256=sha256,
                systemid=f"hub:{parent.name}:{parent.systemid}",
                agency=package.from_.organ_id,
                at=now,
                failed=unverified.failed,
                report=unverified.report,
                undeclared_prefixes=unverified.undeclared_prefixes,
            )
    else:
        package, signer = node.verifier.verify(data, now=now).accepted()
        described = describe(signer)
    expected = StatusPackage if kind == "status" else DocumentPackage
    if not isinstance(package, expected):
        raise WrongPackageKind(
            f"the hub listed it as {kind}, but it is a {package.kind.value} package",
            detail={"expected": kind, "received": package.kind.value},
        )
    sender = package.from_.organ_id
    document_id = package.document_id if isinstance(package, DocumentPackage) else None
    key = package_key(sender, document_id, sha256)
    gid = node.new_id()
    receipt = make_receipt(
        node.key,
        node=node.name,
        document=gid,
        sender=sender,
        document_id=document_id,
        sha256=sha256,
        size=len(data),
        received_at=now,
        received_from=actor,
    )
    note = None if attestation is None else attestation_summary(attestation["attestation"])
    with node.writing() as conn:
        existing = conn.execute(
            select(documents.c.id, documents.c.sha256).where(documents.c.dedup_key == key)
        ).first()
        if existing is not None:
            if existing.sha256 != sha256:
                raise DocumentConflict(
                    "a package with this sender and DocumentId is stored with other bytes",
                    detail={"existing": existing.id},
                )
            audit.append(conn, event="hub_in_repeat", actor=actor, subject=existing.id, data={})
            return str(existing.id), True
        about = _about(conn, package)
        seq = conn.execute(
            documents.insert().returning(documents.c.seq),
            {
                "id": gid,
                "kind": package.kind.value,
                "sender": sender,
                "document_id": document_id,
                "dedup_key": key,
                "sha256": sha256,
                "size": len(data),
                "envelope": data,
                "subject": package.subject
                if isinstance(package, DocumentPackage)
                else package.description,
                "status_code": package.status_code.value
                if isinstance(package, StatusPackage)
                else None,
                "about_seq": about,
                "signer": json.dumps(described, ensure_ascii=False, sort_keys=True),
                "signing_time": None,
                "received_at": now,
                "received_from": actor,
                "receipt": canonical_json(receipt).decode("utf-8"),
                "attestation": None
                if attestation is None
                else canonical_json(attestation).decode("utf-8"),
            },
        ).scalar_one()
        recipients = _recipients(conn, package, about)
        audit.append(
            conn,
            event="hub_in",
            actor=actor,
            subject=gid,
            data={
                "kind": package.kind.value,
                "sender": sender,
                "document_id": document_id,
                "sha256": sha256,
                "size": len(data),
                "recipients": recipients,
                "attested": attestation is not None,
            },
        )
        woken = outbox.add_deliveries(
            conn,
            node,
            seq,
            sender,
            recipients,
            actor,
            in_transit=True,
            came_through=[parent.name],  # back to the hub would be a loop
            note=note,
            attested=attestation is not None,
        )
        if about is not None and isinstance(package, StatusPackage):
            apply_status(conn, node, about, package, actor, seq)
    node.wake(woken)
    log.info("hub.pulled", hub=parent.name, doc=gid, kind=package.kind.value)
    return gid, False


def _about(conn: Any, package: DocumentPackage | StatusPackage) -> int | None:
    if not isinstance(package, StatusPackage) or package.response_for is None:
        return None
    target = package.response_for
    if not target.document_id or not target.organ_id:
        return None
    seq: int | None = conn.execute(
        select(documents.c.seq).where(
            documents.c.dedup_key == package_key(target.organ_id, target.document_id, "")
        )
    ).scalar()
    return seq


def _recipients(
    conn: Any, package: DocumentPackage | StatusPackage, about: int | None
) -> list[str]:
    """Who the package goes to: a document's To list; a status goes to the document's sender,
    or (13, take back) to its recipients here."""
    if isinstance(package, DocumentPackage):
        return list(dict.fromkeys(org.organ_id for org in package.to))
    target = package.response_for
    if package.status_code is StatusCode.TAKE_BACK_REQUESTED and about is not None:
        return [
            r
            for (r,) in conn.execute(
                select(deliveries.c.recipient).where(deliveries.c.document_seq == about)
            )
        ]
    return [target.organ_id] if target is not None and target.organ_id else []
