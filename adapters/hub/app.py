"""The hub-compatible API of a node: what a DMS built on the national SDK calls, unchanged but
for its endpoint URL, systemid and secret (HUB-PROTOCOL.md; docs/hub.md).

Served by ``gateway serve`` under ``[hub] prefix`` on the node's HTTPS listener: the
:class:`HubPrefix` middleware takes every request whose path, repeated ``/`` folded, is under
the prefix, before the node's own routes see it. Or, with ``[hub] port``, on a listener of its
own that serves nothing else (:class:`HubOnly`; ``gateway.api.server.make_hub_config``).
TLS authenticates the server only (the SDK presents no client certificate); each request
authenticates with its signed headers (:func:`gateway.node.systems.authenticate`), before a
byte of its body is read.

Every outcome is the trio (:mod:`adapters.hub.wire`): success, refusal (the stable code in
``ErrorCode``), unknown operation (404), wrong method (405), authentication failure, a request
that passed ``[hub] request_deadline``, a crash. sendEdoc always answers HTTP 200 with a
``DocId`` (``""`` on FAIL); ``downloadEdoc`` answers the raw bytes, or an empty body.

Usage::

    app.add_middleware(HubPrefix, hub=HubApp(node, upload=edge.lanes.upload, upload_limit=n))
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from adapters.hub.operations import READS, as_agency, download
from adapters.hub.wire import check_hash_file, parse_to, send_body, trio_fail, trio_ok
from gateway.errors import (
    BodyTooLarge,
    GatewayError,
    InternalError,
    MethodNotAllowed,
    PathNotFound,
    RequestTimeout,
)
from gateway.evidence import audit
from gateway.node.container import Node
from gateway.node.ingest import Accepted, Attest, ingest_document, ingest_status
from gateway.node.systems import Authenticated, authenticate
from gateway.trust.caller import Identity

__all__ = ["HubApp", "HubOnly", "HubPrefix"]

log = structlog.get_logger("gateway.hub")

T = TypeVar("T")

#: how the node's lanes run an upload: (caller, read the body, work on it) -> result
Upload = Callable[
    [Identity, Callable[[], Awaitable[bytes]], Callable[[bytes], Any]], Awaitable[Any]
]

_JSON = "application/json; charset=utf-8"
_SLASHES = re.compile(r"/{2,}")
_SIGN_HEADER = b"xroadvnpt-sign-header"
_HASH_HEADER = b"xroadvnpt-hash-header"
#: downloadEdoc answers raw bytes; the SDK's downloadEdoc2 sends no auth headers (its bug), so
#: it is refused by authentication like any unsigned call, with the empty body of a failure
_DOWNLOADS = ("downloadEdoc", "downloadEdoc2")


async def _direct(
    caller: Identity, read: Callable[[], Awaitable[bytes]], work: Callable[[bytes], T]
) -> T:
    """An upload without the node's lanes (tests, tools): read, then work in a thread."""
    data = await read()
    return await run_in_threadpool(work, data)


class HubApp:
    """The hub protocol's operations for one node (an ASGI app for one operation at a time)."""

    def __init__(
        self,
        node: Node,
        *,
        upload: Upload | None = None,
        upload_limit: int,
    ) -> None:
        self.node = node
        self.prefix = node.settings.hub.prefix.rstrip("/") or "/"
        self.upload: Upload = upload or _direct
        self.upload_limit = upload_limit
        self.deadline = node.settings.hub.request_deadline

    async def serve(self, operation: str, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one request for ``operation`` (the path below the prefix)."""
        request = Request(scope, receive)
        try:
            response = await asyncio.wait_for(
                self._answer(operation, request), timeout=self.deadline
            )
        except TimeoutError:
            log.warning("hub.deadline", operation=operation, seconds=self.deadline)
            response = self._fail(
                operation,
                RequestTimeout(f"no answer within {self.deadline:g} s; try again later"),
            )
        except Exception as exc:  # the last resort: a trio, never a traceback
            log.error("hub.internal_error", operation=operation, error=type(exc).__name__)
            response = self._fail(operation, InternalError("the node failed to answer"))
        await response(scope, receive, send)

    async def _answer(self, operation: str, request: Request) -> Response:
        method = request.method.upper()
        known = operation in READS or operation in ("sendEdoc", *_DOWNLOADS)
        if not known:
            return self._fail(
                operation,
                PathNotFound(f"no operation {operation!r} here", detail={"path": operation}),
                status=404,
            )
        wanted = "GET" if operation in _DOWNLOADS else "POST"
        if method != wanted:
            return self._fail(
                operation,
                MethodNotAllowed(f"{operation} takes {wanted}, not {method}"),
                status=405,
            )
        try:
            auth = await run_in_threadpool(self._authenticate, request)
        except GatewayError as exc:  # audited by authenticate
            return self._fail(operation, exc)
        try:
            if operation == "sendEdoc":
                return await self._send(request, auth)
            if operation in _DOWNLOADS:
                data = await run_in_threadpool(download, self.node, auth)
                return Response(data, media_type="application/octet-stream")
            _, work = READS[operation]
            body = await self._read(request, limit=65536)
            extra = await run_in_threadpool(work, self.node, auth, body)
            return Response(trio_ok(**extra), media_type=_JSON)
        except GatewayError as exc:
            await run_in_threadpool(self._audit_refusal, auth, operation, exc)
            return self._fail(operation, exc)

    def _authenticate(self, request: Request) -> Authenticated:
        sign = hash_ = None
        for name, value in request.scope["headers"]:
            lowered = name.lower()
            if lowered == _SIGN_HEADER:
                sign = value
            elif lowered == _HASH_HEADER:
                hash_ = value.decode("latin-1")
        client = request.client.host if request.client else None
        return authenticate(self.node, sign, hash_, remote=client)

    async def _read(self, request: Request, *, limit: int) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise BodyTooLarge(
                f"the body is {declared} bytes; this node accepts at most {limit}",
                detail={"size": int(declared), "limit": limit},
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"the body passes {limit} bytes", detail={"limit": limit})
            chunks.append(chunk)
        return b"".join(chunks)

    async def _send(self, request: Request, auth: Authenticated) -> Response:
        """sendEdoc: the body (minus its CRLF) checked against ``hash-file``, then ingested as
        the ``from`` agency; a repeat is answered with the first ``DocId``."""
        sender = (auth.param("from") or "").strip()
        caller = as_agency(auth, sender)
        kind = (auth.param("messagetype") or "edoc").strip().lower()
        ingest = ingest_status if kind == "status" else ingest_document
        # the system's policy: full verification, or an intake attestation (docs/hub.md)
        attest = Attest(auth.system.systemid) if auth.system.policy == "attest" else None
        parse_to(auth.param("to"))  # informative: the edXML To list decides
        content_type = request.headers.get("content-type")
        node = self.node
        limit = self.upload_limit + 65536  # the file, and a multipart body's framing

        async def read() -> bytes:
            return await self._read(request, limit=limit)

        def work(raw: bytes) -> Accepted:
            file = send_body(raw, content_type)
            check_hash_file(file, auth.param("hash-file"))
            return ingest(node, file, caller=caller, attest=attest)

        accepted: Accepted = await self.upload(caller, read, work)
        log.info(
            "hub.sent",
            system=auth.system.systemid,
            doc=accepted.id,
            kind=accepted.kind.value,
            duplicate=accepted.duplicate,
        )
        return Response(trio_ok(DocId=accepted.id), media_type=_JSON)

    def _audit_refusal(self, auth: Authenticated, operation: str, exc: GatewayError) -> None:
        """A refusal after authentication, audited once: one ingest already audited
        (``refuse``) is not written again."""
        if exc.audited:
            return
        with self.node.writing() as conn:
            audit.append(
                conn,
                event="hub_refuse",
                actor=f"hub:{auth.system.systemid}",
                subject=None,
                data={"operation": operation, "code": exc.code},
            )

    def _fail(self, operation: str, exc: GatewayError, *, status: int | None = None) -> Response:
        if operation in _DOWNLOADS:
            return Response(b"", status_code=status or exc.http_status)  # any body is "SUCCESS"
        if operation == "sendEdoc":
            # the JDK stack parses error bodies like 200 ones; 200 is the safe one
            return Response(trio_fail(exc, DocId=""), status_code=200, media_type=_JSON)
        return Response(trio_fail(exc), status_code=status or exc.http_status, media_type=_JSON)


class HubPrefix:
    """ASGI middleware: requests under the hub prefix (repeated ``/`` folded) go to the hub."""

    def __init__(self, app: ASGIApp, hub: HubApp) -> None:
        self.app = app
        self.hub = hub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = _SLASHES.sub("/", scope["path"])
            prefix = self.hub.prefix
            if path == prefix or path.startswith(prefix + "/"):
                operation = path[len(prefix) :].strip("/")
                await self.hub.serve(operation, scope, receive, send)
                return
        await self.app(scope, receive, send)


class HubOnly:
    """The ASGI app of the hub API's own listener (``[hub] port``): every request is the
    hub's. A path under the prefix names its operation; any other path (the node's own API is
    not served here) is answered like an unknown operation, a 404 trio."""

    def __init__(self, hub: HubApp) -> None:
        self.hub = hub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = _SLASHES.sub("/", scope["path"])
        prefix = self.hub.prefix
        if prefix == "/" or path == prefix or path.startswith(prefix + "/"):
            operation = path[len(prefix) :].strip("/")
        else:
            operation = path
        await self.hub.serve(operation, scope, receive, send)
