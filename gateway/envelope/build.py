"""Build edXML bytes from the model, with exactly the national SDK's prefixing and order.

Import the public names from :mod:`gateway.envelope.codec`; this module is its building half.

What comes out (the SDK samples ``edoc_update.edxml`` / ``status_inbox_01.edxml``)::

    <?xml version="1.0" encoding="UTF-8"?>
    <edXML xmlns="http://www.mic.gov.vn/TBT/QCVN_102_2016">
      <edXML:edXMLEnvelope xmlns:edXML="http://www.mic.gov.vn/TBT/QCVN_102_2016">
        <edXML:edXMLHeader> <edXML:MessageHeader>… <edXML:TraceHeaderList>…
        <edXML:edXMLBody> <edXML:edXMLManifest version="1.0"> <edXML:Reference>…
      </edXML:edXMLEnvelope>
      <AttachmentEncoded> <Attachment> <ContentId>… (default namespace, unprefixed)
        <edXML:ContentTransferEncoded xmlns:edXML="…">base64</edXML:ContentTransferEncoded>

UTF-8, LF line ends, two-space indentation. Absent optional elements (None, empty strings,
empty tuples, containers with nothing in them) are left out. No signature: the signer inserts it
as the last child of ``edXMLHeader``, which therefore always exists, with ``MessageHeader`` and,
for a document, ``TraceHeaderList`` (a status package has one only if it has trace headers,
like the samples).

Usage: ``data = build_package(pkg)``
"""

from __future__ import annotations

import datetime as dt

from lxml import etree

from gateway.envelope.model import (
    EDXML_NS,
    VIETNAM_TZ,
    Business,
    DocumentPackage,
    Organization,
    ResponseFor,
    StaffInfo,
    StatusPackage,
    TraceHeader,
)
from gateway.errors import InvalidValue

__all__ = ["build_document", "build_package", "build_status"]

_XML_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'
_PREFIX_NSMAP = {"edXML": EDXML_NS}


def format_date(value: dt.date) -> str:
    """``yyyy/MM/dd``."""
    return f"{value.year:04d}/{value.month:02d}/{value.day:02d}"


def format_time(value: dt.datetime) -> str:
    """``yyyy/MM/dd HH:mm:ss`` in Vietnam time, from an aware datetime."""
    local = value.astimezone(VIETNAM_TZ)
    return f"{format_date(local)} {local.hour:02d}:{local.minute:02d}:{local.second:02d}"


def _path(el: etree._Element) -> str:
    names = [etree.QName(e).localname for e in (el, *el.iterancestors())]
    return "/" + "/".join(reversed(names))


def _sub(parent: etree._Element, name: str) -> etree._Element:
    # No nsmap: lxml reuses the nearest declaration of the namespace, so children of the
    # envelope get "edXML:" and children of AttachmentEncoded the default namespace.
    return etree.SubElement(parent, f"{{{EDXML_NS}}}{name}")


def _set_text(el: etree._Element, value: str) -> None:
    try:
        el.text = value
    except ValueError as exc:  # control characters, lone surrogates: not representable in XML
        path = _path(el)
        raise InvalidValue(
            f"{path}: value cannot be written as XML ({exc})",
            detail={"path": path, "reason": str(exc)},
        ) from exc


def _leaf(parent: etree._Element, name: str, value: str | None, *, always: bool = False) -> None:
    """``<name>value</name>``; left out when value is None or "" unless ``always``."""
    if value or always:
        _set_text(_sub(parent, name), value or "")


def _date_leaf(parent: etree._Element, name: str, value: dt.date | None) -> None:
    _leaf(parent, name, format_date(value) if value is not None else None)


def _drop_if_empty(el: etree._Element) -> None:
    if len(el) == 0:
        parent = el.getparent()
        if parent is not None:
            parent.remove(el)


def _organization(parent: etree._Element, name: str, org: Organization) -> None:
    el = _sub(parent, name)
    _leaf(el, "OrganId", org.organ_id, always=True)
    _leaf(el, "OrganizationInCharge", org.organization_in_charge)
    _leaf(el, "OrganName", org.organ_name)
    _leaf(el, "OrganAdd", org.organ_add)
    _leaf(el, "Email", org.email)
    _leaf(el, "Telephone", org.telephone)
    _leaf(el, "Fax", org.fax)
    _leaf(el, "Website", org.website)


def _response_for(parent: etree._Element, response: ResponseFor | None) -> None:
    if response is None:
        return
    el = _sub(parent, "ResponseFor")
    _leaf(el, "OrganId", response.organ_id)
    _leaf(el, "Code", response.code)
    _date_leaf(el, "PromulgationDate", response.promulgation_date)
    _leaf(el, "DocumentId", response.document_id)
    _drop_if_empty(el)


def _staff_info(parent: etree._Element, staff: StaffInfo | None) -> None:
    if staff is None:
        return
    el = _sub(parent, "StaffInfo")
    _leaf(el, "Department", staff.department)
    _leaf(el, "Staff", staff.staff)
    _leaf(el, "Email", staff.email)
    _leaf(el, "Mobile", staff.mobile)
    _drop_if_empty(el)


def _trace_headers(header: etree._Element, traces: tuple[TraceHeader, ...]) -> etree._Element:
    trace_list = _sub(header, "TraceHeaderList")
    for trace in traces:
        el = _sub(trace_list, "TraceHeader")
        _leaf(el, "OrganId", trace.organ_id, always=True)
        _leaf(el, "Timestamp", format_time(trace.timestamp))
    return trace_list


def _business(parent: etree._Element, business: Business | None) -> None:
    if business is None:
        return
    el = _sub(parent, "Bussiness")
    _leaf(el, "DocumentId", business.document_id)
    _leaf(el, "BussinessDocType", business.doc_type.value)
    _leaf(el, "BussinessDocReason", business.reason)
    _leaf(el, "Paper", business.paper)
    info = business.business_document_info
    if info is not None:
        info_el = _sub(el, "BussinessDocumentInfo")
        _leaf(info_el, "DocumentInfo", info.document_info)
        _leaf(info_el, "DocumentReceiver", info.document_receiver)
        if info.receivers:
            receivers = _sub(info_el, "ReceiverList")
            for receiver in info.receivers:
                receiver_el = _sub(receivers, "Receiver")
                _leaf(receiver_el, "OrganId", receiver.organ_id, always=True)
                _leaf(receiver_el, "ReceiverType", receiver.receiver_type)
        _drop_if_empty(info_el)
    if business.replacement_info:
        replacements = _sub(el, "ReplacementInfoList")
        for replacement in business.replacement_info:
            rep_el = _sub(replacements, "ReplacementInfo")
            _leaf(rep_el, "DocumentId", replacement.document_id)
            if replacement.organ_ids:
                organs = _sub(rep_el, "OrganIdList")
                for organ_id in replacement.organ_ids:
                    _leaf(organs, "OrganId", organ_id)
                _drop_if_empty(organs)
            _drop_if_empty(rep_el)
        _drop_if_empty(replacements)
    _staff_info(el, business.staff_info)


def _message_header(header: etree._Element, pkg: DocumentPackage) -> None:
    mh = _sub(header, "MessageHeader")
    _organization(mh, "From", pkg.from_)
    for org in pkg.to:
        _organization(mh, "To", org)
    _leaf(mh, "DocumentId", pkg.document_id)
    if pkg.code is not None:
        code = _sub(mh, "Code")
        _leaf(code, "CodeNumber", pkg.code.code_number)
        _leaf(code, "CodeNotation", pkg.code.code_notation)
        _drop_if_empty(code)
    if pkg.promulgation_info is not None:
        info = _sub(mh, "PromulgationInfo")
        _leaf(info, "Place", pkg.promulgation_info.place)
        _date_leaf(info, "PromulgationDate", pkg.promulgation_info.date)
        _drop_if_empty(info)
    if pkg.document_type is not None:
        doc_type = _sub(mh, "DocumentType")
        _leaf(doc_type, "Type", pkg.document_type.type)
        _leaf(doc_type, "TypeDetail", pkg.document_type.type_detail)
        _leaf(doc_type, "TypeName", pkg.document_type.type_name)
        _drop_if_empty(doc_type)
    _leaf(mh, "Subject", pkg.subject)
    _leaf(mh, "Content", pkg.content)
    if pkg.signer_info is not None:
        signer = _sub(mh, "SignerInfo")
        _leaf(signer, "Competence", pkg.signer_info.competence)
        _leaf(signer, "Position", pkg.signer_info.position)
        _leaf(signer, "FullName", pkg.signer_info.full_name)
        _drop_if_empty(signer)
    _date_leaf(mh, "DueDate", pkg.due_date)
    other = pkg.other_info
    if other is not None:
        other_el = _sub(mh, "OtherInfo")
        _leaf(other_el, "Priority", other.priority.value)
        _leaf(other_el, "SphereOfPromulgation", other.sphere)
        _leaf(other_el, "TyperNotation", other.typer_notation)
        _leaf(other_el, "PromulgationAmount", other.promulgation_amount)
        _leaf(other_el, "PageAmount", other.page_amount)
        _leaf(other_el, "Direction", other.direction)
        if other.appendixes:
            appendixes = _sub(other_el, "Appendixes")
            for appendix in other.appendixes:
                _leaf(appendixes, "Appendix", appendix)
            _drop_if_empty(appendixes)
    for response in pkg.response_for:
        _response_for(mh, response)
    _leaf(mh, "SteeringType", pkg.steering_type)
    if pkg.to_places:
        places = _sub(mh, "ToPlaces")
        for place in pkg.to_places:
            _leaf(places, "Place", place)
        _drop_if_empty(places)


def _skeleton() -> tuple[etree._Element, etree._Element, etree._Element]:
    """``edXML`` (default namespace), ``edXML:edXMLEnvelope`` (declares ``edXML:``) and
    ``edXML:edXMLHeader``."""
    root = etree.Element(f"{{{EDXML_NS}}}edXML", nsmap={None: EDXML_NS})  # type: ignore[dict-item]
    envelope = etree.SubElement(root, f"{{{EDXML_NS}}}edXMLEnvelope", nsmap=_PREFIX_NSMAP)
    return root, envelope, _sub(envelope, "edXMLHeader")


def _serialise(root: etree._Element) -> bytes:
    etree.indent(root, space="  ")
    return _XML_DECLARATION + etree.tostring(root, encoding="UTF-8", xml_declaration=False) + b"\n"


def build_document(pkg: DocumentPackage) -> bytes:
    """The document package as unsigned edXML bytes.

    Usage: ``data = build_document(pkg)``

    Raises :class:`~gateway.errors.InvalidValue` for text XML cannot carry (control characters).
    """
    root, envelope, header = _skeleton()
    _message_header(header, pkg)
    trace_list = _trace_headers(header, pkg.trace_headers)
    _business(trace_list, pkg.business)
    body = _sub(envelope, "edXMLBody")
    manifest = _sub(body, "edXMLManifest")
    if pkg.manifest_version:
        manifest.set("version", pkg.manifest_version)
    for ref in pkg.references:
        ref_el = _sub(manifest, "Reference")
        _leaf(ref_el, "ContentId", ref.content_id, always=True)
        _leaf(ref_el, "ContentType", ref.content_type)
        _leaf(ref_el, "Description", ref.description)
        _leaf(ref_el, "AttachmentName", ref.attachment_name)
    if pkg.attachments:
        encoded = _sub(root, "AttachmentEncoded")
        for att in pkg.attachments:
            att_el = _sub(encoded, "Attachment")
            _leaf(att_el, "ContentId", att.content_id, always=True)
            _leaf(att_el, "AttachmentName", att.attachment_name)
            _leaf(att_el, "Description", att.description)
            _leaf(att_el, "ContentType", att.content_type)
            content = etree.SubElement(
                att_el, f"{{{EDXML_NS}}}ContentTransferEncoded", nsmap=_PREFIX_NSMAP
            )
            _set_text(content, att.encoded)
    return _serialise(root)


def build_status(pkg: StatusPackage) -> bytes:
    """The status package as unsigned edXML bytes.

    Usage: ``data = build_status(pkg)``
    """
    root, _envelope, header = _skeleton()
    mh = _sub(header, "MessageHeader")
    _organization(mh, "From", pkg.from_)
    _response_for(mh, pkg.response_for)
    _staff_info(mh, pkg.staff_info)
    _leaf(mh, "StatusCode", pkg.status_code.value)
    _leaf(mh, "Description", pkg.description)
    _leaf(mh, "Timestamp", format_time(pkg.timestamp))
    if pkg.trace_headers:
        _trace_headers(header, pkg.trace_headers)
    return _serialise(root)


def build_package(pkg: DocumentPackage | StatusPackage) -> bytes:
    """:func:`build_document` or :func:`build_status`, by the package's type.

    Usage: ``data = build_package(parse_package(root))``
    """
    if isinstance(pkg, DocumentPackage):
        return build_document(pkg)
    if isinstance(pkg, StatusPackage):
        return build_status(pkg)
    raise TypeError(f"not an edXML package: {type(pkg).__name__}")
