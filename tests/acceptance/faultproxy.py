"""A fault-injecting HTTPS proxy between two gateway nodes, for test_lost_responses.py.

The proxy stands on one link of the tree, in one direction: the calling node's directory points
its neighbour's URL at the proxy, which forwards each relay request to the real neighbour::

    child node ──mTLS──▶ FaultProxy ──TLS, client certificate in a header──▶ parent node

* **TLS from the caller** is terminated here with a server certificate of the deployment's PKI
  (the tests use the neighbour's own node certificate: a TLS-terminating proxy in front of a node
  presents that node's certificate); the caller's client certificate is REQUIRED and verified
  against the deployment's root CA.
* **Towards the neighbour** the proxy opens its own TLS connection (it verifies the neighbour's
  server certificate, and presents none) from ``source_address`` (127.0.0.2 on the loopback:
  an address of its own, so that the neighbour lists it alone in ``[tls] trusted_proxies``), and
  passes the caller's certificate in the ``[tls] proxy_cert_header`` header, URL-encoded PEM, as
  nginx's ``$ssl_client_escaped_cert``. The neighbour verifies that certificate again and takes
  the caller for the node it names (:mod:`gateway.api.auth`); a header sent by the caller itself
  is removed first.
* **HTTP/1.1**: requests with a ``Content-Length`` body (chunked requests are refused), kept
  alive; answers with ``Content-Length``, chunked or close-delimited bodies, passed on byte for
  byte. One connection to the neighbour per connection from the caller.

Faults, chosen per relay request by a seeded :class:`random.Random` (``first`` forces the first
few, so that every kind happens at least once whatever the traffic):

* ``drop``: the request is forwarded and the neighbour's whole answer read (it has committed),
  then the caller's connection is closed without an answer (aborted: no TLS close either);
* ``delay``: the same, but the answer is held ``delay`` seconds (longer than the caller's peer
  timeout, so the caller gives up although the neighbour committed); it is still written if the
  caller is still there;
* ``duplicate``: the request is forwarded twice, the second after the first's answer; the
  caller gets the second answer (a repeat: the neighbour's original receipts, ``duplicate``);
* ``pass``: forwarded, answered.

A failure to reach the neighbour is answered ``502`` (the caller retries) and counted.

Usage::

    with FaultProxy(
        port=free_port(), upstream="https://127.0.0.1:8443", server_cert=cert, server_key=key,
        client_ca=ca, rates=FaultRates(drop=0.25, delay=0.1, duplicate=0.15), delay=2.5, seed=7,
    ) as proxy:
        ...                                  # the child's parent URL is proxy.url
        proxy.set_rates(FaultRates())        # faults off
        print(proxy.counts())                # requests=.. dropped=.. delayed=.. duplicated=..
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import random
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlsplit

__all__ = ["Fault", "FaultCounts", "FaultProxy", "FaultRates", "HttpError"]

#: largest message head read (request or response line plus headers)
HEAD_LIMIT = 256 * 1024
#: what the proxy answers when it cannot reach the neighbour (the caller retries a 5xx)
_BAD_GATEWAY_BODY = (
    b'{"code": "PROXY_UPSTREAM_UNAVAILABLE", "message": "fault proxy", "detail": {}}'
)
BAD_GATEWAY = (
    b"HTTP/1.1 502 Bad Gateway\r\ncontent-type: application/json\r\n"
    + f"content-length: {len(_BAD_GATEWAY_BODY)}\r\nconnection: close\r\n\r\n".encode()
    + _BAD_GATEWAY_BODY
)


class Fault(enum.StrEnum):
    """What the proxy does to one request."""

    PASS = "pass"
    DROP = "drop"
    DELAY = "delay"
    DUPLICATE = "duplicate"


@dataclass(frozen=True, slots=True)
class FaultRates:
    """Probabilities of each fault per relay request (the rest pass untouched)."""

    drop: float = 0.0
    delay: float = 0.0
    duplicate: float = 0.0

    def __post_init__(self) -> None:
        rates = (self.drop, self.delay, self.duplicate)
        if any(r < 0 for r in rates) or sum(rates) > 1:
            raise ValueError(f"fault rates must be >= 0 and add up to at most 1: {self}")

    def choose(self, rng: random.Random) -> Fault:
        """One fault drawn from ``rng`` (a single draw per request)."""
        draw = rng.random()
        for fault, rate in (
            (Fault.DROP, self.drop),
            (Fault.DELAY, self.delay),
            (Fault.DUPLICATE, self.duplicate),
        ):
            if draw < rate:
                return fault
            draw -= rate
        return Fault.PASS

    def __str__(self) -> str:
        return f"drop={self.drop:.0%} delay={self.delay:.0%} duplicate={self.duplicate:.0%}"


@dataclass(slots=True)
class FaultCounts:
    """What a proxy did: requests from the caller, and what became of them."""

    #: requests read from the caller
    requests: int = 0
    #: requests written to the neighbour (a duplicated one counts twice)
    forwarded: int = 0
    #: answered untouched
    passed: int = 0
    #: the neighbour answered, the caller got nothing
    dropped: int = 0
    #: the neighbour answered, the caller got it late or never
    delayed: int = 0
    #: sent twice to the neighbour, answered once
    duplicated: int = 0
    #: the neighbour could not be reached or answered nonsense: 502 to the caller
    upstream_errors: int = 0

    def __add__(self, other: FaultCounts) -> FaultCounts:
        return FaultCounts(
            **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        )

    def __str__(self) -> str:
        return (
            f"requests={self.requests} dropped={self.dropped} delayed={self.delayed} "
            f"duplicated={self.duplicated} passed={self.passed} forwarded={self.forwarded} "
            f"upstream_errors={self.upstream_errors}"
        )


class HttpError(Exception):
    """A message the proxy cannot read (or will not forward)."""


@dataclass(slots=True)
class Message:
    """One HTTP/1.1 request or response, its body exactly as it came (chunked stays chunked)."""

    #: the start line and headers, without the blank line that ends them
    head: bytes
    start: str
    headers: list[tuple[str, str]]
    body: bytes
    #: a response whose body ran until the connection closed
    close_delimited: bool = False

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        wanted = name.lower()
        return next((v for k, v in self.headers if k.lower() == wanted), None)

    @property
    def keep_alive(self) -> bool:
        """Whether the connection may carry another message after this one."""
        if self.close_delimited:
            return False
        tokens = {t.strip().lower() for t in (self.header("connection") or "").split(",")}
        if self.start.startswith("HTTP/"):  # a status line: "HTTP/1.1 200 OK"
            version = self.start.split(" ", 1)[0]
        else:  # a request line: "POST /path HTTP/1.1"
            version = self.start.rsplit(" ", 1)[-1]
        if version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens

    def with_header(self, name: str, value: str) -> Message:
        """A copy with every ``name`` header removed and one ``name: value`` added."""
        wanted = name.lower()
        headers = [(k, v) for k, v in self.headers if k.lower() != wanted] + [(name, value)]
        head = "\r\n".join([self.start, *(f"{k}: {v}" for k, v in headers)]).encode("latin-1")
        return Message(head=head, start=self.start, headers=headers, body=self.body)

    def encode(self) -> bytes:
        return self.head + b"\r\n\r\n" + self.body


async def read_message(
    reader: asyncio.StreamReader, *, response_to: str | None = None
) -> Message | None:
    """The next request (``response_to`` None) or the response to a ``response_to`` request
    (its method); None when the connection ends cleanly before a message starts."""
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise HttpError("the connection closed inside a message head") from None
    except asyncio.LimitOverrunError:
        raise HttpError("message head too large") from None
    head = raw[:-4]
    start, *lines = head.decode("latin-1").split("\r\n")
    headers: list[tuple[str, str]] = []
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise HttpError(f"malformed header line {line[:80]!r}")
        headers.append((name, value.strip()))
    message = Message(head=head, start=start, headers=headers, body=b"")
    encoding = (message.header("transfer-encoding") or "").lower()
    length = message.header("content-length")
    if response_to is None:
        if len(start.split(" ")) != 3:
            raise HttpError(f"malformed request line {start[:80]!r}")
        if encoding:
            raise HttpError("chunked requests are not supported by the fault proxy")
        message.body = await reader.readexactly(_length(length)) if length else b""
        return message
    parts = start.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise HttpError(f"malformed status line {start[:80]!r}")
    status = int(parts[1])
    if status < 200 or status in (204, 304) or response_to == "HEAD":
        if status < 200:
            raise HttpError(f"interim response {status} not supported by the fault proxy")
        return message
    if "chunked" in encoding:
        message.body = await _read_chunked(reader)
    elif length is not None:
        message.body = await reader.readexactly(_length(length))
    else:
        message.body = await reader.read()
        message.close_delimited = True
    return message


def _length(value: str | None) -> int:
    if value is None or not value.strip().isdigit():
        raise HttpError(f"bad content-length {value!r}")
    return int(value)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    """A chunked body, raw (sizes, chunks and trailers as they came)."""
    out = bytearray()
    while True:
        line = await reader.readuntil(b"\r\n")
        out += line
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise HttpError(f"bad chunk size line {line[:40]!r}") from None
        if size == 0:
            while True:
                trailer = await reader.readuntil(b"\r\n")
                out += trailer
                if trailer == b"\r\n":
                    return bytes(out)
        out += await reader.readexactly(size + 2)


_Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class FaultProxy:
    """A TLS-terminating HTTP/1.1 proxy that drops, delays and duplicates relay requests.

    Runs its own asyncio loop in a daemon thread; :meth:`start` returns once it listens.
    Thread-safe: :meth:`set_rates` and :meth:`counts` may be called from any thread.
    """

    def __init__(
        self,
        *,
        port: int,
        upstream: str,
        server_cert: Path,
        server_key: Path,
        client_ca: Path,
        rates: FaultRates = FaultRates(),
        delay: float = 2.0,
        seed: int = 0,
        first: Sequence[Fault] = (),
        cert_header: str = "x-client-cert",
        source_address: str = "127.0.0.2",
        listen_address: str = "127.0.0.1",
        faulty_paths: Sequence[str] = ("/api/v1/relay",),
        upstream_timeout: float = 30.0,
        name: str = "faultproxy",
    ) -> None:
        target = urlsplit(upstream)
        if target.scheme != "https" or target.hostname is None or target.port is None:
            raise ValueError(f"upstream must be https://host:port, not {upstream!r}")
        self.name = name
        self.port = port
        self.listen_address = listen_address
        self.upstream = upstream
        self._upstream_host, self._upstream_port = target.hostname, target.port
        self.delay = delay
        self.seed = seed
        self._header = cert_header
        self._source = source_address
        self._faulty_paths = tuple(faulty_paths)
        self._upstream_timeout = upstream_timeout
        self._rng = random.Random(seed)
        self._rates = rates
        self._first = list(first)
        self._counts = FaultCounts()
        self._lock = threading.Lock()
        #: unexpected errors in the proxy itself (the test shows them)
        self.errors: list[str] = []

        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.minimum_version = ssl.TLSVersion.TLSv1_2
        server.load_cert_chain(str(server_cert), str(server_key))
        server.load_verify_locations(cafile=str(client_ca))
        server.verify_mode = ssl.CERT_REQUIRED  # the caller must present a deployment cert
        self._server_context = server
        self._client_context = ssl.create_default_context(cafile=str(client_ca))

        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- control (any thread) ------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The URL the calling node's directory names for its neighbour."""
        return f"https://{self.listen_address}:{self.port}"

    def set_rates(self, rates: FaultRates) -> None:
        """Inject these faults from the next request on (``FaultRates()``: none)."""
        with self._lock:
            self._rates = rates
            if not (rates.drop or rates.delay or rates.duplicate):
                self._first.clear()

    def counts(self) -> FaultCounts:
        """A snapshot of what the proxy has done so far."""
        with self._lock:
            return FaultCounts(
                **{f.name: getattr(self._counts, f.name) for f in fields(FaultCounts)}
            )

    def start(self, timeout: float = 10.0) -> None:
        """Listen on ``port`` (in a thread of its own); raises if it cannot."""
        self._thread = threading.Thread(target=self._run, name=f"{self.name}-loop", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._loop is None or self._stopping is None:
            raise RuntimeError(f"{self.name} did not start: {self.errors}")

    def stop(self) -> None:
        """Stop listening, close every connection, end the thread."""
        loop, stopping, thread = self._loop, self._stopping, self._thread
        if loop is not None and stopping is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop ended meanwhile
                loop.call_soon_threadsafe(stopping.set)
        if thread is not None:
            thread.join(timeout=15)
        self._thread = None

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- the loop's thread ---------------------------------------------------------------------

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        loop.set_exception_handler(self._loop_error)
        try:
            loop.run_until_complete(self._main(loop))
        except BaseException as exc:  # reported through self.errors, not lost in the thread
            self.errors.append(f"loop: {type(exc).__name__}: {exc}")
        finally:
            self._ready.set()
            loop.close()

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, ssl.SSLError | ConnectionError):
            return  # a caller whose certificate is refused, a reset: the caller sees it
        self.errors.append(f"{context.get('message')}: {exc!r}")

    async def _main(self, loop: asyncio.AbstractEventLoop) -> None:
        stopping = asyncio.Event()
        server = await asyncio.start_server(
            self._handle,
            self.listen_address,
            self.port,
            ssl=self._server_context,
            limit=HEAD_LIMIT,
            reuse_address=True,
        )
        self._loop, self._stopping = loop, stopping
        self._ready.set()
        try:
            await stopping.wait()
        finally:
            server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 5)

    def _choose(self, request: Message) -> Fault:
        method, target, _ = request.start.split(" ", 2)
        path = target.split("?", 1)[0]
        with self._lock:
            self._counts.requests += 1
            if method != "POST" or path not in self._faulty_paths:
                return Fault.PASS
            if self._first:
                return self._first.pop(0)
            return self._rates.choose(self._rng)

    def _count(self, **add: int) -> None:
        with self._lock:
            for name, n in add.items():
                setattr(self._counts, name, getattr(self._counts, name) + n)

    async def _connect(self) -> _Stream:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                self._upstream_host,
                self._upstream_port,
                ssl=self._client_context,
                server_hostname=self._upstream_host,
                local_addr=(self._source, 0),
                limit=HEAD_LIMIT,
            ),
            timeout=self._upstream_timeout,
        )
        return reader, writer

    async def _exchange(self, upstream: _Stream, request: Message) -> Message:
        reader, writer = upstream
        writer.write(request.encode())
        await writer.drain()
        self._count(forwarded=1)
        method = request.start.split(" ", 1)[0]
        response = await asyncio.wait_for(
            read_message(reader, response_to=method), timeout=self._upstream_timeout
        )
        if response is None:
            raise HttpError("the neighbour closed the connection without an answer")
        return response

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        upstream: _Stream | None = None
        abort = False
        try:
            ssl_object = writer.get_extra_info("ssl_object")
            der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
            if not der:  # CERT_REQUIRED makes this impossible; never forward anonymously
                abort = True
                return
            identity = quote(ssl.DER_cert_to_PEM_cert(der), safe="")
            while True:
                request = await read_message(reader)
                if request is None:
                    return
                fault = self._choose(request)
                forwarded = request.with_header(self._header, identity)
                try:
                    if upstream is None:
                        upstream = await self._connect()
                    response = await self._exchange(upstream, forwarded)
                    if fault is Fault.DUPLICATE:
                        if not response.keep_alive:
                            await _close(upstream[1])
                            upstream = await self._connect()
                        response = await self._exchange(upstream, forwarded)
                except (OSError, HttpError, asyncio.IncompleteReadError, TimeoutError):
                    self._count(upstream_errors=1)
                    writer.write(BAD_GATEWAY)
                    await writer.drain()
                    return
                if fault is Fault.DROP:
                    self._count(dropped=1)
                    abort = True  # the neighbour committed; the caller hears nothing
                    return
                if fault is Fault.DELAY:
                    self._count(delayed=1)
                    await asyncio.sleep(self.delay)
                    if reader.at_eof() or writer.is_closing():
                        abort = True  # the caller gave up meanwhile
                        return
                elif fault is Fault.DUPLICATE:
                    self._count(duplicated=1)
                else:
                    self._count(passed=1)
                writer.write(response.encode())
                await writer.drain()
                if not (request.keep_alive and response.keep_alive):
                    return
                if not response.keep_alive:
                    await _close(upstream[1])
                    upstream = None
        except (OSError, HttpError, asyncio.IncompleteReadError, TimeoutError):
            abort = True  # the caller went away or spoke nonsense
        except asyncio.CancelledError:
            abort = True
            raise
        except Exception as exc:
            self.errors.append(f"handler: {type(exc).__name__}: {exc}")
            abort = True
        finally:
            if upstream is not None:
                await _close(upstream[1], abort=abort)
            await _close(writer, abort=abort)
            if task is not None:
                self._tasks.discard(task)


async def _close(writer: asyncio.StreamWriter, *, abort: bool = False) -> None:
    """Close a connection: aborted (no TLS close, at once) or closed politely (briefly waited)."""
    if abort:
        writer.transport.abort()
        return
    writer.close()
    with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
        await asyncio.wait_for(writer.wait_closed(), 2)
