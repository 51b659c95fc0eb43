"""The relay wire format: one request body carries a batch of packages to a neighbour node.

The body is a one-line JSON manifest, a newline, then each package's bytes, unchanged, one
after another::

    POST /api/v1/relay                      (client certificate: the sending node's)
    Content-Type: application/vnd.edxml-gateway.relay

    {"v":1,"items":[{"kind":"document","size":48213,"hops":[...],"receipts":[...]}, ...]}\\n
    <48213 bytes of the first envelope><bytes of the second> ...

``hops`` is the package's hop chain (:mod:`gateway.evidence.hops`), the last record addressed to
the receiving node; ``receipts`` are the signed receipts of every hop but the last. JSON escapes
newlines inside strings, so the first ``\\n`` ends the manifest. The answer is JSON, one result
per item, in order::

    {"results": [{"ok": true, "receipt": {...}, "duplicate": false},
                 {"ok": false, "code": "RELAY_ENVELOPE_TAMPERED", "message": "...", "detail": {}}]}

The framing is hand-written (20 lines, ``json`` and slicing): multipart would need another
dependency and a parser to find the parts again; a length in the manifest needs neither. The
transport that carries it is at the edge (:mod:`adapters.peer`); the format is the core's, so
that relay receive and the dispatcher know nothing of HTTP.

Usage::

    body = encode_batch([RelayItem(kind="document", body=data, hops=[...], receipts=[])])
    items = decode_batch(body, max_items=500)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from gateway import jsonsafe
from gateway.errors import JSONTooDeep, RelayMalformed
from gateway.settings import LimitsSettings

__all__ = [
    "RELAY_CONTENT_TYPE",
    "RELAY_PATH",
    "ItemResult",
    "RelayItem",
    "decode_batch",
    "encode_batch",
]

RELAY_PATH: Final = "/api/v1/relay"
RELAY_CONTENT_TYPE: Final = "application/vnd.edxml-gateway.relay"
_KINDS: Final = frozenset({"document", "status", "notice"})
#: the manifest line may not exceed this (hop records are ~2 KB each)
_MAX_MANIFEST: Final = 8 * 1024 * 1024
#: nesting of the manifest's JSON unless the caller says otherwise ([limits] max_json_depth);
#: a real manifest nests about 6 deep
_MAX_DEPTH: Final = LimitsSettings().max_json_depth


@dataclass(frozen=True, slots=True)
class RelayItem:
    """One package in a relay batch."""

    #: "document", "status" or "notice"
    kind: str
    #: the package bytes, exactly as stored
    body: bytes = field(repr=False)
    #: the hop chain, the last record addressed to the receiving node
    hops: list[dict[str, Any]]
    #: receipts of every hop but the last, in order
    receipts: list[dict[str, Any]]
    #: the intake attestation of a package whose sender signature was not verified
    #: (:mod:`gateway.evidence.attestations`); None for a verified one
    attestation: dict[str, Any] | None = None
    #: recipients whose delivery the sending node requeued after it failed, each with which
    #: requeue it is (``<number>@<time of the latest>``): the receiving node tries a delivery
    #: that failed there again once per requeue (a plain retry of a lost answer is not one)
    requeued: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ItemResult:
    """What the receiving node said about one item."""

    ok: bool
    receipt: dict[str, Any] | None = None
    duplicate: bool = False
    code: str | None = None
    message: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    #: a hub parent's answer instead of a receipt: its ``DocId`` for the package (a hub signs
    #: nothing; the hop's evidence says so)
    hub_doc_id: str | None = None


def encode_batch(items: Sequence[RelayItem]) -> bytes:
    """The relay request body for ``items``."""
    manifest = {
        "v": 1,
        "items": [
            {
                "kind": i.kind,
                "size": len(i.body),
                "hops": i.hops,
                "receipts": i.receipts,
                **({} if i.attestation is None else {"attestation": i.attestation}),
                **({"requeued": i.requeued} if i.requeued else {}),
            }
            for i in items
        ],
    }
    head = json.dumps(manifest, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    return b"".join([head, b"\n", *(i.body for i in items)])


def decode_batch(data: bytes, *, max_items: int, max_depth: int = _MAX_DEPTH) -> list[RelayItem]:
    """Split a relay request body into its items.

    Usage: ``items = decode_batch(body, max_items=500, max_depth=32)``.

    Raises :class:`RelayMalformed` naming the fault, or :class:`JSONTooDeep` when the manifest
    nests deeper than ``max_depth`` (measured before it is parsed); never anything else.
    """
    end = data.find(b"\n", 0, _MAX_MANIFEST)
    if end < 0:
        raise RelayMalformed("the relay body has no manifest line (JSON, then a newline)")
    try:
        manifest = jsonsafe.loads(data[:end], max_depth=max_depth)
    except JSONTooDeep as exc:
        raise JSONTooDeep(f"the relay manifest: {exc.message}", detail=exc.detail) from None
    except ValueError as exc:
        # the parser's own words, never the bytes: json's message names a position only
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
        raise RelayMalformed(f"the relay manifest is not UTF-8 JSON: {reason}") from None
    if not isinstance(manifest, dict) or manifest.get("v") != 1:
        raise RelayMalformed("the relay manifest must be a version-1 JSON object")
    entries = manifest.get("items")
    if not isinstance(entries, list) or not entries:
        raise RelayMalformed("the relay manifest lists no items")
    if len(entries) > max_items:
        raise RelayMalformed(
            f"the batch holds {len(entries)} items; this node takes at most {max_items}",
            detail={"items": len(entries), "limit": max_items},
        )
    offset = end + 1
    items: list[RelayItem] = []
    for index, entry in enumerate(entries):
        kind = entry.get("kind") if isinstance(entry, dict) else None
        if not isinstance(kind, str) or kind not in _KINDS:  # a list kind is unhashable
            raise RelayMalformed(f"item {index}: kind must be one of {sorted(_KINDS)}")
        size = entry.get("size")
        hops, receipts = entry.get("hops"), entry.get("receipts", [])
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise RelayMalformed(f"item {index}: size must be a non-negative integer")
        if not isinstance(hops, list) or not isinstance(receipts, list):
            raise RelayMalformed(f"item {index}: hops and receipts must be lists")
        if not all(isinstance(x, dict) for x in (*hops, *receipts)):
            raise RelayMalformed(f"item {index}: hops and receipts must be JSON objects")
        attestation = entry.get("attestation")
        if attestation is not None and (kind == "notice" or not isinstance(attestation, dict)):
            raise RelayMalformed(f"item {index}: an attestation is a JSON object, on a package")
        requeued = entry.get("requeued", {})
        if not isinstance(requeued, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 64
            for k, v in requeued.items()
        ):
            raise RelayMalformed(f"item {index}: requeued maps recipients to times (strings)")
        if offset + size > len(data):
            raise RelayMalformed(
                f"item {index} says {size} bytes but the body ends before them",
                detail={"item": index},
            )
        items.append(
            RelayItem(
                kind=kind,
                body=data[offset : offset + size],
                hops=hops,
                receipts=receipts,
                attestation=attestation,
                requeued=requeued,
            )
        )
        offset += size
    if offset != len(data):
        raise RelayMalformed(
            f"{len(data) - offset} bytes follow the last item", detail={"extra": len(data) - offset}
        )
    return items
