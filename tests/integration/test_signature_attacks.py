"""Signature wrapping and partial coverage: each shape refused with its own stable code.

The static corpus in tests/data/attacks/wrap_*.edxml was made from a package signed by a
throwaway key; the same variants are also made here from a package signed by a trusted key,
so the refusal cannot be explained by an untrusted certificate.
"""

from __future__ import annotations

import pytest
from lxml import etree
from support import ATTACKS, G22, DevPKI, sample
from wrapping import VARIANTS

from gateway.trust.signing import sign_package

STATIC = sorted(VARIANTS)


def test_wrapping_list_is_the_attack_folder() -> None:
    """Every wrap_* file of tests/data/attacks is tested (the others in test_xmlsafe)."""
    assert set(STATIC) == {p.name for p in ATTACKS.glob("wrap_*")}


@pytest.fixture(scope="module")
def signed(pki: DevPKI) -> bytes:
    data = sign_package(sample("edoc_update.edxml"), pki.key(G22))
    assert pki.verifier().verify(data).valid
    return data


@pytest.mark.parametrize("name", STATIC)
def test_static_wrapping_corpus_is_refused(pki: DevPKI, name: str) -> None:
    _make, code = VARIANTS[name]
    report = pki.verifier().verify((ATTACKS / name).read_bytes())
    assert [e.code for e in report.errors] == [code]
    assert report.package is None


@pytest.mark.parametrize("name", STATIC)
def test_wrapping_of_a_trusted_signature_is_refused(pki: DevPKI, signed: bytes, name: str) -> None:
    make, code = VARIANTS[name]
    report = pki.verifier().verify(make(signed))
    assert [e.code for e in report.errors] == [code]
    assert report.check("structure").ok is False
    assert report.package is None


def test_the_codes_are_distinct() -> None:
    codes = [code for _make, code in VARIANTS.values()]
    assert len(set(codes)) == len(codes)


def _mutate_reference(signed: bytes, mutate: object) -> bytes:
    root = etree.fromstring(signed)
    ref = root.find(".//{http://www.w3.org/2000/09/xmldsig#}Reference")
    mutate(ref)  # type: ignore[operator]
    return etree.tostring(root)


def test_xpath_transform_narrowing_coverage_is_refused(pki: DevPKI, signed: bytes) -> None:
    def add_xpath(ref: etree._Element) -> None:
        transforms = ref.find("{*}Transforms")
        t = etree.SubElement(transforms, transforms.tag.replace("Transforms", "Transform"))
        t.set("Algorithm", "http://www.w3.org/TR/1999/REC-xpath-19991116")

    report = pki.verifier().verify(_mutate_reference(signed, add_xpath))
    assert [e.code for e in report.errors] == ["SIGNATURE_PARTIAL_COVERAGE"]


def test_second_reference_is_refused(pki: DevPKI, signed: bytes) -> None:
    root = etree.fromstring(signed)
    ref = root.find(".//{http://www.w3.org/2000/09/xmldsig#}Reference")
    ref.addnext(etree.fromstring(etree.tostring(ref)))
    report = pki.verifier().verify(etree.tostring(root))
    assert [e.code for e in report.errors] == ["SIGNATURE_PARTIAL_COVERAGE"]


def test_two_signatures_are_refused(pki: DevPKI, signed: bytes) -> None:
    root = etree.fromstring(signed)
    sig = root.find(".//{http://www.w3.org/2000/09/xmldsig#}Signature")
    body = root.find("{*}edXMLEnvelope/{*}edXMLBody")
    body.append(etree.fromstring(etree.tostring(sig)))
    report = pki.verifier().verify(etree.tostring(root))
    assert [e.code for e in report.errors] == ["SIGNATURE_MISPLACED"]


def test_unsigned_attachment_appended_after_signing_is_caught(pki: DevPKI, signed: bytes) -> None:
    """An attachment swapped or added under the signature breaks the digest (URI="" covers it)."""
    root = etree.fromstring(signed)
    encoded = root.find("{*}AttachmentEncoded")
    extra = etree.fromstring(etree.tostring(encoded.find("{*}Attachment")))
    extra.find("{*}ContentId").text = "cid:evil"
    encoded.append(extra)
    report = pki.verifier().verify(etree.tostring(root))
    assert not report.valid
    assert report.package is None
