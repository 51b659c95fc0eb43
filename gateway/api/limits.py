"""What one connection may cost the listener: the ``[server]`` budget, kept by the protocol
classes of :mod:`gateway.api.server` from their parser callbacks.

A request head of at most ``max_header_bytes`` and ``max_headers`` headers (431
``REQUEST_HEADERS_TOO_LARGE``), sent within ``header_timeout`` seconds of connecting or of its
first byte, and a body that never stalls for ``body_timeout`` seconds while the app waits for it
(408 ``REQUEST_TIMEOUT``); a request that is not HTTP/1.1 at all is ``REQUEST_MALFORMED`` (400).
Each refusal is answered in the API's JSON error shape when an answer is still possible, then
the connection is closed. uvicorn has a head-size limit for h11 only and no read timeouts at
all; slow clients were held open forever (docs/transport.md).

Usage::

    budget = Budget(protocol, HTTPLimits.from_settings(settings.server))
    budget.start()                      # in connection_made, after the TLS handshake
    budget.refuse(RequestMalformed(), reason="malformed")
"""

from __future__ import annotations

import asyncio
import http
import json
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

import h11
import structlog
from uvicorn.protocols.http.flow_control import FlowControl

from gateway.errors import HeadersTooLarge, RequestError, RequestTimeout
from gateway.settings import ServerSettings

__all__ = [
    "DEFAULT_LIMITS",
    "Budget",
    "HTTPLimits",
    "Refused",
    "WatchedH11Connection",
    "close_when_unread",
    "error_response",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]

log = structlog.get_logger("gateway.server")


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


DEFAULT_LIMITS: Final = HTTPLimits.from_settings(ServerSettings())


class Refused(Exception):
    """Raised from a parser callback to stop parsing a connection just refused.

    Usage: ``except Refused: return h11.NEED_DATA`` around a :class:`Budget` count.
    """


class _Connection(Protocol):
    """What :class:`Budget` needs of uvicorn's protocol objects (both have these)."""

    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    flow: FlowControl
    client: tuple[str, int] | None

    @property
    def cycle(self) -> Any: ...


class Budget:
    """The limits of one connection: head size and count, head and body read timeouts.

    The protocol classes call it from their parser callbacks. Time spent waiting for the
    app (an upload queued behind others, reading paused by flow control, a ``100-continue``
    not yet sent) is never the client's fault and never counts against it.

    Usage: ``self._budget = Budget(self, self.limits)`` in a protocol's ``connection_made``,
    then ``start()``; ``stop()`` in ``connection_lost``.
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
            transport.write(error_response(error))
        elif not cycle.response_started:
            # the app is waiting for this body: it now sees a disconnect, and what it sends
            # is dropped (uvicorn skips sends on a disconnected cycle)
            cycle.disconnected = True
            cycle.message_event.set()
            transport.write(error_response(error))
        transport.close()

    def _count(self, size: int, headers: int) -> None:
        self._head_bytes += size
        self._headers += headers
        if self._headers > self._limits.max_headers:
            self.refuse(self.too_large("headers"), reason="headers")
            raise Refused
        if self._head_bytes > self._limits.max_header_bytes:
            self.refuse(self.too_large("bytes"), reason="head_bytes")
            raise Refused

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


def error_response(error: RequestError) -> bytes:
    """A whole HTTP/1.1 response carrying ``error`` as ``{code, message, detail}``; closes.

    Usage: ``transport.write(error_response(RequestTimeout()))``.
    """
    body = json.dumps(error.to_dict(), separators=(",", ":")).encode("utf-8")
    status = error.http_status
    head = (
        f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def close_when_unread(app: ASGIApp, budget: Budget) -> ASGIApp:
    """Answer ``connection: close`` when the app responds before the client sent its body.

    A route refuses (401, 403, 413) without reading the body; the rest of it would otherwise be
    received and thrown away for as long as the client cares to send it.

    Usage: ``self.app = close_when_unread(self.app, self._budget)`` per connection.
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


class WatchedH11Connection(h11.Connection):
    """h11's server connection, telling a :class:`Budget` about each event it parses.

    Usage: ``self.conn = WatchedH11Connection(budget, limits)`` in an h11 protocol.
    """

    def __init__(self, budget: Budget, limits: HTTPLimits) -> None:
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
            except Refused:
                return h11.NEED_DATA
            self._budget.head_complete()
        elif isinstance(event, h11.Data):
            self._budget.body_chunk()
        elif isinstance(event, h11.EndOfMessage):
            self._budget.message_complete()
        return event
