"""A stand-in for the national Java SDK "SDKVXP 2.0.1" that behaves like it on the wire.

Written only from ``/work/shared/HUB-PROTOCOL.md`` (§ numbers below are its sections), and on
purpose sharing no code with ``gateway/``: it is the DMS our hub server must serve unchanged, so a
misreading of the protocol in the server cannot hide behind the same misreading here.

Usage::

    with HubService("https://127.0.0.1:8443/vdxp", "vxp.example.01", "s3cret", ca_file=ca) as svc:
        sent = svc.send_edoc("000.00.00.G22", package_bytes, to=["000.00.00.H41"])
        inbox = svc.get_received_edoc_list("edoc")
        doc = svc.get_edoc('{"docId":"abc","filePath":"/data/in"}')  # the DMS's JSON parameters
        assert doc.status == "OK" and doc.text.startswith("<?xml")

One :class:`HubService` is one SDK service object, and what the SDK does wrong it does too:

* **one map for life** (§3.1, §3.3): ``systemid`` and a ``timestamp`` frozen at construction,
  then every call's ``Content-Type``, parameters and ``hash-file``; never cleared, so stale keys
  travel with later calls. Sent as ``XroadVnpt-<k>`` headers in an order that changes per call
  (Java HashMap order, emulated by shuffling with a seeded RNG) and signed (HMAC-SHA256).
  getAgenciesList uses a map of its own (§5.6); ``reuse=False`` gives every call a fresh map.
* **two HTTP stacks** (§2): sendEdoc is the JDK's ``HttpURLConnection`` (a keep-alive connection
  reused across sendEdoc calls, no ``Accept-Encoding``, the answer read as US-ASCII, the request
  written again once on a new connection when the connection closes before a response: a send
  can arrive twice). Everything else is Apache HttpClient 4.5 (a new connection per call, which
  list and agency calls leave open; ``Accept-Encoding: gzip,deflate``; the answer read as UTF-8;
  ``Expect: 100-continue`` on non-empty bodies, the body sent anyway after ``continue_timeout``;
  up to ``retry`` attempts in total on I/O errors, POSTs included, but not on timeouts, unknown
  hosts, refused connections or TLS errors).
* **the SDK's parser** (§4): :func:`parse_response` reads the trio and each operation's extra
  fields the way Gson's ``getAsString`` does, and loses whole results or lists where the SDK
  does (see its docstring).

Knobs for tests: ``seed`` (header order), ``reuse``, :class:`Tamper` (wrong secret, wrong
``hash-file``, dropped or altered headers, another body), :meth:`HubService.send_edoc_multipart`
(what other clients send), :meth:`HubService.send_edoc_twice` (the JDK's double send on purpose),
:meth:`HubService.prepare` (a request built, and the map updated, without any network).

.. warning:: A test client, not production code: it keeps the SDK's flaws on purpose (no replay
   protection, stale parameters, unsigned ``downloadEdoc2``). ``timeout`` defaults to 30 s where
   the SDK has none (``timeout=None`` waits forever, as a DMS would).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import hmac
import json
import random
import re
import socket
import ssl
import time
import zlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeGuard
from urllib.parse import urlsplit

__all__ = [
    "JDK_ACCEPT",
    "PREFIX",
    "SDK_VERSION",
    "USER_AGENT",
    "HubProtocolError",
    "HubResult",
    "HubService",
    "HubTransportError",
    "NoResponse",
    "ParamMap",
    "PreparedRequest",
    "SdkParseError",
    "Tamper",
    "hash_file",
    "hash_header",
    "parse_response",
    "sdk_base64",
    "sdk_param_value",
    "sdk_string",
    "sdk_timestamp",
    "sign_entries",
]

#: prefix of every parameter header (§2)
PREFIX = "XroadVnpt-"
#: value of ``XroadVnpt-version`` (not signed)
SDK_VERSION = "3.0.201608"
#: both stacks send it
USER_AGENT = "JAVASDKAgent/1.0.0 XRoad/VPCP"
#: what HttpURLConnection adds when the caller sets no Accept (JDK default, not in the spec)
JDK_ACCEPT = "text/html, image/gif, image/jpeg, *; q=.2, */*; q=.2"
JSON_TYPE = "application/json"
OCTET_TYPE = "application/octet-stream"

Stack = Literal["jdk", "apache"]

#: operations whose Apache connection the SDK never closes (§2: "list and agency calls")
_LEFT_OPEN = frozenset(
    {"getReceivedEdocList", "getSentEdocList", "getAgenciesList", "getAgenciesListQD20"}
)


# --- signing (§3.1) ------------------------------------------------------------------------------


def sdk_timestamp(when: datetime | None = None) -> str:
    """``ddMMyyyy'T'HHmmss+SSSS`` in local time; ``SSSS`` is milliseconds padded to 4 digits.

    >>> sdk_timestamp(datetime(2026, 11, 22, 10, 58, 36, 908_000))
    '22112026T105836+0908'
    """
    when = when or datetime.now()
    return when.strftime("%d%m%YT%H%M%S") + f"+{when.microsecond // 1000:04d}"


def hash_file(data: bytes) -> str:
    """``hash-file``: SHA-256 as UNPADDED hex, ``%x`` per byte (0x05 gives ``5``, not ``05``)."""
    return "".join(format(b, "x") for b in hashlib.sha256(data).digest())


def hash_header(secret: str, sign_header: str) -> str:
    """``XroadVnpt-hash-header``: lowercase hex HMAC-SHA256 of the sign-header, both as UTF-8."""
    return hmac.new(secret.encode("utf-8"), sign_header.encode("utf-8"), hashlib.sha256).hexdigest()


def sign_entries(entries: Sequence[tuple[str, str]], secret: str) -> list[tuple[str, str]]:
    """The four headers that follow the parameter headers, for ``entries`` in wire order."""
    sign_header = json.dumps(
        {PREFIX + k: v for k, v in entries}, separators=(",", ":"), ensure_ascii=False
    )
    return [
        (PREFIX + "sign-header", sign_header),
        (PREFIX + "sign-header-key", ";".join(k for k, _ in entries)),
        (PREFIX + "hash-header", hash_header(secret, sign_header)),
        (PREFIX + "version", SDK_VERSION),
    ]


class _JsonNumber(str):
    """A JSON number kept as its literal text, as Gson's ``getAsString`` gives it back."""

    __slots__ = ()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"not JSON: {name}")


def _loads(text: str) -> Any:
    return json.loads(
        text, parse_int=_JsonNumber, parse_float=_JsonNumber, parse_constant=_reject_constant
    )


def _compact_json(value: object) -> str:
    if isinstance(value, _JsonNumber):
        return str(value)
    if isinstance(value, dict):
        pairs = (
            f"{json.dumps(k, ensure_ascii=False)}:{_compact_json(v)}" for k, v in value.items()
        )
        return "{" + ",".join(pairs) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_compact_json(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def sdk_param_value(value: object) -> str:
    """A parameter value stringified for the map: ``"abc"`` → ``abc``, ``123`` → ``123``.

    Numbers keep their literal text, booleans give ``true``/``false``, ``null`` gives ``null``
    and arrays or objects their compact JSON text (the spec only fixes strings and numbers).
    """
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if value is None:
        return "null"
    return _compact_json(value)


def _params_items(params: str | Mapping[str, object]) -> list[tuple[str, str]]:
    parsed = _loads(params) if isinstance(params, str) else params
    if not isinstance(parsed, Mapping):
        raise ValueError(f"the DMS's parameters must be a JSON object, not {params!r}")
    return [(str(k), sdk_param_value(v)) for k, v in parsed.items()]


class ParamMap:
    """One SDK service object's string map: starts with systemid and timestamp, never cleared.

    Usage::

        m = ParamMap("vxp.example.01")
        m.update('{"docId":"d1","filePath":"/in"}')   # getEdoc
        m.update({"from": "G22"})                     # sendEdoc: docId and filePath still there
    """

    def __init__(self, systemid: str, timestamp: str | None = None) -> None:
        #: frozen for the object's life (§3.3)
        self.timestamp = timestamp or sdk_timestamp()
        self._entries: dict[str, str] = {"systemid": systemid, "timestamp": self.timestamp}

    def put(self, key: str, value: str) -> None:
        """Set one entry (keys are case-sensitive: ``docId`` and ``docid`` are two entries)."""
        self._entries[key] = value

    def update(self, params: str | Mapping[str, object]) -> None:
        """Add every key of the DMS's JSON parameter string (or a mapping), values stringified."""
        for key, value in _params_items(params):
            self._entries[key] = value

    def items(self) -> list[tuple[str, str]]:
        """The entries in insertion order."""
        return list(self._entries.items())

    def shuffled(self, rng: random.Random) -> list[tuple[str, str]]:
        """The entries in this call's wire order (a stand-in for Java HashMap order)."""
        entries = self.items()
        rng.shuffle(entries)
        return entries


# --- requests ------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Tamper:
    """Deliberate damage to a request, for refusal tests; applied after the SDK-like build.

    Usage: ``svc.get_edoc("d1", tamper=Tamper(secret="wrong"))``.
    """

    #: sign with this secret instead of the service's
    secret: str | None = None
    #: sendEdoc: put (and sign) this ``hash-file`` instead of the file's own
    hash_file: str | None = None
    #: header names removed from the wire, case-insensitive (``XroadVnpt-hash-header``, ...)
    drop_headers: Collection[str] = ()
    #: header values replaced (or added at the end) after signing
    set_headers: Mapping[str, str] = field(default_factory=dict)
    #: body sent instead of the built one; ``Content-Length`` follows unless set_headers sets it
    body: bytes | None = None


@dataclass(kw_only=True)
class PreparedRequest:
    """One request exactly as it goes on the wire (the same bytes again when resent)."""

    operation: str
    method: str
    #: the request target, ``/vdxp//sendEdoc`` and all
    path: str
    stack: Stack
    #: in wire order
    headers: list[tuple[str, str]]
    body: bytes
    #: the map's entries in this call's order: what sign-header covers
    signed: list[tuple[str, str]]
    expect_continue: bool
    #: the charset the JDK writes header values in (the JVM's file.encoding)
    jdk_charset: str = "utf-8"

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        return _first(self.headers, name)

    def head_bytes(self) -> bytes:
        """Request line and headers, encoded as the stack does it.

        The JDK writes header text in the JVM's charset (``?`` for what it cannot encode);
        Apache HttpClient keeps the low byte of each UTF-16 unit. So a non-ASCII value reaches
        the server as different bytes per stack, and the HMAC over raw bytes may fail (§3.3).
        """
        lines = [f"{self.method} {self.path} HTTP/1.1"]
        lines += [f"{k}: {v}" for k, v in self.headers]
        text = "\r\n".join(lines) + "\r\n\r\n"
        if self.stack == "jdk":
            return text.encode(self.jdk_charset, errors="replace")
        return text.encode("utf-16-be", errors="surrogatepass")[1::2]

    def to_bytes(self) -> bytes:
        """The whole request: head and body."""
        return self.head_bytes() + self.body


def _first(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    return next((v for k, v in headers if k.lower() == name.lower()), None)


# --- the SDK's response parser (§4) --------------------------------------------------------------


class SdkParseError(ValueError):
    """What makes the SDK's Gson read throw: ``null``, an object, an array not of one element."""


def sdk_string(value: object) -> str:
    """Read one JSON value as the SDK does (Gson ``getAsString``).

    Strings as they are, numbers as their literal text (``0.0`` stays ``"0.0"``), booleans as
    ``true``/``false``, a one-element array as its element; anything else raises
    :class:`SdkParseError`.
    """
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list) and len(value) == 1:
        return sdk_string(value[0])
    raise SdkParseError(f"the SDK cannot read {value!r} as a string")


def sdk_base64(text: str) -> bytes:
    """Decode base64 the tolerant way: standard or URL-safe alphabet, line breaks, no padding."""
    chars = re.sub(r"[^A-Za-z0-9+/]", "", text.replace("-", "+").replace("_", "/"))
    if len(chars) % 4 == 1:  # a lone trailing character carries no whole byte
        chars = chars[:-1]
    return base64.b64decode(chars + "=" * (-len(chars) % 4))


#: how each operation's answer is read; others are "trio"
_KIND = {
    "sendEdoc": "send",
    "getReceivedEdocList": "inbox",
    "getSentEdocList": "list",
    "getSynchronizeUnit": "list",
    "getAgenciesList": "agencies",
    "getAgenciesListQD20": "agencies",
    "getEdoc": "edoc",
    "countReceiveEdoc": "count",
    "countReceiveStatus": "count",
    "downloadEdoc": "raw",
    "downloadEdoc2": "raw",
}
_AGENCY_KEYS = "code id pid name mail oldCode"
#: the item keys the SDK reads, per operation (§5.2, §5.5, §5.6, §5.7); others are ignored
_ITEM_KEYS: dict[str, Sequence[str]] = {
    op: names.split()
    for op, names in {
        "getReceivedEdocList": "docId messageType serviceType from to created_time updated_time"
        " status status_desc",
        "getSentEdocList": "senderDocId receiverDocId fromCode toCode serviceType messageType title"
        " notation sentTime receivedTime sendStatus sendStatusDesc receiveStatus receiveStatusDesc",
        "getAgenciesList": _AGENCY_KEYS,
        "getAgenciesListQD20": _AGENCY_KEYS + " code102",
        "getSynchronizeUnit": _AGENCY_KEYS + " version deleted isAgency centerCode modifyDate",
    }.items()
}


def _read_items(value: object, keys: Sequence[str]) -> list[dict[str, str]]:
    if not isinstance(value, list):
        raise SdkParseError(f"data is not an array: {value!r}")
    items = []
    for item in value:
        if not isinstance(item, dict):
            raise SdkParseError(f"an item is not an object: {item!r}")
        items.append({k: sdk_string(item[k]) for k in keys if k in item})
    return items


@dataclass(kw_only=True)
class HubResult:
    """What one SDK call returned, plus what the wire showed.

    A field the SDK would leave null is None. ``error`` holds the transport failure, if any (the
    SDK then returns null fields).
    """

    operation: str
    status: str | None = None
    error_code: str | None = None
    error_desc: str | None = None
    #: sendEdoc's ``DocId``
    doc_id: str | None = None
    #: list items (dicts of strings) or getEdoc's base64 text
    data: list[dict[str, str]] | str | None = None
    #: countReceiveEdoc / countReceiveStatus
    count: int | None = None
    #: getEdoc: the base64 decoded; downloadEdoc: the raw body
    data_bytes: bytes | None = None
    #: data_bytes decoded as UTF-8 with U+FFFD for what is not (like the SDK)
    text: str | None = None
    #: the entity as the SDK read it (after gzip decoding on the Apache stack)
    raw: bytes = b""
    #: raw decoded with the stack's charset (US-ASCII for sendEdoc, UTF-8 otherwise)
    body_text: str = ""
    http_status: int | None = None
    #: response headers in wire order
    headers: list[tuple[str, str]] = field(default_factory=list)
    #: a ``100 Continue`` arrived before the body was sent
    got_100_continue: bool = False
    #: how many times the request was written
    attempts: int = 0
    #: the answer came on a kept-alive connection (JDK stack)
    connection_reused: bool = False
    error: BaseException | None = None
    request: PreparedRequest | None = None

    @property
    def ok(self) -> bool:
        """What DMS code tests: ``status == "OK"``."""
        return self.status == "OK"

    @property
    def items(self) -> list[dict[str, str]] | None:
        """``data`` when it is a list, else None."""
        return self.data if isinstance(self.data, list) else None

    def header(self, name: str) -> str | None:
        """The first value of response header ``name`` (case-insensitive), or None."""
        return _first(self.headers, name)


def parse_response(operation: str, text: str, raw: bytes = b"") -> HubResult:
    """Read an answer body as the SDK does for ``operation`` (§4).

    * The trio (``status``, ``ErrorCode``, ``ErrorDesc``) is required, and sendEdoc's ``DocId``:
      a missing or unreadable one (``null``, an object) gives a result with every field None.
    * A body that is not a JSON object gives all None, except on getReceivedEdocList, where a
      non-empty one (an HTML error page) reads as ``OK`` with an empty list.
    * Lists: ``data`` missing or ``null`` → None. A bad item or value (``null`` in a key the SDK
      reads) loses the list; on getAgenciesList(QD20) it loses the whole result.
    * getEdoc: ``data`` is read unless ``status`` is ``FAIL`` (missing or unreadable: all None),
      base64-decoded into ``data_bytes`` and decoded as UTF-8 with replacement into ``text``.
    * count calls: ``count`` as an integer unless ``status`` is ``FAIL``.
    * downloadEdoc: the raw body; any non-empty one is ``SUCCESS``.
    """
    kind = _KIND.get(operation, "trio")
    result = HubResult(operation=operation)
    if kind == "raw":
        if raw:
            result.status = "SUCCESS"
            result.data_bytes = raw
            result.text = raw.decode("utf-8", errors="replace")
        return result
    try:
        obj = _loads(text)
    except ValueError:
        obj = None
    if not isinstance(obj, dict):
        if kind == "inbox" and text.strip():
            result.status, result.data = "OK", []
        return result
    try:
        status, code, desc = (sdk_string(obj[k]) for k in ("status", "ErrorCode", "ErrorDesc"))
        if kind == "send":
            result.doc_id = sdk_string(obj["DocId"])
        elif kind == "edoc" and status != "FAIL":
            result.data = sdk_string(obj["data"])
            result.data_bytes = sdk_base64(result.data)
            result.text = result.data_bytes.decode("utf-8", errors="replace")
        elif kind == "count" and status != "FAIL":
            result.count = int(sdk_string(obj["count"]))
        elif kind in ("inbox", "list", "agencies") and obj.get("data") is not None:
            try:
                result.data = _read_items(obj["data"], _ITEM_KEYS.get(operation, ()))
            except SdkParseError:
                if kind == "agencies":
                    raise
    except (KeyError, ValueError):  # SdkParseError, a bad count or base64 are ValueErrors
        return HubResult(operation=operation)
    result.status, result.error_code, result.error_desc = status, code, desc
    return result


# --- transport -----------------------------------------------------------------------------------


class HubTransportError(OSError):
    """An I/O failure of this client's own making (the SDK's IOException)."""


class NoResponse(HubTransportError):
    """The connection closed before a response (Apache's NoHttpResponseException)."""


class HubProtocolError(ValueError):
    """An answer that is not HTTP/1.x (the SDK's ProtocolException): never retried."""


class _Reader:
    """A byte buffer over a socket that survives a timed-out wait (a socket file does not)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buf += chunk
        return bool(chunk)

    def wait(self, seconds: float) -> bool:
        """True when bytes (or EOF) arrive within ``seconds``."""
        if self.buf:
            return True
        previous = self.sock.gettimeout()
        self.sock.settimeout(seconds)
        try:
            self._fill()
            return True
        except TimeoutError:
            return False
        finally:
            self.sock.settimeout(previous)

    def readline(self, limit: int = 65536) -> bytes:
        while (end := self.buf.find(b"\n")) < 0:
            if len(self.buf) > limit:
                raise HubProtocolError("response line too long")
            if not self._fill():
                end = len(self.buf) - 1
                break
        line = bytes(self.buf[: end + 1])
        del self.buf[: end + 1]
        return line

    def read(self, size: int) -> bytes:
        while len(self.buf) < size:
            if not self._fill():
                raise HubTransportError(f"body truncated at {len(self.buf)} of {size} bytes")
        data = bytes(self.buf[:size])
        del self.buf[:size]
        return data

    def read_to_close(self) -> bytes:
        while self._fill():
            pass
        data = bytes(self.buf)
        self.buf.clear()
        return data


@dataclass
class _Connection:
    sock: socket.socket
    reader: _Reader
    last_used: float = 0.0
    keepalive: float = 5.0

    def close(self) -> None:
        self.sock.close()


@dataclass
class _Head:
    version: str
    status: int
    headers: list[tuple[str, str]]


def _read_head(reader: _Reader) -> _Head:
    line = reader.readline()
    if not line:
        raise NoResponse("the connection closed before a response")
    match = re.fullmatch(rb"HTTP/(1\.[01]) (\d{3})(?: [^\r\n]*)?\r?\n", line)
    if not match:
        raise HubProtocolError(f"not an HTTP/1.x status line: {line[:80]!r}")
    headers = []
    while (line := reader.readline()) not in (b"\r\n", b"\n"):
        if not line:
            raise HubTransportError("the connection closed inside the response head")
        name, _, value = line.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))
    return _Head(match[1].decode(), int(match[2]), headers)


def _read_body(reader: _Reader, head: _Head, method: str) -> tuple[bytes, bool]:
    """The entity, de-chunked, and whether the connection may carry another request."""
    connection = (_first(head.headers, "Connection") or "").lower()
    reusable = "close" not in connection and (head.version == "1.1" or "keep-alive" in connection)
    if method == "HEAD" or head.status in (204, 304):
        return b"", reusable
    if "chunked" in (_first(head.headers, "Transfer-Encoding") or "").lower():
        body = bytearray()
        while True:
            line = reader.readline()
            if not line:
                raise HubTransportError("chunked body truncated")
            if not (size := int(line.split(b";")[0].strip(), 16)):
                break
            body += reader.read(size)
            reader.readline()
        while reader.readline() not in (b"\r\n", b"\n", b""):  # trailers
            pass
        return bytes(body), reusable
    length = _first(head.headers, "Content-Length")
    if length is not None:
        return reader.read(int(length)), reusable
    return reader.read_to_close(), False


def _content_decode(body: bytes, encoding: str | None) -> bytes:
    """Apache's ResponseContentEncoding: gzip and deflate (zlib or raw) decoded."""
    name = (encoding or "identity").strip().lower()
    if name == "identity":
        return body
    if name in ("gzip", "x-gzip"):
        return gzip.decompress(body)
    if name == "deflate":
        try:
            return zlib.decompress(body)
        except zlib.error:
            return zlib.decompress(body, -zlib.MAX_WBITS)
    raise HubProtocolError(f"unsupported Content-Encoding {encoding!r}")


def _apache_retries(exc: BaseException) -> bool:
    """DefaultHttpRequestRetryHandler: any IOException but these (requests already sent too)."""
    never = (TimeoutError, socket.gaierror, ConnectionRefusedError, ssl.SSLError)
    return isinstance(exc, OSError) and not isinstance(exc, never)


def _is_params(value: object) -> TypeGuard[str]:
    """A first argument that is the DMS's JSON parameter string rather than a plain value."""
    return isinstance(value, str) and value.lstrip().startswith("{")


def _kw(**params: object) -> dict[str, object]:
    return {k: v for k, v in params.items() if v is not None}


def _to_json_text(to: str | Sequence[str]) -> str:
    """``to`` as the SDK sends it: JSON text, ``"x"`` with its quotes or ``["a","b"]``."""
    return _compact_json(to if isinstance(to, str) else list(to))


class HubService:
    """One SDK service object talking to ``endpoint``; close it (or use ``with``) when done.

    Usage::

        svc = HubService("http://127.0.0.1:8080/vdxp", "vxp.example.01", "s3cret", seed=7)
        result = svc.update_status("d42", "done")

    ``endpoint``: URL = endpoint + "/" + operation, not normalised on the JDK stack
    (``.../vdxp/`` gives ``/vdxp//sendEdoc``); on the Apache stack repeated ``/`` collapse, as
    HttpClient 4.5's URI rewriting does (§2: ``http://h//`` gives ``/getEdoc``), unless
    ``apache_collapse_slashes`` is False. ``http://`` and ``https://`` (verified against
    ``ca_file`` and the host name; no client certificate; at most TLS 1.2, a JDK 8 client's
    default, unless ``tls_max`` says otherwise). ``retry``: Apache attempts in total.
    ``seed``: an int or a :class:`random.Random` for the header order. ``reuse=False``: a new
    SDK service object (fresh map, fresh timestamp) per call; the JDK's keep-alive connection
    still belongs to this object, as it belongs to the JVM. ``continue_timeout``: how long the
    Apache stack waits for ``100 Continue``. ``jdk_header_charset``: the JVM's file.encoding.
    """

    def __init__(
        self,
        endpoint: str,
        systemid: str,
        secret: str,
        ca_file: str | Path | None = None,
        retry: int = 3,
        *,
        seed: int | random.Random = 0,
        reuse: bool = True,
        timeout: float | None = 30.0,
        continue_timeout: float = 3.0,
        tamper: Tamper | None = None,
        jdk_header_charset: str = "utf-8",
        apache_collapse_slashes: bool = True,
        tls_max: ssl.TLSVersion | None = ssl.TLSVersion.TLSv1_2,
    ) -> None:
        url = urlsplit(endpoint)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) endpoint: {endpoint!r}")
        self.endpoint, self.systemid, self.secret, self.retry = endpoint, systemid, secret, retry
        self.reuse, self.timeout, self.continue_timeout = reuse, timeout, continue_timeout
        self.tamper, self.jdk_header_charset = tamper, jdk_header_charset
        self.apache_collapse_slashes = apache_collapse_slashes
        self.rng = seed if isinstance(seed, random.Random) else random.Random(seed)
        self._host = url.hostname
        self._port = url.port or (443 if url.scheme == "https" else 80)
        host = f"[{self._host}]" if ":" in self._host else self._host
        default_port = 443 if url.scheme == "https" else 80
        self._host_header = f"{host}:{url.port}" if url.port not in (None, default_port) else host
        self._base_path = url.path
        self._ssl: ssl.SSLContext | None = None
        if url.scheme == "https":
            self._ssl = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
            if tls_max is not None:
                self._ssl.maximum_version = tls_max
        self._map = ParamMap(systemid)
        self._agency_map: ParamMap | None = None
        self._jdk_conn: _Connection | None = None
        self._left_open: list[_Connection] = []

    # -- life --

    @property
    def timestamp(self) -> str:
        """The main map's frozen timestamp."""
        return self._map.timestamp

    @property
    def params(self) -> dict[str, str]:
        """A copy of the main map as it stands: every key ever sent, with its last value."""
        return dict(self._map.items())

    def close(self) -> None:
        """Close the kept-alive JDK connection and the connections list calls left open."""
        if self._jdk_conn is not None:
            self._jdk_conn.close()
            self._jdk_conn = None
        while self._left_open:
            self._left_open.pop().close()

    def __enter__(self) -> HubService:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- building --

    def _main_map(self) -> ParamMap:
        if not self.reuse:
            self._map = ParamMap(self.systemid)
        return self._map

    def _agencies_map(self) -> ParamMap:
        if self._agency_map is None or not self.reuse:
            self._agency_map = ParamMap(self.systemid)
        return self._agency_map

    def prepare(
        self,
        operation: str,
        params: str | Mapping[str, object] = "{}",
        *,
        body: bytes = b"",
        method: str = "POST",
        content_type: str = JSON_TYPE,
        stack: Stack = "apache",
        hash_file_of: bytes | None = None,
        sign: bool = True,
        expect_continue: bool | None = None,
        param_map: ParamMap | None = None,
        tamper: Tamper | None = None,
    ) -> PreparedRequest:
        """Build one call's request and update the map as the SDK does; nothing is sent.

        ``params`` is the DMS's JSON parameter string (or a mapping); ``hash_file_of`` adds
        ``hash-file`` of those bytes (sendEdoc); ``sign=False`` leaves out the auth headers
        (``downloadEdoc2``'s bug); ``expect_continue`` defaults to Apache's rule (a POST with a
        non-empty body); ``param_map`` defaults to the main map.
        """
        tamper = tamper or self.tamper or Tamper()
        pmap = param_map or self._main_map()
        pmap.put("Content-Type", content_type)
        pmap.update(params)
        if hash_file_of is not None:
            pmap.put("hash-file", tamper.hash_file or hash_file(hash_file_of))
        entries = pmap.shuffled(self.rng)
        headers = [("Content-Type", content_type), ("User-Agent", USER_AGENT)]
        headers += [(PREFIX + k, v) for k, v in entries]
        if sign:
            headers += sign_entries(entries, tamper.secret or self.secret)
        if expect_continue is None:
            expect_continue = stack == "apache" and method == "POST" and bool(body)
        dropped = {name.lower() for name in tamper.drop_headers}
        expect = expect_continue and "expect" not in dropped
        if stack == "jdk":
            headers += [("Host", self._host_header), ("Accept", JDK_ACCEPT)]
            headers += [("Connection", "keep-alive")]
        if method == "POST":
            headers.append(("Content-Length", "<length>"))
        if stack == "apache":
            headers += [("Host", self._host_header), ("Connection", "Keep-Alive")]
            if expect_continue:
                headers.append(("Expect", "100-continue"))
            headers.append(("Accept-Encoding", "gzip,deflate"))
        body = body if tamper.body is None else tamper.body
        headers = [
            (k, str(len(body)) if k == "Content-Length" else v)
            for k, v in headers
            if k.lower() not in dropped
        ]
        for name, value in tamper.set_headers.items():
            at = [i for i, (k, _) in enumerate(headers) if k.lower() == name.lower()]
            if at:
                headers[at[0]] = (headers[at[0]][0], value)
            else:
                headers.append((name, value))
        if any(c in v for _, v in headers for c in "\r\n"):
            raise ValueError("a header value holds CR or LF (the JDK refuses it)")
        path = self._base_path + "/" + operation
        if stack == "apache" and self.apache_collapse_slashes:
            path = re.sub("/{2,}", "/", path)
        return PreparedRequest(
            operation=operation,
            method=method,
            path=path,
            stack=stack,
            headers=headers,
            body=body,
            signed=entries,
            expect_continue=expect,
            jdk_charset=self.jdk_header_charset,
        )

    # -- sending --

    def _connect(self) -> _Connection:
        sock = socket.create_connection((self._host, self._port), timeout=self.timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._ssl is not None:
                sock = self._ssl.wrap_socket(sock, server_hostname=self._host)
        except BaseException:
            sock.close()
            raise
        return _Connection(sock, _Reader(sock))

    def _exchange_head(self, conn: _Connection, req: PreparedRequest) -> tuple[_Head, bool]:
        """Write the request and read up to the final response head; True if 100 came first."""
        got_100 = False
        if req.expect_continue:
            conn.sock.sendall(req.head_bytes())
            if conn.reader.wait(self.continue_timeout):
                head = _read_head(conn.reader)
                if head.status >= 200:  # answered before the body: the body is never sent
                    return head, False
                if head.status != 100:
                    raise HubProtocolError(f"unexpected {head.status} before the body")
                got_100 = True
            conn.sock.sendall(req.body)
        else:
            conn.sock.sendall(req.to_bytes())
        while (head := _read_head(conn.reader)).status < 200:  # a late 100 is skipped
            pass
        return head, got_100

    def _finish(
        self,
        req: PreparedRequest,
        conn: _Connection,
        head: _Head,
        got_100: bool,
        attempts: int,
        reused: bool,
    ) -> tuple[HubResult, bool]:
        """Read the body and parse it; also say whether the connection may be kept."""
        body, reusable = _read_body(conn.reader, head, req.method)
        jdk = req.stack == "jdk"
        if not jdk:
            body = _content_decode(body, _first(head.headers, "Content-Encoding"))
        text = body.decode("ascii" if jdk else "utf-8", errors="replace")
        result = parse_response(req.operation, text, body)
        result.raw, result.body_text, result.http_status = body, text, head.status
        result.headers, result.got_100_continue = head.headers, got_100
        result.attempts, result.connection_reused, result.request = attempts, reused, req
        if match := re.search(r"timeout=(\d+)", _first(head.headers, "Keep-Alive") or ""):
            conn.keepalive = float(match[1])
        return result, reusable

    def _failed(self, req: PreparedRequest, exc: BaseException, attempts: int) -> HubResult:
        return HubResult(operation=req.operation, error=exc, attempts=attempts, request=req)

    def _jdk_connection(self, fresh: bool) -> tuple[_Connection, bool]:
        conn, self._jdk_conn = self._jdk_conn, None
        if conn is not None and not fresh and time.monotonic() - conn.last_used < conn.keepalive:
            return conn, True
        if conn is not None:
            conn.close()
        return self._connect(), False

    def _send_jdk(
        self, req: PreparedRequest, *, resend: bool = True, fresh: bool = False
    ) -> HubResult:
        """HttpURLConnection: keep-alive, and one resend on a new connection when the connection
        fails before a response (not on a timeout, not when connecting)."""
        attempts = 0
        try:
            conn, reused = self._jdk_connection(fresh)
        except (OSError, ValueError) as exc:
            return self._failed(req, exc, attempts)
        while True:
            attempts += 1
            try:
                head, _ = self._exchange_head(conn, req)
                break
            except (OSError, ValueError) as exc:
                conn.close()
                if not resend or attempts > 1 or isinstance(exc, TimeoutError | ValueError):
                    return self._failed(req, exc, attempts)
            try:
                conn, reused = self._connect(), False
            except OSError as exc:
                return self._failed(req, exc, attempts)
        try:
            result, reusable = self._finish(req, conn, head, False, attempts, reused)
        except (OSError, ValueError, EOFError, zlib.error) as exc:
            conn.close()
            return self._failed(req, exc, attempts)
        if reusable:
            conn.last_used = time.monotonic()
            self._jdk_conn = conn
        else:
            conn.close()
        return result

    def _send_apache(self, req: PreparedRequest) -> HubResult:
        """Apache HttpClient: a new connection per call and per attempt; retries as documented."""
        attempt = 0
        while True:
            attempt += 1
            conn = None
            try:
                conn = self._connect()
                head, got_100 = self._exchange_head(conn, req)
                break
            except (OSError, ValueError) as exc:
                if conn is not None:
                    conn.close()
                if attempt >= self.retry or not _apache_retries(exc):
                    return self._failed(req, exc, attempt)
        try:
            result, _ = self._finish(req, conn, head, got_100, attempt, False)
        except (OSError, ValueError, EOFError, zlib.error) as exc:
            conn.close()
            return self._failed(req, exc, attempt)
        if req.operation in _LEFT_OPEN:
            self._left_open.append(conn)  # the SDK never closes these clients
        else:
            conn.close()
        return result

    def send(self, req: PreparedRequest) -> HubResult:
        """Send a prepared request on its stack (the JDK stack resends once, Apache retries)."""
        return self._send_jdk(req) if req.stack == "jdk" else self._send_apache(req)

    def call(
        self,
        operation: str,
        params: str | Mapping[str, object] = "{}",
        *,
        body: bytes = b"",
        method: str = "POST",
        tamper: Tamper | None = None,
    ) -> HubResult:
        """Any Apache-stack operation (getSynchronizeUnit, registerAgency, deleteAgency, ...)."""
        req = self.prepare(operation, params, body=body, method=method, tamper=tamper)
        return self.send(req)

    # -- the operations (§1, §5) --

    def _prepare_send_edoc(
        self,
        from_: str,
        file_bytes: bytes,
        messagetype: str,
        to: str | Sequence[str] | None,
        servicetype: str,
        tamper: Tamper | None,
        *,
        body: bytes | None = None,
        content_type: str = OCTET_TYPE,
    ) -> PreparedRequest:
        """sendEdoc's request; ``body`` defaults to the SDK's: the file and one CRLF."""
        params: str | Mapping[str, object] = from_
        if not _is_params(from_):
            to_text = None if to is None else _to_json_text(to)
            params = {
                "from": from_,
                "servicetype": servicetype,
                "messagetype": messagetype,
                **_kw(to=to_text),
            }
        stack: Stack = "jdk" if body is None else "apache"
        return self.prepare(
            "sendEdoc",
            params,
            body=file_bytes + b"\r\n" if body is None else body,
            content_type=content_type,
            stack=stack,
            hash_file_of=file_bytes,
            expect_continue=False,
            tamper=tamper,
        )

    def send_edoc(
        self,
        from_: str,
        file_bytes: bytes,
        messagetype: str = "edoc",
        to: str | Sequence[str] | None = None,
        *,
        servicetype: str = "eDoc",
        tamper: Tamper | None = None,
    ) -> HubResult:
        """sendEdoc on the JDK stack: body = file + CRLF, ``hash-file`` unpadded (§5.1).

        ``from_`` may instead be the DMS's whole JSON parameter string (then messagetype, to and
        servicetype are not used). A str ``to`` is one agency, sent as ``"x"`` with its quotes.
        """
        req = self._prepare_send_edoc(from_, file_bytes, messagetype, to, servicetype, tamper)
        return self._send_jdk(req)

    def send_edoc_twice(
        self,
        from_: str,
        file_bytes: bytes,
        messagetype: str = "edoc",
        to: str | Sequence[str] | None = None,
        *,
        servicetype: str = "eDoc",
        tamper: Tamper | None = None,
        wait_first: bool = True,
    ) -> tuple[HubResult, HubResult]:
        """The JDK's double send on purpose: one request, its same bytes written twice.

        The first goes on the kept-alive connection (or a new one) and its answer is read when
        ``wait_first`` (else the connection is closed right after writing, the answer lost as
        in the real race); the second goes on a new connection, as the JDK's resend does.
        """
        req = self._prepare_send_edoc(from_, file_bytes, messagetype, to, servicetype, tamper)
        if wait_first:
            first = self._send_jdk(req, resend=False)
        else:
            first = HubResult(operation=req.operation, attempts=1, request=req)
            try:
                conn, first.connection_reused = self._jdk_connection(False)
                try:
                    conn.sock.sendall(req.to_bytes())
                finally:
                    conn.close()
            except OSError as exc:
                first.error = exc
        return first, self._send_jdk(req, resend=False, fresh=True)

    def send_edoc_multipart(
        self,
        from_: str,
        file_bytes: bytes,
        messagetype: str = "edoc",
        to: str | Sequence[str] | None = None,
        *,
        servicetype: str = "eDoc",
        filename: str = "edoc.edxml",
        boundary: str | None = None,
        tamper: Tamper | None = None,
    ) -> HubResult:
        """sendEdoc as other clients send it: real multipart/form-data, part ``file_doc``.

        Signed like the SDK (``hash-file`` of the file); sent on the Apache-like stack without
        ``Expect``.
        """
        boundary = boundary or f"----hubsdk{self.rng.getrandbits(64):016x}"
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file_doc"; '
                f'filename="{filename}"\r\nContent-Type: {OCTET_TYPE}\r\n\r\n'
            ).encode()
            + file_bytes
            + f"\r\n--{boundary}--\r\n".encode()
        )
        content_type = f"multipart/form-data; boundary={boundary}"
        req = self._prepare_send_edoc(
            from_, file_bytes, messagetype, to, servicetype, tamper,
            body=body, content_type=content_type,
        )  # fmt: skip
        return self._send_apache(req)

    def get_received_edoc_list(
        self, messagetype: str = "edoc", *, servicetype: str = "eDoc", tamper: Tamper | None = None
    ) -> HubResult:
        """getReceivedEdocList: the inbox of ``edoc`` or ``status`` packages (§5.2)."""
        params = (
            messagetype
            if _is_params(messagetype)
            else _kw(servicetype=servicetype, messagetype=messagetype)
        )
        return self.call("getReceivedEdocList", params, tamper=tamper)

    def get_edoc(
        self, doc_id: str | int, file_path: str | None = None, *, tamper: Tamper | None = None
    ) -> HubResult:
        """getEdoc: body ``{}`` with ``Expect: 100-continue``; ``data`` base64-decoded (§5.3).

        ``doc_id`` may instead be the DMS's JSON string: ``'{"docId":"abc","filePath":"/in"}'``.
        """
        params = doc_id if _is_params(doc_id) else _kw(docId=doc_id, filePath=file_path)
        return self.call("getEdoc", params, body=b"{}", tamper=tamper)

    def update_status(
        self, doc_id: str | int, status: str | None = None, *, tamper: Tamper | None = None
    ) -> HubResult:
        """updateStatus: ``done``, ``fail`` or ``processing``; body ``{}`` (§5.4)."""
        params = doc_id if _is_params(doc_id) else _kw(docId=doc_id, status=status)
        return self.call("updateStatus", params, body=b"{}", tamper=tamper)

    def get_sent_edoc_list(
        self,
        doc_id: str | int,
        messagetype: str = "edoc",
        *,
        servicetype: str = "eDoc",
        tamper: Tamper | None = None,
    ) -> HubResult:
        """getSentEdocList: one row per receiver of sendEdoc's ``DocId`` (§5.5)."""
        params = (
            doc_id
            if _is_params(doc_id)
            else _kw(servicetype=servicetype, messagetype=messagetype, docId=doc_id)
        )
        return self.call("getSentEdocList", params, tamper=tamper)

    def get_agencies_list(self, *, tamper: Tamper | None = None) -> HubResult:
        """getAgenciesList from the SDK's separate object: its own map and timestamp (§5.6)."""
        req = self.prepare("getAgenciesList", param_map=self._agencies_map(), tamper=tamper)
        return self.send(req)

    def count_receive_edoc(self, params: str = "{}", *, tamper: Tamper | None = None) -> HubResult:
        """countReceiveEdoc: POST with body ``{}``; ``count`` (§5.7)."""
        return self.call("countReceiveEdoc", params, body=b"{}", tamper=tamper)

    def count_receive_status(
        self, params: str = "{}", *, tamper: Tamper | None = None
    ) -> HubResult:
        """countReceiveStatus: POST with body ``{}``; ``count`` (§5.7)."""
        return self.call("countReceiveStatus", params, body=b"{}", tamper=tamper)

    def download_edoc(
        self, doc_id: str | int, file_path: str | None = None, *, tamper: Tamper | None = None
    ) -> HubResult:
        """downloadEdoc: GET; the raw body, ``SUCCESS`` when non-empty (§5.7)."""
        params = doc_id if _is_params(doc_id) else _kw(docId=doc_id, filePath=file_path)
        return self.call("downloadEdoc", params, method="GET", tamper=tamper)

    def download_edoc2(self, doc_id: str | int, file_path: str | None = None) -> HubResult:
        """downloadEdoc2: GET with the parameter headers but no auth headers (the SDK's bug)."""
        params = doc_id if _is_params(doc_id) else _kw(docId=doc_id, filePath=file_path)
        req = self.prepare("downloadEdoc2", params, method="GET", sign=False)
        return self.send(req)

    def get_agencies_list_qd20(
        self, level: str | int = "1", *, tamper: Tamper | None = None
    ) -> HubResult:
        """getAgenciesListQD20: agencies of ``level``, items with ``code102`` (§5.7)."""
        params = level if _is_params(level) else {"level": level}
        return self.call("getAgenciesListQD20", params, tamper=tamper)
