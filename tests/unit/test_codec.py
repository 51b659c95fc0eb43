"""edXML bytes ↔ model: every field sample round-trips; output has the SDK's exact prefixing."""

from __future__ import annotations

import base64
import datetime as dt
import io
import re
import unicodedata
import zipfile
from collections.abc import Callable
from dataclasses import fields
from functools import cache
from pathlib import Path
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from gateway.envelope.codec import build_document, build_package, build_status, parse_package
from gateway.envelope.model import (
    DSIG_NS,
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
    PackageKind,
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
    AttachmentEncodingError,
    DuplicateElement,
    InvalidValue,
    ManifestMismatch,
    MissingElement,
    UnknownPackageKind,
)

INTEROP = Path(__file__).resolve().parents[1] / "data" / "interop"
DOCUMENT_SAMPLES = [
    "edoc_update.edxml",
    "edoc_replacement.edxml",
    "edoc_revocation.edxml",
    "edoc_relayed_by_hub.edxml",
]
STATUS_SAMPLES = sorted(p.name for p in INTEROP.glob("status*.edxml"))
NS = {"e": EDXML_NS}
MH = "/edXML/edXMLEnvelope/edXMLHeader/MessageHeader"
UTC = dt.UTC
DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'


def _parse_xml(data: bytes) -> etree._Element:
    return etree.fromstring(data, etree.XMLParser(resolve_entities=False, no_network=True))


@cache
def _sample(name: str) -> bytes:
    return (INTEROP / name).read_bytes()


def _tree(name: str) -> etree._Element:
    return _parse_xml(_sample(name))


def _package(name: str) -> DocumentPackage | StatusPackage:
    return parse_package(_tree(name))


def _document(name: str) -> DocumentPackage:
    pkg = _package(name)
    assert isinstance(pkg, DocumentPackage)
    return pkg


def _status(name: str) -> StatusPackage:
    pkg = _package(name)
    assert isinstance(pkg, StatusPackage)
    return pkg


def _edited(name: str, edit: Callable[[etree._Element], object]) -> etree._Element:
    """The sample as a tree, changed by ``edit``, serialised and parsed again (so line
    numbers and namespaces are as a peer would send them)."""
    root = _tree(name)
    edit(root)
    return _parse_xml(etree.tostring(root))


def _find(root: etree._Element, path: str) -> etree._Element:
    found = root.find(path, NS)
    assert found is not None, path
    return found


def _message_header(root: etree._Element) -> etree._Element:
    return _find(root, "e:edXMLEnvelope/e:edXMLHeader/e:MessageHeader")


def _q(name: str) -> str:
    return f"{{{EDXML_NS}}}{name}"


def _without_signature(text: str) -> str:
    return re.sub(r"\n *<Signature>.*?</Signature>", "", text, flags=re.S)


# --- round trip over the field samples -------------------------------------------------------


@pytest.mark.parametrize("name", DOCUMENT_SAMPLES + STATUS_SAMPLES)
def test_every_well_formed_sample_round_trips(name: str) -> None:
    first = _package(name)
    built = build_package(first)
    assert parse_package(_parse_xml(built)) == first


@pytest.mark.parametrize("name", DOCUMENT_SAMPLES + STATUS_SAMPLES)
def test_build_is_idempotent(name: str) -> None:
    built = build_package(_package(name))
    assert build_package(parse_package(_parse_xml(built))) == built


@pytest.mark.parametrize("name", DOCUMENT_SAMPLES)
def test_document_samples_are_documents(name: str) -> None:
    assert _package(name).kind is PackageKind.DOCUMENT


@pytest.mark.parametrize("name", STATUS_SAMPLES)
def test_status_samples_are_status_packages(name: str) -> None:
    assert _package(name).kind is PackageKind.STATUS


@pytest.mark.parametrize("name", ["edoc_update.edxml", "edoc_replacement.edxml"])
def test_rebuilt_sdk_samples_equal_the_originals_without_their_signature(name: str) -> None:
    """The SDK's own samples, unsigned and with LF line ends, are what we emit byte for byte."""
    original = _without_signature(_sample(name).decode("utf-8").replace("\r\n", "\n"))
    assert build_package(_package(name)).decode("utf-8") == original


# --- exact output prefixing ------------------------------------------------------------------


def test_built_document_has_the_sdk_prefixing() -> None:
    built = build_document(_document("edoc_update.edxml"))
    lines = built.decode("utf-8").split("\n")
    assert built.startswith(DECLARATION)
    assert lines[1] == f'<edXML xmlns="{EDXML_NS}">'
    assert lines[2] == f'  <edXML:edXMLEnvelope xmlns:edXML="{EDXML_NS}">'
    assert lines[3] == "    <edXML:edXMLHeader>"
    assert "  <AttachmentEncoded>" in lines
    assert "    <Attachment>" in lines
    assert "      <ContentId>cid:209</ContentId>" in lines
    assert f'      <edXML:ContentTransferEncoded xmlns:edXML="{EDXML_NS}">UEsDBBQ' in built.decode()
    assert built.count(b"xmlns") == 3  # root, envelope, the one ContentTransferEncoded
    assert built.endswith(b"</edXML>\n")
    assert b"\r" not in built

    root = _parse_xml(built)
    assert root.prefix is None
    envelope = _find(root, "e:edXMLEnvelope")
    assert {el.prefix for el in envelope.iter()} == {"edXML"}
    assert all(etree.QName(el).namespace == EDXML_NS for el in root.iter())
    for el in _find(root, "e:AttachmentEncoded").iter():
        expected = "edXML" if etree.QName(el).localname == "ContentTransferEncoded" else None
        assert el.prefix == expected, etree.QName(el).localname


def test_built_document_header_is_ready_for_the_signer() -> None:
    root = _parse_xml(build_document(_document("edoc_relayed_by_hub.edxml")))
    header = _find(root, "e:edXMLEnvelope/e:edXMLHeader")
    assert [etree.QName(c).localname for c in header] == ["MessageHeader", "TraceHeaderList"]
    assert root.find(f".//{{{DSIG_NS}}}Signature") is None
    assert root.find(".//e:Signature", NS) is None


def test_built_message_header_follows_the_sample_order() -> None:
    # edoc.edxml's vendor order (ToPlaces before OtherInfo, DocumentId last) is normalised.
    root = _tree("edoc_relayed_by_hub.edxml")
    mh = _message_header(root)
    mh.append(_find(mh, "e:DocumentId"))
    mh.insert(list(mh).index(_find(mh, "e:OtherInfo")), _find(mh, "e:ToPlaces"))
    rebuilt = _parse_xml(build_package(parse_package(_parse_xml(etree.tostring(root)))))
    names = [etree.QName(c).localname for c in _message_header(rebuilt)]
    assert names == [
        "From",
        "To",
        "DocumentId",
        "Code",
        "PromulgationInfo",
        "DocumentType",
        "Subject",
        "Content",
        "SignerInfo",
        "DueDate",
        "OtherInfo",
        "SteeringType",
        "ToPlaces",
    ]


def test_built_status_is_exactly_the_sdk_form() -> None:
    status = StatusPackage(
        from_=Organization(organ_id="000.00.00.H41", organ_name="UBND Tỉnh Nghệ An"),
        response_for=ResponseFor(
            organ_id="000.00.00.G22",
            code="7816/VPCP-TTĐT",
            promulgation_date=dt.date(2015, 9, 30),
            document_id="000.00.00.G22,2015/09/30,7816/VPCP-TTĐT",
        ),
        staff_info=StaffInfo(staff="Nguyễn Thị Ngọc Trâm"),
        status_code=StatusCode.RECEIVED,
        description="Đã đến <&> \"'",
        timestamp=dt.datetime(2018, 9, 28, 10, 25, 11, tzinfo=UTC),
    )
    expected = f"""<?xml version="1.0" encoding="UTF-8"?>
<edXML xmlns="{EDXML_NS}">
  <edXML:edXMLEnvelope xmlns:edXML="{EDXML_NS}">
    <edXML:edXMLHeader>
      <edXML:MessageHeader>
        <edXML:From>
          <edXML:OrganId>000.00.00.H41</edXML:OrganId>
          <edXML:OrganName>UBND Tỉnh Nghệ An</edXML:OrganName>
        </edXML:From>
        <edXML:ResponseFor>
          <edXML:OrganId>000.00.00.G22</edXML:OrganId>
          <edXML:Code>7816/VPCP-TTĐT</edXML:Code>
          <edXML:PromulgationDate>2015/09/30</edXML:PromulgationDate>
          <edXML:DocumentId>000.00.00.G22,2015/09/30,7816/VPCP-TTĐT</edXML:DocumentId>
        </edXML:ResponseFor>
        <edXML:StaffInfo>
          <edXML:Staff>Nguyễn Thị Ngọc Trâm</edXML:Staff>
        </edXML:StaffInfo>
        <edXML:StatusCode>01</edXML:StatusCode>
        <edXML:Description>Đã đến &lt;&amp;&gt; "'</edXML:Description>
        <edXML:Timestamp>2018/09/28 17:25:11</edXML:Timestamp>
      </edXML:MessageHeader>
    </edXML:edXMLHeader>
  </edXML:edXMLEnvelope>
</edXML>
"""
    assert build_status(status).decode("utf-8") == expected
    assert build_package(status) == build_status(status)


def test_build_package_refuses_other_objects() -> None:
    with pytest.raises(TypeError):
        build_package("not a package")  # type: ignore[arg-type]


def test_text_xml_cannot_carry_is_refused_on_build() -> None:
    status = StatusPackage(
        from_=Organization(organ_id="000.00.00.H41"),
        status_code=StatusCode.RECEIVED,
        description="bell \x07",
        timestamp=dt.datetime(2018, 9, 28, tzinfo=UTC),
    )
    with pytest.raises(InvalidValue) as info:
        build_status(status)
    assert info.value.detail["path"] == f"{MH}/Description"


# --- any prefixing on input ------------------------------------------------------------------


def _reprefix(source: etree._Element, nsmap_at: Callable[[int], dict[str | None, str]]) -> bytes:
    """A copy of ``source`` whose depth-``d`` elements declare ``nsmap_at(d)``."""

    def copy(el: etree._Element, parent: etree._Element | None, depth: int) -> etree._Element:
        nsmap = nsmap_at(depth)
        if parent is None:
            new = etree.Element(el.tag, el.attrib, nsmap=nsmap)  # type: ignore[arg-type]
        else:
            new = etree.SubElement(parent, el.tag, el.attrib, nsmap=nsmap)  # type: ignore[arg-type]
        new.text = el.text
        for child in el:
            if isinstance(child.tag, str):
                copy(child, new, depth + 1).tail = child.tail
        return new

    return etree.tostring(copy(source, None, 0))


@pytest.mark.parametrize("name", ["edoc_update.edxml", "edoc_relayed_by_hub.edxml", "status.edxml"])
def test_prefix_x_everywhere_parses_equal(name: str) -> None:
    data = _reprefix(_tree(name), lambda d: {"x": EDXML_NS} if d == 0 else {})
    assert b"<x:edXML " in data
    assert b"<x:MessageHeader>" in data
    assert b"edXML:" not in data
    assert parse_package(_parse_xml(data)) == _package(name)


@pytest.mark.parametrize("name", ["edoc_update.edxml", "edoc_relayed_by_hub.edxml", "status.edxml"])
def test_default_namespace_only_parses_equal(name: str) -> None:
    data = _reprefix(_tree(name), lambda d: {None: EDXML_NS} if d == 0 else {})
    assert b"<MessageHeader>" in data
    assert b"edXML:" not in data
    assert parse_package(_parse_xml(data)) == _package(name)


@pytest.mark.parametrize("name", ["edoc_replacement.edxml", "status_finish_06.edxml"])
def test_a_new_prefix_at_every_level_parses_equal(name: str) -> None:
    data = _reprefix(_tree(name), lambda d: {f"p{d}": EDXML_NS})
    assert b"<p3:MessageHeader " in data
    assert parse_package(_parse_xml(data)) == _package(name)


def test_a_foreign_namespace_with_edxml_names_is_not_read() -> None:
    other = "urn:not-edxml"
    data = _sample("edoc_relayed_by_hub.edxml").replace(
        b"<edXML:Subject>", f'<Subject xmlns="{other}">forged</Subject><edXML:Subject>'.encode()
    )
    assert parse_package(_parse_xml(data)) == _package("edoc_relayed_by_hub.edxml")


# --- element order varies across vendors -----------------------------------------------------


def _move_to_places_before_other_info(root: etree._Element) -> None:
    mh = _message_header(root)
    mh.insert(list(mh).index(_find(mh, "e:OtherInfo")), _find(mh, "e:ToPlaces"))


def _move_document_id_last(root: etree._Element) -> None:
    mh = _message_header(root)
    mh.append(_find(mh, "e:DocumentId"))


def _organ_name_first(root: etree._Element) -> None:
    for org in _message_header(root).findall("e:From", NS) + _message_header(root).findall(
        "e:To", NS
    ):
        org.insert(0, _find(org, "e:OrganName"))


def _reverse_every_container(root: etree._Element) -> None:
    """Reverse children everywhere in the header, keeping repeated siblings in their order."""
    header = _find(root, "e:edXMLEnvelope/e:edXMLHeader")
    for el in list(header.iter()):
        children = [c for c in el if isinstance(c.tag, str)]
        names = [c.tag for c in children]
        if len(children) > 1 and len(set(names)) == len(names):
            for child in children:
                el.insert(0, child)


@pytest.mark.parametrize(
    "edit",
    [
        _move_to_places_before_other_info,
        _move_document_id_last,
        _organ_name_first,
        _reverse_every_container,
    ],
)
@pytest.mark.parametrize("name", ["edoc_relayed_by_hub.edxml", "edoc_update.edxml"])
def test_element_order_variants_parse_equal(
    name: str, edit: Callable[[etree._Element], None]
) -> None:
    edited = _edited(name, edit)
    assert etree.tostring(edited) != etree.tostring(_tree(name))
    assert parse_package(edited) == _package(name)


def test_status_children_in_any_order_parse_equal() -> None:
    assert parse_package(_edited("status.edxml", _reverse_every_container)) == _package(
        "status.edxml"
    )


# --- duplicates ------------------------------------------------------------------------------


def _duplicate(path: str) -> Callable[[etree._Element], None]:
    def edit(root: etree._Element) -> None:
        el = _find(root, path)
        parent = el.getparent()
        assert parent is not None
        parent.append(etree.fromstring(etree.tostring(el)))

    return edit


@pytest.mark.parametrize(
    ("name", "path", "reported"),
    [
        ("edoc_update.edxml", "e:edXMLEnvelope/e:edXMLHeader/e:MessageHeader/e:OtherInfo", None),
        ("edoc_update.edxml", "e:edXMLEnvelope/e:edXMLHeader/e:MessageHeader/e:DocumentId", None),
        ("edoc_update.edxml", "e:edXMLEnvelope/e:edXMLHeader/e:MessageHeader/e:ToPlaces", None),
        ("edoc_update.edxml", "e:edXMLEnvelope/e:edXMLHeader/e:MessageHeader/e:SteeringType", None),
        ("edoc_update.edxml", "e:edXMLEnvelope/e:edXMLHeader/e:MessageHeader/e:Code", None),
        ("edoc_update.edxml", "e:edXMLEnvelope/e:edXMLHeader/e:MessageHeader/e:From", None),
        ("edoc_update.edxml", "e:edXMLEnvelope/e:edXMLHeader/e:TraceHeaderList/e:Bussiness", None),
        (
            "edoc_update.edxml",
            "e:edXMLEnvelope/e:edXMLHeader/e:MessageHeader/e:From/e:OrganId",
            f"{MH}/From/OrganId",
        ),
        ("status.edxml", "e:edXMLEnvelope/e:edXMLHeader/e:MessageHeader/e:StatusCode", None),
        ("status.edxml", "e:edXMLEnvelope/e:edXMLHeader/e:MessageHeader/e:ResponseFor", None),
    ],
)
def test_elements_allowed_once_appearing_twice_are_refused(
    name: str, path: str, reported: str | None
) -> None:
    expected = reported or "/edXML/" + path.replace("e:", "")
    element = expected.rsplit("/", 1)[1]
    with pytest.raises(DuplicateElement) as info:
        parse_package(_edited(name, _duplicate(path)))
    assert info.value.detail["path"] == expected
    assert info.value.detail["element"] == element
    assert isinstance(info.value.detail["line"], int)
    assert expected in info.value.message


def test_document_id_after_to_and_at_the_end_is_a_duplicate() -> None:
    def edit(root: etree._Element) -> None:
        mh = _message_header(root)
        extra = etree.SubElement(mh, _q("DocumentId"))
        extra.text = "another-id"

    with pytest.raises(DuplicateElement) as info:
        parse_package(_edited("edoc_relayed_by_hub.edxml", edit))
    assert info.value.detail == {
        "path": f"{MH}/DocumentId",
        "element": "DocumentId",
        "line": info.value.detail["line"],
    }


def test_repeatable_elements_are_not_duplicates() -> None:
    doc = _document("edoc_update.edxml")
    assert len(doc.to) == 3
    assert doc.to_places == ("Cac bo va co quan ngang bo", "Uy ban nhan dan cac tinh, TP")


# --- values ----------------------------------------------------------------------------------


def _set_text(path: str, text: str) -> Callable[[etree._Element], None]:
    def edit(root: etree._Element) -> None:
        _find(root, path).text = text

    return edit


PROMULGATION_DATE = (
    "e:edXMLEnvelope/e:edXMLHeader/e:MessageHeader/e:PromulgationInfo/e:PromulgationDate"
)


@pytest.mark.parametrize("bad", ["2018/02/30", "28/09/2018", "2018-09-28", "2018/9/28", "x"])
def test_bad_date_names_the_path_and_value(bad: str) -> None:
    with pytest.raises(InvalidValue) as info:
        parse_package(_edited("edoc_update.edxml", _set_text(PROMULGATION_DATE, bad)))
    assert info.value.detail["path"] == f"{MH}/PromulgationInfo/PromulgationDate"
    assert info.value.detail["value"] == bad
    assert bad in info.value.message
    assert "yyyy/MM/dd" in info.value.message


@pytest.mark.parametrize("bad", ["2018/09/28 24:00:00", "2018/09/28", "2018-09-28T17:25:11"])
def test_bad_timestamp_names_the_path(bad: str) -> None:
    path = "e:edXMLEnvelope/e:edXMLHeader/e:MessageHeader/e:Timestamp"
    with pytest.raises(InvalidValue) as info:
        parse_package(_edited("status.edxml", _set_text(path, bad)))
    assert info.value.detail["path"] == f"{MH}/Timestamp"
    assert info.value.detail["value"] == bad


def test_bad_trace_header_timestamp_names_its_position() -> None:
    path = "e:edXMLEnvelope/e:edXMLHeader/e:TraceHeaderList/e:TraceHeader[2]/e:Timestamp"
    with pytest.raises(InvalidValue) as info:
        parse_package(_edited("edoc_relayed_by_hub.edxml", _set_text(path, "2019/05/17")))
    assert info.value.detail["path"] == (
        "/edXML/edXMLEnvelope/edXMLHeader/TraceHeaderList/TraceHeader[2]/Timestamp"
    )


@pytest.mark.parametrize("bad", ["07", "1", "99", "RECEIVED"])
def test_unknown_status_code(bad: str) -> None:
    path = "e:edXMLEnvelope/e:edXMLHeader/e:MessageHeader/e:StatusCode"
    with pytest.raises(InvalidValue) as info:
        parse_package(_edited("status.edxml", _set_text(path, bad)))
    assert info.value.detail["path"] == f"{MH}/StatusCode"
    assert info.value.detail["value"] == bad
    assert "StatusCode" in info.value.message


def test_unknown_business_doc_type() -> None:
    path = "e:edXMLEnvelope/e:edXMLHeader/e:TraceHeaderList/e:Bussiness/e:BussinessDocType"
    with pytest.raises(InvalidValue) as info:
        parse_package(_edited("edoc_update.edxml", _set_text(path, "4")))
    assert info.value.detail["path"].endswith("/TraceHeaderList/Bussiness/BussinessDocType")


def test_unknown_priority() -> None:
    path = "e:edXMLEnvelope/e:edXMLHeader/e:MessageHeader/e:OtherInfo/e:Priority"
    with pytest.raises(InvalidValue) as info:
        parse_package(_edited("edoc_update.edxml", _set_text(path, "5")))
    assert info.value.detail["path"] == f"{MH}/OtherInfo/Priority"


@pytest.mark.parametrize(
    ("path", "reported"),
    [
        ("e:edXMLEnvelope/e:edXMLHeader/e:MessageHeader/e:From/e:OrganId", f"{MH}/From/OrganId"),
        (
            "e:edXMLEnvelope/e:edXMLHeader/e:MessageHeader/e:To[2]/e:OrganId",
            f"{MH}/To[2]/OrganId",
        ),
    ],
)
def test_from_and_to_need_valid_agency_codes(path: str, reported: str) -> None:
    with pytest.raises(InvalidValue) as info:
        parse_package(_edited("edoc_update.edxml", _set_text(path, "01.02.G22")))
    assert info.value.detail["path"] == reported
    assert info.value.detail["value"] == "01.02.G22"
    assert "01.02.G22" in info.value.message
    assert isinstance(info.value.__cause__, AgencyCodeError)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("000.00.00.G22\u00a0", "leading or trailing whitespace"),  # no-break space
        (" 000.00.00.G22", "leading or trailing whitespace"),  # XML whitespace: xs:token allows it
        ("000.00.00.G22\n", "leading or trailing whitespace"),
        ("000.00.00.g22", "a character outside [0-9A-Z.]"),
    ],
)
def test_from_code_must_be_exactly_a_code_as_signed(text: str, reason: str) -> None:
    path = "e:edXMLEnvelope/e:edXMLHeader/e:MessageHeader/e:From/e:OrganId"
    with pytest.raises(InvalidValue) as info:
        parse_package(_edited("edoc_update.edxml", _set_text(path, text)))
    assert info.value.code == "ENVELOPE_INVALID_VALUE"
    assert info.value.detail["value"] == text
    assert info.value.detail["reason"] == reason
    assert info.value.detail["cause"] == "AGENCY_CODE_INVALID"


def test_trace_header_organ_ids_are_kept_raw() -> None:
    doc = _document("edoc_relayed_by_hub.edxml")
    assert [t.organ_id for t in doc.trace_headers] == ["01.02.G22", "001.00.20.TT2"]


def test_long_bad_values_are_clipped_in_errors() -> None:
    bad = "9" * 5000
    path = "e:edXMLEnvelope/e:edXMLHeader/e:MessageHeader/e:StatusCode"
    with pytest.raises(InvalidValue) as info:
        parse_package(_edited("status.edxml", _set_text(path, bad)))
    assert len(info.value.message) < 400
    assert len(info.value.detail["value"]) < 200


# --- empty elements --------------------------------------------------------------------------


def test_an_empty_response_for_is_dropped() -> None:
    assert _document("edoc_relayed_by_hub.edxml").response_for == ()


def test_a_response_for_with_only_empty_children_is_dropped() -> None:
    def edit(root: etree._Element) -> None:
        mh = _message_header(root)
        response = _find(mh, "e:ResponseFor")
        for name in ("OrganId", "Code", "PromulgationDate", "DocumentId"):
            etree.SubElement(response, _q(name))
        due = _find(mh, "e:DueDate")
        due.text = "  "

    doc = parse_package(_edited("edoc_relayed_by_hub.edxml", edit))
    assert isinstance(doc, DocumentPackage)
    assert doc.response_for == ()
    assert doc.due_date is None


def test_response_for_with_content_is_kept() -> None:
    doc = _document("edoc_revocation.edxml")
    assert doc.response_for == (
        ResponseFor(
            organ_id="000.00.00.H14",
            code="267/VPCP-TTĐT",
            promulgation_date=dt.date(2018, 9, 28),
            document_id="000.00.04.G14,2012/08/06,267/VPCP-TTĐT",
        ),
    )


def test_missing_required_elements() -> None:
    def drop(path: str) -> Callable[[etree._Element], None]:
        def edit(root: etree._Element) -> None:
            el = _find(root, path)
            parent = el.getparent()
            assert parent is not None
            parent.remove(el)

        return edit

    header = "e:edXMLEnvelope/e:edXMLHeader"
    cases = [
        ("status.edxml", f"{header}/e:MessageHeader/e:Timestamp", f"{MH}/Timestamp"),
        ("status.edxml", f"{header}/e:MessageHeader/e:From", f"{MH}/From"),
        ("status.edxml", f"{header}/e:MessageHeader/e:From/e:OrganId", f"{MH}/From/OrganId"),
        (
            "edoc_update.edxml",
            f"{header}/e:TraceHeaderList/e:TraceHeader/e:Timestamp",
            "/edXML/edXMLEnvelope/edXMLHeader/TraceHeaderList/TraceHeader[1]/Timestamp",
        ),
        (
            "edoc_update.edxml",
            f"{header}/e:TraceHeaderList/e:TraceHeader",
            "/edXML/edXMLEnvelope/edXMLHeader/TraceHeaderList/TraceHeader",
        ),
        (
            "edoc_update.edxml",
            "e:AttachmentEncoded/e:Attachment/e:ContentTransferEncoded",
            "/edXML/AttachmentEncoded/Attachment[1]/ContentTransferEncoded",
        ),
    ]
    for name, path, reported in cases:
        with pytest.raises(MissingElement) as info:
            parse_package(_edited(name, drop(path)))
        assert info.value.detail["path"] == reported, path


# --- package kind ----------------------------------------------------------------------------


def test_a_header_with_both_to_and_status_code_is_refused() -> None:
    def edit(root: etree._Element) -> None:
        etree.SubElement(_message_header(root), _q("StatusCode")).text = "01"

    with pytest.raises(UnknownPackageKind):
        parse_package(_edited("edoc_relayed_by_hub.edxml", edit))


def test_a_header_with_neither_is_refused() -> None:
    def edit(root: etree._Element) -> None:
        mh = _message_header(root)
        mh.remove(_find(mh, "e:StatusCode"))

    with pytest.raises(UnknownPackageKind) as info:
        parse_package(_edited("status.edxml", edit))
    assert info.value.detail["path"] == MH


def test_a_foreign_root_is_refused() -> None:
    with pytest.raises(UnknownPackageKind):
        parse_package(_parse_xml(b'<edXML xmlns="urn:other"><x/></edXML>'))
    with pytest.raises(UnknownPackageKind):
        parse_package(_parse_xml(f'<edXML xmlns="{EDXML_NS}"/>'.encode()))


# --- signature -------------------------------------------------------------------------------


def test_both_signature_forms_are_skipped() -> None:
    unprefixed = _document("edoc_update.edxml")  # current samples: <Signature> in edXML ns
    assert _tree("edoc_update.edxml").find(".//e:Signature", NS) is not None

    def xmldsig(root: etree._Element) -> None:
        header = _find(root, "e:edXMLEnvelope/e:edXMLHeader")
        header.remove(_find(header, "e:Signature"))
        sig = etree.SubElement(header, f"{{{DSIG_NS}}}Signature", nsmap={None: DSIG_NS})  # type: ignore[dict-item]
        etree.SubElement(sig, f"{{{DSIG_NS}}}SignedInfo")

    assert parse_package(_edited("edoc_update.edxml", xmldsig)) == unprefixed


# --- manifest and attachments ----------------------------------------------------------------


def test_reference_without_attachment_names_the_content_id() -> None:
    def edit(root: etree._Element) -> None:
        encoded = _find(root, "e:AttachmentEncoded")
        encoded.remove(_find(encoded, "e:Attachment"))

    with pytest.raises(ManifestMismatch, match="cid:209") as info:
        parse_package(_edited("edoc_update.edxml", edit))
    assert info.value.detail["missing_attachments"] == ["cid:209"]


def test_attachment_without_reference_names_the_content_id() -> None:
    def edit(root: etree._Element) -> None:
        attachment = _find(root, "e:AttachmentEncoded/e:Attachment")
        extra = etree.fromstring(etree.tostring(attachment))
        _find(extra, "e:ContentId").text = "cid:orphan"
        _find(root, "e:AttachmentEncoded").append(extra)

    with pytest.raises(ManifestMismatch, match="cid:orphan") as info:
        parse_package(_edited("edoc_update.edxml", edit))
    assert info.value.detail["unreferenced_attachments"] == ["cid:orphan"]
    assert info.value.detail["missing_attachments"] == []


def test_renamed_reference_names_both_orphans() -> None:
    path = "e:edXMLEnvelope/e:edXMLBody/e:edXMLManifest/e:Reference/e:ContentId"
    with pytest.raises(ManifestMismatch) as info:
        parse_package(_edited("edoc_relayed_by_hub.edxml", _set_text(path, "cid:other")))
    assert info.value.detail["missing_attachments"] == ["cid:other"]
    assert info.value.detail["unreferenced_attachments"] == [
        "cid:36b8a92e-f054-11e7-842b-005056b672fc"
    ]


def test_a_status_package_with_attachments_is_refused() -> None:
    attachment = _find(_tree("edoc_update.edxml"), "e:AttachmentEncoded")

    def edit(root: etree._Element) -> None:
        root.append(attachment)

    with pytest.raises(ManifestMismatch, match="cid:209"):
        parse_package(_edited("status.edxml", edit))


def test_truncated_base64_parses_but_does_not_decode() -> None:
    doc = _document("edoc_relayed_by_hub.edxml")
    (attachment,) = doc.attachments
    assert attachment.encoded.endswith("...[TRUNC 288]")
    with pytest.raises(AttachmentEncodingError, match="cid:36b8a92e") as info:
        attachment.decode()
    assert info.value.detail["content_id"] == "cid:36b8a92e-f054-11e7-842b-005056b672fc"


def test_update_sample_attachment_is_a_zip() -> None:
    (attachment,) = _document("edoc_update.edxml").attachments
    data = attachment.decode()
    assert data.startswith(b"PK")
    assert zipfile.is_zipfile(io.BytesIO(data))
    assert attachment.content_type == "application/zip"
    assert attachment.attachment_name == "1896_QD-TTg_m_294779.doc"


def test_manifest_fields() -> None:
    doc = _document("edoc_update.edxml")
    assert doc.manifest_version == "1.0"
    assert doc.references == (
        ManifestReference(
            content_id="cid:209",
            content_type="application/zip",
            description="1896_QD-TTg_m_294779.doc",
            attachment_name="1896_QD-TTg_m_294779.doc",
        ),
    )


# --- times and business types ----------------------------------------------------------------


def test_status_timestamp_is_vietnam_time_stored_as_utc() -> None:
    status = _status("status.edxml")
    assert status.timestamp == dt.datetime(2018, 9, 28, 10, 25, 11, tzinfo=UTC)
    assert status.timestamp.utcoffset() == dt.timedelta(0)
    assert b"<edXML:Timestamp>2018/09/28 17:25:11</edXML:Timestamp>" in build_status(status)


def test_trace_header_midnight_is_the_previous_day_in_utc() -> None:
    (hop,) = _document("edoc_update.edxml").trace_headers
    assert hop.timestamp == dt.datetime(2018, 9, 27, 17, 0, 0, tzinfo=UTC)
    assert b"<edXML:Timestamp>2018/09/28 00:00:00</edXML:Timestamp>" in build_document(
        _document("edoc_update.edxml")
    )


def test_update_business() -> None:
    business = _document("edoc_update.edxml").business
    assert business is not None
    assert business.doc_type is BusinessDocType.UPDATE
    assert business.document_id == "000.00.00.G22,2014/02/30,7806/VPCP-TTĐT"  # kept raw
    assert business.business_document_info == BusinessDocumentInfo(
        document_info="1",
        document_receiver="1",
        receivers=(
            Receiver(organ_id="000.00.00.H41", receiver_type="0"),
            Receiver(organ_id="000.00.00.H14", receiver_type="1"),
        ),
    )
    assert business.staff_info == StaffInfo(
        department="Văn thư văn phòng",
        staff="Nguyễn Thị Ngọc Trâm",
        email="vanthuvanphong@gov.vn",
        mobile="84912000001",
    )


def test_replace_business() -> None:
    business = _document("edoc_replacement.edxml").business
    assert business is not None
    assert business.doc_type is BusinessDocType.REPLACE
    assert business.reason == "Văn bản thay thế"
    replaced = ReplacementInfo(
        document_id="000.00.00.G22,2014/01/30,7806/VPCP-TTĐT",
        organ_ids=("000.00.00.H41", "000.00.00.H14"),
    )
    assert business.replacement_info == (replaced, replaced)


def test_revoke_business() -> None:
    business = _document("edoc_revocation.edxml").business
    assert business is not None
    assert business.doc_type is BusinessDocType.REVOKE
    assert business.replacement_info == ()
    assert business.business_document_info is None


def _edoc_new_without_stray_bytes() -> bytes:
    data = _sample("edoc_new.edxml")
    assert data[:4] == b"1212"
    return data[4:]


def test_edoc_new_has_a_malformed_recipient_code() -> None:
    """The field sample's To/OrganId (28.22.H17) is not an agency code: refused, named."""
    with pytest.raises(InvalidValue) as info:
        parse_package(_parse_xml(_edoc_new_without_stray_bytes()))
    assert info.value.detail["path"] == f"{MH}/To[1]/OrganId"
    assert info.value.detail["value"] == "28.22.H17"


def test_new_business() -> None:
    data = _edoc_new_without_stray_bytes().replace(b">28.22.H17<", b">000.28.22.H17<")
    doc = parse_package(_parse_xml(data))
    assert isinstance(doc, DocumentPackage)
    assert doc.business is not None
    assert doc.business.doc_type is BusinessDocType.NEW
    assert doc.sender.level == 4
    assert [str(c) for c in doc.recipients] == ["000.28.22.H17"]
    assert parse_package(_parse_xml(build_document(doc))) == doc


def test_relayed_sample_fields() -> None:
    doc = _document("edoc_relayed_by_hub.edxml")
    assert doc.document_id == "9fbfbad2-f1f8-4256-a2eb-50fb1061cddb"
    assert doc.code == Code(code_number="1223412", code_notation="PRO-TEST-CASE1")
    assert doc.promulgation_info == PromulgationInfo(place="Hà Nội", date=dt.date(2019, 1, 17))
    assert doc.document_type == DocumentType(type="1", type_name="Thông tư")
    assert doc.signer_info is not None
    assert doc.signer_info.competence == "Quyền 1"
    assert doc.signer_info.position == "Bộ trưởng"
    # This producer wrote the name decomposed (NFD): kept as sent, never normalised.
    full_name = doc.signer_info.full_name
    assert full_name is not None
    assert full_name != "Trương Minh Tuấn"
    assert unicodedata.normalize("NFC", full_name) == "Trương Minh Tuấn"
    assert full_name.encode() in build_document(doc)
    assert doc.due_date == dt.date(2018, 6, 25)
    assert doc.other_info == OtherInfo(
        priority=Priority.NORMAL,
        sphere="Lưu hành nội bộ",
        typer_notation="TVC",
        promulgation_amount="10",
        page_amount="2",
        direction="false",
        appendixes=("Phụ lục",),
    )
    assert doc.steering_type == "1"
    assert doc.business is None
    assert [t.timestamp for t in doc.trace_headers] == [
        dt.datetime(2018, 6, 20, 9, 35, 56, tzinfo=UTC),
        dt.datetime(2019, 5, 17, 11, 16, 33, tzinfo=UTC),
    ]
    assert doc.to[0].organization_in_charge is None


# --- generated packages round-trip -----------------------------------------------------------

_T = TypeVar("_T")

_VIETNAMESE = (
    "aăâbcdđeêghiklmnoôơpqrstuưvxy"
    "àáảãạằắẳẵặầấẩẫậèéẻẽẹềếểễệìíỉĩịòóỏõọồốổỗộờớởỡợùúủũụừứửữựỳýỷỹỵ"
    "AĂÂBCDĐEÊGHIKLMNOÔƠPQRSTUƯVXYÀÁẢÃẠẰẮẲẴẶẦẤẨẪẬÈÉẺẼẸỀẾỂỄỆÌÍỈĨỊÒÓỎÕỌỒỐỔỖỘỜỚỞỠỢÙÚỦŨỤỪỨỬỮỰỲÝỶỸỴ"
)
_ALPHABET = _VIETNAMESE + "fjwz0123456789 .,;:/-_()@&<>\"'\n\t"

_text = st.text(alphabet=_ALPHABET, min_size=1, max_size=30).map(str.strip).filter(bool)
_opt = st.none() | _text
_codes = st.from_regex(r"[0-9]{3}\.[0-9]{2}\.[0-9]{2}\.[GH][0-9]{2}", fullmatch=True)
_dates = st.dates(min_value=dt.date(1990, 1, 1), max_value=dt.date(2100, 12, 31))
_times = st.datetimes(
    min_value=dt.datetime(1990, 1, 2),
    max_value=dt.datetime(2100, 12, 30),
    timezones=st.sampled_from([UTC, VIETNAM_TZ, dt.timezone(dt.timedelta(hours=-5))]),
)


def _nonempty(strategy: st.SearchStrategy[_T]) -> st.SearchStrategy[_T]:
    """Containers whose parts are all empty do not exist on the wire (they read as None)."""
    return strategy.filter(
        lambda value: any(getattr(value, f.name) not in (None, ()) for f in fields(value))  # type: ignore[arg-type]
    )


def _or_none(strategy: st.SearchStrategy[_T]) -> st.SearchStrategy[_T | None]:
    return st.none() | _nonempty(strategy)


_organizations = st.builds(
    Organization,
    organ_id=_codes,
    organization_in_charge=_opt,
    organ_name=_opt,
    organ_add=_opt,
    email=_opt,
    telephone=_opt,
    fax=_opt,
    website=_opt,
)
_response_for = st.builds(
    ResponseFor,
    organ_id=_opt,
    code=_opt,
    promulgation_date=st.none() | _dates,
    document_id=_opt,
)
_staff = st.builds(StaffInfo, department=_opt, staff=_opt, email=_opt, mobile=_opt)
_trace_headers = st.builds(TraceHeader, organ_id=_text, timestamp=_times)

_statuses = st.builds(
    StatusPackage,
    from_=_organizations,
    response_for=_or_none(_response_for),
    staff_info=_or_none(_staff),
    status_code=st.sampled_from(StatusCode),
    description=_opt,
    timestamp=_times,
    trace_headers=st.lists(_trace_headers, max_size=3).map(tuple),
)

_business = st.builds(
    Business,
    document_id=_opt,
    doc_type=st.sampled_from(BusinessDocType),
    reason=_opt,
    paper=_opt,
    staff_info=_or_none(_staff),
    business_document_info=_or_none(
        st.builds(
            BusinessDocumentInfo,
            document_info=_opt,
            document_receiver=_opt,
            receivers=st.lists(
                st.builds(Receiver, organ_id=_text, receiver_type=_opt), max_size=3
            ).map(tuple),
        )
    ),
    replacement_info=st.lists(
        st.builds(
            ReplacementInfo,
            document_id=_text,
            organ_ids=st.lists(_codes, max_size=3).map(tuple),
        ),
        max_size=2,
    ).map(tuple),
)


@st.composite
def _documents(draw: st.DrawFn) -> DocumentPackage:
    content_ids = draw(st.lists(_text.map(lambda t: "cid:" + t), max_size=3, unique=True))
    attachments = []
    for cid in content_ids:
        data = draw(st.binary(max_size=200))
        encoded = draw(
            st.sampled_from([base64.b64encode(data).decode(), base64.encodebytes(data).decode()])
        )
        attachments.append(
            Attachment(
                content_id=cid,
                attachment_name=draw(_opt),
                description=draw(_opt),
                content_type=draw(_opt),
                encoded=encoded,
            )
        )
    references = [
        ManifestReference(
            content_id=cid,
            content_type=draw(_opt),
            description=draw(_opt),
            attachment_name=draw(_opt),
        )
        for cid in draw(st.permutations(content_ids))
    ]
    return DocumentPackage(
        from_=draw(_organizations),
        to=tuple(draw(st.lists(_organizations, min_size=1, max_size=3))),
        document_id=draw(_opt),
        code=draw(_or_none(st.builds(Code, code_number=_opt, code_notation=_opt))),
        promulgation_info=draw(
            _or_none(st.builds(PromulgationInfo, place=_opt, date=st.none() | _dates))
        ),
        document_type=draw(
            _or_none(st.builds(DocumentType, type=_opt, type_detail=_opt, type_name=_opt))
        ),
        subject=draw(_opt),
        content=draw(_opt),
        signer_info=draw(
            _or_none(st.builds(SignerInfo, competence=_opt, position=_opt, full_name=_opt))
        ),
        due_date=draw(st.none() | _dates),
        to_places=tuple(draw(st.lists(_text, max_size=3))),
        other_info=draw(
            st.none()
            | st.builds(
                OtherInfo,
                priority=st.sampled_from(Priority),
                sphere=_opt,
                typer_notation=_opt,
                promulgation_amount=_opt,
                page_amount=_opt,
                direction=_opt,
                appendixes=st.lists(_text, max_size=2).map(tuple),
            )
        ),
        response_for=tuple(draw(st.lists(_nonempty(_response_for), max_size=2))),
        steering_type=draw(_opt),
        trace_headers=tuple(draw(st.lists(_trace_headers, min_size=1, max_size=3))),
        business=draw(st.none() | _business),
        manifest_version=draw(st.none() | st.just("1.0") | _text),
        references=tuple(references),
        attachments=tuple(attachments),
    )


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_statuses)
def test_generated_status_packages_round_trip(status: StatusPackage) -> None:
    built = build_status(status)
    assert parse_package(_parse_xml(built)) == status
    assert build_status(status) == built


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_documents())
def test_generated_document_packages_round_trip(doc: DocumentPackage) -> None:
    built = build_document(doc)
    parsed = parse_package(_parse_xml(built))
    assert parsed == doc
    assert build_package(parsed) == built
    for attachment in parsed.attachments:  # type: ignore[union-attr]
        assert isinstance(attachment.decode(), bytes)
