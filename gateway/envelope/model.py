"""The edXML package model (QCVN 102:2016): document packages and status packages.

Plain frozen values; parsing and building live in :mod:`gateway.envelope.codec`. Field names follow
the wire names (``OrganizationInCharge`` → ``organization_in_charge``); the misspelled wire names
``Bussiness*`` are spelled correctly here (``Business``).

Conventions, which the codec keeps on both sides:

- text values are whitespace-stripped, and an empty element is the same as an absent one
  (``None``, or left out of a tuple); the one exception is :attr:`Attachment.encoded`, kept as-is.
  Text is never Unicode-normalised (one field sample writes a name in NFD). So only stripped,
  non-empty strings, and containers with at least one part set, survive build → parse unchanged;
- dates are :class:`datetime.date`; times are *aware* datetimes in UTC, converted from and to
  the wire's zone-less Vietnam time (UTC+7) by the codec, and whole seconds (edXML has no
  fractions: the constructors drop them);
- agency codes stay raw strings (``organ_id``) because field data carries malformed ones in
  places nobody routes on (``TraceHeader/OrganId`` = ``01.02.G22``); properties parse them.
  ``From``/``To`` OrganIds are the exception to stripping: the codec takes them exactly as
  signed and refuses any that is not exactly a code (a trailing NBSP, a leading space).

Usage::

    pkg = parse_package(root)          # gateway.envelope.codec
    if pkg.kind is PackageKind.DOCUMENT:
        for code in pkg.recipients: ...
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
from collections import Counter
from dataclasses import dataclass
from enum import StrEnum

from gateway.agency import AgencyCode
from gateway.errors import AttachmentEncodingError, ManifestMismatch

__all__ = [
    "DSIG_NS",
    "EDXML_NS",
    "VIETNAM_TZ",
    "Attachment",
    "Business",
    "BusinessDocType",
    "BusinessDocumentInfo",
    "Code",
    "DocumentPackage",
    "DocumentType",
    "ManifestReference",
    "Organization",
    "OtherInfo",
    "PackageKind",
    "Priority",
    "PromulgationInfo",
    "Receiver",
    "ReplacementInfo",
    "ResponseFor",
    "SignerInfo",
    "StaffInfo",
    "StatusCode",
    "StatusPackage",
    "TraceHeader",
    "check_manifest",
]

#: The edXML namespace. Root ``<edXML>`` declares it as the default namespace; the envelope
#: subtree uses the prefix ``edXML:``.
EDXML_NS = "http://www.mic.gov.vn/TBT/QCVN_102_2016"
#: The XMLDSig namespace.
DSIG_NS = "http://www.w3.org/2000/09/xmldsig#"
#: The zone of every edXML date and time (they carry none): Vietnam, UTC+7, no DST since 1975.
VIETNAM_TZ = dt.timezone(dt.timedelta(hours=7), "ICT")


class PackageKind(StrEnum):
    """What an edXML package carries."""

    DOCUMENT = "document"
    STATUS = "status"


class StatusCode(StrEnum):
    """Business status codes of a status package (two digits on the wire)."""

    RECEIVED = "01"  #: received by the recipient's DMS
    REFUSED = "02"  #: refused by the recipient
    ACCEPTED = "03"  #: accepted (registered)
    ASSIGNED = "04"  #: assigned to someone
    PROCESSING = "05"  #: being processed
    FINISHED = "06"  #: processing finished
    TAKE_BACK_REQUESTED = "13"  #: the sender asks to take the document back (sender → recipient)
    CHANGE_ACCEPTED = "15"  #: change / take-back accepted
    CHANGE_REFUSED = "16"  #: change / take-back refused

    @property
    def from_sender(self) -> bool:
        """True for the one code that travels sender → recipient (13)."""
        return self is StatusCode.TAKE_BACK_REQUESTED


class BusinessDocType(StrEnum):
    """``Bussiness/BussinessDocType``: what the package does to the document."""

    NEW = "0"
    REVOKE = "1"
    UPDATE = "2"
    REPLACE = "3"


class Priority(StrEnum):
    """``OtherInfo/Priority``."""

    NORMAL = "0"
    URGENT = "1"  #: khẩn
    VERY_URGENT = "2"  #: thượng khẩn
    EXPRESS = "3"  #: hỏa tốc
    EXPRESS_WITH_DEADLINE = "4"  #: hỏa tốc hẹn giờ


def _utc_seconds(value: dt.datetime, field: str) -> dt.datetime:
    """``value`` in UTC, whole seconds; a naive datetime is a programming error."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{field} must be an aware datetime (edXML times are UTC+7 on the wire)")
    return value.astimezone(dt.UTC).replace(microsecond=0)


# --- MessageHeader parts ---------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Organization:
    """``From`` / ``To``: an agency, by code and contact details.

    Usage: ``Organization(organ_id="000.00.00.H49", organ_name="UBND tỉnh Quảng Ninh")``
    """

    #: ``OrganId``: the agency code as sent (see :attr:`agency_code`)
    organ_id: str
    #: ``OrganizationInCharge``: the body the agency answers to
    organization_in_charge: str | None = None
    #: ``OrganName``
    organ_name: str | None = None
    #: ``OrganAdd``: postal address
    organ_add: str | None = None
    #: ``Email``
    email: str | None = None
    #: ``Telephone``
    telephone: str | None = None
    #: ``Fax``
    fax: str | None = None
    #: ``Website``
    website: str | None = None

    @property
    def agency_code(self) -> AgencyCode:
        """``organ_id`` parsed; raises :class:`~gateway.errors.AgencyCodeError` if malformed."""
        return AgencyCode.parse(self.organ_id)


@dataclass(frozen=True, kw_only=True, slots=True)
class Code:
    """``Code``: the document's number and notation (số, ký hiệu), e.g. 7816 / VPCP-TTĐT."""

    #: ``CodeNumber``
    code_number: str | None = None
    #: ``CodeNotation``
    code_notation: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class PromulgationInfo:
    """``PromulgationInfo``: where and when the document was issued."""

    #: ``Place``
    place: str | None = None
    #: ``PromulgationDate`` (``yyyy/MM/dd`` on the wire)
    date: dt.date | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class DocumentType:
    """``DocumentType``: the kind of document (công văn, quyết định, thông tư, ...)."""

    #: ``Type``
    type: str | None = None
    #: ``TypeDetail``
    type_detail: str | None = None
    #: ``TypeName``
    type_name: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class SignerInfo:
    """``SignerInfo``: who signed the paper document (not the XML signature)."""

    #: ``Competence``: signing authority, e.g. "TL. BỘ TRƯỞNG"
    competence: str | None = None
    #: ``Position``
    position: str | None = None
    #: ``FullName``
    full_name: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class OtherInfo:
    """``OtherInfo``: priority and publication details."""

    #: ``Priority`` (absent on the wire means normal)
    priority: Priority = Priority.NORMAL
    #: ``SphereOfPromulgation``
    sphere: str | None = None
    #: ``TyperNotation``: initials of the typist
    typer_notation: str | None = None
    #: ``PromulgationAmount``: number of copies issued, as written (free text in the field)
    promulgation_amount: str | None = None
    #: ``PageAmount``, as written
    page_amount: str | None = None
    #: ``Direction``: a steering document, as written (``true``/``false`` in the samples)
    direction: str | None = None
    #: ``Appendixes/Appendix``
    appendixes: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class ResponseFor:
    """``ResponseFor``: the document this one answers; every part optional (the field sends
    empty ones, which the codec drops)."""

    #: ``OrganId``: the answered document's issuer, raw
    organ_id: str | None = None
    #: ``Code``: its number/notation as one string, e.g. "7816/VPCP-TTĐT"
    code: str | None = None
    #: ``PromulgationDate``
    promulgation_date: dt.date | None = None
    #: ``DocumentId``
    document_id: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class StaffInfo:
    """``StaffInfo``: the clerk who handled the package."""

    #: ``Department``
    department: str | None = None
    #: ``Staff``
    staff: str | None = None
    #: ``Email``
    email: str | None = None
    #: ``Mobile``
    mobile: str | None = None


# --- TraceHeaderList -------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class TraceHeader:
    """``TraceHeader``: one hop the package passed through (appended by the national hub).

    Usage: ``TraceHeader(organ_id="000.00.00.G22", timestamp=datetime.now(UTC))``
    """

    #: ``OrganId`` as sent: NOT validated (field data has ``01.02.G22``)
    organ_id: str
    #: ``Timestamp``: aware, normalised to UTC whole seconds (Vietnam time on the wire)
    timestamp: dt.datetime

    def __post_init__(self) -> None:
        object.__setattr__(self, "timestamp", _utc_seconds(self.timestamp, "timestamp"))


@dataclass(frozen=True, kw_only=True, slots=True)
class Receiver:
    """``ReceiverList/Receiver``: who an update concerns."""

    #: ``OrganId``, raw
    organ_id: str
    #: ``ReceiverType``
    receiver_type: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class BusinessDocumentInfo:
    """``BussinessDocumentInfo``: which parts an update changes and for whom."""

    #: ``DocumentInfo``: "1" when the document's metadata changes
    document_info: str | None = None
    #: ``DocumentReceiver``: "1" when the receiver list changes
    document_receiver: str | None = None
    #: ``ReceiverList/Receiver``
    receivers: tuple[Receiver, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class ReplacementInfo:
    """``ReplacementInfoList/ReplacementInfo``: a document this one replaces, and for whom."""

    #: ``DocumentId`` of the replaced document
    document_id: str | None = None
    #: ``OrganIdList/OrganId``, raw
    organ_ids: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class Business:
    """``Bussiness``: what the package does to a document already sent (new, revoke, update,
    replace)."""

    #: ``DocumentId``: the document concerned
    document_id: str | None = None
    #: ``BussinessDocType``
    doc_type: BusinessDocType
    #: ``BussinessDocReason``
    reason: str | None = None
    #: ``Paper``: "1" when a paper copy follows
    paper: str | None = None
    #: ``StaffInfo``
    staff_info: StaffInfo | None = None
    #: ``BussinessDocumentInfo`` (updates)
    business_document_info: BusinessDocumentInfo | None = None
    #: ``ReplacementInfoList/ReplacementInfo`` (replacements)
    replacement_info: tuple[ReplacementInfo, ...] = ()


# --- body and attachments --------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class ManifestReference:
    """``edXMLManifest/Reference``: the signed description of one attachment."""

    #: ``ContentId``, e.g. ``cid:209``; matches exactly one :attr:`Attachment.content_id`
    content_id: str
    #: ``ContentType``
    content_type: str | None = None
    #: ``Description``
    description: str | None = None
    #: ``AttachmentName``
    attachment_name: str | None = None


_B64_WHITESPACE = re.compile(r"[ \t\r\n]+")


@dataclass(frozen=True, kw_only=True, slots=True)
class Attachment:
    """``AttachmentEncoded/Attachment``: one file, base64 text kept exactly as received.

    Usage: ``data = attachment.decode()``

    .. warning:: the codec does not decode on parse; :meth:`decode` is where bad base64 shows.
    """

    #: ``ContentId``
    content_id: str
    #: ``AttachmentName``
    attachment_name: str | None = None
    #: ``Description``
    description: str | None = None
    #: ``ContentType``
    content_type: str | None = None
    #: ``ContentTransferEncoded``: the base64 text as-is (line breaks included)
    encoded: str = ""

    def decode(self) -> bytes:
        """The attachment's bytes; strict base64 (line breaks allowed, nothing else).

        Raises :class:`~gateway.errors.AttachmentEncodingError` naming the content id.
        """
        compact = _B64_WHITESPACE.sub("", self.encoded)
        try:
            return base64.b64decode(compact.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError) as exc:
            raise AttachmentEncodingError(
                f"attachment {self.content_id!r} is not valid base64: {exc}",
                detail={"content_id": self.content_id, "reason": str(exc)},
            ) from exc


def check_manifest(
    references: tuple[ManifestReference, ...], attachments: tuple[Attachment, ...]
) -> None:
    """Raise :class:`~gateway.errors.ManifestMismatch` unless references and attachments match
    one to one by content id (each id once on each side)."""
    ref_ids = Counter(r.content_id for r in references)
    att_ids = Counter(a.content_id for a in attachments)
    missing = sorted(set(ref_ids) - set(att_ids))
    unreferenced = sorted(set(att_ids) - set(ref_ids))
    dup_refs = sorted(cid for cid, n in ref_ids.items() if n > 1)
    dup_atts = sorted(cid for cid, n in att_ids.items() if n > 1)
    if not (missing or unreferenced or dup_refs or dup_atts):
        return
    parts = []
    if missing:
        parts.append(f"no attachment for manifest reference(s) {', '.join(missing)}")
    if unreferenced:
        parts.append(f"no manifest reference for attachment(s) {', '.join(unreferenced)}")
    if dup_refs:
        parts.append(f"content id(s) referenced more than once: {', '.join(dup_refs)}")
    if dup_atts:
        parts.append(f"content id(s) attached more than once: {', '.join(dup_atts)}")
    raise ManifestMismatch(
        "manifest and attachments do not match: " + "; ".join(parts),
        detail={
            "missing_attachments": missing,
            "unreferenced_attachments": unreferenced,
            "duplicate_references": dup_refs,
            "duplicate_attachments": dup_atts,
        },
    )


# --- packages --------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class DocumentPackage:
    """An edXML document package: a document, its routing header and its attachments.

    Construction checks that ``to`` and ``trace_headers`` are not empty (ValueError) and that
    manifest and attachments match (:class:`~gateway.errors.ManifestMismatch`).

    Usage: ``build_document(DocumentPackage(from_=org, to=(org2,), ...))`` (gateway.envelope.codec)
    """

    #: ``From``: the issuing agency
    from_: Organization
    #: ``To``: the recipients, at least one
    to: tuple[Organization, ...]
    #: ``DocumentId``: ``<issuer>,<yyyy/MM/dd>,<number>/<notation>`` or a UUID; optional
    document_id: str | None = None
    #: ``Code``
    code: Code | None = None
    #: ``PromulgationInfo``
    promulgation_info: PromulgationInfo | None = None
    #: ``DocumentType``
    document_type: DocumentType | None = None
    #: ``Subject``: trích yếu
    subject: str | None = None
    #: ``Content``
    content: str | None = None
    #: ``SignerInfo``
    signer_info: SignerInfo | None = None
    #: ``DueDate``
    due_date: dt.date | None = None
    #: ``ToPlaces/Place``: recipients named in words (nơi nhận)
    to_places: tuple[str, ...] = ()
    #: ``OtherInfo``
    other_info: OtherInfo | None = None
    #: ``ResponseFor``: the documents this one answers
    response_for: tuple[ResponseFor, ...] = ()
    #: ``SteeringType``
    steering_type: str | None = None
    #: ``TraceHeaderList/TraceHeader``: hops, oldest first; at least one (the sender's)
    trace_headers: tuple[TraceHeader, ...]
    #: ``TraceHeaderList/Bussiness``
    business: Business | None = None
    #: ``edXMLManifest/@version``
    manifest_version: str | None = "1.0"
    #: ``edXMLManifest/Reference``
    references: tuple[ManifestReference, ...] = ()
    #: ``AttachmentEncoded/Attachment``
    attachments: tuple[Attachment, ...] = ()

    def __post_init__(self) -> None:
        if not self.to:
            raise ValueError("a document package needs at least one recipient (To)")
        if not self.trace_headers:
            raise ValueError("a document package needs at least one TraceHeader (the sender's)")
        check_manifest(self.references, self.attachments)

    @property
    def kind(self) -> PackageKind:
        """Always :attr:`PackageKind.DOCUMENT`."""
        return PackageKind.DOCUMENT

    @property
    def sender(self) -> AgencyCode:
        """``From/OrganId`` parsed."""
        return self.from_.agency_code

    @property
    def recipients(self) -> tuple[AgencyCode, ...]:
        """``To/OrganId`` of every recipient, parsed, in package order."""
        return tuple(org.agency_code for org in self.to)


@dataclass(frozen=True, kw_only=True, slots=True)
class StatusPackage:
    """An edXML status package: a business status (01-16) about a document.

    Usage: ``StatusPackage(from_=org, status_code=StatusCode.RECEIVED, timestamp=now_utc)``
    """

    #: ``From``: who reports the status
    from_: Organization
    #: ``ResponseFor``: the document the status is about
    response_for: ResponseFor | None = None
    #: ``StaffInfo``
    staff_info: StaffInfo | None = None
    #: ``StatusCode``
    status_code: StatusCode
    #: ``Description``
    description: str | None = None
    #: ``Timestamp``: aware, normalised to UTC whole seconds (Vietnam time on the wire)
    timestamp: dt.datetime
    #: ``TraceHeaderList/TraceHeader`` (the samples have none)
    trace_headers: tuple[TraceHeader, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "timestamp", _utc_seconds(self.timestamp, "timestamp"))

    @property
    def kind(self) -> PackageKind:
        """Always :attr:`PackageKind.STATUS`."""
        return PackageKind.STATUS

    @property
    def sender(self) -> AgencyCode:
        """``From/OrganId`` parsed."""
        return self.from_.agency_code
