"""Signed ingest receipts: what a node answers once a package is durably stored.

A receipt is a small JSON object the receiving node signs with its node key. The sender (or an
auditor, years later) checks it offline: the signature against the embedded certificate, the
certificate against the deployment's trust anchors at ``received_at``, and the certificate's
node name against ``receipt.node``::

    {
      "receipt": {"v": 1, "node": "h49-hub", "document": "<gateway id>",
                  "sender": "000.00.00.G22", "document_id": "123/QD-UBND",
                  "sha256": "<hex of the stored bytes>", "size": 48213,
                  "received_at": "2024-05-02T03:04:05.123456Z",
                  "received_from": "agency:000.00.00.G22"},
      "alg": "ES256",
      "signature": "<base64 of the signature over canonical_json(receipt)>",
      "certificate": "<PEM: the node certificate, then its intermediates>"
    }

The signature covers exactly ``canonical_json(receipt["receipt"])`` (sorted keys, no spaces,
UTF-8). ``ES256`` is ECDSA P-256 with SHA-256, the signature in DER form (not JOSE's raw
``r||s``) and in its low-S form (the high-S twin is refused: :mod:`gateway.trust.keypolicy`);
``RS256`` is RSA PKCS#1 v1.5 with SHA-256. The format borrows JOSE's algorithm names but is
not JWS: JOSE libraries are not among the gateway's dependencies, and a 30-line
format on ``cryptography`` is easier to audit. A receipt is a sealed object
(:mod:`gateway.evidence.sealed`, shared with hop records and notices) labelled ``receipt``.

Usage::

    receipt = make_receipt(node_key, node="h49-hub", document=doc_id, sender="000.00.00.G22",
                           document_id="123/QD-UBND", sha256=digest, size=len(data),
                           received_at=now, received_from="agency:000.00.00.G22")
    fields = verify_receipt(receipt, trust=store)   # raises if anything does not hold
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any, Final

from gateway.errors import ConfigError, SignatureMalformed, SignerMismatch, SignerUnbound
from gateway.evidence.nodekey import NodeKey, format_utc, parse_utc
from gateway.evidence.sealed import SEALED_KEYS, open_sealed, seal
from gateway.trust.binding import node_name_of, rfc4514_name
from gateway.trust.store import TrustStore

__all__ = ["RECEIPT_FIELDS", "RECEIPT_VERSION", "make_receipt", "verify_receipt"]

#: the receipt format version (``receipt.v``)
RECEIPT_VERSION: Final = 1
#: the signed fields of a version-1 receipt
RECEIPT_FIELDS: Final = frozenset(
    {
        "v",
        "node",
        "document",
        "sender",
        "document_id",
        "sha256",
        "size",
        "received_at",
        "received_from",
    }
)
_ENVELOPE_KEYS: Final = SEALED_KEYS | {"receipt"}
_SHA256_HEX: Final = re.compile(r"[0-9a-f]{64}")
_STRING_FIELDS: Final = ("node", "document", "sender", "received_from")


def make_receipt(
    key: NodeKey,
    *,
    node: str,
    document: str,
    sender: str,
    document_id: str | None,
    sha256: str,
    size: int,
    received_at: dt.datetime | str,
    received_from: str,
) -> dict[str, Any]:
    """Sign a receipt for a package this node has durably stored.

    Usage: ``make_receipt(key, node="h49-hub", document=gid, ..., received_at=now)``.
    ``received_at`` (a datetime, or ISO 8601 text with a zone) is written as UTC with
    microseconds, ``YYYY-MM-DDTHH:MM:SS.ffffffZ``; a naive datetime is taken as UTC.
    Raises :class:`ConfigError` when the key's certificate does not bind ``node``, and
    :class:`ValueError` for a field that is not of its form.

    .. warning:: Hand a receipt out only after the transaction that stores the package has
       committed: a receipt promises the bytes are durable.
    """
    if isinstance(received_at, str):
        received_at = parse_utc(received_at)
    bound = node_name_of(key.certificate)
    if bound != node:
        raise ConfigError(
            f"the node certificate ({key.subject}) binds node {bound!r}, not {node!r}",
            detail={"key": "node.cert", "node": node, "certificate_node": bound},
        )
    fields: dict[str, Any] = {
        "v": RECEIPT_VERSION,
        "node": node,
        "document": document,
        "sender": sender,
        "document_id": document_id,
        "sha256": sha256,
        "size": size,
        "received_at": format_utc(received_at),
        "received_from": received_from,
    }
    problem = _field_problem(fields)
    if problem:
        raise ValueError(f"cannot sign receipt: {problem}")
    return seal(key, "receipt", fields)


def verify_receipt(receipt: Mapping[str, Any], trust: TrustStore | None = None) -> dict[str, Any]:
    """Check a receipt and return its signed fields.

    Usage: ``fields = verify_receipt(json.loads(text), trust=store)``.

    Checks, in order: the shape of the receipt (:class:`SignatureMalformed`), the algorithm
    (:class:`gateway.errors.UnsupportedAlgorithm`), the certificate
    (:class:`gateway.errors.CertificateMalformed`), its key against :mod:`gateway.trust.keypolicy`
    (:class:`gateway.errors.CertificateKeyWeak`), the signature over the canonical fields
    (:class:`SignatureValueMismatch`; :class:`gateway.errors.SignatureNonCanonical` for a
    valid ECDSA signature in its high-S form); with ``trust``, that the certificate chains to
    an anchor and is valid at ``received_at`` (:class:`gateway.errors.CertificateUntrusted`,
    :class:`gateway.errors.CertificateNotValidAtSigning`); finally that the certificate binds
    the node named in the receipt (:class:`SignerUnbound`, :class:`SignerMismatch`).

    .. warning:: Without ``trust`` this proves only that the holder of the embedded
       certificate's key signed the receipt; anyone can make a certificate. Pass the
       deployment's trust store whenever the answer matters.
    """
    if not isinstance(receipt, Mapping) or set(receipt) != _ENVELOPE_KEYS:
        keys = sorted(receipt) if isinstance(receipt, Mapping) else type(receipt).__name__
        raise SignatureMalformed(
            f"a receipt has exactly the keys {sorted(_ENVELOPE_KEYS)}, not {keys}",
            detail={"keys": keys},
        )
    fields = receipt["receipt"]
    if not isinstance(fields, Mapping):
        raise SignatureMalformed("receipt.receipt must be a JSON object")
    if fields.get("v") != RECEIPT_VERSION:
        raise SignatureMalformed(
            f"unsupported receipt version {fields.get('v')!r} (this gateway reads version 1)"
        )
    problem = _field_problem(fields)
    if problem:
        raise SignatureMalformed(f"the receipt's fields are not well formed: {problem}")
    opened = open_sealed(receipt, "receipt")
    if trust is not None:
        # Path and validity at received_at only: receipts never checked revocation, and a
        # receipt's codes are API (docs/audit.md).
        trust.verify_chain(opened.leaf, opened.extra, at=parse_utc(fields["received_at"]))
    bound = opened.node
    if bound is None:
        raise SignerUnbound(
            "the receipt's certificate binds no node name (urn:gateway-node:...): it is not a "
            "node certificate",
            detail={"subject": rfc4514_name(opened.leaf.subject)},
        )
    if bound != fields["node"]:
        raise SignerMismatch(
            f"the receipt names node {fields['node']!r} but was signed by node {bound!r}",
            detail={"node": fields["node"], "certificate_node": bound},
        )
    return dict(fields)


def _field_problem(fields: Mapping[str, Any]) -> str | None:
    """Why ``fields`` is not a well-formed version-1 receipt, or None."""
    if set(fields) != RECEIPT_FIELDS:
        missing = sorted(RECEIPT_FIELDS - set(fields))
        extra = sorted(set(fields) - RECEIPT_FIELDS)
        return f"missing {missing}, unexpected {extra}"
    for name in _STRING_FIELDS:
        if not isinstance(fields[name], str) or not fields[name]:
            return f"{name} must be a non-empty string"
    if fields["document_id"] is not None and not isinstance(fields["document_id"], str):
        return "document_id must be a string or null"
    if not isinstance(fields["sha256"], str) or not _SHA256_HEX.fullmatch(fields["sha256"]):
        return "sha256 must be 64 lower-case hex digits"
    size = fields["size"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        return "size must be a non-negative integer"
    try:
        parse_utc(fields["received_at"])
    except (TypeError, ValueError):
        return "received_at must be an ISO 8601 time with a zone"
    return None
