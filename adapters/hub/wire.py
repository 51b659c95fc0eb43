"""The hub protocol's wire details (HUB-PROTOCOL.md sections 2-5): the trio, ``hash-file``,
the sendEdoc body, the ``to`` parameter, the ``docId`` spellings.

Every answer is the trio (``status``, ``ErrorCode``, ``ErrorDesc``) plus the operation's keys,
as compact JSON with every non-ASCII character escaped (``\\uXXXX``: the SDK's sendEdoc reads
its answer as US-ASCII) and no JSON ``null`` anywhere (it makes the SDK drop the whole result):
a key whose value is None is left out.

Usage::

    body = trio_ok(DocId="a1b2")                  # bytes
    body = trio_fail(exc, DocId="")               # the stable code in ErrorCode
    hash_file(file)                               # "7e4a746b898d9b54749de..." (unpadded)
    file = send_body(raw, content_type)           # minus one CRLF, or multipart part file_doc
"""

from __future__ import annotations

import hashlib
import hmac
import json
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

from gateway import jsonsafe
from gateway.errors import BodyInvalid, GatewayError, HashFileMismatch, ParametersInvalid

__all__ = [
    "OK_DESC",
    "check_hash_file",
    "doc_id_param",
    "hash_file",
    "parse_to",
    "send_body",
    "trio_fail",
    "trio_ok",
]

#: ErrorDesc of a success ("Thành công", escaped on the wire)
OK_DESC = "Thành công"


def _dump(value: dict[str, Any]) -> bytes:
    return json.dumps(_no_nulls(value), ensure_ascii=True, separators=(",", ":")).encode("ascii")


def _no_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _no_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_no_nulls(v) for v in value if v is not None]
    return value


def trio_ok(**extra: Any) -> bytes:
    """A success: ``status`` OK, ``ErrorCode`` "0", plus ``extra`` (None values left out)."""
    return _dump({"status": "OK", "ErrorCode": "0", "ErrorDesc": OK_DESC, **extra})


def trio_fail(error: GatewayError, **extra: Any) -> bytes:
    """A refusal: ``status`` FAIL, the stable code as ``ErrorCode``, its message as
    ``ErrorDesc``, plus ``extra`` (sendEdoc's ``DocId`` is required, ``""`` on FAIL)."""
    return _dump(
        {"status": "FAIL", "ErrorCode": error.code, "ErrorDesc": error.message[:500], **extra}
    )


def hash_file(file: bytes) -> str:
    """SHA-256 of ``file`` as the SDK writes it: ``%x`` per byte, so unpadded."""
    return "".join(format(b, "x") for b in hashlib.sha256(file).digest())


def check_hash_file(file: bytes, claimed: str | None) -> None:
    """The body matches its ``hash-file`` (compared in constant time, hex case ignored).

    The padded hex digest is accepted too: a client that is not the SDK writes that.
    """
    if not claimed:
        raise HashFileMismatch("the sendEdoc request carries no hash-file parameter")
    given = claimed.strip().lower().encode("ascii", "replace")
    ours = (hash_file(file).encode(), hashlib.sha256(file).hexdigest().encode())
    if not any(hmac.compare_digest(given, candidate) for candidate in ours):
        raise HashFileMismatch(
            "the body does not match its hash-file: it was changed or cut on the way",
            detail={"size": len(file)},
        )


def send_body(raw: bytes, content_type: str | None) -> bytes:
    """The file a sendEdoc carries: the raw body minus exactly one trailing CRLF (what the SDK
    sends), or the ``file_doc`` part of a real ``multipart/form-data`` body (other clients)."""
    if content_type and content_type.lower().startswith("multipart/"):
        return _multipart_file(raw, content_type)
    return raw[:-2] if raw.endswith(b"\r\n") else raw


def _multipart_file(raw: bytes, content_type: str) -> bytes:
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = BytesParser(policy=HTTP).parsebytes(head + raw)
    if not message.is_multipart():
        raise BodyInvalid("the multipart body cannot be read", detail={"reason": "not multipart"})
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == "file_doc":
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                return payload
    raise BodyInvalid("the multipart body has no file_doc part", detail={"reason": "no file_doc"})


def parse_to(value: str | None) -> list[str]:
    """The ``to`` parameter: JSON text, ``["a","b"]`` or ``"x"`` with its quotes (a bare code
    is taken as it is). Informative only: the edXML ``To`` list decides (a ``to`` may be
    stale, HUB-PROTOCOL.md 3.3)."""
    if value is None or not value.strip():
        return []
    try:
        parsed = jsonsafe.loads(value.encode("utf-8"), max_depth=2)
    except ValueError:
        return [value.strip()]
    if isinstance(parsed, str):
        return [parsed]
    if isinstance(parsed, list) and all(isinstance(v, str) for v in parsed):
        return list(parsed)
    raise ParametersInvalid("the to parameter is not a JSON string or list of strings")


def doc_id_param(params: dict[str, str], *, strict: bool) -> str:
    """The ``docId`` parameter (``docid`` too). With ``strict`` (updateStatus), both spellings
    with different values are refused rather than guessed between."""
    exact = params.get("docId")
    folded = [v for k, v in params.items() if k.casefold() == "docid"]
    if strict and len(set(folded)) > 1:
        raise ParametersInvalid(
            "docId and docid differ: which document is meant is not clear",
            detail={"values": sorted(set(folded))},
        )
    value = exact if exact is not None else (folded[0] if folded else None)
    if not value or not value.strip():
        raise ParametersInvalid("the docId parameter is missing")
    return value.strip()
