"""The node's own key: signs ingest receipts, hop records and audit checkpoints.

A node key is an ECDSA P-256 key (recommended: it signs in ~0.05 ms) or an RSA key of at least
2048 bits, with the node's certificate (which binds ``urn:gateway-node:<name>``) and its chain.
Signatures are raw, detached and over bytes: ECDSA-SHA256 in DER form (``ES256``), always in
its low-S form and refused in the other (:mod:`gateway.trust.keypolicy`), or RSA PKCS#1 v1.5 with
SHA-256 (``RS256``). What is signed is always :func:`canonical_json` of a
small object, so anyone can recheck it with other tools.

Usage::

    key = NodeKey.load(Path("node.key.pem"), Path("node.cert.pem"))   # once, at start-up
    signature = key.sign(canonical_json({"node": "h49-hub", "seq": 7}))
    verify_signature(key.certificate, data, signature)                 # True

.. warning:: Load the key once and keep the :class:`NodeKey`; never log it, print it or put it
   in an audit entry. ``repr`` shows the certificate subject only.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from gateway.errors import (
    CertificateKeyWeak,
    CertificateMalformed,
    SignatureError,
    SignatureValueMismatch,
    UnsupportedAlgorithm,
)
from gateway.trust.binding import rfc4514_name
from gateway.trust.keypolicy import (
    certificate_key_facts,
    check_certificate_key,
    check_key,
    check_low_s,
    low_s_der,
)

__all__ = [
    "Algorithm",
    "NodeKey",
    "algorithm_of",
    "as_utc",
    "canonical_json",
    "certificates_from_pem",
    "check_signature",
    "format_utc",
    "parse_utc",
    "verify_signature",
]


class Algorithm(StrEnum):
    """Signature algorithms a node key signs with (JOSE names, for familiarity only)."""

    #: ECDSA P-256 with SHA-256, signature in DER form (not JOSE's raw r||s)
    ES256 = "ES256"
    #: RSA PKCS#1 v1.5 with SHA-256
    RS256 = "RS256"

    @classmethod
    def _missing_(cls, value: object) -> Algorithm:
        raise UnsupportedAlgorithm(
            f"signature algorithm {value!r} is not supported (expected ES256 or RS256)",
            detail={"alg": str(value)},
        )


def canonical_json(value: Any) -> bytes:
    """The canonical form of a JSON value: sorted keys, no spaces, UTF-8, not ASCII-escaped.

    Usage: ``hashlib.sha256(canonical_json(entry)).hexdigest()``.

    Equal to ``json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``
    encoded as UTF-8. For the values the gateway signs (strings, integers, booleans, null,
    arrays and objects; never floats) this is also RFC 8785 (JCS) output, except that keys with
    characters outside the Basic Multilingual Plane sort by code point rather than UTF-16 unit.
    """
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def as_utc(when: dt.datetime) -> dt.datetime:
    """``when`` in UTC; a naive time is taken as UTC (SQLite hands back times without zone).

    Usage: ``as_utc(row.at)``.
    """
    if when.tzinfo is None:
        return when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC)


def format_utc(when: dt.datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SS.ffffffZ``: the one time format signed by this node.

    Usage: ``format_utc(dt.datetime.now(dt.UTC))``. A naive time is taken as UTC.
    """
    return as_utc(when).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_utc(text: str) -> dt.datetime:
    """Parse an ISO 8601 time with a zone (as :func:`format_utc` writes it); ValueError else."""
    when = dt.datetime.fromisoformat(text)
    if when.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone")
    return when.astimezone(dt.UTC)


def certificates_from_pem(pem: str) -> list[x509.Certificate]:
    """Certificates in a PEM text (leaf first); :class:`CertificateMalformed` if there are none.

    The same few node certificates sign every hop record, receipt and notice: a text seen
    before gives back the same (immutable) certificate objects, whose extensions cryptography
    has already decoded.
    """
    return list(_certificates(pem))


@functools.lru_cache(maxsize=512)
def _certificates(pem: str) -> tuple[x509.Certificate, ...]:
    try:
        return tuple(x509.load_pem_x509_certificates(pem.encode("ascii")))
    except (ValueError, UnicodeEncodeError) as exc:
        raise CertificateMalformed(f"the embedded certificate is not readable PEM: {exc}") from None


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


@dataclass(frozen=True, slots=True)
class NodeKey:
    """The node's private key with its certificate and chain, loaded once.

    Usage: ``NodeKey.load(settings.node.key, settings.node.cert).sign(data)``.
    ``repr`` never shows the key.
    """

    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = field(repr=False)
    #: the node certificate (binds ``urn:gateway-node:<name>``)
    certificate: x509.Certificate
    #: intermediates between the certificate and a trust anchor (never a root)
    chain: tuple[x509.Certificate, ...] = ()

    def __post_init__(self) -> None:
        key = self.private_key
        try:
            check_key(key.public_key(), role="node key")
        except CertificateKeyWeak as exc:
            raise ValueError(exc.message) from None
        if isinstance(key, ec.EllipticCurvePrivateKey) and not isinstance(key.curve, ec.SECP256R1):
            # The policy admits P-384 certificates; node signatures are ES256 only.
            raise ValueError("only the P-256 curve is supported for ECDSA node keys")
        if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise ValueError("a node key is ECDSA P-256 or RSA (2048 bits or more)")

    def __repr__(self) -> str:
        return f"NodeKey(alg={self.algorithm.value}, subject={self.subject!r})"

    @classmethod
    def load(
        cls,
        key_path: Path,
        cert_path: Path,
        chain_paths: Sequence[Path] = (),
        *,
        password: bytes | None = None,
    ) -> NodeKey:
        """Load a PEM private key and its PEM certificate file (leaf first, chain after it).

        Usage: ``NodeKey.load(Path("h49-hub.key.pem"), Path("h49-hub.cert.pem"))``.
        Raises :class:`gateway.errors.UsageError` naming the file that cannot be used.
        """
        from gateway.trust.signing import SigningKey  # the same checks as agency signing keys

        loaded = SigningKey.load(key_path, cert_path, chain_paths, password=password)
        return cls(
            private_key=loaded.private_key, certificate=loaded.certificate, chain=loaded.chain
        )

    @property
    def algorithm(self) -> Algorithm:
        """``ES256`` for an ECDSA key, ``RS256`` for an RSA key."""
        if isinstance(self.private_key, rsa.RSAPrivateKey):
            return Algorithm.RS256
        return Algorithm.ES256

    @property
    def subject(self) -> str:
        """The certificate subject (RFC 4514)."""
        return rfc4514_name(self.certificate.subject)

    @property
    def certificate_pem(self) -> str:
        """The certificate followed by its chain, PEM: what a verifier needs to build a path."""
        return "".join(_pem(cert) for cert in (self.certificate, *self.chain))

    def sign(self, data: bytes) -> bytes:
        """Sign ``data``: ECDSA-SHA256 (DER, low-S) or RSA PKCS#1 v1.5 SHA-256."""
        key = self.private_key
        if isinstance(key, rsa.RSAPrivateKey):
            return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        # cryptography returns high-S half of the time; verifiers accept low-S only.
        return low_s_der(key.curve, key.sign(data, ec.ECDSA(hashes.SHA256())))


@functools.lru_cache(maxsize=512)
def algorithm_of(cert: x509.Certificate) -> Algorithm | None:
    """The algorithm a certificate's key verifies, or None for keys a node may not use.

    None for every key :mod:`gateway.trust.keypolicy` refuses, and for admitted keys no node
    signature format uses (P-384).
    """
    if certificate_key_facts(cert).refusal is not None:
        return None
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return Algorithm.RS256
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return Algorithm.ES256
    return None


def check_signature(cert: x509.Certificate, data: bytes, signature: bytes) -> None:
    """Raise unless ``signature`` over ``data`` verifies under the certificate's key.

    Usage: ``check_signature(cert, canonical_json(fields), base64.b64decode(sig))``.
    Raises :class:`~gateway.errors.CertificateKeyWeak` for a key outside the policy
    (:class:`CertificateMalformed` for one that cannot be read),
    :class:`UnsupportedAlgorithm` for an admitted key no node format uses (P-384),
    :class:`SignatureValueMismatch` for a wrong signature (or one not in DER), and
    :class:`~gateway.errors.SignatureNonCanonical` for a valid ECDSA signature in its
    high-S form. This checks the signature only: whether to believe the certificate is
    :meth:`gateway.trust.store.TrustStore.verify_chain`'s question.
    """
    check_certificate_key(cert, role="node")
    key = cert.public_key()
    facts = certificate_key_facts(cert)
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
            return
        if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
            key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
            # verify() accepted strict DER, so this decodes; checked after, so the code
            # means "valid, but in its malleable form".
            check_low_s(key.curve, utils.decode_dss_signature(signature)[1])
            return
    except InvalidSignature:
        raise SignatureValueMismatch(
            "the signature does not verify under the certificate's key"
        ) from None
    raise UnsupportedAlgorithm(
        f"node signatures are ES256 or RS256; a {facts.label()} key makes neither",
        detail=facts.detail(),
    )


def verify_signature(cert: x509.Certificate, data: bytes, signature: bytes) -> bool:
    """True when ``signature`` over ``data`` verifies under the certificate's public key.

    Usage: ``verify_signature(cert, canonical_json(fields), base64.b64decode(sig))``.
    False for a wrong signature, a high-S ECDSA signature and for any key other than ECDSA
    P-256 or RSA admitted by :mod:`gateway.trust.keypolicy`; :func:`check_signature` says which.
    This checks the signature only: whether to believe the certificate is
    :meth:`gateway.trust.store.TrustStore.verify_chain`'s question.
    """
    try:
        check_signature(cert, data, signature)
    except (SignatureError, CertificateKeyWeak, CertificateMalformed):
        return False
    return True
