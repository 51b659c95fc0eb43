"""Hop records and failure notices: small JSON objects a node signs with its node key.

A node that forwards a package signs a **hop record**; the chain of hop records (each naming the
digest of the one before) and the receipts the receiving nodes signed are the package's
provable path. An auditor rechecks them offline with :func:`verify_hops`::

    {
      "hop": {"v": 1, "kind": "document", "sender": "000.01.01.H49",
              "document_id": "000.01.01.H49,2026/11/23,12/QD", "sha256": "<hex>", "size": 48213,
              "from": "commune-x1", "to": "district-hl", "recipients": ["000.00.00.G12"],
              "at": "2026-11-23T03:04:05.123456Z", "prev": null},
      "alg": "ES256",
      "signature": "<base64 over canonical_json(hop)>",
      "certificate": "<PEM: the forwarding node's certificate, then its intermediates>"
    }

``prev`` is the SHA-256 (hex) of the previous hop record's :func:`hop_digest` (the whole
signed object, canonical JSON), ``null`` on the first hop. A **failure notice** has the same
shape with the key ``notice``: the node that delivered a package (or gave up on it) says so,
signed, and the notice travels back to the sender's node.

Usage::

    record = sign_hop(key, kind="document", sender=..., document_id=..., sha256=..., size=...,
                      from_node="commune-x1", to_node="district-hl", recipients=[...],
                      at=now, prev=None)
    verify_hops([record, ...], trust=store, sha256=digest, size=len(data), to_node="h49")
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, Final

from cryptography import x509

from gateway.errors import (
    CertificateMalformed,
    EnvelopeTampered,
    HopChainBroken,
    HopSignatureInvalid,
    RouteLoop,
    SignatureError,
    TrustError,
    UnsupportedAlgorithm,
)
from gateway.evidence.nodekey import (
    Algorithm,
    NodeKey,
    algorithm_of,
    canonical_json,
    certificates_from_pem,
    check_signature,
    format_utc,
    parse_utc,
)
from gateway.trust.binding import node_name_of
from gateway.trust.store import TrustStore

__all__ = [
    "HOP_VERSION",
    "MAX_HOPS",
    "NOTICE_EVENTS",
    "hop_digest",
    "open_sealed",
    "seal",
    "sign_hop",
    "sign_notice",
    "trusted_chain",
    "verify_hops",
    "verify_notice",
]

HOP_VERSION: Final = 1
#: a package that took more hops than this is refused (a tree of four tiers needs at most 6)
MAX_HOPS: Final = 16

_HOP_FIELDS: Final = frozenset(
    {"v", "kind", "sender", "document_id", "sha256", "size", "from", "to", "recipients", "at"}
    | {"prev"}
)
_NOTICE_FIELDS: Final = frozenset(
    {"v", "event", "kind", "sender", "document_id", "sha256", "recipients", "node", "code"}
    | {"message", "at", "failed_hop", "path", "items"}
)
#: what a notice reports
NOTICE_EVENTS: Final = ("delivered", "failed")
_SHA256_HEX: Final = re.compile(r"[0-9a-f]{64}")


def seal(key: NodeKey, label: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """``{label: fields, alg, signature, certificate}``, signed over ``canonical_json(fields)``."""
    signature = key.sign(canonical_json(dict(fields)))
    return {
        label: dict(fields),
        "alg": key.algorithm.value,
        "signature": base64.b64encode(signature).decode("ascii"),
        "certificate": key.certificate_pem,
    }


def open_sealed(
    sealed: Any, label: str, *, trust: TrustStore | None, at: dt.datetime, node: str
) -> dict[str, Any]:
    """Check a sealed object's signature, certificate chain (at ``at``) and node binding.

    Raises :class:`HopSignatureInvalid` for any fault (its detail says which).
    """
    if not isinstance(sealed, Mapping) or set(sealed) != {label, "alg", "signature", "certificate"}:
        raise HopSignatureInvalid(
            f"a signed {label} has exactly the keys {label}, alg, signature, certificate"
        )
    fields = sealed[label]
    if not isinstance(fields, Mapping):
        raise HopSignatureInvalid(f"{label} must be a JSON object")
    try:
        alg = Algorithm(sealed["alg"])
        pem = sealed["certificate"]
        text = sealed["signature"]
        if not isinstance(pem, str) or not isinstance(text, str):
            raise HopSignatureInvalid(f"the {label}'s certificate and signature must be text")
        signature = base64.b64decode(text.encode("ascii"), validate=True)
        leaf, *extra = certificates_from_pem(pem)
    except (UnsupportedAlgorithm, CertificateMalformed) as exc:
        raise HopSignatureInvalid(f"the {label} cannot be checked: {exc.message}") from None
    except (ValueError, binascii.Error, UnicodeEncodeError):
        raise HopSignatureInvalid(f"the {label}'s signature is not base64") from None
    try:
        # Key policy first (CERT_KEY_WEAK), then the signature, in low-S form for ECDSA
        # (SIGNATURE_NON_CANONICAL): the relay code stays RELAY_HOP_SIGNATURE_INVALID, as a
        # peer expects for any fault of a signed hop; ``detail["cause"]`` names the fault.
        check_signature(leaf, canonical_json(dict(fields)), signature)
    except (SignatureError, TrustError) as exc:
        raise HopSignatureInvalid(
            f"the {label}'s signature does not verify under its certificate: {exc.message}",
            detail={"node": node, "cause": exc.code},
        ) from None
    if algorithm_of(leaf) is not alg:
        raise HopSignatureInvalid(
            f"the {label} says {alg.value} but its certificate's key does not sign {alg.value}",
            detail={"node": node, "alg": alg.value},
        )
    if trust is not None:
        try:
            trusted_chain(trust, leaf, extra, at)
        except TrustError as exc:
            raise HopSignatureInvalid(
                f"the {label}'s node certificate is not trusted: {exc.message}",
                detail={"node": node, "cause": exc.code},
            ) from None
    bound = node_name_of(leaf)
    if bound != node:
        raise HopSignatureInvalid(
            f"the {label} says node {node!r} but its certificate binds {bound!r}",
            detail={"node": node, "certificate_node": bound},
        )
    return dict(fields)


#: (store, leaf, extra certificates) -> verified chain; path building costs ~1.7 ms and the
#: same few node certificates sign every hop
_CHAINS: OrderedDict[tuple[Any, ...], list[Any]] = OrderedDict()
_CHAINS_LOCK = threading.Lock()


def trusted_chain(
    trust: TrustStore, leaf: x509.Certificate, extra: Sequence[x509.Certificate], at: dt.datetime
) -> list[x509.Certificate]:
    """The verified chain of a node certificate at ``at``, not revoked (as of the CRLs now).

    Raises a :class:`TrustError`. Revocation is checked on every call (CRLs are reloaded
    without a restart); path building is cached per trust store.
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


def hop_digest(record: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a signed hop record's canonical JSON: the next record's ``prev``."""
    return hashlib.sha256(canonical_json(dict(record))).hexdigest()


def sign_hop(
    key: NodeKey,
    *,
    kind: str,
    sender: str,
    document_id: str | None,
    sha256: str,
    size: int,
    from_node: str,
    to_node: str,
    recipients: Sequence[str],
    at: dt.datetime,
    prev: str | None,
) -> dict[str, Any]:
    """A hop record for one package sent from ``from_node`` to ``to_node``, signed."""
    return seal(
        key,
        "hop",
        {
            "v": HOP_VERSION,
            "kind": kind,
            "sender": sender,
            "document_id": document_id,
            "sha256": sha256,
            "size": size,
            "from": from_node,
            "to": to_node,
            "recipients": list(recipients),
            "at": format_utc(at),
            "prev": prev,
        },
    )


def _hop_fields(record: Any, index: int) -> Mapping[str, Any]:
    fields = record.get("hop") if isinstance(record, Mapping) else None
    if not isinstance(fields, Mapping) or set(fields) != _HOP_FIELDS:
        raise HopChainBroken(f"hop {index + 1} is not a version-1 hop record")
    if fields["v"] != HOP_VERSION:
        raise HopChainBroken(f"hop {index + 1} has unsupported version {fields['v']!r}")
    for name in ("from", "to", "sender", "kind", "at"):
        if not isinstance(fields[name], str) or not fields[name]:
            raise HopChainBroken(f"hop {index + 1}: {name} must be a non-empty string")
    recipients = fields["recipients"]
    if (
        not isinstance(recipients, list)
        or not recipients
        or not all(isinstance(r, str) for r in recipients)
    ):
        raise HopChainBroken(f"hop {index + 1}: recipients must be a non-empty list of codes")
    if not isinstance(fields["sha256"], str) or not _SHA256_HEX.fullmatch(fields["sha256"]):
        raise HopChainBroken(f"hop {index + 1}: sha256 must be 64 lower-case hex digits")
    if isinstance(fields["size"], bool) or not isinstance(fields["size"], int):
        raise HopChainBroken(f"hop {index + 1}: size must be an integer")
    return fields


def verify_hops(
    records: Sequence[Any],
    *,
    trust: TrustStore | None,
    sha256: str,
    size: int,
    to_node: str | None = None,
    from_node: str | None = None,
) -> list[dict[str, Any]]:
    """Check a hop chain against the bytes it carries; return each hop's signed fields.

    Checks, for every record: its shape, its signature under the certificate it embeds, that the
    certificate chains to ``trust`` at the hop's time and binds the ``from`` node, that it
    describes exactly these bytes (:class:`EnvelopeTampered` otherwise), that it names the
    previous record's digest as ``prev`` and starts where the previous one ended
    (:class:`HopChainBroken`), and that no node appears twice (:class:`RouteLoop`). With
    ``to_node`` / ``from_node``: the last hop ends at ``to_node`` and was made by ``from_node``.
    """
    if not isinstance(records, Sequence) or not records:
        raise HopChainBroken("a relayed package carries at least one hop record")
    if len(records) > MAX_HOPS:
        raise RouteLoop(
            f"the package has taken {len(records)} hops (at most {MAX_HOPS}): a routing loop",
            detail={"hops": len(records)},
        )
    out: list[dict[str, Any]] = []
    prev: str | None = None
    visited: list[str] = []
    for index, record in enumerate(records):
        fields = _hop_fields(record, index)
        try:
            at = parse_utc(fields["at"])
        except ValueError:
            raise HopChainBroken(f"hop {index + 1}: at is not an ISO 8601 time") from None
        opened = open_sealed(record, "hop", trust=trust, at=at, node=fields["from"])
        if opened["sha256"] != sha256 or opened["size"] != size:
            raise EnvelopeTampered(
                f"hop {index + 1} describes other bytes than the package received (SHA-256 "
                f"{opened['sha256'][:16]}..., received {sha256[:16]}...)",
                detail={"hop": index + 1, "expected": opened["sha256"], "received": sha256},
            )
        if opened["prev"] != prev:
            raise HopChainBroken(
                f"hop {index + 1} does not follow hop {index} (prev digest differs)",
                detail={"hop": index + 1},
            )
        if out and out[-1]["to"] != opened["from"]:
            raise HopChainBroken(
                f"hop {index + 1} starts at {opened['from']} but hop {index} ended at "
                f"{out[-1]['to']}",
                detail={"hop": index + 1},
            )
        if out and out[-1]["kind"] != opened["kind"]:
            raise HopChainBroken(f"hop {index + 1} changes the package kind")
        if opened["from"] in visited:
            raise RouteLoop(
                f"the package passed through {opened['from']} twice",
                detail={"node": opened["from"]},
            )
        visited.append(opened["from"])
        prev = hop_digest(record)
        out.append(opened)
    last = out[-1]
    if to_node is not None:
        if last["to"] in visited or to_node in visited:
            raise RouteLoop(
                f"the package has already passed through {to_node}", detail={"node": to_node}
            )
        if last["to"] != to_node:
            raise HopChainBroken(
                f"the last hop is addressed to {last['to']}, not to this node ({to_node})",
                detail={"to": last["to"]},
            )
    if from_node is not None and last["from"] != from_node:
        raise HopChainBroken(
            f"the last hop was made by {last['from']} but {from_node} delivered it",
            detail={"from": last["from"], "caller": from_node},
        )
    return out


def sign_notice(
    key: NodeKey,
    *,
    event: str,
    kind: str,
    sender: str,
    document_id: str | None,
    sha256: str,
    recipients: Sequence[str],
    node: str,
    code: str,
    message: str,
    at: dt.datetime,
    failed_hop: str | None,
    path: Sequence[Sequence[str]] = (),
    items: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """A notice for the sender's node: ``node`` gave up delivering a package
    (``event="failed"``, with the stable ``code`` and ``message``), or delivered packages of
    ``sender`` to recipients it hosts (``event="delivered"``: one notice per relay batch, each
    package in ``items`` as ``{document_id, sha256, recipients, path}``, ``path`` the hops it
    took, ``[from, to, at]`` each)."""
    if event not in NOTICE_EVENTS:
        raise ValueError(f"a notice reports one of {NOTICE_EVENTS}, not {event!r}")
    return seal(
        key,
        "notice",
        {
            "v": HOP_VERSION,
            "event": event,
            "path": [list(step) for step in path],
            "items": [dict(item) for item in items],
            "kind": kind,
            "sender": sender,
            "document_id": document_id,
            "sha256": sha256,
            "recipients": list(recipients),
            "node": node,
            "code": code,
            "message": message,
            "at": format_utc(at),
            "failed_hop": failed_hop,
        },
    )


def verify_notice(notice: Any, *, trust: TrustStore | None) -> dict[str, Any]:
    """Check a failure notice's shape, signature and node certificate; return its fields."""
    fields = notice.get("notice") if isinstance(notice, Mapping) else None
    if not isinstance(fields, Mapping) or set(fields) != _NOTICE_FIELDS:
        raise HopChainBroken("not a version-1 failure notice")
    if not isinstance(fields["node"], str) or not isinstance(fields["at"], str):
        raise HopChainBroken("a notice names its node and time")
    if fields["event"] not in NOTICE_EVENTS:
        raise HopChainBroken(f"a notice reports one of {NOTICE_EVENTS}")
    path = fields["path"]
    if not isinstance(path, list) or not all(
        isinstance(step, list) and len(step) == 3 and all(isinstance(x, str) for x in step)
        for step in path
    ):
        raise HopChainBroken("a notice's path is a list of [from, to, at]")
    items = fields["items"]
    if not isinstance(items, list) or not all(
        isinstance(item, dict)
        and set(item) == {"document_id", "sha256", "recipients", "path"}
        and isinstance(item["recipients"], list)
        and isinstance(item["path"], list)
        for item in items
    ):
        raise HopChainBroken("a notice's items are {document_id, sha256, recipients, path}")
    try:
        at = parse_utc(fields["at"])
    except ValueError:
        raise HopChainBroken("the notice's time is not an ISO 8601 time") from None
    return open_sealed(notice, "notice", trust=trust, at=at, node=fields["node"])
