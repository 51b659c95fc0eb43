"""The HTTPS listener: uvicorn with client certificates handed to the app (ASGI ``tls``).

uvicorn 0.54 verifies a client certificate but does not pass it to the app. The protocol
classes here read the peer certificate ONCE per connection (``connection_made``, after the
handshake) and put it in every request's scope as the ASGI TLS extension
(https://asgi.readthedocs.io/en/latest/specs/tls.html)::

    scope["extensions"]["tls"] = {
        "server_cert": None,
        "client_cert_chain": ["-----BEGIN CERTIFICATE-----...", ...],  # leaf first; [] if none
        "client_cert_name": "serialNumber=000.00.00.H49,CN=...,O=...,C=VN",
        "client_cert_error": None,
        "tls_version": 0x0304,
        "cipher_suite": 0x1302,
    }

:mod:`gateway.api.auth` turns that into an :class:`~gateway.api.auth.Identity`.

The same protocol classes hold every connection to a budget (``[server]``, docs/transport.md):
a request head of at most ``max_header_bytes`` and ``max_headers`` headers (431
``REQUEST_HEADERS_TOO_LARGE``), sent within ``header_timeout`` seconds of connecting or of its
first byte, and a body that never stalls for ``body_timeout`` seconds while the app waits for it
(408 ``REQUEST_TIMEOUT``). Either refusal is answered in the API's JSON error shape when an
answer is still possible, then the connection is closed. uvicorn has a head-size limit for h11
only and no read timeouts at all; slow clients were held open forever.

Two deployments (docs/transport.md):

* ``[tls] cert`` set: HTTPS here, client certificate OPTIONAL at the handshake (so
  ``/healthz`` answers without one) and verified against ``[tls] client_ca`` (default: the
  ``[trust]`` anchors and intermediates); routes demand an identity themselves.
* ``[tls] cert`` unset: plain HTTP behind a TLS-terminating proxy, allowed only when
  ``[tls] trusted_proxies`` is set; the proxy's certificate header is then believed from
  those addresses only.

Usage::

    run(app, settings)                      # blocking: one listener, no background jobs
    uvicorn.Server(make_config(app, settings)).run()

.. warning:: uvicorn's ``proxy_headers`` is switched off: with it on, any client could claim
   a trusted proxy's address in ``X-Forwarded-For`` and have its certificate header believed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http
import json
import os
import socket
import ssl
import tempfile
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Final, Literal, Protocol, TypeVar, cast

import h11
import structlog
import uvicorn
from cryptography import x509
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.errors import ConfigError, HeadersTooLarge, RequestError, RequestTimeout
from gateway.settings import ServerSettings, Settings
from gateway.trust.binding import rfc4514_name

__all__ = [
    "GatewayServer",
    "HTTPLimits",
    "TLSH11Protocol",
    "TLSHttpToolsProtocol",
    "make_config",
    "make_ssl_context",
    "run",
    "tls_extension",
]

#: seconds an idle keep-alive connection stays open: a new TLS handshake costs ~5 ms
KEEP_ALIVE_SECONDS: Final = 30
#: seconds a stopping node waits for open connections: a peer's idle keep-alive TLS connection
#: does not answer the TLS close, so without a bound SIGTERM waited until SIGKILL
GRACEFUL_SHUTDOWN_SECONDS: Final = 3

_TLS_VERSIONS: Final = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]

log = structlog.get_logger("gateway.server")


# --- the TLS extension -----------------------------------------------------------------------


def tls_extension(transport: Any) -> dict[str, Any] | None:
    """The ASGI ``tls`` extension for one connection, or None when it is not TLS.

    Usage: ``tls_extension(transport)`` in a protocol's ``connection_made``.

    The peer certificate has already been verified by the TLS library against the client CAs
    (a certificate that fails is refused at the handshake), so ``client_cert_error`` is
    always None. Before Python 3.13 only the leaf is available, not the rest of the chain the
    client sent.
    """
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    chain: list[str] = []
    name: str | None = None
    if der:
        ders = [der]
        sent = getattr(ssl_object, "get_unverified_chain", None)  # Python 3.13+
        if sent is not None:
            extra = [c for c in (sent() or []) if isinstance(c, bytes) and c != der]
            ders += extra
        chain = [ssl.DER_cert_to_PEM_cert(d) for d in ders]
        name = rfc4514_name(x509.load_der_x509_certificate(der).subject)
    cipher = ssl_object.cipher()
    return {
        "server_cert": None,
        "client_cert_chain": chain,
        "client_cert_name": name,
        "client_cert_error": None,
        "tls_version": _TLS_VERSIONS.get(ssl_object.version() or ""),
        "cipher_suite": _cipher_suites().get(cipher[0]) if cipher else None,
    }


@functools.cache
def _cipher_suites() -> dict[str, int]:
    """OpenSSL cipher name -> IANA 16-bit cipher suite value (what the ASGI spec asks for)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with contextlib.suppress(ssl.SSLError):
        context.set_ciphers("ALL:@SECLEVEL=0")
    return {c["name"]: c["id"] & 0xFFFF for c in context.get_ciphers()}


def _per_request(tls: dict[str, Any]) -> dict[str, Any]:
    # a fresh dict (and list) per request: an app that edits its scope cannot change the
    # identity seen by the next request on the same connection
    return {**tls, "client_cert_chain": list(tls["client_cert_chain"])}


# --- the per-connection budget ---------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class HTTPLimits:
    """What one connection may cost the listener (``[server]`` keys of the same names).

    Usage: ``HTTPLimits.from_settings(settings.server)`` (done by :func:`make_config`).
    """

    #: largest request head (request line plus headers), in bytes
    max_header_bytes: int
    #: most request headers
    max_headers: int
    #: seconds to send a whole request head, from connecting or from its first byte
    header_timeout: float
    #: seconds a body may stall while the app waits for it
    body_timeout: float

    @classmethod
    def from_settings(cls, server: ServerSettings) -> HTTPLimits:
        return cls(
            max_header_bytes=server.max_header_bytes,
            max_headers=server.max_headers,
            header_timeout=server.header_timeout,
            body_timeout=server.body_timeout,
        )


_DEFAULT_LIMITS: Final = HTTPLimits.from_settings(ServerSettings())


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a connection just refused."""


class _Connection(Protocol):
    """What :class:`_Budget` needs of uvicorn's protocol objects (both have these)."""

    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    flow: FlowControl
    client: tuple[str, int] | None

    @property
    def cycle(self) -> Any: ...


class _Budget:
    """The limits of one connection: head size and count, head and body read timeouts.

    The protocol classes call it from their parser callbacks. Time spent waiting for the
    app (an upload queued behind others, reading paused by flow control, a ``100-continue``
    not yet sent) is never the client's fault and never counts against it.
    """

    def __init__(self, connection: _Connection, limits: HTTPLimits) -> None:
        self._conn = connection
        self._limits = limits
        #: between requests or reading a head (not a body)
        self._in_head = True
        #: the data chunk being parsed began inside a head
        self._chunk_in_head = True
        #: head bytes seen by the parser's callbacks, and bytes of chunks wholly inside a head
        #: (a header still being received is buffered by the parser, not passed on)
        self._head_bytes = 0
        self._head_raw = 0
        self._headers = 0
        #: a request whose body the client is still sending
        self.body_pending = False
        self.refused = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """The connection is made (after the TLS handshake): its first head is due."""
        self._arm_head()

    def stop(self) -> None:
        self._cancel_head()
        self._cancel_body()

    # --- data and parser events ------------------------------------------------------------

    def before_data(self) -> bool:
        """Bytes arrived; False when the connection is refused and they are to be dropped."""
        if self.refused:
            return False
        self._chunk_in_head = self._in_head
        if self._in_head and self._head_timer is None:
            # the first byte of a request on a kept-alive connection: an idle one is closed by
            # uvicorn's keep-alive timer instead
            self._arm_head()
        return True

    def after_data(self, size: int) -> None:
        if self.refused or not (self._chunk_in_head and self._in_head):
            return
        self._head_raw += size
        if self._head_raw > self._limits.max_header_bytes:
            self.refuse(self.too_large("bytes"), reason="head_bytes")

    def message_begin(self) -> None:
        self._head_bytes = 0
        self._headers = 0

    def url(self, size: int) -> None:
        self._count(size, headers=0)

    def header(self, size: int) -> None:
        self._count(size + 4, headers=1)  # ": " and CRLF

    def head(self, target: int, headers: Sequence[tuple[bytes, bytes]]) -> None:
        """A whole head at once (h11): its target and headers."""
        self.message_begin()
        self._count(target + sum(len(n) + len(v) + 4 for n, v in headers), len(headers))

    def head_complete(self) -> None:
        self._in_head = False
        self._chunk_in_head = False  # the rest of this chunk is body, or the next request
        self._head_raw = 0
        self._cancel_head()
        self.body_pending = True
        self._arm_body()

    def body_chunk(self) -> None:
        if self.body_pending:
            self._arm_body()

    def message_complete(self) -> None:
        self.body_pending = False
        self._cancel_body()
        self._in_head = True

    # --- refusing --------------------------------------------------------------------------

    def refuse(self, error: RequestError, *, reason: str) -> None:
        """Answer ``error`` if an answer is still possible, then close the connection."""
        if self.refused:
            return
        self.refused = True
        self.stop()
        conn = self._conn
        log.info(
            "http.refused",
            code=error.code,
            reason=reason,
            peer=conn.client[0] if conn.client else None,
        )
        transport = conn.transport
        if transport.is_closing():
            return
        cycle = conn.cycle
        if cycle is None or cycle.response_complete:
            transport.write(_error_response(error))
        elif not cycle.response_started:
            # the app is waiting for this body: it now sees a disconnect, and what it sends
            # is dropped (uvicorn skips sends on a disconnected cycle)
            cycle.disconnected = True
            cycle.message_event.set()
            transport.write(_error_response(error))
        transport.close()

    def _count(self, size: int, headers: int) -> None:
        self._head_bytes += size
        self._headers += headers
        if self._headers > self._limits.max_headers:
            self.refuse(self.too_large("headers"), reason="headers")
            raise _Refused
        if self._head_bytes > self._limits.max_header_bytes:
            self.refuse(self.too_large("bytes"), reason="head_bytes")
            raise _Refused

    def too_large(self, what: Literal["bytes", "headers"]) -> HeadersTooLarge:
        if what == "headers":
            limit = self._limits.max_headers
            message = f"the request has more than {limit} headers"
        else:
            limit = self._limits.max_header_bytes
            message = f"the request head passes {limit} bytes"
        return HeadersTooLarge(message, detail={"limit": limit, "unit": what})

    # --- timers ----------------------------------------------------------------------------

    def _arm_head(self) -> None:
        self._cancel_head()
        self._head_timer = self._conn.loop.call_later(
            self._limits.header_timeout, self._head_timed_out
        )

    def _cancel_head(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _arm_body(self) -> None:
        self._cancel_body()
        self._body_timer = self._conn.loop.call_later(
            self._limits.body_timeout, self._body_timed_out
        )

    def _cancel_body(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        seconds = self._limits.header_timeout
        error = RequestTimeout(
            f"the request head did not arrive within {seconds:g} s",
            detail={"limit": seconds, "part": "head"},
        )
        self.refuse(error, reason="head_timeout")

    def _body_timed_out(self) -> None:
        self._body_timer = None
        cycle = self._conn.cycle
        if self._conn.flow.read_paused or getattr(cycle, "waiting_for_100_continue", False):
            # the server is not reading (the app has not asked for the body yet): not the
            # client's stall
            self._arm_body()
            return
        seconds = self._limits.body_timeout
        error = RequestTimeout(
            f"the request body stalled for {seconds:g} s",
            detail={"limit": seconds, "part": "body"},
        )
        self.refuse(error, reason="body_timeout")


def _error_response(error: RequestError) -> bytes:
    """A whole HTTP/1.1 response carrying ``error`` as ``{code, message, detail}``; closes."""
    body = json.dumps(error.to_dict(), separators=(",", ":")).encode("utf-8")
    status = error.http_status
    head = (
        f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def _close_when_unread(app: ASGIApp, budget: _Budget) -> ASGIApp:
    """Answer ``connection: close`` when the app responds before the client sent its body.

    A route refuses (401, 403, 413) without reading the body; the rest of it would otherwise be
    received and thrown away for as long as the client cares to send it.
    """

    async def guarded(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        read = False

        async def receive_whole() -> Message:
            nonlocal read
            message: Message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                read = True
            return message

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start" and not read and budget.body_pending:
                headers = [*message.get("headers", ()), (b"connection", b"close")]
                message = {**message, "headers": headers}
            await send(message)

        await app(scope, receive_whole, send_closing)

    return guarded


class TLSHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, adding the ASGI ``tls`` extension to each request scope
    and holding the connection to :class:`HTTPLimits`.

    Usage: ``uvicorn.Config(app, http=TLSHttpToolsProtocol, ...)`` (done by
    :func:`make_config`, which also sets :attr:`limits` from ``[server]``).
    """

    limits: ClassVar[HTTPLimits] = _DEFAULT_LIMITS
    _tls: dict[str, Any] | None = None
    _budget: _Budget

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._tls = tls_extension(transport)
        self._budget = _Budget(self, self.limits)
        self.app = _close_when_unread(self.app, self._budget)
        self._budget.start()

    def connection_lost(self, exc: Exception | None) -> None:
        self._budget.stop()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._budget.before_data():
            return
        super().data_received(data)
        self._budget.after_data(len(data))

    def send_400_response(self, msg: str) -> None:
        # a limit raised _Refused inside the parser: the answer is already written
        if not self._budget.refused:
            super().send_400_response(msg)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._budget.message_begin()
        if self._tls is not None:
            scope: Scope = self.scope  # type: ignore[assignment]
            scope.setdefault("extensions", {})["tls"] = _per_request(self._tls)

    def on_url(self, url: bytes) -> None:
        self._budget.url(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._budget.header(len(name) + len(value))
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._budget.head_complete()

    def on_body(self, body: bytes) -> None:
        self._budget.body_chunk()
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._budget.message_complete()
        super().on_message_complete()


class _WatchedConnection(h11.Connection):
    """h11's server connection, telling a :class:`_Budget` about each event it parses."""

    def __init__(self, budget: _Budget, limits: HTTPLimits) -> None:
        # h11 refuses an incomplete head past this size itself (RemoteProtocolError, hint 431)
        super().__init__(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)
        self._budget = budget

    def next_event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        try:
            event = super().next_event()
        except h11.RemoteProtocolError as exc:
            if exc.error_status_hint != 431:
                raise
            self._budget.refuse(self._budget.too_large("bytes"), reason="head_bytes")
            return h11.NEED_DATA
        if isinstance(event, h11.Request):
            try:
                # a head that arrives in one read is parsed whole, past the incomplete limit
                self._budget.head(len(event.method) + len(event.target), event.headers)
            except _Refused:
                return h11.NEED_DATA
            self._budget.head_complete()
        elif isinstance(event, h11.Data):
            self._budget.body_chunk()
        elif isinstance(event, h11.EndOfMessage):
            self._budget.message_complete()
        return event


class TLSH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, adding the ASGI ``tls`` extension to each request scope and
    holding the connection to :class:`HTTPLimits`.

    Usage: ``make_config(app, settings, http="h11")``. h11 builds the scope and starts the
    request in one step, so the extension is added by wrapping this connection's app.
    """

    limits: ClassVar[HTTPLimits] = _DEFAULT_LIMITS
    _budget: _Budget

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._budget = _Budget(self, self.limits)
        self.conn = _WatchedConnection(self._budget, self.limits)
        tls = tls_extension(transport)
        if tls is not None:
            self.app = _with_tls(self.app, tls)
        self.app = _close_when_unread(self.app, self._budget)
        self._budget.start()

    def connection_lost(self, exc: Exception | None) -> None:
        self._budget.stop()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._budget.before_data():
            return
        super().data_received(data)
        self._budget.after_data(len(data))

    def send_400_response(self, msg: str) -> None:
        if not self._budget.refused:
            super().send_400_response(msg)


def _with_tls(app: Any, tls: dict[str, Any]) -> Any:
    async def with_tls(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            scope.setdefault("extensions", {})["tls"] = _per_request(tls)
        await app(scope, receive, send)

    return with_tls


# --- configuration ---------------------------------------------------------------------------


def make_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The server TLS context from ``[tls]``, or None for plain HTTP behind a trusted proxy.

    Usage: ``context = make_ssl_context(settings)``.

    Client certificates are OPTIONAL at the handshake and, when sent, must chain to
    ``[tls] client_ca`` (default: ``[trust] anchors`` plus ``[trust] intermediates`` to help
    build paths); revocation is checked later, by the app. Raises :class:`ConfigError` when a
    file is unreadable, when no client CA is configured, or when ``[tls] cert`` is unset and no
    trusted proxy is configured.
    """
    tls = settings.tls
    if tls.cert is None:
        if not tls.trusted_proxies:
            raise ConfigError(
                "[tls] cert is unset and [tls] trusted_proxies is empty: refusing to serve plain "
                "HTTP; set [tls] cert and key, or run behind a TLS-terminating proxy and list it "
                "in [tls] trusted_proxies",
                detail={"key": "tls.cert"},
            )
        return None
    client_cas = list(tls.client_ca) or [*settings.trust.anchors, *settings.trust.intermediates]
    if not client_cas:
        raise ConfigError(
            "no CA to verify client certificates: set [tls] client_ca or [trust] anchors",
            detail={"key": "tls.client_ca"},
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_OPTIONAL
    # A client chain must end at a self-signed CA we loaded; an intermediate loaded only to
    # help build paths must not become an anchor by itself.
    context.verify_flags &= ~getattr(ssl, "VERIFY_X509_PARTIAL_CHAIN", 0)
    try:
        context.load_cert_chain(tls.cert, tls.key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load the server certificate {tls.cert} / key {tls.key}: {exc}",
            detail={"key": "tls.cert"},
        ) from None
    for path in client_cas:
        try:
            context.load_verify_locations(cafile=path)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot load the client CA file {path}: {exc}", detail={"key": "tls.client_ca"}
            ) from None
    return context


def make_config(
    app: Any, settings: Settings, *, http: Literal["httptools", "h11"] = "httptools"
) -> uvicorn.Config:
    """The uvicorn configuration of a gateway listener (TLS, protocol class, keep-alive).

    Usage: ``uvicorn.Server(make_config(app, settings)).run()``.

    uvloop event loop, httptools parser with the ``tls`` extension and the ``[server]`` limits
    (:class:`HTTPLimits`; h11 gets both too), keep-alive on
    (:data:`KEEP_ALIVE_SECONDS`), no websockets, and uvicorn's ``X-Forwarded-*`` handling OFF
    (``scope["client"]`` is always the TCP peer: :mod:`gateway.api.auth` relies on it). Logging
    is left to the process (uvicorn does not install its own configuration).
    """
    context = make_ssl_context(settings)
    limits = HTTPLimits.from_settings(settings.server)
    protocol: type[asyncio.Protocol] = (
        _with_limits(TLSHttpToolsProtocol, limits)
        if http == "httptools"
        else _with_limits(TLSH11Protocol, limits)
    )
    return uvicorn.Config(
        app,
        host=settings.server.host,
        port=settings.server.port,
        http=protocol,
        loop="uvloop",
        ws="none",
        lifespan="on",
        proxy_headers=False,
        forwarded_allow_ips=[],
        server_header=False,
        access_log=settings.logging.access_log,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        h11_max_incomplete_event_size=limits.max_header_bytes,
        log_config=None,
        log_level=settings.logging.level,
        ssl_context_factory=((lambda _config, _default: context) if context is not None else None),
    )


_P = TypeVar("_P", TLSHttpToolsProtocol, TLSH11Protocol)


def _with_limits(base: type[_P], limits: HTTPLimits) -> type[_P]:
    """``base`` with these limits: uvicorn builds protocols from a class and its own config."""
    if limits == base.limits:
        return base
    return cast(type[_P], type(base.__name__, (base,), {"limits": limits}))


# --- running ---------------------------------------------------------------------------------


class GatewayServer(uvicorn.Server):
    """uvicorn's server, writing a ready file once it listens.

    Usage: ``GatewayServer(make_config(app, settings), ready_file=Path("ready.json")).run()``.

    The ready file holds ``{"pid", "host", "port", "scheme"}``; it is written atomically after
    the socket is listening and removed when the server stops.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        ready_file: Path | None = None,
        on_started: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(config)
        self.ready_file = ready_file
        self.on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self.ready_file is not None:
            _write_ready(self.ready_file, self.servers[0].sockets[0], is_ssl=self.config.is_ssl)
        if self.started and self.on_started is not None:
            self.on_started()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().shutdown(sockets)
        finally:
            if self.ready_file is not None:
                self.ready_file.unlink(missing_ok=True)


def run(app: Any, settings: Settings, *, ready_file: Path | None = None) -> None:
    """Serve ``app`` until SIGINT/SIGTERM (blocking): the listener alone, without the node's
    background jobs (``gateway serve`` runs those too: :mod:`gateway.api.supervisor`).

    Usage: ``run(create_app(settings), settings, ready_file=Path("/run/gateway.ready"))``.

    Raises :class:`ConfigError` before binding anything when ``[tls]`` is inconsistent (see
    :func:`make_ssl_context`).
    """
    GatewayServer(make_config(app, settings), ready_file=ready_file).run()


def _write_ready(path: Path, sock: Any, *, is_ssl: bool) -> None:
    """Write ``{"pid", "host", "port", "scheme"}`` for the listening ``sock`` atomically."""
    host, port = sock.getsockname()[:2]
    info = {
        "pid": os.getpid(),
        "host": host,
        "port": port,
        "scheme": "https" if is_ssl else "http",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(info, out)
    os.replace(tmp, path)
