"""Sealed objects: small JSON objects a node signs with its node key, carrying their certificate.

Receipts, hop records and notices share one wire format; only the label differs::

    {
      "<label>": {...the signed fields...},
      "alg": "ES256",
      "signature": "<base64 of the signature over canonical_json(fields)>",
      "certificate": "<PEM: the node certificate, then its intermediates>"
    }

``ES256`` is ECDSA P-256 with SHA-256, the signature in DER form and low-S (the high-S twin is
refused: :mod:`gateway.trust.keypolicy`); ``RS256`` is RSA PKCS#1 v1.5 with SHA-256. Audit
checkpoints sign the same way (:func:`sign_fields`) but keep the signature and certificate in
table columns (:mod:`gateway.evidence.audit`).

Opening a sealed object checks, in order: its shape (:class:`SignatureMalformed`), the
algorithm (:class:`UnsupportedAlgorithm`), the signature's base64 and the certificate's PEM
(:class:`SignatureMalformed`, :class:`CertificateMalformed`), the certificate's key against
the key policy (:class:`CertificateKeyWeak`), that ``alg`` is what that key signs
(:class:`SignatureMalformed`), then the signature (:class:`SignatureValueMismatch`;
:class:`SignatureNonCanonical` for a valid ECDSA value in its high-S form). Whether to believe
the certificate (:func:`trusted_chain`) and which node it binds (:attr:`Opened.node`) are the
caller's next questions: receipts and hop records answer a fault there with different codes.

Usage::

    sealed = seal(node_key, "receipt", fields)
    opened = open_sealed(json.loads(text), "receipt")      # raises if the signature fails
    trusted_chain(store, opened.leaf, opened.extra, at)    # then: is the node believed?
    opened.node == fields["node"]

.. warning:: :func:`open_sealed` proves only that the holder of the embedded certificate's key
   signed the fields; anyone can make a certificate. Check the chain before relying on it.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from cryptography import x509

from gateway.errors import SignatureMalformed, SignatureValueMismatch
from gateway.evidence.nodekey import (
    Algorithm,
    NodeKey,
    algorithm_of,
    canonical_json,
    certificates_from_pem,
    check_signature,
)
from gateway.trust.binding import node_name_of, rfc4514_name
from gateway.trust.keypolicy import check_certificate_key
from gateway.trust.store import TrustStore

__all__ = [
    "SEALED_KEYS",
    "Opened",
    "decode_signature",
    "open_sealed",
    "seal",
    "sign_fields",
    "trusted_chain",
]

#: the keys of a sealed object besides its label
SEALED_KEYS: Final = frozenset({"alg", "signature", "certificate"})


def sign_fields(key: NodeKey, fields: Mapping[str, Any]) -> str:
    """The base64 signature of ``key`` over ``canonical_json(fields)``.

    Usage: ``row["signature"] = sign_fields(node_key, {"node": ..., "seq": 7, ...})``.
    """
    return base64.b64encode(key.sign(canonical_json(dict(fields)))).decode("ascii")


def seal(key: NodeKey, label: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """``{label: fields, alg, signature, certificate}``, signed over ``canonical_json(fields)``.

    Usage: ``seal(node_key, "hop", {"v": 1, ...})``.
    """
    return {
        label: dict(fields),
        "alg": key.algorithm.value,
        "signature": sign_fields(key, fields),
        "certificate": key.certificate_pem,
    }


@dataclass(frozen=True, slots=True)
class Opened:
    """A sealed object whose signature verified under the certificate it carries."""

    #: the signed fields
    fields: dict[str, Any]
    alg: Algorithm
    #: the certificate whose key made the signature
    leaf: x509.Certificate
    #: the certificates after it (intermediates), for :func:`trusted_chain`
    extra: list[x509.Certificate]

    @property
    def node(self) -> str | None:
        """The node name the certificate binds (``urn:gateway-node:``), or None.

        Raises :class:`gateway.errors.SignerUnbound` for a certificate binding two names.
        """
        return node_name_of(self.leaf)


def decode_signature(text: Any, label: str) -> bytes:
    """The bytes of a base64 signature; :class:`SignatureMalformed` if it is not base64 text.

    Usage: ``decode_signature(row.signature, "checkpoint")``.
    """
    try:
        if not isinstance(text, str):
            raise ValueError("not a string")
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, binascii.Error) as exc:  # UnicodeEncodeError is a ValueError
        raise SignatureMalformed(f"the {label}'s signature is not base64: {exc}") from None


def open_sealed(sealed: Any, label: str) -> Opened:
    """Check a sealed object's shape, key and signature; return what it signed.

    Usage: ``opened = open_sealed(receipt, "receipt")``; then check ``opened.leaf``'s chain
    and ``opened.node``. Raises in the order the module docstring gives.
    """
    if not isinstance(sealed, Mapping) or set(sealed) != {label, *SEALED_KEYS}:
        keys = sorted(sealed) if isinstance(sealed, Mapping) else type(sealed).__name__
        raise SignatureMalformed(
            f"a {label} has exactly the keys {sorted({label, *SEALED_KEYS})}, not {keys}",
            detail={"keys": keys},
        )
    fields = sealed[label]
    if not isinstance(fields, Mapping):
        raise SignatureMalformed(f"{label}.{label} must be a JSON object")
    alg = Algorithm(sealed["alg"])
    signature = decode_signature(sealed["signature"], label)
    pem = sealed["certificate"]
    if not isinstance(pem, str):
        raise SignatureMalformed(f"the {label}'s certificate must be PEM text")
    leaf, *extra = certificates_from_pem(pem)
    # Key policy before any arithmetic with the key, and the algorithm before the signature:
    # a signature is only ever checked with the algorithm its signer declared.
    check_certificate_key(leaf, role="node")
    if algorithm_of(leaf) is not alg:
        raise SignatureMalformed(
            f"the {label} says {alg.value} but its certificate's key does not verify {alg.value}"
            " (or is not ECDSA P-256 / RSA >= 2048)",
            detail={"alg": alg.value, "subject": rfc4514_name(leaf.subject)},
        )
    try:
        check_signature(leaf, canonical_json(dict(fields)), signature)
    except SignatureValueMismatch:
        raise SignatureValueMismatch(
            f"the {label}'s signature does not match its fields under the embedded certificate"
            f" (the {label} was changed after signing, or signed by another key)",
            detail={"subject": rfc4514_name(leaf.subject)},
        ) from None
    return Opened(fields=dict(fields), alg=alg, leaf=leaf, extra=extra)


#: (store, leaf, extra certificates) -> verified chain; path building costs ~1.7 ms and the
#: same few node certificates sign every hop
_CHAINS: OrderedDict[tuple[Any, ...], list[Any]] = OrderedDict()
_CHAINS_LOCK = threading.Lock()


def trusted_chain(
    trust: TrustStore, leaf: x509.Certificate, extra: Sequence[x509.Certificate], at: dt.datetime
) -> list[x509.Certificate]:
    """The verified chain of a node certificate at ``at``, not revoked (as of the CRLs now).

    Usage: ``trusted_chain(store, opened.leaf, opened.extra, at=signed_at)``.
    Raises a :class:`gateway.errors.TrustError`. Revocation is checked on every call (CRLs
    are reloaded without a restart); path building is cached per trust store.
    """
    key = (id(trust), leaf, *extra)
    with _CHAINS_LOCK:
        hit = _CHAINS.get(key)
        if hit is not None:
            _CHAINS.move_to_end(key)
    store: Any = hit[0] if hit is not None else None
    chain: list[x509.Certificate] = hit[1:] if hit is not None else []
    if store is not trust or not all(
        c.not_valid_before_utc <= at <= c.not_valid_after_utc for c in chain
    ):
        chain = trust.verify_chain(leaf, extra, at=at)
        with _CHAINS_LOCK:
            _CHAINS[key] = [trust, *chain]
            while len(_CHAINS) > 256:
                _CHAINS.popitem(last=False)
    trust.check_revocation(chain, at=at)
    return chain
