"""Checking an item of a relay batch: a node believes nothing another node tells it.

For every item :func:`check_item` verifies the hop chain (:func:`gateway.evidence.hops.verify_hops`:
signatures, node certificates, digests, no loop, the last hop from the caller to this node), the
receipts of the earlier hops, and the package itself (:class:`gateway.trust.verification.Verifier`,
every check, as at ingest) or, for a notice, the notice's signature. Nothing is stored here:
:mod:`gateway.network.relay` stores what passes.

Usage::

    checked = check_item(node, "h49", 0, item)   # raises the first refusal
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from gateway import jsonsafe
from gateway.agency import AgencyCode
from gateway.envelope.model import DocumentPackage, PackageKind, StatusPackage
from gateway.errors import GatewayError, HopChainBroken, ReceiptInvalid
from gateway.evidence.attestations import verify_attestation
from gateway.evidence.hops import CONFIRMATIONS, trusted_chain, verify_hops, verify_notice
from gateway.evidence.nodekey import certificates_from_pem, parse_utc
from gateway.evidence.receipts import verify_receipt
from gateway.network.wire import RelayItem
from gateway.node.container import Node
from gateway.node.dedup import notice_key, package_key
from gateway.trust.attested import verify_or_attest
from gateway.trust.binding import describe

__all__ = ["Checked", "check_item"]


@dataclass(slots=True)
class Checked:
    """A relay item that passed every check, with what storing it needs.

    Usage: ``checked = check_item(node, "h49", 0, item); checked.key``
    """

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
    #: the intake attestation it travels with (its sender signature was not verified)
    attestation: dict[str, Any] | None = None
    signing_time: Any = None
    subject: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """The item's dedup key (:mod:`gateway.node.dedup`): a repeat is found by it."""
        if self.item.kind == "notice":
            return notice_key(self.sha256)
        return package_key(self.sender, self.document_id, self.sha256)


def check_item(node: Node, caller: str, index: int, item: RelayItem) -> Checked:
    """Every check of item ``index`` of a batch from neighbour ``caller``, before anything is
    stored; the item as checked, or the first refusal raised (a :class:`GatewayError`).

    Usage: ``checked = check_item(node, "h49", 0, item)``
    """
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
    checked = Checked(
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
            fields["event"]
            if fields["event"] in CONFIRMATIONS
            else f"delivery failed: {fields['code']}"
        )
        checked.signing_time = parse_utc(fields["at"])
        return checked
    now = parse_utc(first["at"])
    if item.attestation is None:
        package, signer = node.verifier.verify(data, now=now).accepted()
        checked.signer = describe(signer)
    else:
        # accepted at intake without a verified sender signature: the intake node's signed
        # word, checked, then every check again here, the signature's alone forgiven
        try:
            attested = verify_attestation(item.attestation, trust=node.trust, sha256=sha256)
        except GatewayError as exc:
            raise HopChainBroken(
                f"the package's intake attestation does not verify: {exc.message}",
                detail={"cause": exc.code},
            ) from None
        limits = node.settings.limits.xml_limits()
        report, unverified = verify_or_attest(node.verifier, data, now=now, limits=limits)
        package = report.accepted()[0] if unverified is None else unverified.package
        checked.attestation = item.attestation
        checked.signer = {
            "attested_by": attested["node"],
            "systemid": attested["systemid"],
            "verified": False,
        }
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
    return checked
