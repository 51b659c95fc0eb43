"""XMLDSig verification core for the one signature shape the gateway accepts.

:mod:`gateway.trust.sigstructure` has already pinned the shape: exactly one Signature, the last
child of ``edXMLHeader``, exactly one ``Reference URI=""`` whose transforms are the
enveloped-signature transform and canonicalisation only. For that shape verification is:
canonicalise SignedInfo and check SignatureValue under the certificate's key (a key
:mod:`gateway.trust.keypolicy` admits; ECDSA in low-S form only); canonicalise the document without
the Signature and compare its digest with DigestValue; hand back the canonical bytes, re-parsed, as
the only content the caller may read.

Why not signxml here: signxml verifies any shape, and pays for it with about six parses and
serialisations of the whole document and much Python per call (1.0-1.7 ms for 5 KB against
0.04 ms of RSA). On the ingest path this core does one canonicalisation and one re-parse on the
tree the gateway has already parsed and validated. signxml still signs, and
``tests/integration/test_dsig_differential.py`` checks that both verifiers agree on every
accepted and refused signature in the corpus (and xmlsec1 on the interop ones).

Usage::

    signed_root = verify_enveloped(root, info, certificate)

.. warning:: Call it only on a tree that passed
:func:`gateway.trust.sigstructure.inspect_signature`;
   it relies on that pinning and checks nothing about where the signature is.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from lxml import etree

from gateway.envelope.xmlsafe import INTERNAL_PARSER
from gateway.errors import (
    DigestMismatch,
    SignatureMalformed,
    SignatureValueMismatch,
    UnsupportedAlgorithm,
)
from gateway.trust.keypolicy import check_certificate_key, check_low_s
from gateway.trust.sigstructure import SignatureInfo

__all__ = ["verify_enveloped"]

_ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
_EXC_NS = "http://www.w3.org/2001/10/xml-exc-c14n#"


@dataclass(frozen=True, slots=True)
class _C14N:
    exclusive: bool
    with_comments: bool


_C14N_METHODS = {
    "http://www.w3.org/TR/2001/REC-xml-c14n-20010315": _C14N(False, False),
    "http://www.w3.org/TR/2001/REC-xml-c14n-20010315#WithComments": _C14N(False, True),
    # C14N 1.1 differs from 1.0 only for xml:id/xml:base/xml:space inheritance, which the
    # edXML vocabulary does not use; lxml, like signxml, renders it as 1.0.
    "http://www.w3.org/2006/12/xml-c14n11": _C14N(False, False),
    "http://www.w3.org/2006/12/xml-c14n11#WithComments": _C14N(False, True),
    "http://www.w3.org/2001/10/xml-exc-c14n#": _C14N(True, False),
    "http://www.w3.org/2001/10/xml-exc-c14n#WithComments": _C14N(True, True),
}

_DIGESTS = {
    "http://www.w3.org/2000/09/xmldsig#sha1": hashlib.sha1,
    "http://www.w3.org/2001/04/xmldsig-more#sha224": hashlib.sha224,
    "http://www.w3.org/2001/04/xmlenc#sha256": hashlib.sha256,
    "http://www.w3.org/2001/04/xmldsig-more#sha384": hashlib.sha384,
    "http://www.w3.org/2001/04/xmlenc#sha512": hashlib.sha512,
}

# SHA-1 is here for legacy archives only: check_algorithms refuses it unless policy admits it.
_SIGNATURE_METHODS: dict[str, tuple[str, hashes.HashAlgorithm]] = {
    "http://www.w3.org/2000/09/xmldsig#rsa-sha1": ("rsa", hashes.SHA1()),  # noqa: S303
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha224": ("rsa", hashes.SHA224()),
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256": ("rsa", hashes.SHA256()),
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha384": ("rsa", hashes.SHA384()),
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512": ("rsa", hashes.SHA512()),
    "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha1": ("ec", hashes.SHA1()),  # noqa: S303
    "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha224": ("ec", hashes.SHA224()),
    "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256": ("ec", hashes.SHA256()),
    "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha384": ("ec", hashes.SHA384()),
    "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha512": ("ec", hashes.SHA512()),
}


def _b64(text: str | None, what: str) -> bytes:
    try:
        return base64.b64decode("".join((text or "").split()), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureMalformed(f"{what} is not valid base64") from None


def _inclusive_prefixes(method_el: etree._Element | None) -> list[str] | None:
    if method_el is None:
        return None
    inclusive = method_el.find(f"{{{_EXC_NS}}}InclusiveNamespaces")
    if inclusive is None:
        return None
    return [("" if p == "#default" else p) for p in inclusive.get("PrefixList", "").split()]


def _canonical(node: etree._Element, c14n: _C14N, prefixes: list[str] | None) -> bytes:
    """Canonical bytes of ``node``; a nested node is canonicalised from a standalone copy.

    libxml2 2.14 (lxml 6) emits a bogus ``xmlns=""`` on grandchildren when a nested element is
    canonicalised inclusively under a default-namespace override (the field's
    ``<Signature xmlns="...xmldsig#">``): serialising the node carries every in-scope namespace
    declaration, and canonicalising that copy as a document root gives the correct bytes.
    """
    if node.getparent() is not None:
        node = etree.fromstring(etree.tostring(node, with_tail=False), INTERNAL_PARSER)
    out: bytes = etree.tostring(
        node,
        method="c14n",
        exclusive=c14n.exclusive,
        with_comments=c14n.with_comments,
        inclusive_ns_prefixes=prefixes if c14n.exclusive else None,
    )
    return out


def _document_without(
    root: etree._Element, sig: etree._Element, c14n: _C14N, prefixes: list[str] | None
) -> bytes:
    """The enveloped-signature transform, then canonicalisation, of the whole document.

    The Signature is detached for the duration and put back exactly (its tail text, which is
    not part of the Signature, stays in the document while it is detached).
    """
    parent = sig.getparent()
    assert parent is not None
    index = parent.index(sig)
    tail = sig.tail or ""
    previous = sig.getprevious()
    parent.remove(sig)
    if previous is not None:
        before = previous.tail
        previous.tail = (before or "") + tail
    else:
        before = parent.text
        parent.text = (before or "") + tail
    try:
        # URI="" means the document without comments, whatever the canonicalisation says.
        plain = _C14N(c14n.exclusive, False)
        out: bytes = etree.tostring(
            root.getroottree(),
            method="c14n",
            exclusive=plain.exclusive,
            with_comments=False,
            inclusive_ns_prefixes=prefixes if plain.exclusive else None,
        )
    finally:
        if previous is not None:
            previous.tail = before
        else:
            parent.text = before
        parent.insert(index, sig)
        sig.tail = tail or None
    return out


def _check_value(
    certificate: x509.Certificate, method_uri: str, signed_info: bytes, value: bytes
) -> None:
    try:
        family, digest = _SIGNATURE_METHODS[method_uri]
    except KeyError:
        raise UnsupportedAlgorithm(
            "signature method not supported", detail={"signature_method": method_uri}
        ) from None
    # No arithmetic with a key outside the policy (a P-521 or RSA-1024 signer, a 16 kbit
    # exponent): refused here as it is in the chain check, before any work is spent on it.
    check_certificate_key(certificate)
    key = certificate.public_key()
    try:
        if family == "rsa":
            if not isinstance(key, rsa.RSAPublicKey):
                raise SignatureValueMismatch("an RSA signature method with a non-RSA key")
            key.verify(value, signed_info, padding.PKCS1v15(), digest)
        else:
            if not isinstance(key, ec.EllipticCurvePublicKey):
                raise SignatureValueMismatch("an ECDSA signature method with a non-EC key")
            size = (key.curve.key_size + 7) // 8
            if len(value) != 2 * size:
                raise SignatureValueMismatch(
                    f"an ECDSA SignatureValue must be {2 * size} bytes (r || s), not {len(value)}"
                )
            r = int.from_bytes(value[:size], "big")
            s = int.from_bytes(value[size:], "big")
            key.verify(utils.encode_dss_signature(r, s), signed_info, ec.ECDSA(digest))
            # Only after it verified: SIGNATURE_NON_CANONICAL then means exactly "a valid
            # signature in its malleable form", which xmlsec1 and signxml accept and we do not.
            check_low_s(key.curve, s)
    except InvalidSignature:
        raise SignatureValueMismatch(
            "the SignatureValue does not verify with the embedded certificate's key"
        ) from None


def verify_enveloped(
    root: etree._Element, info: SignatureInfo, certificate: x509.Certificate
) -> etree._Element:
    """Verify the pinned enveloped signature; return the signed content, re-parsed.

    Raises :class:`SignatureValueMismatch`, :class:`DigestMismatch`,
    :class:`UnsupportedAlgorithm` or :class:`SignatureMalformed`;
    :class:`~gateway.errors.SignatureNonCanonical` for a valid ECDSA value in its high-S
    form and :class:`~gateway.errors.CertificateKeyWeak` for a key outside
    :mod:`gateway.trust.keypolicy` (checked before any arithmetic).
    """
    sig = info.element
    ns = etree.QName(sig).namespace

    def q(name: str) -> str:
        return f"{{{ns}}}{name}"

    signed_info = sig.find(q("SignedInfo"))
    if signed_info is None:
        raise SignatureMalformed("the Signature has no SignedInfo")
    method_el = signed_info.find(q("CanonicalizationMethod"))
    c14n = _C14N_METHODS.get(method_el.get("Algorithm", "") if method_el is not None else "")
    if c14n is None:
        raise UnsupportedAlgorithm(
            "SignedInfo canonicalisation method not supported",
            detail={"method": method_el.get("Algorithm") if method_el is not None else None},
        )
    value = _b64(sig.findtext(q("SignatureValue")), "SignatureValue")
    _check_value(
        certificate,
        info.signature_method,
        _canonical(signed_info, c14n, _inclusive_prefixes(method_el)),
        value,
    )

    reference = signed_info.find(q("Reference"))
    assert reference is not None  # pinned by inspect_signature
    last_c14n = None
    for transform in reference.iterfind(f"{q('Transforms')}/{q('Transform')}"):
        algorithm = transform.get("Algorithm", "")
        if algorithm != _ENVELOPED:
            last_c14n = transform
    if last_c14n is None:
        # The enveloped transform yields a node-set; XMLDSig renders it with inclusive C14N 1.0.
        ref_c14n, prefixes = _C14N(False, False), None
    else:
        found = _C14N_METHODS.get(last_c14n.get("Algorithm", ""))
        if found is None:
            raise UnsupportedAlgorithm(
                "reference transform not supported",
                detail={"transform": last_c14n.get("Algorithm")},
            )
        ref_c14n, prefixes = found, _inclusive_prefixes(last_c14n)
    digest_fn = _DIGESTS.get(info.digest_method)
    if digest_fn is None:
        raise UnsupportedAlgorithm(
            "digest method not supported", detail={"digest": info.digest_method}
        )
    expected = _b64(reference.findtext(q("DigestValue")), "DigestValue")
    payload = _document_without(root, sig, ref_c14n, prefixes)
    if digest_fn(payload).digest() != expected:
        raise DigestMismatch("the signed content was changed after signing (digest mismatch)")
    # Only what was digested is handed back: canonical form, comments and PIs as signed,
    # entity-free, re-parsed so that no unsigned node can be read by mistake.
    signed: etree._Element = etree.fromstring(payload, INTERNAL_PARSER)
    return signed
