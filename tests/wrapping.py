"""Signature-wrapping variants of a signed package, for the attack corpus and its tests.

Each function takes a validly signed package and returns a forged variant that a naive
XMLDSig verifier (one that searches for "a" signature anywhere) could be fooled by.
Run ``python tests/wrapping.py SIGNED.edxml OUTDIR`` to regenerate the static corpus files.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

from lxml import etree

E = "http://www.mic.gov.vn/TBT/QCVN_102_2016"
DS = "http://www.w3.org/2000/09/xmldsig#"
_P = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=True)


def _root(data: bytes) -> etree._Element:
    return etree.fromstring(data, _P)


def _bytes(root: etree._Element) -> bytes:
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def _forge_subject(root: etree._Element, text: str = "FORGED: chuyển 10 tỷ đồng") -> None:
    for subject in root.iter(f"{{{E}}}Subject"):
        subject.text = text


def wrapped_in_forged_root(signed: bytes) -> bytes:
    """A forged edXML whose envelope is fake, carrying the signed package inside a wrapper."""
    original = _root(signed)
    forged = copy.deepcopy(original)
    _forge_subject(forged)
    wrapper = etree.SubElement(forged, f"{{{E}}}Wrapper")
    wrapper.append(original)
    return _bytes(forged)


def forged_header_beside_signed(signed: bytes) -> bytes:
    """A forged MessageHeader inserted before the signed one in the same edXMLHeader."""
    root = _root(signed)
    header = root.find(f"{{{E}}}edXMLEnvelope/{{{E}}}edXMLHeader")
    signed_mh = header.find(f"{{{E}}}MessageHeader")
    forged_mh = copy.deepcopy(signed_mh)
    for subject in forged_mh.iter(f"{{{E}}}Subject"):
        subject.text = "FORGED"
    signed_mh.addprevious(forged_mh)
    return _bytes(root)


def duplicated_id(signed: bytes) -> bytes:
    """Reference points at Id 'doc', carried both by the signed envelope and a forged one."""
    root = _root(signed)
    envelope = root.find(f"{{{E}}}edXMLEnvelope")
    envelope.set("Id", "doc")
    forged = etree.SubElement(root, f"{{{E}}}Forged", Id="doc")
    forged.text = "FORGED"
    ref = root.find(f".//{{{DS}}}Reference")
    ref.set("URI", "#doc")
    return _bytes(root)


def signature_moved(signed: bytes) -> bytes:
    """The signature moved out of edXMLHeader to the end of the root element."""
    root = _root(signed)
    sig = root.find(f".//{{{DS}}}Signature")
    sig.getparent().remove(sig)
    root.append(sig)
    _forge_subject(root)
    return _bytes(root)


def reference_elsewhere(signed: bytes) -> bytes:
    """The Reference URI points at the manifest only, leaving the header unsigned."""
    root = _root(signed)
    body = root.find(f"{{{E}}}edXMLEnvelope/{{{E}}}edXMLBody")
    body.set("Id", "body")
    ref = root.find(f".//{{{DS}}}Reference")
    ref.set("URI", "#body")
    _forge_subject(root)
    return _bytes(root)


#: file name in tests/data/attacks -> (generator, expected error code)
VARIANTS = {
    "wrap_forged_root.edxml": (wrapped_in_forged_root, "SIGNATURE_WRAPPED_ENVELOPE"),
    "wrap_forged_header.edxml": (forged_header_beside_signed, "SIGNATURE_FORGED_HEADER"),
    "wrap_duplicated_id.edxml": (duplicated_id, "SIGNATURE_DUPLICATE_ID"),
    "wrap_signature_moved.edxml": (signature_moved, "SIGNATURE_MISPLACED"),
    "wrap_reference_elsewhere.edxml": (reference_elsewhere, "SIGNATURE_PARTIAL_COVERAGE"),
}


if __name__ == "__main__":
    signed_bytes = Path(sys.argv[1]).read_bytes()
    out = Path(sys.argv[2])
    for name, (make, _code) in VARIANTS.items():
        (out / name).write_bytes(make(signed_bytes))
        print("wrote", out / name)
