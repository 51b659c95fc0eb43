"""Structural checks on a package's signature, before any cryptography.

Signature wrapping is real: an XMLDSig verifier that searches for "a" signature and "a" signed
element can be led to verify one subtree while the application reads another. These checks pin
the shape: exactly one ``edXMLEnvelope`` directly under the ``edXML`` root, one header, unique
Ids, exactly one Signature as the last child of ``edXMLHeader``, exactly one Reference with
``URI=""`` (the whole package) and only enveloped/C14N transforms.

Usage::

    info = inspect_signature(root)   # None when the package is unsigned
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from lxml import etree
from signxml.algorithms import DigestAlgorithm, SignatureMethod

from gateway.envelope.model import DSIG_NS, EDXML_NS
from gateway.errors import (
    DuplicateId,
    ForgedHeader,
    PartialCoverage,
    SignatureMalformed,
    SignatureMisplaced,
    UnsupportedAlgorithm,
    WeakAlgorithm,
    WrappedEnvelope,
)

__all__ = ["SignatureInfo", "check_algorithms", "check_transforms", "inspect_signature"]

_E = f"{{{EDXML_NS}}}"
_SIGNATURE_TAGS = frozenset({f"{{{DSIG_NS}}}Signature", f"{_E}Signature"})
_ID_ATTRIBUTES = ("Id", "ID", "id", "{http://www.w3.org/XML/1998/namespace}id")
_ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
_C14N_TRANSFORMS = frozenset(
    {
        "http://www.w3.org/TR/2001/REC-xml-c14n-20010315",
        "http://www.w3.org/TR/2001/REC-xml-c14n-20010315#WithComments",
        "http://www.w3.org/2001/10/xml-exc-c14n#",
        "http://www.w3.org/2001/10/xml-exc-c14n#WithComments",
        "http://www.w3.org/2006/12/xml-c14n11",
        "http://www.w3.org/2006/12/xml-c14n11#WithComments",
    }
)
#: Transforms that select part of the document: a signature using them does not cover it all.
_NARROWING_TRANSFORMS = frozenset(
    {
        "http://www.w3.org/TR/1999/REC-xpath-19991116",
        "http://www.w3.org/2002/06/xmldsig-filter2",
        "http://www.w3.org/TR/1999/REC-xslt-19991116",
        "http://www.w3.org/2000/09/xmldsig#base64",
    }
)
#: Signature methods the gateway verifies (asymmetric, X.509-bound; SHA-1 only when admitted).
_ACCEPTED_METHODS = frozenset(
    m
    for m in SignatureMethod
    if m.name.startswith(("RSA_", "ECDSA_")) or m.name.endswith("_RSA_MGF1")
)


@dataclass(frozen=True, slots=True)
class SignatureInfo:
    """What the structural pass learned about the one signature of a package."""

    #: the Signature element (in the document as parsed)
    element: etree._Element
    #: True when the Signature is in the edXML namespace (current field samples), not XMLDSig
    legacy_namespace: bool
    #: SignatureMethod Algorithm URI
    signature_method: str
    #: DigestMethod Algorithm URI of the single reference
    digest_method: str
    #: Transform Algorithm URIs of the single reference, in order
    transforms: tuple[str, ...] = ()


def _local(el: etree._Element) -> str:
    return etree.QName(el).localname


_COUNTED = frozenset(
    f"{_E}{name}"
    for name in (
        "edXML",
        "edXMLEnvelope",
        "edXMLHeader",
        "MessageHeader",
        "TraceHeaderList",
        "edXMLBody",
    )
)


@dataclass(slots=True)
class _Scan:
    """One pass over the tree: what the wrapping checks need."""

    counts: Counter[str]
    ids: Counter[str]
    signatures: list[etree._Element]
    envelopes: list[etree._Element]


_INTERESTING = etree.XPath(
    " | ".join(
        [f"//e:{name}" for name in sorted(n.removeprefix(_E) for n in _COUNTED)]
        + ["//e:Signature", "//ds:Signature"]
    ),
    namespaces={"e": EDXML_NS, "ds": DSIG_NS},
)
_IDS = etree.XPath("//@Id | //@ID | //@id | //@xml:id")


def _scan(root: etree._Element) -> _Scan:
    # libxml2's XPath walks the tree in C; a Python loop over every element costs more than
    # the rest of the structural checks together.
    counts: Counter[str] = Counter()
    signatures: list[etree._Element] = []
    envelopes: list[etree._Element] = []
    found: list[etree._Element] = _INTERESTING(root)  # type: ignore[assignment]
    for el in found:
        tag = el.tag
        if tag in _SIGNATURE_TAGS:
            signatures.append(el)
            continue
        counts[tag] += 1
        if tag == f"{_E}edXMLEnvelope":
            envelopes.append(el)
    ids: Counter[str] = Counter(str(v) for v in _IDS(root))  # type: ignore[union-attr]
    return _Scan(counts=counts, ids=ids, signatures=signatures, envelopes=envelopes)


def _check_wrapping(root: etree._Element, scan: _Scan) -> None:
    if root.tag != f"{_E}edXML":
        if scan.counts[f"{_E}edXML"] or scan.envelopes:
            raise WrappedEnvelope(
                f"the edXML package is wrapped inside a <{_local(root)}> element",
                detail={"root": _local(root)},
            )
        return  # not an edXML package at all: the schema check says so
    if scan.counts[f"{_E}edXML"] > 1:
        raise WrappedEnvelope("an edXML package is nested inside the edXML root")
    envelopes = scan.envelopes
    if len(envelopes) > 1 or any(env.getparent() is not root for env in envelopes):
        raise WrappedEnvelope(
            "the edXMLEnvelope must appear once, directly under the edXML root",
            detail={"envelopes": len(envelopes)},
        )


def _check_headers(scan: _Scan) -> None:
    for name in ("edXMLHeader", "MessageHeader", "TraceHeaderList", "edXMLBody"):
        found = scan.counts[f"{_E}{name}"]
        if found > 1:
            raise ForgedHeader(
                f"{name} appears {found} times; a second one beside the signed one is forged",
                detail={"element": name, "count": found},
            )


def _check_ids(scan: _Scan) -> None:
    dupes = sorted(v for v, n in scan.ids.items() if n > 1)
    if dupes:
        raise DuplicateId(
            f"the Id {dupes[0]!r} is carried by more than one element", detail={"ids": dupes}
        )


def inspect_signature(root: etree._Element) -> SignatureInfo | None:
    """Check the package's signature structure; return its facts, or None if unsigned.

    Raises the specific :class:`~gateway.errors.SignatureError` for each wrapping shape.
    """
    scan = _scan(root)
    _check_wrapping(root, scan)
    _check_headers(scan)
    _check_ids(scan)
    signatures = scan.signatures
    if not signatures:
        return None
    if len(signatures) > 1:
        raise SignatureMisplaced(
            f"the package carries {len(signatures)} signatures; exactly one is allowed",
            detail={"count": len(signatures)},
        )
    sig = signatures[0]
    header = root.find(f"{_E}edXMLEnvelope/{_E}edXMLHeader")
    children = [c for c in header if isinstance(c.tag, str)] if header is not None else []
    if header is None or sig.getparent() is not header or children[-1] is not sig:
        parent = sig.getparent()
        raise SignatureMisplaced(
            "the signature must be the last child of edXMLEnvelope/edXMLHeader",
            detail={"found_under": _local(parent) if parent is not None else None},
        )
    ns = etree.QName(sig).namespace

    def q(name: str) -> str:
        return f"{{{ns}}}{name}"

    signed_info = sig.find(q("SignedInfo"))
    method = signed_info.find(q("SignatureMethod")) if signed_info is not None else None
    if signed_info is None or method is None or sig.find(q("SignatureValue")) is None:
        raise SignatureMalformed(
            "the Signature lacks SignedInfo, SignatureMethod or SignatureValue"
        )
    references = signed_info.findall(q("Reference"))
    if len(references) != 1:
        raise PartialCoverage(
            f'the signature has {len(references)} references; exactly one, URI="", is required',
            detail={"references": [r.get("URI") for r in references]},
        )
    ref = references[0]
    if ref.get("URI") != "":
        raise PartialCoverage(
            f'the signature\'s Reference URI is {ref.get("URI")!r}: it must be "" so the '
            "whole package (header, trace list, manifest and attachments) is signed",
            detail={"uri": ref.get("URI")},
        )
    transforms = tuple(
        t.get("Algorithm", "") for t in ref.iterfind(f"{q('Transforms')}/{q('Transform')}")
    )
    narrowing = [t for t in transforms if t in _NARROWING_TRANSFORMS]
    if narrowing or _ENVELOPED not in transforms:
        raise PartialCoverage(
            "the signature's transforms must be the enveloped-signature transform and "
            "canonicalisation only: anything else can leave part of the package unsigned",
            detail={"transforms": list(transforms)},
        )
    digest = ref.find(q("DigestMethod"))
    if digest is None or ref.find(q("DigestValue")) is None:
        raise SignatureMalformed("the signature's Reference lacks DigestMethod or DigestValue")
    return SignatureInfo(
        element=sig,
        legacy_namespace=ns == EDXML_NS,
        signature_method=method.get("Algorithm", ""),
        digest_method=digest.get("Algorithm", ""),
        transforms=transforms,
    )


def check_algorithms(info: SignatureInfo, *, allow_weak: bool) -> bool:
    """Refuse unsupported algorithms, and SHA-1 unless ``allow_weak``.

    Returns True when a weak algorithm was admitted.
    """
    try:
        method = SignatureMethod(info.signature_method)
        digest = DigestAlgorithm(info.digest_method)
    except ValueError:
        raise UnsupportedAlgorithm(
            "the signature uses an algorithm this gateway does not support",
            detail={"signature_method": info.signature_method, "digest": info.digest_method},
        ) from None
    if method not in _ACCEPTED_METHODS:
        raise UnsupportedAlgorithm(
            f"signature method {method.name} is not accepted (RSA or ECDSA with X.509 only)",
            detail={"signature_method": info.signature_method},
        )
    weak = "SHA1" in method.name or "SHA1" in digest.name
    if weak and not allow_weak:
        raise WeakAlgorithm(
            f"the signature uses SHA-1 ({method.name}, digest {digest.name}); refused by "
            "default: admit it only to read legacy archives (verify.allow_weak_algorithms)",
            detail={"signature_method": info.signature_method, "digest": info.digest_method},
        )
    return weak


def check_transforms(info: SignatureInfo) -> None:
    """Refuse transforms this gateway does not know (only enveloped + C14N are accepted)."""
    unknown = [t for t in info.transforms if t != _ENVELOPED and t not in _C14N_TRANSFORMS]
    if unknown:
        raise UnsupportedAlgorithm(
            f"unknown transform {unknown[0]!r} (exclusive C14N is "
            "'http://www.w3.org/2001/10/xml-exc-c14n#')",
            detail={"transforms": list(info.transforms)},
        )
