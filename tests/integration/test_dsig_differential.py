"""The gateway's XMLDSig core against two independent verifiers, on one corpus.

``gateway.trust.dsig`` verifies only the pinned signature shape, without signxml's re-parsing. This
test is the reason to trust it: over valid signatures (ours, xmlsec1's, inclusive and
exclusive C14N, RSA and ECDSA) and many tampered variants, it must accept exactly what
``xmlsec1 --verify`` accepts, and, where signxml is not hit by the libxml2 inclusive-C14N bug,
exactly what signxml accepts.

One difference is policy, not a bug, and is checked as such: the **high-S twin** of a valid
ECDSA signature (``s`` replaced by ``n - s``, equally valid mathematically) is accepted by
xmlsec1 and signxml and refused by the gateway with ``SIGNATURE_NON_CANONICAL``
(docs/signatures.md). Signatures from xmlsec1 are put in their low-S form first, so the
corpus does not depend on which form xmlsec1 happened to write.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from lxml import etree
from signxml.algorithms import DigestAlgorithm, SignatureMethod
from signxml.verifier import SignatureConfiguration, XMLVerifier
from support import G22, H41, DevPKI, sample
from test_interop_xmlsec1 import (
    ECDSA,
    EXC,
    INCL,
    RSA,
    _template,
    _xmlsec_sign,
    _xmlsec_verify,
    ecdsa_form,
)

from gateway.envelope.xmlsafe import parse_bytes
from gateway.errors import SignatureError
from gateway.trust.dsig import verify_enveloped
from gateway.trust.signing import sign_package
from gateway.trust.sigstructure import inspect_signature

E = "http://www.mic.gov.vn/TBT/QCVN_102_2016"
DS = "http://www.w3.org/2000/09/xmldsig#"


def _edit(data: bytes, change: Callable[[etree._Element], None]) -> bytes:
    root = etree.fromstring(data)
    change(root)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def _text_element(root: etree._Element) -> etree._Element:
    """The document's Subject, or a status package's Description."""
    found = root.find(f".//{{{E}}}Subject")
    return found if found is not None else root.find(f".//{{{E}}}Description")


def _set_subject(text: str) -> Callable[[etree._Element], None]:
    def change(root: etree._Element) -> None:
        _text_element(root).text = text

    return change


def _comment_in_subject(root: etree._Element) -> None:
    subject = _text_element(root)
    comment = etree.Comment(" inserted after signing ")
    comment.tail = "tail"
    subject.append(comment)


def _comment_between_elements(root: etree._Element) -> None:
    _text_element(root).addnext(etree.Comment(" harmless "))


def _flip_digest(root: etree._Element) -> None:
    value = root.find(f".//{{{DS}}}DigestValue")
    value.text = ("A" if value.text[0] != "A" else "B") + value.text[1:]


def _extra_whitespace(root: etree._Element) -> None:
    subject = _text_element(root)
    subject.tail = (subject.tail or "") + "   "


def _attribute_added(root: etree._Element) -> None:
    _text_element(root).set("lang", "vi")


def _reorder_to(root: etree._Element) -> None:
    header = root.find(f".//{{{E}}}MessageHeader")
    tos = header.findall(f"{{{E}}}To")
    if len(tos) > 1:
        tos[0].addprevious(tos[-1])
    else:  # a status package: swap two From children instead
        first = header.find(f"{{{E}}}From")
        first[0].addprevious(first[-1])


#: name -> (mutation or None, expected to stay valid)
VARIANTS: dict[str, tuple[Callable[[etree._Element], None] | None, bool]] = {
    "untouched": (None, True),
    "comment inside signed text": (_comment_in_subject, False),
    "comment between elements": (_comment_between_elements, True),
    "subject changed": (_set_subject("Quyết định giả mạo"), False),
    "digest value flipped": (_flip_digest, False),
    "whitespace added": (_extra_whitespace, False),
    "attribute changed": (_attribute_added, False),
    "recipients reordered": (_reorder_to, False),
}


def _our_refusal(data: bytes, pki: DevPKI, agency: str) -> str | None:
    """The code the gateway's core refuses ``data`` with, or None when it verifies."""
    root = parse_bytes(data)
    try:
        info = inspect_signature(root)
        assert info is not None
        verify_enveloped(root, info, pki.key(agency).certificate)
    except SignatureError as exc:
        return exc.code
    return None


def _ours(data: bytes, pki: DevPKI, agency: str) -> bool:
    return _our_refusal(data, pki, agency) is None


def _xmlsec(tmp: Path, data: bytes, pki: DevPKI) -> bool:
    return _xmlsec_verify(tmp, data, pki).returncode == 0


def _signxml(data: bytes, pki: DevPKI, agency: str) -> bool:
    config = SignatureConfiguration(
        location=f"./{{{E}}}edXMLEnvelope/{{{E}}}edXMLHeader/",
        signature_methods=frozenset(SignatureMethod),
        digest_algorithms=frozenset(DigestAlgorithm),
    )
    try:
        XMLVerifier().verify(data, x509_cert=pki.key(agency).certificate, expect_config=config)
    except Exception:  # signxml raises several unrelated types; any failure is a refusal
        return False
    return True


SIGNERS = {
    "gateway RSA exc-c14n": ("gateway", G22, "rsa2048", None, None, "edoc_update.edxml"),
    "gateway ECDSA exc-c14n": ("gateway", H41, "ec-p256", None, None, "status_finish_06.edxml"),
    "xmlsec1 RSA inclusive": ("xmlsec1", G22, "rsa2048", RSA, INCL, "edoc_revocation.edxml"),
    "xmlsec1 ECDSA exclusive": ("xmlsec1", H41, "ec-p256", ECDSA, EXC, "status_inbox_01.edxml"),
}


@pytest.mark.parametrize("signer", sorted(SIGNERS))
def test_gateway_core_agrees_with_xmlsec1_and_signxml(
    tmp_path: Path, fresh_pki: DevPKI, signer: str
) -> None:
    tool, agency, key_type, method, c14n, name = SIGNERS[signer]
    issued = fresh_pki.issue(agency, key_type=key_type)
    if tool == "gateway":
        signed = sign_package(sample(name), fresh_pki.key(agency))
    else:
        signed = _xmlsec_sign(
            tmp_path, _template(name, method, c14n, c14n == EXC), issued.key, issued.cert
        )
        if key_type == "ec-p256":
            signed = ecdsa_form(signed, "low")
    disagreements = []
    if key_type == "ec-p256":
        # The policy difference, asserted as one: both others accept the twin, we do not.
        twin = ecdsa_form(signed, "high")
        assert twin != signed, "a low-S signature and its high-S twin differ"
        assert _our_refusal(twin, fresh_pki, agency) == "SIGNATURE_NON_CANONICAL"
        assert _xmlsec(tmp_path, twin, fresh_pki)
        if c14n != INCL:
            assert _signxml(twin, fresh_pki, agency)
    for variant, (mutate, expect_valid) in VARIANTS.items():
        data = signed if mutate is None else _edit(signed, mutate)
        ours = _ours(data, fresh_pki, agency)
        theirs = _xmlsec(tmp_path, data, fresh_pki)
        if ours != theirs or ours != expect_valid:
            disagreements.append((variant, "ours", ours, "xmlsec1", theirs))
        if c14n != INCL:  # signxml on lxml 6 mis-canonicalises inclusive SignedInfo
            sx = _signxml(data, fresh_pki, agency)
            if sx != ours:
                disagreements.append((variant, "ours", ours, "signxml", sx))
    assert disagreements == []


def test_signed_content_handed_back_has_no_comment_truncation(fresh_pki: DevPKI) -> None:
    """A comment that splits signed text must not let a reader see only part of it."""
    signed = sign_package(sample("edoc_update.edxml"), fresh_pki.key(G22))
    harmless = _edit(signed, _comment_between_elements)
    report = fresh_pki.verifier().verify(harmless)
    assert report.valid, report.render_text()
    assert report.package is not None
    assert report.package.subject == fresh_pki.verifier().verify(signed).package.subject
    assert b"harmless" not in etree.tostring(report.signed_xml)
