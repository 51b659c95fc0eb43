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
signed, and the notice travels back to the sender's node. Both are sealed objects
(:mod:`gateway.evidence.sealed`); any fault of their seal is ``RELAY_HOP_SIGNATURE_INVALID``,
its ``detail["cause"]`` naming the fault.

Usage::

    record = sign_hop(key, kind="document", sender=..., document_id=..., sha256=..., size=...,
                      from_node="commune-x1", to_node="district-hl", recipients=[...],
                      at=now, prev=None)
    verify_hops([record, ...], trust=store, sha256=digest, size=len(data), to_node="h49")
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from gateway.errors import (
    EnvelopeTampered,
    HopChainBroken,
    HopSignatureInvalid,
    RouteLoop,
    SignatureError,
    TrustError,
)
from gateway.evidence.nodekey import NodeKey, canonical_json, format_utc, parse_utc
from gateway.evidence.sealed import open_sealed, seal, trusted_chain
from gateway.trust.store import TrustStore

__all__ = [
    "CONFIRMATIONS",
    "HOP_VERSION",
    "MAX_HOPS",
    "NOTICE_EVENTS",
    "PROGRESS_STATES",
    "hop_digest",
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
#: what a notice reports: packages delivered, a delivery given up, or what recipients' systems
#: did with delivered packages (``progress``: fetched, acknowledged)
NOTICE_EVENTS: Final = ("delivered", "failed", "progress")
#: the transport states a progress notice reports
PROGRESS_STATES: Final = ("fetched", "acknowledged")
#: notices every node on their way applies, ending at their sender's node: the next node's
#: receipt settles each hop (a confirmation of a confirmation would never end)
CONFIRMATIONS: Final = ("delivered", "progress")
#: the fields of each item of a delivered notice (plus ``kind: "notice"`` for a notice that
#: reached its sender's node; a package otherwise)
_ITEM_FIELDS: Final = frozenset({"document_id", "sha256", "recipients", "path"})
_SHA256_HEX: Final = re.compile(r"[0-9a-f]{64}")


def _open(
    sealed: Any, label: str, *, trust: TrustStore | None, at: dt.datetime, node: str
) -> dict[str, Any]:
    """Check a signed hop record or notice (:mod:`gateway.evidence.sealed`), its certificate
    chain (at ``at``) and node binding; return its fields.

    Any fault is :class:`HopSignatureInvalid`, the code a peer expects for a faulty hop;
    ``detail["cause"]`` names the fault (``CERT_KEY_WEAK``, ``SIGNATURE_NON_CANONICAL``, ...).
    """
    try:
        opened = open_sealed(sealed, label)
    except (SignatureError, TrustError) as exc:
        raise HopSignatureInvalid(
            f"the {label}'s seal is refused: {exc.message}",
            detail={"node": node, "cause": exc.code},
        ) from None
    if trust is not None:
        try:
            trusted_chain(trust, opened.leaf, opened.extra, at)
        except TrustError as exc:
            raise HopSignatureInvalid(
                f"the {label}'s node certificate is not trusted: {exc.message}",
                detail={"node": node, "cause": exc.code},
            ) from None
    bound = opened.node
    if bound != node:
        raise HopSignatureInvalid(
            f"the {label} says node {node!r} but its certificate binds {bound!r}",
            detail={"node": node, "certificate_node": bound},
        )
    return opened.fields


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
        opened = _open(record, "hop", trust=trust, at=at, node=fields["from"])
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
    took, ``[from, to, at]`` each; a failure notice that reached its sender's node is an item
    with ``kind: "notice"``, and such a delivered notice travels back to the node that gave
    up), or what the recipients' systems did with delivered packages (``event="progress"``:
    each item also has ``events``, ``[state, at, description]`` each, the state ``fetched`` or
    ``acknowledged``)."""
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


def _path_ok(path: Any) -> bool:
    """A path of hops: a list of [from, to, at] strings, each time ISO 8601."""
    if not isinstance(path, list):
        return False
    for step in path:
        if not (
            isinstance(step, list) and len(step) == 3 and all(isinstance(x, str) for x in step)
        ):
            return False
        try:
            parse_utc(step[2])
        except ValueError:
            return False
    return True


def _progress_events(events: Any) -> bool:
    """``events`` of a progress item: a non-empty list of [state, at, description] strings,
    each state fetched or acknowledged, each time ISO 8601."""
    if not isinstance(events, list) or not events:
        return False
    for event in events:
        if not (
            isinstance(event, list)
            and len(event) == 3
            and all(isinstance(x, str) for x in event)
            and event[0] in PROGRESS_STATES
        ):
            return False
        try:
            parse_utc(event[1])
        except ValueError:
            return False
    return True


def verify_notice(notice: Any, *, trust: TrustStore | None) -> dict[str, Any]:
    """Check a failure notice's shape, signature and node certificate; return its fields."""
    fields = notice.get("notice") if isinstance(notice, Mapping) else None
    if not isinstance(fields, Mapping) or set(fields) != _NOTICE_FIELDS:
        raise HopChainBroken("not a version-1 failure notice")
    if not isinstance(fields["node"], str) or not isinstance(fields["at"], str):
        raise HopChainBroken("a notice names its node and time")
    if fields["event"] not in NOTICE_EVENTS:
        raise HopChainBroken(f"a notice reports one of {NOTICE_EVENTS}")
    if not _path_ok(fields["path"]):
        raise HopChainBroken("a notice's path is a list of [from, to, at]")
    items = fields["items"]
    progress = fields["event"] == "progress"
    if not isinstance(items, list) or not all(
        isinstance(item, dict)
        and set(item) - {"kind", "events"} == _ITEM_FIELDS
        and ("events" in item) == progress
        and item.get("kind", "package") in ("package", "notice")
        and isinstance(item["recipients"], list)
        and all(isinstance(r, str) for r in item["recipients"])
        and _path_ok(item["path"])
        and (not progress or _progress_events(item["events"]))
        for item in items
    ):
        raise HopChainBroken(
            "a notice's items are {document_id, sha256, recipients, path}, kind 'notice' for "
            "a notice that arrived, and events [[state, at, description], ...] in a progress "
            "notice"
        )
    try:
        at = parse_utc(fields["at"])
    except ValueError:
        raise HopChainBroken("the notice's time is not an ISO 8601 time") from None
    return _open(notice, "notice", trust=trust, at=at, node=fields["node"])
