"""edXML packages ↔ the model in :mod:`gateway.envelope.model`: parse any prefixing, emit the SDK's.

Parsing takes an element that is already safely parsed and schema-validated (no DTD, size caps,
XSD: not done here) and reads it by namespace URI and local name, never by prefix or position.
Building emits exactly the national SDK's prefixing, which other vendors' validators insist on.

Usage::

    pkg = parse_package(root)              # DocumentPackage | StatusPackage
    data = build_package(pkg)              # bytes, UTF-8, unsigned

Reading rules (see also :mod:`gateway.envelope.model`):

- elements outside the edXML namespace, elements this model does not know, comments and the
  ``Signature`` (XMLDSig or, as in current samples, unprefixed in the edXML namespace) are
  skipped: unknown content is the schema's business;
- an element the model holds once, appearing twice → :class:`DuplicateElement`;
- an empty or whitespace-only element is the same as an absent one; a container whose parts are
  all empty (``<ResponseFor />``, or one with four empty children) is dropped;
- a missing required element (``From``, ``To``, ``OrganId`` of From/To/TraceHeader/Receiver,
  at least one ``TraceHeader`` in a document, ``StatusCode``, ``Timestamp``, ``ContentId``,
  ``ContentTransferEncoded``, ``BussinessDocType`` of a Bussiness) → :class:`MissingElement`;
- strict on codes and dates: a bad date or time, an unknown StatusCode / BussinessDocType /
  Priority, or a ``From``/``To`` OrganId that is not exactly an agency code (its raw text:
  any surrounding whitespace, NBSP included, is refused) → :class:`InvalidValue` (the
  :class:`~gateway.errors.AgencyCodeError` is its ``__cause__``, ``detail["cause"]`` says
  ``AGENCY_CODE_INVALID`` and ``detail["reason"]`` why). Lenient on free text:
  PromulgationAmount, PageAmount, Direction, ResponseFor and TraceHeader OrganIds stay raw;
- every error's ``detail`` carries the ``path`` (``/edXML/.../To[2]/OrganId``) and, when
  known, the ``line``; quoted values are clipped to 120 characters;
- a status package carrying manifest references or attachments → :class:`ManifestMismatch`;
- base64 is never decoded here: :meth:`Attachment.decode` does that.

.. warning:: the model is for routing and display. Relay the received bytes, never a rebuilt
   package: building drops the signature and anything the model does not hold.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import fields
from enum import Enum
from typing import Any, TypeVar

from lxml import etree

from gateway.agency import AgencyCode
from gateway.envelope.build import build_document, build_package, build_status
from gateway.envelope.model import (
    EDXML_NS,
    VIETNAM_TZ,
    Attachment,
    Business,
    BusinessDocType,
    BusinessDocumentInfo,
    Code,
    DocumentPackage,
    DocumentType,
    ManifestReference,
    Organization,
    OtherInfo,
    Priority,
    PromulgationInfo,
    Receiver,
    ReplacementInfo,
    ResponseFor,
    SignerInfo,
    StaffInfo,
    StatusCode,
    StatusPackage,
    TraceHeader,
)
from gateway.errors import (
    AgencyCodeError,
    DuplicateElement,
    InvalidValue,
    ManifestMismatch,
    MissingElement,
    UnknownPackageKind,
)

__all__ = ["build_document", "build_package", "build_status", "parse_package"]

_PREFIX = "{" + EDXML_NS + "}"
_DATE = re.compile(r"([0-9]{4})/([0-9]{2})/([0-9]{2})")
_TIME = re.compile(r"([0-9]{4})/([0-9]{2})/([0-9]{2}) ([0-9]{2}):([0-9]{2}):([0-9]{2})")
_CLIP = 120  # longest value quoted back in an error: never echo a payload

_E = TypeVar("_E", bound=Enum)
_T = TypeVar("_T")


def _clip(value: str) -> str:
    return value if len(value) <= _CLIP else value[:_CLIP] + "…"


def _raw_text(el: etree._Element) -> str:
    """The element's own character data (comment tails included), unstripped."""
    if len(el) == 0:
        return el.text or ""
    parts = [el.text or ""]
    parts.extend(child.tail or "" for child in el)
    return "".join(parts)


def _line(el: etree._Element) -> int | None:
    line: object = el.sourceline  # lxml-stubs type it as "..."
    return line if isinstance(line, int) else None


class _Node:
    """An edXML element, its path for error messages, and its edXML children by local name."""

    __slots__ = ("_children", "_value", "el", "path")

    def __init__(self, el: etree._Element, path: str) -> None:
        self.el = el
        self.path = path
        self._children: dict[str, list[etree._Element]] | None = None
        self._value: str | None = None

    @property
    def children(self) -> dict[str, list[etree._Element]]:
        """edXML-namespace child elements by local name, indexed on first use."""
        if self._children is None:
            index: dict[str, list[etree._Element]] = {}
            cut = len(_PREFIX)
            # lxml filters "{ns}*" in C: no comments, PIs or foreign elements reach Python
            for child in self.el.iterchildren(_PREFIX + "*"):
                name = child.tag[cut:]
                found = index.get(name)
                if found is None:
                    index[name] = [child]
                else:
                    found.append(child)
            self._children = index
        return self._children

    @property
    def line(self) -> int | None:
        return _line(self.el)

    @property
    def value(self) -> str:
        """Stripped character data ("" when empty)."""
        if self._value is None:
            self._value = _raw_text(self.el).strip()
        return self._value

    def has(self, name: str) -> bool:
        return name in self.children

    def one_raw(self, name: str) -> _Node | None:
        """The child ``name``, blank or not; None if absent; DuplicateElement if repeated."""
        found = (self._children if self._children is not None else self.children).get(name)
        if not found:
            return None
        path = f"{self.path}/{name}"
        if len(found) > 1:
            raise DuplicateElement(
                f"{path} appears {len(found)} times; it may appear at most once",
                detail={"path": path, "element": name, "line": _line(found[1])},
            )
        return _Node(found[0], path)

    def one(self, name: str) -> _Node | None:
        """Like :meth:`one_raw`, but a blank element counts as absent."""
        node = self.one_raw(name)
        return None if node is None or node.is_empty() else node

    def many(self, name: str) -> list[_Node]:
        """Every non-blank child ``name``, with 1-based positions in their paths."""
        found = self.children.get(name, [])
        nodes = (_Node(el, f"{self.path}/{name}[{i}]") for i, el in enumerate(found, 1))
        return [node for node in nodes if not node.is_empty()]

    def need(self, name: str) -> _Node:
        node = self.one(name)
        if node is None:
            path = f"{self.path}/{name}"
            raise MissingElement(
                f"{path} is required", detail={"path": path, "element": name, "line": self.line}
            )
        return node

    def is_empty(self) -> bool:
        """No child elements and no character data: the same as absent."""
        if len(self.el) and any(isinstance(c.tag, str) for c in self.el):
            return False
        return not self.value

    def text(self, name: str) -> str | None:
        found = self.children.get(name)
        if not found:
            return None
        if len(found) == 1 and len(found[0]) == 0:
            # Hot path: a lone leaf element. Same result as one(name).value, without a _Node.
            text = found[0].text
            return (text.strip() or None) if text else None
        node = self.one(name)
        return node.value if node is not None else None

    def texts(self, name: str) -> tuple[str, ...]:
        return tuple(node.value for node in self.many(name))

    def opt(self, name: str, convert: Callable[[_Node], _T]) -> _T | None:
        node = self.one(name)
        return convert(node) if node is not None else None


def _invalid(node: _Node, expected: str) -> InvalidValue:
    value = _clip(node.value)
    return InvalidValue(
        f"{node.path}: {value!r} is not {expected}",
        detail={"path": node.path, "value": value, "expected": expected, "line": node.line},
    )


def _date(node: _Node) -> dt.date:
    match = _DATE.fullmatch(node.value)
    try:
        if match is None:
            raise ValueError(node.value)
        year, month, day = (int(g) for g in match.groups())
        return dt.date(year, month, day)
    except ValueError:
        raise _invalid(node, "a date yyyy/MM/dd") from None


def _time(node: _Node) -> dt.datetime:
    match = _TIME.fullmatch(node.value)
    try:
        if match is None:
            raise ValueError(node.value)
        year, month, day, hour, minute, second = (int(g) for g in match.groups())
        local = dt.datetime(year, month, day, hour, minute, second, tzinfo=VIETNAM_TZ)
        return local.astimezone(dt.UTC)
    except (ValueError, OverflowError):
        raise _invalid(node, "a time yyyy/MM/dd HH:mm:ss (Vietnam time)") from None


def _enum(cls: type[_E]) -> Callable[[_Node], _E]:
    def convert(node: _Node) -> _E:
        try:
            return cls(node.value)
        except ValueError:
            known = ", ".join(str(member.value) for member in cls)
            raise _invalid(node, f"a known {cls.__name__} ({known})") from None

    return convert


def _agency_code(node: _Node) -> str:
    """A From/To OrganId: exactly an agency code as signed, nothing trimmed.

    The stripped value would let ``"000.00.00.H49\u00a0"`` (XML whitespace and a no-break
    space alike) verify, route and be stored as H49 while the signed bytes say otherwise.
    """
    raw = _raw_text(node.el)
    try:
        AgencyCode.parse(raw)
    except AgencyCodeError as exc:
        expected = "an agency code VVV.ZZ.YY.Lnn (e.g. 000.00.00.H49)"
        value = _clip(raw)
        raise InvalidValue(
            f"{node.path}: {value!r} is not {expected}: {exc.detail['reason']}",
            detail={
                "path": node.path,
                "value": value,
                "expected": expected,
                "line": node.line,
                "reason": exc.detail["reason"],
                "cause": exc.code,
            },
        ) from exc
    return raw


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _all_empty(obj: Any) -> bool:
    cls = type(obj)
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in fields(obj))
    return all(getattr(obj, name) in (None, ()) for name in names)


# --- MessageHeader ---------------------------------------------------------------------------


def _organization(node: _Node) -> Organization:
    """``From``/``To``: the OrganId must be a valid agency code (we route on it)."""
    return Organization(
        organ_id=_agency_code(node.need("OrganId")),
        organization_in_charge=node.text("OrganizationInCharge"),
        organ_name=node.text("OrganName"),
        organ_add=node.text("OrganAdd"),
        email=node.text("Email"),
        telephone=node.text("Telephone"),
        fax=node.text("Fax"),
        website=node.text("Website"),
    )


def _code(node: _Node) -> Code | None:
    code = Code(code_number=node.text("CodeNumber"), code_notation=node.text("CodeNotation"))
    return None if _all_empty(code) else code


def _promulgation_info(node: _Node) -> PromulgationInfo | None:
    info = PromulgationInfo(place=node.text("Place"), date=node.opt("PromulgationDate", _date))
    return None if _all_empty(info) else info


def _document_type(node: _Node) -> DocumentType | None:
    doc_type = DocumentType(
        type=node.text("Type"),
        type_detail=node.text("TypeDetail"),
        type_name=node.text("TypeName"),
    )
    return None if _all_empty(doc_type) else doc_type


def _signer_info(node: _Node) -> SignerInfo | None:
    info = SignerInfo(
        competence=node.text("Competence"),
        position=node.text("Position"),
        full_name=node.text("FullName"),
    )
    return None if _all_empty(info) else info


def _other_info(node: _Node) -> OtherInfo | None:
    priority = node.opt("Priority", _enum(Priority))
    appendixes = node.one("Appendixes")
    info = OtherInfo(
        sphere=node.text("SphereOfPromulgation"),
        typer_notation=node.text("TyperNotation"),
        promulgation_amount=node.text("PromulgationAmount"),
        page_amount=node.text("PageAmount"),
        direction=node.text("Direction"),
        appendixes=appendixes.texts("Appendix") if appendixes is not None else (),
    )
    if priority is None:
        return None if _all_empty(info) else info
    return OtherInfo(
        priority=priority,
        sphere=info.sphere,
        typer_notation=info.typer_notation,
        promulgation_amount=info.promulgation_amount,
        page_amount=info.page_amount,
        direction=info.direction,
        appendixes=info.appendixes,
    )


def _response_for(node: _Node) -> ResponseFor | None:
    """Raw parts: the field sends empty ones, and answers to documents from anywhere."""
    response = ResponseFor(
        organ_id=node.text("OrganId"),
        code=node.text("Code"),
        promulgation_date=node.opt("PromulgationDate", _date),
        document_id=node.text("DocumentId"),
    )
    return None if _all_empty(response) else response


def _staff_info(node: _Node) -> StaffInfo | None:
    info = StaffInfo(
        department=node.text("Department"),
        staff=node.text("Staff"),
        email=node.text("Email"),
        mobile=node.text("Mobile"),
    )
    return None if _all_empty(info) else info


# --- TraceHeaderList -------------------------------------------------------------------------


def _trace_header(node: _Node) -> TraceHeader:
    # Raw OrganId: the national hub writes codes like 01.02.G22 here.
    return TraceHeader(organ_id=node.need("OrganId").value, timestamp=_time(node.need("Timestamp")))


def _receiver(node: _Node) -> Receiver:
    return Receiver(organ_id=node.need("OrganId").value, receiver_type=node.text("ReceiverType"))


def _business_document_info(node: _Node) -> BusinessDocumentInfo | None:
    receivers = node.one("ReceiverList")
    info = BusinessDocumentInfo(
        document_info=node.text("DocumentInfo"),
        document_receiver=node.text("DocumentReceiver"),
        receivers=tuple(_receiver(r) for r in receivers.many("Receiver")) if receivers else (),
    )
    return None if _all_empty(info) else info


def _replacement_info(node: _Node) -> ReplacementInfo | None:
    organs = node.one("OrganIdList")
    info = ReplacementInfo(
        document_id=node.text("DocumentId"),
        organ_ids=organs.texts("OrganId") if organs is not None else (),
    )
    return None if _all_empty(info) else info


def _business(node: _Node) -> Business:
    replacements = node.one("ReplacementInfoList")
    infos = replacements.many("ReplacementInfo") if replacements is not None else []
    return Business(
        document_id=node.text("DocumentId"),
        doc_type=_enum(BusinessDocType)(node.need("BussinessDocType")),
        reason=node.text("BussinessDocReason"),
        paper=node.text("Paper"),
        staff_info=node.opt("StaffInfo", _staff_info),
        business_document_info=node.opt("BussinessDocumentInfo", _business_document_info),
        replacement_info=tuple(r for r in map(_replacement_info, infos) if r is not None),
    )


def _trace_list(header: _Node) -> tuple[tuple[TraceHeader, ...], Business | None]:
    trace_list = header.one("TraceHeaderList")
    if trace_list is None:
        return (), None
    # Hubs may append their TraceHeader after Bussiness: collected by name, in document order.
    traces = tuple(_trace_header(n) for n in trace_list.many("TraceHeader"))
    return traces, trace_list.opt("Bussiness", _business)


# --- body and attachments --------------------------------------------------------------------


def _reference(node: _Node) -> ManifestReference:
    return ManifestReference(
        content_id=node.need("ContentId").value,
        content_type=node.text("ContentType"),
        description=node.text("Description"),
        attachment_name=node.text("AttachmentName"),
    )


def _attachment(node: _Node) -> Attachment:
    encoded = node.one_raw("ContentTransferEncoded")
    if encoded is None:
        path = f"{node.path}/ContentTransferEncoded"
        raise MissingElement(
            f"{path} is required",
            detail={"path": path, "element": "ContentTransferEncoded", "line": node.line},
        )
    return Attachment(
        content_id=node.need("ContentId").value,
        attachment_name=node.text("AttachmentName"),
        description=node.text("Description"),
        content_type=node.text("ContentType"),
        encoded=_raw_text(encoded.el),  # as-is: decoding is Attachment.decode()'s job
    )


def _manifest(envelope: _Node) -> tuple[str | None, tuple[ManifestReference, ...]]:
    body = envelope.one_raw("edXMLBody")
    manifest = body.one_raw("edXMLManifest") if body is not None else None
    if manifest is None:
        return None, ()
    version = (manifest.el.get("version") or "").strip() or None
    return version, tuple(_reference(n) for n in manifest.many("Reference"))


def _attachments(top: _Node) -> tuple[Attachment, ...]:
    encoded = top.one_raw("AttachmentEncoded")
    if encoded is None:
        return ()
    return tuple(_attachment(n) for n in encoded.many("Attachment"))


# --- packages --------------------------------------------------------------------------------


def _unknown(path: str, reason: str, line: int | None) -> UnknownPackageKind:
    return UnknownPackageKind(
        f"{path}: {reason}", detail={"path": path, "reason": reason, "line": line}
    )


def _document(top: _Node, envelope: _Node, header: _Node, message: _Node) -> DocumentPackage:
    traces, business = _trace_list(header)
    version, references = _manifest(envelope)
    to = tuple(_organization(n) for n in message.many("To"))
    if not to:
        message.need("To")  # present but empty: raises MissingElement
    if not traces:
        header.need("TraceHeaderList").need("TraceHeader")  # raises MissingElement
    responses = (_response_for(n) for n in message.many("ResponseFor"))
    places = message.one("ToPlaces")
    return DocumentPackage(
        from_=_organization(message.need("From")),
        to=to,
        document_id=message.text("DocumentId"),
        code=message.opt("Code", _code),
        promulgation_info=message.opt("PromulgationInfo", _promulgation_info),
        document_type=message.opt("DocumentType", _document_type),
        subject=message.text("Subject"),
        content=message.text("Content"),
        signer_info=message.opt("SignerInfo", _signer_info),
        due_date=message.opt("DueDate", _date),
        to_places=places.texts("Place") if places is not None else (),
        other_info=message.opt("OtherInfo", _other_info),
        response_for=tuple(r for r in responses if r is not None),
        steering_type=message.text("SteeringType"),
        trace_headers=traces,
        business=business,
        manifest_version=version,
        references=references,
        attachments=_attachments(top),  # DocumentPackage checks them against the manifest
    )


def _status(top: _Node, envelope: _Node, header: _Node, message: _Node) -> StatusPackage:
    traces, _business_ignored = _trace_list(header)
    _version, references = _manifest(envelope)
    attachments = _attachments(top)
    if references or attachments:
        ids = sorted({r.content_id for r in references} | {a.content_id for a in attachments})
        raise ManifestMismatch(
            "a status package carries no manifest references or attachments: " + ", ".join(ids),
            detail={"content_ids": ids, "reason": "status package with attachments"},
        )
    return StatusPackage(
        from_=_organization(message.need("From")),
        response_for=message.opt("ResponseFor", _response_for),
        staff_info=message.opt("StaffInfo", _staff_info),
        status_code=_enum(StatusCode)(message.need("StatusCode")),
        description=message.text("Description"),
        timestamp=_time(message.need("Timestamp")),
        trace_headers=traces,
    )


def parse_package(root: etree._Element) -> DocumentPackage | StatusPackage:
    """Read an edXML package into the model; any prefixing, any order of MessageHeader parts.

    ``root`` must be the ``{edXML namespace}edXML`` element of a safely parsed, XSD-validated
    document. A package is a status package when its MessageHeader has a ``StatusCode`` and a
    document package when it has a ``To``; both or neither → :class:`UnknownPackageKind`.

    Usage: ``pkg = parse_package(etree.fromstring(data, safe_parser))``

    Raises :class:`~gateway.errors.EnvelopeError` subclasses (see the module docstring).
    """
    if root.tag != _PREFIX + "edXML":
        raise _unknown("/", f"root element is {root.tag!r}, not {{{EDXML_NS}}}edXML", None)
    top = _Node(root, "/edXML")
    parts = [top]
    for name in ("edXMLEnvelope", "edXMLHeader", "MessageHeader"):
        node = parts[-1].one_raw(name)
        if node is None:
            raise _unknown(f"{parts[-1].path}/{name}", "missing", parts[-1].line)
        parts.append(node)
    _top, envelope, header, message = parts
    is_status, is_document = message.has("StatusCode"), message.has("To")
    if is_status and is_document:
        raise _unknown(message.path, "has both StatusCode and To", message.line)
    if is_status:
        return _status(top, envelope, header, message)
    if is_document:
        return _document(top, envelope, header, message)
    raise _unknown(message.path, "has neither To (document) nor StatusCode (status)", message.line)
