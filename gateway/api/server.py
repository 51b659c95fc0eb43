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

:mod:`gateway.api.auth` turns that into an :class:`~gateway.trust.caller.Identity`.

The same protocol classes hold every connection to its budget (``[server]``: head size and
count, head and body timeouts; :mod:`gateway.api.limits`), and answer a request that is not
HTTP/1.1 with ``REQUEST_MALFORMED`` in the API's JSON error shape, not uvicorn's plain text.

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
import json
import os
import socket
import ssl
import tempfile
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any, ClassVar, Final, Literal, TypeVar, cast

import uvicorn
from cryptography import x509
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.api.limits import (
    DEFAULT_LIMITS,
    Budget,
    HTTPLimits,
    WatchedH11Connection,
    close_when_unread,
)
from gateway.errors import ConfigError, RequestMalformed
from gateway.settings import Settings
from gateway.trust.binding import rfc4514_name

__all__ = [
    "GatewayServer",
    "TLSH11Protocol",
    "TLSHttpToolsProtocol",
    "make_config",
    "make_hub_config",
    "make_hub_ssl_context",
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


class _Budgeted:
    """What both protocol classes do with their connection's :class:`Budget` around uvicorn's
    own handling (listed first in their bases, so ``super()`` is uvicorn's protocol)."""

    _budget: Budget

    def connection_lost(self, exc: Exception | None) -> None:
        self._budget.stop()
        super().connection_lost(exc)  # type: ignore[misc]

    def data_received(self, data: bytes) -> None:
        if not self._budget.before_data():
            return
        super().data_received(data)  # type: ignore[misc]
        self._budget.after_data(len(data))

    def send_400_response(self, msg: str) -> None:
        # the parser refused the bytes: answered in the API's shape, not uvicorn's plain text
        # (nothing more is written when a limit has refused the connection already)
        self._budget.refuse(RequestMalformed(), reason="malformed")

    def shutdown(self) -> None:
        # The node is stopping. uvicorn closes an idle kept-alive connection, but a TLS close
        # waits for the peer's close_notify, which an idle client never sends: the stop then
        # waited out the whole graceful timeout and logged "Cancel 0 running task(s), timeout
        # graceful shutdown exceeded" at every SIGTERM. Nothing is in flight on an idle
        # connection, so it is dropped at once; one with a request in flight finishes it.
        cycle = getattr(self, "cycle", None)
        idle = cycle is None or cycle.response_complete
        super().shutdown()  # type: ignore[misc]
        transport = getattr(self, "transport", None)
        if idle and transport is not None:
            transport.abort()


class TLSHttpToolsProtocol(_Budgeted, HttpToolsProtocol):
    """uvicorn's httptools protocol, adding the ASGI ``tls`` extension to each request scope
    and holding the connection to :class:`HTTPLimits`.

    Usage: ``uvicorn.Config(app, http=TLSHttpToolsProtocol, ...)`` (done by
    :func:`make_config`, which also sets :attr:`limits` from ``[server]``).
    """

    limits: ClassVar[HTTPLimits] = DEFAULT_LIMITS
    _tls: dict[str, Any] | None = None
    _budget: Budget

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._tls = tls_extension(transport)
        self._budget = Budget(self, self.limits)
        self.app = close_when_unread(self.app, self._budget)
        self._budget.start()

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


class TLSH11Protocol(_Budgeted, H11Protocol):
    """uvicorn's h11 protocol, adding the ASGI ``tls`` extension to each request scope and
    holding the connection to :class:`HTTPLimits`.

    Usage: ``make_config(app, settings, http="h11")``. h11 builds the scope and starts the
    request in one step, so the extension is added by wrapping this connection's app.
    """

    limits: ClassVar[HTTPLimits] = DEFAULT_LIMITS
    _budget: Budget

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._budget = Budget(self, self.limits)
        self.conn = WatchedH11Connection(self._budget, self.limits)
        tls = tls_extension(transport)
        if tls is not None:
            self.app = _with_tls(self.app, tls)
        self.app = close_when_unread(self.app, self._budget)
        self._budget.start()


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
    return _listener(
        app,
        settings,
        host=settings.server.host,
        port=settings.server.port,
        context=make_ssl_context(settings),
        keep_alive=KEEP_ALIVE_SECONDS,
        lifespan="on",
        http=http,
    )


def _listener(
    app: Any,
    settings: Settings,
    *,
    host: str,
    port: int,
    context: ssl.SSLContext | None,
    keep_alive: int,
    lifespan: Literal["on", "off"],
    http: Literal["httptools", "h11"],
) -> uvicorn.Config:
    """A listener's uvicorn configuration: the gateway's protocol classes and ``[server]``
    limits, this address, TLS context and keep-alive."""
    limits = HTTPLimits.from_settings(settings.server)
    protocol: type[asyncio.Protocol] = (
        _with_limits(TLSHttpToolsProtocol, limits)
        if http == "httptools"
        else _with_limits(TLSH11Protocol, limits)
    )
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol,
        loop="uvloop",
        ws="none",
        lifespan=lifespan,
        proxy_headers=False,
        forwarded_allow_ips=[],
        server_header=False,
        access_log=settings.logging.access_log,
        timeout_keep_alive=keep_alive,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        h11_max_incomplete_event_size=limits.max_header_bytes,
        log_config=None,
        log_level=settings.logging.level,
        ssl_context_factory=((lambda _config, _default: context) if context is not None else None),
    )


def make_hub_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of the hub API's own listener (``[hub] port``): server authentication
    only, no client certificate asked for (the SDK has none), with ``[hub] cert`` and ``key``
    or else ``[tls]``'s. None (plain HTTP) only behind a trusted TLS-terminating proxy, like
    the node's listener. Raises :class:`ConfigError` on an unreadable file or no certificate.

    Usage: ``context = make_hub_ssl_context(settings)``
    """
    hub, tls = settings.hub, settings.tls
    cert, key = (hub.cert, hub.key) if hub.cert is not None else (tls.cert, tls.key)
    if cert is None:
        if not tls.trusted_proxies:
            raise ConfigError(
                "the hub API's listener has no certificate: set [hub] cert and key (or [tls] "
                "cert and key), or run behind a TLS-terminating proxy listed in [tls] "
                "trusted_proxies",
                detail={"key": "hub.cert"},
            )
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_NONE
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load the hub listener's certificate {cert} / key {key}: {exc}",
            detail={"key": "hub.cert" if hub.cert is not None else "tls.cert"},
        ) from None
    return context


def make_hub_config(
    app: Any, settings: Settings, *, http: Literal["httptools", "h11"] = "httptools"
) -> uvicorn.Config | None:
    """The uvicorn configuration of the hub API's own listener, loaded; None when the hub API
    has none (``[hub] port = 0``: it is served on the node's listener).

    The same protocol classes and ``[server]`` limits as the node's listener; its own TLS
    context (:func:`make_hub_ssl_context`) and ``[hub] keepalive_timeout``. It is served by
    the node's :class:`GatewayServer`, in the same processes and event loop.
    """
    hub = settings.hub
    if not hub.enabled or hub.port == 0:
        return None
    config = _listener(
        app,
        settings,
        host=hub.host or settings.server.host,
        port=hub.port,
        context=make_hub_ssl_context(settings),
        keep_alive=hub.keepalive_timeout,
        lifespan="off",
        http=http,
    )
    config.load()
    return config


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
        hub: uvicorn.Config | None = None,
        hub_socket: socket.socket | None = None,
    ) -> None:
        super().__init__(config)
        self.ready_file = ready_file
        self.on_started = on_started
        #: the hub API's own listener (:func:`make_hub_config`), on ``hub_socket`` when the
        #: supervisor bound it, else bound here
        self.hub = hub
        self.hub_socket = hub_socket

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self.hub is not None:
            await self._start_hub(self.hub)
        if self.started and self.ready_file is not None:
            _write_ready(
                self.ready_file,
                self.servers[0].sockets[0],
                is_ssl=self.config.is_ssl,
                hub=self.servers[1].sockets[0] if self.hub is not None else None,
            )
        if self.started and self.on_started is not None:
            self.on_started()

    async def _start_hub(self, hub: uvicorn.Config) -> None:
        """Listen for the hub API too: its own protocol instances, served by this server's
        loop, counted in its connections (so a stop closes them like the others)."""

        def create_protocol(_loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
            return hub.http_protocol_class(  # type: ignore[call-arg]
                config=hub,
                server_state=self.server_state,
                app_state=self.lifespan.state,
                _loop=_loop,
            )

        loop = asyncio.get_running_loop()
        if self.hub_socket is not None:
            listener = await loop.create_server(
                create_protocol, sock=self.hub_socket, ssl=hub.ssl, backlog=hub.backlog
            )
        else:
            listener = await loop.create_server(
                create_protocol, host=hub.host, port=hub.port, ssl=hub.ssl, backlog=hub.backlog
            )
        self.servers.append(listener)

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


def _write_ready(path: Path, sock: Any, *, is_ssl: bool, hub: Any = None) -> None:
    """Write ``{"pid", "host", "port", "scheme"}`` for the listening ``sock`` atomically, and
    ``hub_port`` when the hub API listens on a socket of its own."""
    host, port = sock.getsockname()[:2]
    info = {
        "pid": os.getpid(),
        "host": host,
        "port": port,
        "scheme": "https" if is_ssl else "http",
    }
    if hub is not None:
        info["hub_port"] = hub.getsockname()[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(info, out)
    os.replace(tmp, path)
