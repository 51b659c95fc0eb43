"""Hostile XML is refused before parsing work, each attack with its own stable code."""

from __future__ import annotations

import pytest
from lxml import etree
from support import ATTACKS, INTEROP

from gateway.envelope.model import EDXML_NS
from gateway.envelope.xmlsafe import XMLLimits, parse_bytes, parse_declaring
from gateway.errors import (
    DoctypeForbidden,
    MalformedXML,
    UndeclaredPrefix,
    XMLError,
    XMLTextTooLarge,
    XMLTooDeep,
    XMLTooLarge,
    XMLTooManyElements,
)

HOSTILE = {
    "xxe_file.edxml": "XML_EXTERNAL_ENTITY",
    "xxe_network.edxml": "XML_EXTERNAL_ENTITY",
    "xxe_parameter_entity.edxml": "XML_EXTERNAL_ENTITY",
    "external_dtd.edxml": "XML_EXTERNAL_ENTITY",
    "billion_laughs.edxml": "XML_ENTITY_EXPANSION",
    "quadratic_blowup.edxml": "XML_ENTITY_DECLARATION",
    "doctype_only.edxml": "XML_DOCTYPE_FORBIDDEN",
}


def test_hostile_list_is_the_attack_folder() -> None:
    """Every file of tests/data/attacks is tested: here, or (wrap_*) in test_signature_attacks."""
    on_disk = {p.name for p in ATTACKS.iterdir() if not p.name.startswith("wrap_")}
    assert set(HOSTILE) == on_disk


@pytest.mark.parametrize(("name", "code"), sorted(HOSTILE.items()))
def test_hostile_xml_is_refused_with_its_code(name: str, code: str) -> None:
    with pytest.raises(XMLError) as info:
        parse_bytes((ATTACKS / name).read_bytes())
    assert info.value.code == code
    # nothing of the entity was resolved into the message
    assert "root:" not in info.value.message


def test_xxe_in_utf16_is_still_seen() -> None:
    data = (ATTACKS / "xxe_file.edxml").read_text(encoding="utf-8")
    data = data.replace('encoding="UTF-8"', 'encoding="UTF-16"')
    with pytest.raises(XMLError) as info:
        parse_bytes(data.encode("utf-16"))
    assert info.value.code == "XML_EXTERNAL_ENTITY"


def test_doctype_after_comment_and_pi_is_seen() -> None:
    data = b'<?xml version="1.0"?>\n<!-- c -->\n<?pi x?>\n<!DOCTYPE edXML>\n<edXML/>'
    with pytest.raises(DoctypeForbidden):
        parse_bytes(data)


def test_doctype_text_inside_a_comment_after_root_is_harmless() -> None:
    root = parse_bytes(b"<edXML><!-- <!DOCTYPE x> --></edXML>")
    assert root.tag == "edXML"


def test_malformed_field_sample_names_line_and_column() -> None:
    with pytest.raises(MalformedXML) as info:
        parse_bytes((INTEROP / "edoc_new.edxml").read_bytes())
    assert info.value.code == "XML_MALFORMED"
    assert (info.value.detail["line"], info.value.detail["column"]) == (1, 1)
    assert "Start tag expected" in info.value.detail["reason"]
    assert "line 1, column 1" in info.value.message


def test_the_sdk_example_is_refused_for_its_undeclared_prefixes_alone() -> None:
    """The SDK's example writes xlink: and edXML: undeclared: its own code, naming them and
    where the first one is; a copy that declares them parses, and nothing else is wrong."""
    data = (INTEROP / "edoc.edxml").read_bytes()
    with pytest.raises(UndeclaredPrefix) as info:
        parse_bytes(data)
    assert info.value.code == "XML_PREFIX_UNDECLARED"
    assert info.value.detail == {"prefixes": ["xlink", "edXML"], "line": 116, "column": 39}
    assert "line 116, column 39" in info.value.message
    root, prefixes = parse_declaring(data)
    assert prefixes == ["xlink", "edXML"]
    assert root.tag == "{http://www.mic.gov.vn/TBT/QCVN_102_2016}edXML"
    assert data == (INTEROP / "edoc.edxml").read_bytes()  # the bytes themselves untouched


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b'<a x:y="1"/>', "XML_PREFIX_UNDECLARED"),
        (b'<?xml version="1.0"?><!-- <c> --><r><x:b/></r>', "XML_PREFIX_UNDECLARED"),
        # another defect beside the prefix: malformed, never "repaired"
        (b'<a x:y="1"><b></a>', "XML_MALFORMED"),
        (b'<a x:y="1" x:y="2"/>', "XML_MALFORMED"),
    ],
)
def test_only_a_missing_declaration_is_told_apart(data: bytes, code: str) -> None:
    with pytest.raises(MalformedXML if code == "XML_MALFORMED" else UndeclaredPrefix) as info:
        parse_bytes(data)
    assert info.value.code == code


def test_size_cap_refuses_before_parsing() -> None:
    with pytest.raises(XMLTooLarge) as info:
        parse_bytes(b"<a>" + b"x" * 2000 + b"</a>", XMLLimits(max_bytes=1000))
    assert info.value.http_status == 413
    assert info.value.detail == {"size": 2007, "limit": 1000}


def test_depth_cap() -> None:
    deep = b"<a>" * 70 + b"</a>" * 70
    with pytest.raises(XMLTooDeep):
        parse_bytes(deep, XMLLimits(max_depth=64))
    assert parse_bytes(b"<a>" * 60 + b"</a>" * 60, XMLLimits(max_depth=64)) is not None


def test_element_count_cap() -> None:
    many = b"<a>" + b"<b/>" * 500 + b"</a>"
    with pytest.raises(XMLTooManyElements):
        parse_bytes(many, XMLLimits(max_elements=100))


def test_empty_input_is_malformed() -> None:
    with pytest.raises(MalformedXML):
        parse_bytes(b"   ")


def test_a_large_attachment_text_node_parses() -> None:
    # libxml2 refuses a text node over 10 MB unless huge_tree is set: a 50 MB attachment must pass.
    # Attachment payloads are exempt from max_text_bytes (they are bounded by max_bytes).
    big = (
        f'<edXML xmlns="{EDXML_NS}"><ContentTransferEncoded>'.encode()
        + b"QUJD" * (4 * 1024 * 1024)
        + b"</ContentTransferEncoded></edXML>"
    )
    root = parse_bytes(big)
    assert len(root[0].text) == 16 * 1024 * 1024


def test_the_same_text_outside_an_attachment_is_refused() -> None:
    big = (
        f'<edXML xmlns="{EDXML_NS}"><Subject>'.encode()
        + b"QUJD" * (1024 * 1024)
        + b"</Subject></edXML>"
    )
    with pytest.raises(XMLTextTooLarge) as info:
        parse_bytes(big)
    assert info.value.detail == {
        "size": 4 * 1024 * 1024,
        "limit": 1024 * 1024,
        "node": "text",
        "line": 1,
    }


def test_entities_never_reach_lxml_defaults() -> None:
    # Control: lxml's default parser WOULD expand this internal entity; ours refuses it.
    data = b'<!DOCTYPE a [<!ENTITY e "expanded">]><a>&e;</a>'
    assert etree.fromstring(data).text == "expanded"
    with pytest.raises(XMLError) as info:
        parse_bytes(data)
    assert info.value.code == "XML_ENTITY_DECLARATION"
