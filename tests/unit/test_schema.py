"""The edXML schemas (xsd/) and gateway.envelope.schema: what they accept, what they refuse, and
how."""

from __future__ import annotations

import copy
import json
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import xmlschema
from lxml import etree

from gateway import errors
from gateway.envelope import schema
from gateway.envelope.model import DSIG_NS, EDXML_NS, PackageKind

DATA = Path(__file__).resolve().parent.parent / "data"
INTEROP = DATA / "interop"
INVALID = DATA / "invalid"
#: Not well-formed on purpose (see tests/data/interop/README.md); refused before any schema.
MALFORMED = {"edoc.edxml", "edoc_new.edxml"}
WELL_FORMED = sorted(p for p in INTEROP.glob("*.edxml") if p.name not in MALFORMED)
SCHEMA_CASES = sorted(INVALID.glob("schema_*.edxml"))

E = f"{{{EDXML_NS}}}"
DS = f"{{{DSIG_NS}}}"
MH = "/edXML/edXMLEnvelope/edXMLHeader/MessageHeader"
HEADER = "/edXML/edXMLEnvelope/edXMLHeader"


def parse(data: bytes | Path) -> etree._Element:
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    if isinstance(data, Path):
        return etree.parse(str(data), parser).getroot()
    return etree.fromstring(data, parser)


def sample(name: str) -> etree._Element:
    return parse(INTEROP / name)


def refusal(root: etree._Element, kind: PackageKind | None = None) -> errors.SchemaError:
    with pytest.raises(errors.SchemaError) as info:
        schema.validate(root, kind)
    return info.value


def find(root: etree._Element, path: str) -> etree._Element:
    """``path`` in local names of the edXML namespace, below the root: "a/b/c"."""
    found = root.find("/".join(E + step for step in path.split("/")))
    assert found is not None, path
    return found


def header(root: etree._Element) -> etree._Element:
    return find(root, "edXMLEnvelope/edXMLHeader")


def message_header(root: etree._Element) -> etree._Element:
    return find(root, "edXMLEnvelope/edXMLHeader/MessageHeader")


def remove(root: etree._Element, path: str) -> None:
    parent_path, _, name = path.rpartition("/")
    parent = find(root, parent_path)
    children = parent.findall(E + name)
    assert children, path
    for child in children:
        parent.remove(child)


def as_xmldsig(signature: etree._Element) -> etree._Element:
    """The placeholder Signature rewritten into the XMLDSig namespace (same structure)."""
    real = copy.deepcopy(signature)
    for elem in real.iter(E + "*"):
        elem.tag = DS + etree.QName(elem).localname
    return real


# --- the field samples -------------------------------------------------------------------------


def test_corpus_is_complete() -> None:
    assert len(WELL_FORMED) == 14
    assert len(SCHEMA_CASES) >= 30


@pytest.mark.parametrize("path", WELL_FORMED, ids=lambda p: p.name)
def test_every_well_formed_sample_validates_as_its_kind(path: Path) -> None:
    expected = PackageKind.STATUS if path.name.startswith("status") else PackageKind.DOCUMENT
    root = parse(path)

    assert schema.detect_kind(root) is expected
    assert schema.validate(root) is expected
    assert schema.validate(root, expected) is expected


def test_repaired_malformed_samples_validate() -> None:
    """Once their producer bugs are fixed, the two malformed samples fit the schema too.

    edoc.edxml is the older form: an XMLDSig-namespace Signature (checked strictly against
    the W3C schema), DocumentId last, empty ResponseFor children, xlink:href on Reference.
    """
    new = (INTEROP / "edoc_new.edxml").read_bytes()
    assert new.startswith(b"1212<?xml")
    assert schema.validate(parse(new[4:])) is PackageKind.DOCUMENT

    old = (INTEROP / "edoc.edxml").read_bytes()
    old = old.replace(
        b'<edXML xmlns="http://www.mic.gov.vn/TBT/QCVN_102_2016">',
        b'<edXML xmlns="http://www.mic.gov.vn/TBT/QCVN_102_2016"'
        b' xmlns:edXML="http://www.mic.gov.vn/TBT/QCVN_102_2016"'
        b' xmlns:xlink="http://www.w3.org/1999/xlink">',
        1,
    )
    root = parse(old)
    assert header(root)[-1].tag == DS + "Signature"
    assert message_header(root)[-1].tag == E + "DocumentId"
    assert schema.validate(root) is PackageKind.DOCUMENT


# --- hand-written invalid packages --------------------------------------------------------------


def expectation(path: Path) -> dict[str, str]:
    head = path.read_text(encoding="utf-8")[:1000]
    found = dict(re.findall(r"^\s*(expect-path|expect-reason|kind): (\S+)", head, re.MULTILINE))
    assert "expect-path" in found, f"{path.name} lacks its expect-path comment"
    return found


@pytest.mark.parametrize("path", SCHEMA_CASES, ids=lambda p: p.name)
def test_invalid_package_is_refused_naming_the_faulty_element(path: Path) -> None:
    expected = expectation(path)
    kind = PackageKind(expected["kind"]) if "kind" in expected else None

    error = refusal(parse(path), kind)

    assert error.code == "SCHEMA_INVALID"
    assert error.http_status == 422
    assert error.detail["path"] == expected["expect-path"]
    assert expected.get("expect-reason", "") in error.detail["reason"]
    assert isinstance(error.detail["line"], int)
    assert error.message.startswith(expected["expect-path"] + ": ")
    assert 1 <= len(error.detail["errors"]) <= 10
    assert error.detail["errors"][0] == {
        "path": error.detail["path"],
        "line": error.detail["line"],
        "reason": error.detail["reason"],
    }
    json.dumps(error.to_dict())  # an API body as it stands


def test_a_status_without_status_code_is_still_refused_without_a_kind() -> None:
    """Detection then calls it a document, and a document needs To: refused either way."""
    root = parse(INVALID / "schema_status_missing_code.edxml")
    assert schema.detect_kind(root) is PackageKind.DOCUMENT
    error = refusal(root)
    assert error.detail["kind"] == "document"
    assert "To" in error.detail["reason"]


# --- required elements ----------------------------------------------------------------------------

DOCUMENT_REQUIRED = [
    "edXMLEnvelope/edXMLHeader/MessageHeader/From",
    "edXMLEnvelope/edXMLHeader/MessageHeader/To",
    "edXMLEnvelope/edXMLHeader/MessageHeader/Code",
    "edXMLEnvelope/edXMLHeader/MessageHeader/PromulgationInfo",
    "edXMLEnvelope/edXMLHeader/MessageHeader/DocumentType",
    "edXMLEnvelope/edXMLHeader/MessageHeader/Subject",
    "edXMLEnvelope/edXMLHeader/MessageHeader/SignerInfo",
    "edXMLEnvelope/edXMLHeader/MessageHeader/From/OrganId",
    "edXMLEnvelope/edXMLHeader/MessageHeader/PromulgationInfo/PromulgationDate",
    "edXMLEnvelope/edXMLHeader/TraceHeaderList",
    "edXMLEnvelope/edXMLHeader/TraceHeaderList/TraceHeader",
    "edXMLEnvelope/edXMLBody",
    "edXMLEnvelope/edXMLBody/edXMLManifest",
]
STATUS_REQUIRED = [
    "edXMLEnvelope/edXMLHeader/MessageHeader/From",
    "edXMLEnvelope/edXMLHeader/MessageHeader/ResponseFor",
    "edXMLEnvelope/edXMLHeader/MessageHeader/StatusCode",
    "edXMLEnvelope/edXMLHeader/MessageHeader/Timestamp",
    "edXMLEnvelope/edXMLHeader/MessageHeader/ResponseFor/OrganId",
]


@pytest.mark.parametrize("path", DOCUMENT_REQUIRED, ids=lambda p: p.rsplit("/", 1)[-1])
def test_document_without_a_required_element_is_refused(path: str) -> None:
    root = sample("edoc_update.edxml")
    remove(root, path)

    error = refusal(root)

    assert error.detail["kind"] == "document"
    assert f"'edXML:{path.rsplit('/', 1)[-1]}'" in error.detail["reason"]


@pytest.mark.parametrize("path", STATUS_REQUIRED, ids=lambda p: p.rsplit("/", 1)[-1])
def test_status_without_a_required_element_is_refused(path: str) -> None:
    root = sample("status.edxml")
    remove(root, path)

    error = refusal(root, PackageKind.STATUS)

    assert f"'edXML:{path.rsplit('/', 1)[-1]}'" in error.detail["reason"]


# --- leniency where the field varies --------------------------------------------------------------


def _tail_in_design_order(root: etree._Element) -> None:
    """DESIGN.md / national SDK order: DueDate, ToPlaces, OtherInfo, ResponseFor, SteeringType."""
    mh = message_header(root)
    tail = [mh.find(E + name) for name in ("ToPlaces", "OtherInfo", "ResponseFor", "SteeringType")]
    for elem in tail:
        assert elem is not None
        mh.remove(elem)
        mh.append(elem)


def _document_id_last(root: etree._Element) -> None:
    mh = message_header(root)
    document_id = mh.find(E + "DocumentId")
    assert document_id is not None
    mh.remove(document_id)
    mh.append(document_id)


def _no_document_id(root: etree._Element) -> None:
    remove(root, "edXMLEnvelope/edXMLHeader/MessageHeader/DocumentId")


def _shuffled_organisations(root: etree._Element) -> None:
    for name in ("From", "To"):
        organisation = message_header(root).find(E + name)
        assert organisation is not None
        organisation[:] = list(reversed(organisation))


def _empty_due_date(root: etree._Element) -> None:
    find(root, "edXMLEnvelope/edXMLHeader/MessageHeader/DueDate").text = ""


def _no_due_date_no_content_no_tail(root: etree._Element) -> None:
    for name in ("DueDate", "Content", "ToPlaces", "OtherInfo", "ResponseFor", "SteeringType"):
        remove(root, f"edXMLEnvelope/edXMLHeader/MessageHeader/{name}")


def _padded_date(root: etree._Element) -> None:
    date = find(root, "edXMLEnvelope/edXMLHeader/MessageHeader/PromulgationInfo/PromulgationDate")
    date.text = "\n  2019/01/17\n"


def _empty_free_text(root: etree._Element) -> None:
    for name in ("Subject", "Content"):
        find(root, f"edXMLEnvelope/edXMLHeader/MessageHeader/{name}").text = None


def _filled_response_for(root: etree._Element) -> None:
    response = find(root, "edXMLEnvelope/edXMLHeader/MessageHeader/ResponseFor")
    for name, text in (
        ("DocumentId", "000.00.04.G14,2012/08/06,267/VPCP-TTĐT"),
        ("PromulgationDate", "2012/08/06"),
        ("OrganId", "000.00.04.G14"),
        ("Code", "267/VPCP-TTĐT"),
    ):
        etree.SubElement(response, E + name).text = text


def _trace_header_after_bussiness(root: etree._Element) -> None:
    trace = find(root, "edXMLEnvelope/edXMLHeader/TraceHeaderList")
    bussiness = etree.SubElement(trace, E + "Bussiness")
    etree.SubElement(bussiness, E + "BussinessDocType").text = "0"
    hop = etree.SubElement(trace, E + "TraceHeader")
    etree.SubElement(hop, E + "OrganId").text = "000.00.00.G22"
    etree.SubElement(hop, E + "Timestamp").text = "2019/05/18 08:00:00"


def _xmldsig_signature(root: etree._Element) -> None:
    placeholder = header(root)[-1]
    header(root).replace(placeholder, as_xmldsig(placeholder))


def _repeated_tail(root: etree._Element) -> None:
    """The schema cannot count the tail (UPA); refusing a second OtherInfo is the model's job."""
    mh = message_header(root)
    other = mh.find(E + "OtherInfo")
    assert other is not None
    mh.append(copy.deepcopy(other))


DOCUMENT_VARIANTS = [
    _tail_in_design_order,
    _document_id_last,
    _no_document_id,
    _shuffled_organisations,
    _empty_due_date,
    _no_due_date_no_content_no_tail,
    _padded_date,
    _empty_free_text,
    _filled_response_for,
    _trace_header_after_bussiness,
    _xmldsig_signature,
    _repeated_tail,
]


@pytest.mark.parametrize("change", DOCUMENT_VARIANTS, ids=lambda f: f.__name__.strip("_"))
def test_document_variants_seen_or_expected_in_the_field_are_accepted(change: Any) -> None:
    root = sample("edoc_relayed_by_hub.edxml")
    change(root)
    assert schema.validate(root) is PackageKind.DOCUMENT


def test_placeholder_signature_content_is_not_checked() -> None:
    """The field's placeholders carry a truncated certificate (MIIFqTCCBJG): not our call here.

    The same content in the XMLDSig namespace is held to the W3C schema, and refused.
    """
    root = sample("edoc_update.edxml")
    certificate = "edXMLEnvelope/edXMLHeader/Signature/KeyInfo/X509Data/X509Certificate"
    assert find(root, certificate).text == "MIIFqTCCBJG"
    assert schema.validate(root) is PackageKind.DOCUMENT

    _xmldsig_signature(root)
    error = refusal(root)
    assert error.detail["path"].endswith("/ds:X509Data/ds:X509Certificate")


def test_truncated_base64_attachment_passes_the_schema() -> None:
    """ContentTransferEncoded is a string: decoding (and refusing) is the model's job."""
    root = sample("edoc_relayed_by_hub.edxml")
    content = find(root, "AttachmentEncoded/Attachment/ContentTransferEncoded")
    assert content.text is not None and "[TRUNC" in content.text
    assert schema.validate(root) is PackageKind.DOCUMENT


def test_status_children_in_any_order_and_optional_parts_are_accepted() -> None:
    root = sample("status.edxml")
    mh = message_header(root)
    mh[:] = list(reversed(mh))
    remove(root, "edXMLEnvelope/edXMLHeader/MessageHeader/StaffInfo")
    remove(root, "edXMLEnvelope/edXMLHeader/MessageHeader/Description")
    trace = etree.SubElement(header(root), E + "TraceHeaderList")
    hop = etree.SubElement(trace, E + "TraceHeader")
    etree.SubElement(hop, E + "OrganId").text = "000.00.00.H41"
    etree.SubElement(hop, E + "Timestamp").text = "2018/09/28 17:25:11"
    body = etree.SubElement(find(root, "edXMLEnvelope"), E + "edXMLBody")
    etree.SubElement(body, E + "edXMLManifest", version="1.0")

    assert schema.validate(root) is PackageKind.STATUS


@pytest.mark.parametrize("code", ["01", "02", "03", "04", "05", "06", "13", "15", "16"])
def test_every_status_code_is_accepted(code: str) -> None:
    root = sample("status.edxml")
    find(root, "edXMLEnvelope/edXMLHeader/MessageHeader/StatusCode").text = code
    assert schema.validate(root) is PackageKind.STATUS


@pytest.mark.parametrize("code", ["00", "07", "12", "14", "17", "99", "", "1", "A1"])
def test_other_status_codes_are_refused(code: str) -> None:
    root = sample("status.edxml")
    find(root, "edXMLEnvelope/edXMLHeader/MessageHeader/StatusCode").text = code
    assert refusal(root).detail["path"] == f"{MH}/StatusCode"


@pytest.mark.parametrize(
    "value",
    ["2019-01-17", "2019/13/17", "2019/00/17", "2019/01/32", "19/01/17", "2019/1/17", "x"],
)
def test_bad_dates_are_refused(value: str) -> None:
    root = sample("edoc_relayed_by_hub.edxml")
    find(
        root, "edXMLEnvelope/edXMLHeader/MessageHeader/PromulgationInfo/PromulgationDate"
    ).text = value
    assert refusal(root).detail["path"] == f"{MH}/PromulgationInfo/PromulgationDate"


@pytest.mark.parametrize(
    "value",
    ["2018/06/20", "2018/06/20 24:00:00", "2018/06/20 16:60:00", "2018/06/20T16:35:56", ""],
)
def test_bad_timestamps_are_refused(value: str) -> None:
    root = sample("edoc_relayed_by_hub.edxml")
    find(root, "edXMLEnvelope/edXMLHeader/TraceHeaderList/TraceHeader/Timestamp").text = value
    error = refusal(root)
    assert error.detail["path"] == f"{HEADER}/TraceHeaderList/TraceHeader[1]/Timestamp"


def test_trace_header_agency_codes_are_not_held_to_the_qcvn_pattern() -> None:
    """The hub writes codes like 01.02.G22 and 001.00.20.TT2: only blank is refused here."""
    root = sample("edoc_relayed_by_hub.edxml")
    codes = [hop.findtext(E + "OrganId") for hop in root.iter(E + "TraceHeader")]
    assert codes == ["01.02.G22", "001.00.20.TT2"]
    assert schema.validate(root) is PackageKind.DOCUMENT


# --- the Signature --------------------------------------------------------------------------------


def test_xmldsig_signature_is_checked_against_the_w3c_schema() -> None:
    root = sample("edoc_relayed_by_hub.edxml")
    real = as_xmldsig(header(root)[-1])
    header(root).replace(header(root)[-1], real)
    assert schema.validate(root) is PackageKind.DOCUMENT

    signed_info = real.find(DS + "SignedInfo")
    assert signed_info is not None
    real.remove(signed_info)
    error = refusal(root)
    assert error.detail["path"] == f"{HEADER}/ds:Signature/ds:SignatureValue"
    assert "ds:SignedInfo" in error.detail["reason"]


def test_xmldsig_signature_without_an_algorithm_is_refused() -> None:
    root = sample("edoc_relayed_by_hub.edxml")
    real = as_xmldsig(header(root)[-1])
    header(root).replace(header(root)[-1], real)
    method = real.find(f"{DS}SignedInfo/{DS}SignatureMethod")
    assert method is not None
    del method.attrib["Algorithm"]
    error = refusal(root)
    assert error.detail["path"] == f"{HEADER}/ds:Signature/ds:SignedInfo/ds:SignatureMethod"


@pytest.mark.parametrize("xmldsig", [False, True], ids=["placeholder", "xmldsig"])
def test_signature_in_message_header_is_refused(xmldsig: bool) -> None:
    root = sample("edoc_relayed_by_hub.edxml")
    signature = header(root)[-1]
    header(root).remove(signature)
    message_header(root).append(as_xmldsig(signature) if xmldsig else signature)

    error = refusal(root)

    name = "ds:Signature" if xmldsig else "Signature"
    assert error.detail["path"] == f"{MH}/{name}"


def test_signature_in_attachment_is_refused() -> None:
    root = sample("edoc_relayed_by_hub.edxml")
    attachment = find(root, "AttachmentEncoded/Attachment")
    attachment.append(as_xmldsig(header(root)[-1]))
    assert refusal(root).detail["path"] == "/edXML/AttachmentEncoded/Attachment/ds:Signature"


def test_xmldsig_signature_hidden_in_the_placeholder_is_refused() -> None:
    root = sample("edoc_relayed_by_hub.edxml")
    placeholder = header(root)[-1]
    placeholder.insert(0, as_xmldsig(placeholder))
    error = refusal(root)
    assert error.detail["path"] == f"{HEADER}/Signature/ds:Signature"


@pytest.mark.parametrize("xmldsig", [False, True], ids=["placeholder", "xmldsig"])
def test_signature_nested_deeper_than_the_schema_looks_is_refused(xmldsig: bool) -> None:
    """Skipped or lax wildcard content (placeholder KeyInfo, ds:Object) hides no Signature."""
    root = sample("edoc_relayed_by_hub.edxml")
    signature = header(root)[-1]
    if xmldsig:
        signature = as_xmldsig(signature)
        header(root).replace(header(root)[-1], signature)
        holder = etree.SubElement(signature, DS + "Object")
        holder.append(copy.deepcopy(signature))
        hidden = "ds:Signature/ds:Object/ds:Signature"
    else:
        holder = signature.find(E + "KeyInfo")
        assert holder is not None
        holder.append(as_xmldsig(signature))
        hidden = "Signature/KeyInfo/ds:Signature"

    error = refusal(root)

    assert error.detail["path"] == f"{HEADER}/{hidden}"
    assert "edXMLHeader" in error.detail["reason"]


# --- detection ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "xml",
    [
        b"<edXML/>",
        b'<edXML xmlns="urn:other"><edXMLEnvelope/></edXML>',
        b'<Envelope xmlns="http://www.mic.gov.vn/TBT/QCVN_102_2016"/>',
        b'<edXML xmlns="http://www.mic.gov.vn/TBT/QCVN_102_2016"/>',
        b'<edXML xmlns="http://www.mic.gov.vn/TBT/QCVN_102_2016"><edXMLEnvelope/></edXML>',
        b'<edXML xmlns="http://www.mic.gov.vn/TBT/QCVN_102_2016"><edXMLEnvelope>'
        b"<edXMLHeader/></edXMLEnvelope></edXML>",
        b'<edXML xmlns="http://www.mic.gov.vn/TBT/QCVN_102_2016"><edXMLEnvelope>'
        b"<edXMLHeader><StatusCode>01</StatusCode></edXMLHeader></edXMLEnvelope></edXML>",
    ],
)
def test_unknown_package_kind(xml: bytes) -> None:
    root = parse(xml)
    with pytest.raises(errors.UnknownPackageKind) as info:
        schema.detect_kind(root)
    assert info.value.detail["reason"]
    with pytest.raises(errors.UnknownPackageKind):
        schema.validate(root)


def test_any_prefixing_is_accepted() -> None:
    """DESIGN.md: emit the edXML: prefix, accept any prefixing on input."""
    root = sample("status.edxml")
    tree = etree.tostring(root).replace(b"edXML:", b"q:").replace(b"xmlns:edXML", b"xmlns:q")
    assert schema.validate(parse(tree)) is PackageKind.STATUS


def test_explicit_kind_is_used_as_given() -> None:
    error = refusal(sample("status.edxml"), PackageKind.DOCUMENT)
    assert error.detail["kind"] == "document"
    assert error.detail["path"] == f"{MH}/ResponseFor"


# --- the report -----------------------------------------------------------------------------------


def test_report_lists_at_most_ten_errors_in_document_order() -> None:
    root = sample("edoc_update.edxml")
    for organisation in message_header(root).iter(E + "OrganId"):
        organisation.text = ""
    to = message_header(root).find(E + "To")
    assert to is not None
    for _ in range(12):
        message_header(root).insert(1, copy.deepcopy(to))

    error = refusal(root)

    assert len(error.detail["errors"]) == 10
    assert error.detail["path"] == f"{MH}/From/OrganId"
    assert [e["path"] for e in error.detail["errors"][1:3]] == [
        f"{MH}/To[1]/OrganId",
        f"{MH}/To[2]/OrganId",
    ]
    lines = [e["line"] for e in error.detail["errors"]]
    assert lines == sorted(lines)


@pytest.mark.parametrize("path", SCHEMA_CASES, ids=lambda p: p.name)
def test_report_falls_back_to_lxml_when_xmlschema_sees_nothing(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = expectation(path)
    monkeypatch.setattr(schema, "_xmlschema_report", lambda kind, root: [])

    error = refusal(parse(path), PackageKind(expected["kind"]) if "kind" in expected else None)

    assert error.detail["path"] == expected["expect-path"]
    assert isinstance(error.detail["line"], int)
    assert "{http" not in error.detail["reason"]


# --- the schemas themselves -----------------------------------------------------------------------


def test_schemas_are_valid_xsd_10_for_both_libraries() -> None:
    schema.check_schemas()
    for kind in PackageKind:
        built = schema._xmlschema_schema(kind)
        assert isinstance(built, xmlschema.XMLSchema10)
        assert built.validity == "valid"


ALL_FILES = WELL_FORMED + sorted(INVALID.glob("*.edxml"))


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: p.name)
def test_lxml_and_xmlschema_agree(path: Path) -> None:
    try:
        root = parse(path)
    except etree.XMLSyntaxError:
        pytest.skip("not well-formed: refused before any schema")
    for kind in PackageKind:
        by_lxml = schema._lxml_schema(kind).check(root) is None
        resource = xmlschema.XMLResource(root, allow="none", defuse="always")
        by_xmlschema = schema._xmlschema_schema(kind).is_valid(resource)
        assert by_lxml == by_xmlschema, kind


def test_schema_files_have_no_doctype_and_only_local_locations() -> None:
    files = sorted(schema.XSD_DIR.glob("*.xsd"))
    assert {p.name for p in files} >= {
        "edxml.xsd",
        "edxml-status.xsd",
        "edxml-common.xsd",
        "xmldsig-core-schema.xsd",
    }
    xs = "{http://www.w3.org/2001/XMLSchema}"
    for path in files:
        doc = etree.parse(str(path), etree.XMLParser(load_dtd=False, no_network=True))
        assert not doc.docinfo.doctype, path.name
        for ref in doc.getroot().iter(xs + "include", xs + "import", xs + "redefine"):
            location = ref.get("schemaLocation")
            assert location is not None and "/" not in location and ":" not in location
            assert (schema.XSD_DIR / location).is_file()


@pytest.mark.parametrize(
    "location",
    ["http://example.invalid/evil.xsd", "../outside.xsd", "{tmp}/outside.xsd", "file:///etc/x"],
)
def test_loader_refuses_locations_outside_the_xsd_dir(tmp_path: Path, location: str) -> None:
    xsd_dir = tmp_path / "xsd"
    xsd_dir.mkdir()
    (tmp_path / "outside.xsd").write_text(OUTSIDE_XSD)
    entry = xsd_dir / "entry.xsd"
    entry.write_text(INCLUDING_XSD.format(location=location.format(tmp=tmp_path)))

    with pytest.raises(errors.ConfigError) as info:
        schema._compile_lxml(entry, xsd_dir)
    assert info.value.detail["location"] == location.format(tmp=tmp_path)
    with pytest.raises(errors.ConfigError):
        schema._compile_xmlschema(entry, xsd_dir)


def test_loader_resolver_alone_never_reads_outside_the_xsd_dir(tmp_path: Path) -> None:
    """Even past the location check, libxml2 is served nothing from outside xsd/."""
    xsd_dir = tmp_path / "xsd"
    xsd_dir.mkdir()
    (tmp_path / "outside.xsd").write_text(OUTSIDE_XSD)
    entry = xsd_dir / "entry.xsd"
    entry.write_text(INCLUDING_XSD.format(location="../outside.xsd"))
    (xsd_dir / "inside.xsd").write_text(OUTSIDE_XSD)

    with pytest.raises(etree.XMLSchemaParseError, match="not a schema document"):
        etree.XMLSchema(etree.parse(str(entry), schema._safe_parser(xsd_dir)))
    entry.write_text(INCLUDING_XSD.format(location="inside.xsd"))
    etree.XMLSchema(etree.parse(str(entry), schema._safe_parser(xsd_dir)))


def test_loader_refuses_a_doctype(tmp_path: Path) -> None:
    entry = tmp_path / "entry.xsd"
    entry.write_text("<!DOCTYPE schema SYSTEM 'http://example.invalid/x.dtd'>" + OUTSIDE_XSD)
    with pytest.raises(errors.ConfigError, match="DOCTYPE"):
        schema._compile_lxml(entry, tmp_path)


OUTSIDE_XSD = (
    '<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" targetNamespace="urn:t">'
    '<xs:element name="x"/></xs:schema>'
)
INCLUDING_XSD = (
    '<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" targetNamespace="urn:t">'
    '<xs:include schemaLocation="{location}"/></xs:schema>'
)


@pytest.fixture
def fresh_schemas() -> Iterator[None]:
    schema._clear_caches()
    yield
    schema._clear_caches()


def test_loading_and_validating_never_touch_the_network(
    fresh_schemas: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)

    schema.check_schemas()
    assert schema.validate(sample("edoc_update.edxml")) is PackageKind.DOCUMENT
    refusal(parse(INVALID / "schema_doc_dsig_without_signed_info.edxml"))


def test_schemas_compile_once_per_process_across_threads(
    fresh_schemas: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    compiled: list[Path] = []
    real = schema._compile_lxml

    def counting(path: Path, xsd_dir: Path) -> etree.XMLSchema:
        compiled.append(path)
        return real(path, xsd_dir)

    monkeypatch.setattr(schema, "_compile_lxml", counting)
    roots = [sample("status.edxml"), sample("edoc_relayed_by_hub.edxml")] * 8
    results: list[PackageKind] = []
    start = threading.Barrier(len(roots))

    def work(root: etree._Element) -> None:
        start.wait()
        for _ in range(20):
            results.append(schema.validate(root))

    threads = [threading.Thread(target=work, args=(root,)) for root in roots]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(p.name for p in compiled) == ["edxml-status.xsd", "edxml.xsd"]
    assert results.count(PackageKind.STATUS) == results.count(PackageKind.DOCUMENT) == 160
