"""Signing edXML packages: enveloped XMLDSig over the whole package, as the sender.

The signature is an enveloped XMLDSig with one ``Reference URI=""`` (the whole package),
RSA-SHA256 (RSA 2048/3072) or ECDSA-SHA256 (P-256), SHA-256 digests, exclusive C14N, the
signer's certificate (and chain) in ``KeyInfo``. It is placed where the field samples place it:
the last child of ``edXMLHeader``. An ECDSA SignatureValue is always written in its low-S form
(:mod:`gateway.trust.keypolicy`): verifiers refuse the other one.

Usage::

    key = SigningKey.load(Path("agency.key.pem"), Path("agency.cert.pem"))
    signed_bytes = sign_package(package_bytes, key)

.. warning:: Load a :class:`SigningKey` once and reuse it: passing PEM bytes to signxml on every
   call reloads and re-validates the key (~60 ms per signature). Never log a key.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from lxml import etree
from signxml.algorithms import CanonicalizationMethod, SignatureMethod
from signxml.exceptions import InvalidInput
from signxml.signer import XMLSigner

from gateway.envelope.model import DSIG_NS, EDXML_NS
from gateway.envelope.xmlsafe import DEFAULT_LIMITS, INTERNAL_PARSER, XMLLimits, parse_bytes
from gateway.errors import CertificateKeyWeak, SignatureMalformed, UsageError
from gateway.trust.keypolicy import ADMITTED_CURVES, check_key, low_s_raw
from gateway.trust.store import load_certificates

__all__ = ["VIETNAM_TZ", "SigningKey", "sign_package", "sign_root"]

#: edXML times carry no zone: they are Vietnam time.
VIETNAM_TZ = dt.timezone(dt.timedelta(hours=7), "ICT")
_EDXML_TIME = "%Y/%m/%d %H:%M:%S"
_C14N = CanonicalizationMethod.EXCLUSIVE_XML_CANONICALIZATION_1_0


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A private key with its certificate and chain, loaded once.

    ``repr`` never shows the key.
    """

    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    certificate: x509.Certificate
    #: intermediates to embed after the leaf in ``KeyInfo``
    chain: tuple[x509.Certificate, ...] = ()

    def __repr__(self) -> str:
        return f"SigningKey(subject={self.certificate.subject.rfc4514_string()!r})"

    @classmethod
    def load(
        cls,
        key_path: Path,
        cert_path: Path,
        chain_paths: Sequence[Path] = (),
        *,
        password: bytes | None = None,
    ) -> SigningKey:
        """Load a PEM private key and a PEM certificate file (leaf first, chain after it)."""
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=password)
        except OSError as exc:
            raise UsageError(f"cannot read key file {key_path}: {exc.strerror}") from None
        except (ValueError, TypeError) as exc:
            raise UsageError(f"{key_path} is not a usable PEM private key: {exc}") from None
        certs = load_certificates(cert_path)
        for extra in chain_paths:
            certs.extend(load_certificates(extra))
        try:
            # The verifiers' policy, so that we never make a signature a peer must refuse.
            check_key(key.public_key(), role="signing key")
        except CertificateKeyWeak as exc:
            raise UsageError(f"{key_path}: {exc.message}", detail=exc.detail) from None
        if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise UsageError(f"{key_path}: only RSA and ECDSA P-256 keys can sign edXML")
        if isinstance(key, ec.EllipticCurvePrivateKey) and not isinstance(key.curve, ec.SECP256R1):
            # P-384 is admitted for verification; signing with it would need ECDSA-SHA384
            # (and ES384 for node keys), which no signature format here uses yet.
            raise UsageError(f"{key_path}: only the P-256 curve is supported for ECDSA")
        leaf = certs[0]
        if leaf.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) != key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ):
            raise UsageError(f"the first certificate in {cert_path} does not match {key_path}")
        chain = tuple(c for c in certs[1:] if c.subject != c.issuer)  # never embed a root
        return cls(private_key=key, certificate=leaf, chain=chain)

    @property
    def algorithm(self) -> SignatureMethod:
        """The XMLDSig signature method this key signs with."""
        if isinstance(self.private_key, rsa.RSAPrivateKey):
            return SignatureMethod.RSA_SHA256
        return SignatureMethod.ECDSA_SHA256


def _header(root: etree._Element) -> etree._Element:
    header = root.find(f"{{{EDXML_NS}}}edXMLEnvelope/{{{EDXML_NS}}}edXMLHeader")
    if root.tag != f"{{{EDXML_NS}}}edXML" or header is None:
        raise SignatureMalformed(
            "cannot sign: the input is not an edXML package (no edXML/edXMLEnvelope/edXMLHeader)"
        )
    return header


def _stamp_sender_trace(root: etree._Element, when: dt.datetime) -> None:
    """Record the signing time in signed content.

    A status package's Timestamp is set to it. In a document package the last TraceHeader is
    updated if it is the sender's own; otherwise one is appended for the sender.
    """
    ns = {"e": EDXML_NS}
    stamp = when.astimezone(VIETNAM_TZ).strftime(_EDXML_TIME)
    status_time = root.find("e:edXMLEnvelope/e:edXMLHeader/e:MessageHeader/e:Timestamp", ns)
    if status_time is not None:
        status_time.text = stamp
        return
    sender = root.findtext(
        "e:edXMLEnvelope/e:edXMLHeader/e:MessageHeader/e:From/e:OrganId", None, ns
    )
    trace_list = root.find("e:edXMLEnvelope/e:edXMLHeader/e:TraceHeaderList", ns)
    if sender is None or trace_list is None:
        return
    traces = trace_list.findall("e:TraceHeader", ns)
    last = traces[-1] if traces else None
    if last is not None and (last.findtext("e:OrganId", "", ns) or "").strip() == sender.strip():
        ts = last.find("e:Timestamp", ns)
        if ts is not None:
            ts.text = stamp
            return
    prefix = trace_list.prefix

    def tag(name: str) -> str:
        return f"{{{EDXML_NS}}}{name}"

    trace = etree.Element(tag("TraceHeader"), nsmap={prefix: EDXML_NS} if prefix else None)
    etree.SubElement(trace, tag("OrganId")).text = sender.strip()
    etree.SubElement(trace, tag("Timestamp")).text = stamp
    # Trace headers come before Bussiness in the samples.
    business = trace_list.find("e:Bussiness", ns)
    if business is not None:
        business.addprevious(trace)
    else:
        trace_list.append(trace)


def sign_root(
    root: etree._Element,
    key: SigningKey,
    *,
    stamp_trace: bool = True,
    now: dt.datetime | None = None,
) -> etree._Element:
    """Sign a parsed package in place and return the signed root.

    Any existing signature in ``edXMLHeader`` (including the field's placeholder signatures) is
    replaced. With ``stamp_trace`` the sender's TraceHeader records the signing time.
    """
    header = _header(root)
    for old in list(header):
        if isinstance(old.tag, str) and etree.QName(old).localname == "Signature":
            header.remove(old)
    if stamp_trace:
        _stamp_sender_trace(root, now or dt.datetime.now(dt.UTC))
    placeholder = etree.SubElement(
        header,
        f"{{{DSIG_NS}}}Signature",
        nsmap={None: DSIG_NS},  # type: ignore[dict-item]  # lxml-stubs omit the default ns
    )
    placeholder.set("Id", "placeholder")
    signer = XMLSigner(
        signature_algorithm=key.algorithm,
        digest_algorithm="sha256",
        c14n_algorithm=_C14N,
    )
    # unprefixed, as in the field; signxml documents {None: ds} though its annotation omits it
    signer.namespaces = {None: DSIG_NS}  # type: ignore[dict-item]
    # signxml re-parses its own serialisation of our already-vetted tree; huge_tree lets a 50 MB
    # attachment (one text node) through.
    signer._parser = INTERNAL_PARSER  # type: ignore[assignment]
    try:
        # No reference_uri: signxml then signs the root, which has no Id, as URI="".
        signed: etree._Element = signer.sign(
            root, key=key.private_key, cert=[key.certificate, *key.chain]
        )
    except InvalidInput as exc:
        raise SignatureMalformed(f"cannot sign: {exc}") from None
    curve = getattr(key.private_key, "curve", None)
    # A curve outside the policy only reaches here in a SigningKey built by hand (load()
    # refuses it, as every verifier refuses its signatures): left as signxml made it.
    if isinstance(curve, ec.EllipticCurve) and curve.name in ADMITTED_CURVES:
        _make_low_s(signed, curve)
    return signed


def _make_low_s(root: etree._Element, curve: ec.EllipticCurve) -> None:
    """Rewrite the new ECDSA SignatureValue to its low-S form, the only one verifiers accept.

    ``cryptography`` (under signxml) returns either form at random. SignatureValue is outside
    SignedInfo, and ``(r, n - s)`` verifies exactly when ``(r, s)`` does, so the rewritten
    signature is as valid as the original, and no longer malleable.
    """
    signature = _header(root).find(f"{{{DSIG_NS}}}Signature")
    # By local name: with the unprefixed namespace map signxml builds the children without a
    # namespace in memory (they take the default namespace only when serialised).
    value_el = next(
        (
            child
            for child in (signature if signature is not None else ())
            if isinstance(child.tag, str) and etree.QName(child).localname == "SignatureValue"
        ),
        None,
    )
    if value_el is None or not value_el.text:
        raise SignatureMalformed("cannot sign: signxml wrote no SignatureValue")
    value = base64.b64decode(value_el.text)
    low = low_s_raw(curve, value)
    if low != value:
        value_el.text = base64.b64encode(low).decode("ascii")


def sign_package(
    data: bytes,
    key: SigningKey,
    *,
    stamp_trace: bool = True,
    limits: XMLLimits = DEFAULT_LIMITS,
    now: dt.datetime | None = None,
) -> bytes:
    """Sign package bytes (parsed safely first) and return the signed package bytes."""
    root = parse_bytes(data, limits)
    signed = sign_root(root, key, stamp_trace=stamp_trace, now=now)
    out: bytes = etree.tostring(signed, xml_declaration=True, encoding="UTF-8")
    return out + b"\n"
