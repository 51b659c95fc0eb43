"""The signer key policy: which public keys may sign, and the one accepted form of ECDSA values.

One place decides, for every certificate the gateway believes: the sender of a document, the
CAs above it, the node that signs hop records, receipts and audit checkpoints, and the client
certificate of a TLS caller (direct or forwarded by a trusted proxy).
:meth:`gateway.trust.store.TrustStore.verify_chain` calls :func:`check_chain_keys` on every chain it
builds, so every path that trusts a certificate goes through it; :mod:`gateway.trust.dsig` and
:mod:`gateway.evidence.nodekey` check the signing key again before doing any arithmetic with it.

Admitted keys (anything else raises :class:`~gateway.errors.CertificateKeyWeak`,
``CERT_KEY_WEAK``, with ``detail`` ``{key_type, bits | curve, role, subject, reason}``):

========  ===================================================================================
RSA       modulus 2048 .. 16384 bits; public exponent odd, >= 3 and at most 256 bits
EC        P-256 (secp256r1) or P-384 (secp384r1)
========  ===================================================================================

Why each bound: RSA under 2048 bits is below the trust policy's floor and the CA/Browser
Forum's; above 16384 bits OpenSSL refuses to verify anyway, and a huge modulus or exponent only
buys a caller CPU time on our side (the CA/B Forum Baseline Requirements bound the exponent
the same way). P-521, secp256k1, Brainpool, DSA, Ed25519 and Ed448 are refused: none is in
the trust policy (DESIGN.md section 4), no signature format of the gateway uses them, and
every extra kind is one more verifier path to keep correct.

ECDSA values are accepted in **low-S** form only (``s <= n/2``, ``n`` the curve order): for
every valid ``(r, s)`` the pair ``(r, n - s)`` is valid too, so without this rule anyone can
turn a signature into a second, different, valid signature of the same bytes (malleability:
a different SignatureValue, hop record digest or receipt for the same act). A valid high-S
value is refused with :class:`~gateway.errors.SignatureNonCanonical`
(``SIGNATURE_NON_CANONICAL``); the gateway's own signers always write low-S
(:func:`low_s_raw`, :func:`low_s_der`).

Usage::

    check_certificate_key(leaf)             # CertificateKeyWeak, or None
    check_chain_keys(chain)                 # every certificate, leaf to anchor
    check_low_s(key.curve, s)               # SignatureNonCanonical, or None
    value = low_s_raw(key.curve, value)     # XMLDSig r||s, normalised
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa, utils
from cryptography.x509.oid import PublicKeyAlgorithmOID

from gateway.errors import CertificateKeyWeak, CertificateMalformed, SignatureNonCanonical
from gateway.trust.binding import rfc4514_name

__all__ = [
    "ADMITTED_CURVES",
    "RSA_MAX_BITS",
    "RSA_MIN_BITS",
    "KeyFacts",
    "KeyType",
    "certificate_key_facts",
    "check_certificate_key",
    "check_chain_keys",
    "check_key",
    "check_low_s",
    "curve_order",
    "is_low_s",
    "key_facts",
    "low_s_der",
    "low_s_raw",
]

#: the smallest RSA modulus admitted, in bits
RSA_MIN_BITS: Final = 2048
#: the largest RSA modulus admitted, in bits (OpenSSL's own verification limit)
RSA_MAX_BITS: Final = 16384
#: the largest RSA public exponent admitted, in bits (CA/B Forum BR 6.1.6: below 2**256)
_RSA_MAX_EXPONENT_BITS: Final = 256

#: admitted curves by name, with their group order ``n`` (SEC 2 / FIPS 186-4 constants; the
#: unit tests prove each one by flipping a real signature's ``s`` to ``n - s``)
ADMITTED_CURVES: Final[Mapping[str, int]] = MappingProxyType(
    {
        "secp256r1": 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
        "secp384r1": int(
            "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AEC"
            "EC196ACCC52973",
            16,
        ),
    }
)
_CURVE_LABELS: Final = {"secp256r1": "P-256", "secp384r1": "P-384"}


class KeyType(StrEnum):
    """The kind of a public key, as error details and reports name it."""

    RSA = "RSA"
    EC = "EC"
    DSA = "DSA"
    ED25519 = "Ed25519"
    ED448 = "Ed448"
    #: anything else cryptography can load (X25519, X448: key agreement, never signing)
    OTHER = "other"
    #: a public key cryptography cannot load (a point off its curve, an unknown curve)
    UNREADABLE = "unreadable"


@dataclass(frozen=True, kw_only=True, slots=True)
class KeyFacts:
    """What the policy looks at in a public key. Usage: ``key_facts(cert.public_key())``."""

    #: the kind of key
    key_type: KeyType
    #: modulus size (RSA, DSA) or field size (EC); None for the Edwards curves
    bits: int | None = None
    #: the curve name as cryptography spells it (``secp256r1``), EC only
    curve: str | None = None
    #: why the policy refuses the key; None when it is admitted
    refusal: str | None = None

    def detail(self) -> dict[str, Any]:
        """``{key_type, bits | curve}`` for an error's detail."""
        out: dict[str, Any] = {"key_type": self.key_type.value}
        if self.curve is not None:
            out["curve"] = self.curve
        if self.bits is not None:
            out["bits"] = self.bits
        return out

    def label(self) -> str:
        """``RSA-1024``, ``EC secp521r1``, ``Ed25519``: for messages."""
        if self.curve is not None:
            return f"EC {self.curve}"
        if self.bits is not None:
            return f"{self.key_type.value}-{self.bits}"
        return self.key_type.value


def key_facts(key: object) -> KeyFacts:
    """Describe a public key and say whether the policy admits it (``refusal`` is None).

    Usage: ``key_facts(cert.public_key()).refusal``. Never raises.
    """
    if isinstance(key, rsa.RSAPublicKey):
        bits = key.key_size
        exponent = key.public_numbers().e
        refusal = None
        if bits < RSA_MIN_BITS:
            refusal = f"RSA keys need at least {RSA_MIN_BITS} bits"
        elif bits > RSA_MAX_BITS:
            refusal = f"RSA keys of more than {RSA_MAX_BITS} bits are not admitted"
        elif exponent < 3 or exponent % 2 == 0 or exponent.bit_length() > _RSA_MAX_EXPONENT_BITS:
            refusal = "the RSA public exponent must be odd, at least 3 and below 2**256"
        return KeyFacts(key_type=KeyType.RSA, bits=bits, refusal=refusal)
    if isinstance(key, ec.EllipticCurvePublicKey):
        name = key.curve.name
        refusal = None
        if name not in ADMITTED_CURVES:
            refusal = "EC keys must be on P-256 or P-384"
        return KeyFacts(key_type=KeyType.EC, bits=key.curve.key_size, curve=name, refusal=refusal)
    if type(key).__name__ == "DSAPublicKey":
        # By name: touching ``dsa.DSAPublicKey`` warns (DSA is deprecated in cryptography 51),
        # and a warning per refused certificate would be noise (an error under our tests).
        size = getattr(key, "key_size", None)
        return KeyFacts(
            key_type=KeyType.DSA,
            bits=size if isinstance(size, int) else None,
            refusal="DSA keys are refused",
        )
    if isinstance(key, ed25519.Ed25519PublicKey):
        return KeyFacts(key_type=KeyType.ED25519, refusal="Ed25519 keys are refused")
    if isinstance(key, ed448.Ed448PublicKey):
        return KeyFacts(key_type=KeyType.ED448, refusal="Ed448 keys are refused")
    return KeyFacts(key_type=KeyType.OTHER, refusal="only RSA and EC (P-256, P-384) keys sign")


def check_key(key: object, *, role: str = "signer", subject: str | None = None) -> None:
    """Raise :class:`CertificateKeyWeak` unless the policy admits ``key``.

    Usage: ``check_key(private_key.public_key(), role="node key")``. ``role`` and ``subject``
    only go into the message and detail.
    """
    facts = key_facts(key)
    if facts.refusal is None:
        return
    detail = facts.detail()
    detail.update(role=role, reason=facts.refusal)
    whose = f"the {role}"
    if subject is not None:
        detail["subject"] = subject
        whose += f" {subject}"
    raise CertificateKeyWeak(
        f"{whose} has a {facts.label()} key: {facts.refusal}",
        detail=detail,
    )


def check_certificate_key(cert: x509.Certificate, *, role: str = "signer") -> None:
    """Raise :class:`CertificateKeyWeak` unless the certificate's public key is admitted.

    Usage: ``check_certificate_key(leaf)`` before using the key for anything. A key that
    cannot be read at all raises :class:`~gateway.errors.CertificateMalformed` instead.
    """
    facts = certificate_key_facts(cert)
    if facts.refusal is None:
        return
    subject = rfc4514_name(cert.subject)
    if facts.key_type is KeyType.UNREADABLE:
        raise CertificateMalformed(
            f"the public key of the {role} {subject} cannot be read",
            detail={"role": role, "subject": subject},
        )
    detail = facts.detail()
    detail.update(role=role, reason=facts.refusal, subject=subject)
    raise CertificateKeyWeak(
        f"the {role} {subject} has a {facts.label()} key: {facts.refusal}",
        detail=detail,
    )


@functools.lru_cache(maxsize=1024)  # the same few certificates sign most packages
def certificate_key_facts(cert: x509.Certificate) -> KeyFacts:
    """:func:`key_facts` of a certificate's public key, read once per certificate.

    Usage: ``certificate_key_facts(leaf).refusal``. Never raises.
    """
    try:
        if cert.public_key_algorithm_oid == PublicKeyAlgorithmOID.DSA:
            # Not loaded: cryptography warns on every DSA key it loads (deprecated in 51).
            return KeyFacts(key_type=KeyType.DSA, refusal="DSA keys are refused")
        key: object = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):  # a key cryptography cannot load at all
        return KeyFacts(key_type=KeyType.UNREADABLE, refusal="the public key cannot be read")
    return key_facts(key)


def check_chain_keys(chain: Sequence[x509.Certificate]) -> None:
    """Apply the key policy to every certificate of a chain (leaf first, anchor last).

    Usage: ``check_chain_keys(store.verify_chain(leaf, extra, at=t))`` (``verify_chain`` does
    it already). Intermediates and the anchor are held to the same policy as the leaf: a
    chain is only as strong as its weakest key, and a CA key that can be forged can issue any
    leaf. ``detail["role"]`` says which certificate failed.
    """
    last = len(chain) - 1
    for position, cert in enumerate(chain):
        if position == 0:
            role = "signer"
        elif position == last:
            role = "trust anchor"
        else:
            role = "intermediate CA"
        check_certificate_key(cert, role=role)


# --- ECDSA low-S -----------------------------------------------------------------------------


def curve_order(curve: ec.EllipticCurve) -> int:
    """The group order ``n`` of an admitted curve; :class:`CertificateKeyWeak` for others.

    Usage: ``n = curve_order(key.curve)``.
    """
    order = ADMITTED_CURVES.get(curve.name)
    if order is None:
        raise CertificateKeyWeak(
            f"EC keys must be on P-256 or P-384, not {curve.name}",
            detail={"key_type": KeyType.EC.value, "curve": curve.name, "bits": curve.key_size},
        )
    return order


def is_low_s(curve: ec.EllipticCurve, s: int) -> bool:
    """True when ``s`` is in the lower half of the curve order (the accepted form)."""
    return s <= curve_order(curve) // 2


def check_low_s(curve: ec.EllipticCurve, s: int) -> None:
    """Raise :class:`SignatureNonCanonical` when an ECDSA ``s`` is in its high form.

    Usage: after the signature verified, ``check_low_s(key.curve, s)``.
    """
    if not is_low_s(curve, s):
        label = _CURVE_LABELS.get(curve.name, curve.name)
        raise SignatureNonCanonical(
            f"the ECDSA signature ({label}) is in its high-S form (s > n/2): only the low-S "
            "form is accepted, so that a signature cannot be altered into a second valid one",
            detail={"curve": curve.name, "form": "high-S"},
        )


def _low(curve: ec.EllipticCurve, s: int) -> int:
    order = curve_order(curve)
    return order - s if s > order // 2 else s


def low_s_der(curve: ec.EllipticCurve, signature: bytes) -> bytes:
    """A DER ECDSA signature (what ``cryptography`` returns) rewritten to low-S form.

    Usage: ``low_s_der(key.curve, key.sign(data, ec.ECDSA(hashes.SHA256())))``. ``(r, n - s)``
    verifies exactly when ``(r, s)`` does, so the result is still a valid signature.
    """
    r, s = utils.decode_dss_signature(signature)
    low = _low(curve, s)
    return signature if low == s else utils.encode_dss_signature(r, low)


def low_s_raw(curve: ec.EllipticCurve, value: bytes) -> bytes:
    """An XMLDSig ECDSA SignatureValue (``r || s``, fixed width) rewritten to low-S form.

    Usage: ``low_s_raw(key.curve, base64.b64decode(signature_value))``. A value that is not
    ``2 * field size`` bytes is returned unchanged (the verifier refuses it anyway).
    """
    size = (curve.key_size + 7) // 8
    if len(value) != 2 * size:
        return value
    s = int.from_bytes(value[size:], "big")
    low = _low(curve, s)
    return value if low == s else value[:size] + low.to_bytes(size, "big")
