"""The agency API (FastAPI): a thin edge over :mod:`gateway.node.ingest` and
:mod:`gateway.node.inbox`.

Every refusal is JSON ``{code, message, detail}`` with the error's HTTP status; a body is never
logged. Agencies authenticate with their client certificate (:mod:`gateway.api.auth`).

**Authenticate first.** No route declares a body parameter, so FastAPI never reads a body on
its own (it would, before any dependency runs); :func:`create_app` refuses to build an app where
one does. Each route takes the :class:`~starlette.requests.Request` and reads its body itself,
in its code, after its dependencies have authenticated the caller (``Caller``) and authorised it
(``Admin``: the node's own certificate; ``Neighbour``: this node's parent or a child). So an
anonymous or unauthorised caller is answered without a byte of its body read, whatever its size
or framing. JSON bodies are capped at ``[limits] max_json_bytes`` while they stream in and their
nesting at ``max_json_depth`` before they are parsed (:mod:`gateway.jsonsafe`).

**Nothing unexpected is a 500 with a traceback.** Every input path maps its failures to a
stable code; an exception that escapes anyway is logged (``api.internal_error``: type and place,
never the message, which may quote input) and answered ``INTERNAL_ERROR`` in the same shape.

Usage::

    app = create_app(node)
    # served by `gateway serve` (gateway.api.supervisor), or gateway.api.server.run(app, settings)

FastAPI reads the route signatures at run time, so this module does not use postponed
annotations (``Caller`` is local to :func:`create_app`).
"""

import contextlib
import json
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Annotated, Any, Final, TypeVar

import structlog
from anyio import CapacityLimiter, Lock, sleep, to_thread
from fastapi import Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from gateway import __version__, jsonsafe
from gateway.api.auth import require_identity
from gateway.errors import (
    AuthError,
    BodyTooLarge,
    Forbidden,
    GatewayError,
    InternalError,
    RelayMalformed,
    RequestError,
)
from gateway.evidence import audit
from gateway.network.relay import receive_batch, require_neighbour
from gateway.network.wire import decode_batch
from gateway.node.admin import list_deliveries, requeue
from gateway.node.container import Node, directory_view
from gateway.node.inbox import acknowledge, evidence_view, fetch, list_inbox, status_view
from gateway.node.ingest import Accepted, ingest_document, ingest_status
from gateway.node.readiness import readiness
from gateway.settings import MAX_RELAY_ITEMS
from gateway.trust.caller import Identity

__all__ = ["CallerQueues", "LastResort", "create_app"]

log = structlog.get_logger("gateway.api")

_XML = "application/xml"

#: agency uploads (documents, statuses) verified and stored at once per process, and relay
#: batches received at once: CPU work under one GIL, so one of each (measured with
#: `gateway bench node`: two uploads in flight cost 3.9 ms of CPU per document, one 3.1 ms)
INGESTS_IN_FLIGHT: Final = 1
RELAYS_IN_FLIGHT: Final = 1
#: uploads larger than this take a lane of their own (one at a time too), so that a 50 MB
#: package verifying for a second does not hold up the small ones queued behind it
LARGE_UPLOAD_BYTES: Final = 1024 * 1024
#: uploads of one caller in flight or queued for the shared lanes at once; the caller's others
#: wait in a queue of their own, so one agency with 16 connections puts one upload, not 16, in
#: front of everyone else's
UPLOADS_PER_CALLER: Final = 1
#: after a refused upload, the caller's next one waits this many times the CPU time the refusal
#: took: uploads that are refused (a buggy or hostile DMS) can then take at most a quarter of a
#: lane, and every other agency keeps its latency (`gateway bench hostile`); an honest refusal
#: of a 5 KB package costs ~1 ms, so its sender barely notices
REFUSAL_PENALTY: Final = 3.0

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Model = TypeVar("Model", bound=BaseModel)


class ErrorBody(BaseModel):
    """Every refusal."""

    code: str = Field(description="stable error code, e.g. SIGNATURE_DIGEST_MISMATCH")
    message: str
    detail: dict[str, Any] = Field(default_factory=dict)


class AcceptedBody(BaseModel):
    """The 202 of an ingest: the package is durably stored."""

    id: str = Field(description="the gateway's id for the package")
    kind: str
    duplicate: bool = Field(description="true when this exact package was already stored")
    receipt: dict[str, Any] = Field(description="signed by the node: digest, time, node")
    status_url: str


class InboxItem(BaseModel):
    id: str
    kind: str
    sender: str
    document_id: str | None
    subject: str | None
    status_code: str | None
    size: int
    sha256: str
    received_at: str
    state: str


class InboxBody(BaseModel):
    items: list[InboxItem]
    next_after: int | None = Field(description="pass as ?after= for the next page")


class AckBody(BaseModel):
    id: str
    state: str


class EventBody(BaseModel):
    at: str
    kind: str
    code: str
    node: str
    actor: str
    description: str | None


class RecipientStatus(BaseModel):
    recipient: str
    transport: str
    next_hop: str
    status: str | None
    events: list[EventBody]


class StatusBody(BaseModel):
    id: str
    sender: str
    document_id: str | None
    received_at: str
    recipients: list[RecipientStatus]


class RelayResult(BaseModel):
    ok: bool
    receipt: dict[str, Any] | None = None
    duplicate: bool | None = None
    code: str | None = None
    message: str | None = None
    detail: dict[str, Any] | None = None


class RelayBody(BaseModel):
    """One result per relayed item, in order."""

    results: list[RelayResult]


class DeliveryBody(BaseModel):
    id: int
    document: str
    kind: str
    sender: str
    document_id: str | None
    recipient: str
    next_hop: str
    state: str
    attempts: int
    next_attempt_at: str | None
    last_error: str | None
    updated_at: str


class DeliveriesBody(BaseModel):
    items: list[DeliveryBody]


class RequeueBody(BaseModel):
    ids: list[Annotated[int, Field(ge=1, le=2**53)]] = Field(min_length=1, max_length=1000)


class RequeuedBody(BaseModel):
    requeued: list[int]


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody} for status in (400, 401, 403, 404, 409, 413, 422, 503)
}

#: the admin requeue's body, documented by hand: the route reads it itself (authenticate first)
_REQUEUE_ROUTE: dict[str, Any] = {
    "openapi_extra": {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": RequeueBody.model_json_schema()}},
        }
    },
}


#: the two ingest routes take the raw package as an application/xml body and answer 202
_INGEST_ROUTE: dict[str, Any] = {
    "status_code": 202,
    "response_model": AcceptedBody,
    "openapi_extra": {
        "requestBody": {
            "required": True,
            "content": {_XML: {"schema": {"type": "string", "format": "binary"}}},
        }
    },
}


async def _body(request: Request, limit: int) -> bytes:
    """The request body, refused as soon as it passes ``limit`` bytes (never held whole)."""
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
            raise BodyTooLarge(
                f"the body passes {limit} bytes, the most this node accepts",
                detail={"limit": limit},
            )
        chunks.append(chunk)
    return b"".join(chunks)


async def _json_body(request: Request, model: type[Model], *, limit: int, depth: int) -> Model:
    """The request's JSON body as ``model``: capped at ``limit`` bytes while it streams in, at
    ``depth`` levels before it is parsed, then validated.

    Call it only after the caller is authenticated and authorised (see the module docstring).
    """
    data = await _body(request, limit)
    try:
        value = jsonsafe.loads(data, max_depth=depth)
    except ValueError as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
        raise RequestError("the body is not UTF-8 JSON", detail={"reason": reason}) from None
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise RequestError(
            "the request's body is invalid",
            detail={"errors": [str(e.get("msg")) for e in exc.errors()][:10]},
        ) from None


@dataclass(slots=True)
class _Queue:
    lock: Lock
    #: requests holding or waiting for ``lock``
    users: int = 0


class CallerQueues:
    """One FIFO queue per caller in front of a shared lane; a caller's queue exists only
    while it has a request in it (bounded by the requests in flight, not by the callers ever
    seen).

    Usage::

        async with queues.turn(str(caller)):   # at most one per caller past this point
            ...                                # wait for the shared lane, then work
    """

    def __init__(self) -> None:
        self._queues: dict[str, _Queue] = {}

    def __len__(self) -> int:
        return len(self._queues)

    @contextlib.asynccontextmanager
    async def turn(self, caller: str) -> AsyncIterator[None]:
        # one event loop thread: no lock needed around the dict
        queue = self._queues.get(caller)
        if queue is None:
            queue = self._queues[caller] = _Queue(Lock())
        queue.users += 1
        try:
            async with queue.lock:  # anyio's Lock wakes its waiters in order of arrival
                yield
        finally:
            queue.users -= 1
            if queue.users == 0:
                del self._queues[caller]


class LastResort:
    """ASGI middleware: an exception no handler maps becomes ``INTERNAL_ERROR`` in the API's
    error shape, without a traceback or the exception's text in the body.

    It logs ``api.internal_error`` with the exception's type and where it was raised (file,
    line, function of the last frames), never its message: that may quote the input.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: MutableMapping[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:
            frames = traceback.extract_tb(exc.__traceback__)[-5:]
            log.error(
                "api.internal_error",
                path=scope.get("path"),
                method=scope.get("method"),
                error=type(exc).__name__,
                where=[f"{f.filename}:{f.lineno}:{f.name}" for f in frames],
            )
            if started:
                raise  # half a response is out: the server closes the connection
            error = InternalError()
            body = json.dumps(error.to_dict()).encode("utf-8")
            await send(
                {
                    "type": "http.response.start",
                    "status": error.http_status,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode("ascii")),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})


def _audit_auth_failure(node: Node, request: Request, exc: GatewayError) -> None:
    peer = request.client.host if request.client else "unknown"
    with node.writing() as conn:
        audit.append(
            conn,
            event="relay_refuse" if isinstance(exc, RelayMalformed) else "auth_failure",
            actor=f"peer:{peer}",
            subject=None,
            data={"code": exc.code, "path": request.url.path, "method": request.method},
        )


def create_app(node: Node) -> FastAPI:
    """The node's ASGI application."""
    app = FastAPI(
        title=f"edXML gateway node {node.name}",
        version=__version__,
        description="Agency API: push signed edXML documents and statuses, pull your inbox.",
        responses=_ERRORS,
    )
    identity = require_identity(node.trust, node.settings)
    node.on_trust_change(identity.replace_trust)
    Caller = Annotated[Identity, Depends(identity)]
    limits = node.settings.limits
    limit = limits.max_envelope_bytes
    # Ingests are CPU work under one GIL: more in flight only trade the GIL (and starve the
    # event loop thread that does TLS); the rest wait here, in order of arrival.
    ingesting = CapacityLimiter(INGESTS_IN_FLIGHT)
    ingesting_large = CapacityLimiter(INGESTS_IN_FLIGHT)
    relaying = CapacityLimiter(RELAYS_IN_FLIGHT)
    # ...and each caller's own uploads wait in a queue of their own first: one hostile DMS
    # cannot fill the lanes' queue and make every other agency wait behind all of it
    uploaders = CallerQueues()

    def lane(data: bytes) -> CapacityLimiter:
        return ingesting_large if len(data) > LARGE_UPLOAD_BYTES else ingesting

    relay_limit = limit + node.settings.delivery.batch_bytes + 8 * 1024 * 1024

    async def admin(caller: Caller) -> Identity:
        # the node's own certificate is the admin credential (held by its operators)
        if caller.kind != "node" or caller.node != node.name:
            raise Forbidden("this is an admin endpoint: present the node's own certificate")
        return caller

    async def neighbour(caller: Caller) -> Identity:
        # before the body: any node certificate of the deployment passes TLS, but only the
        # parent and the children may have a batch read and parsed here
        await run_in_threadpool(require_neighbour, node, caller)
        return caller

    Admin = Annotated[Identity, Depends(admin)]
    Neighbour = Annotated[Identity, Depends(neighbour)]

    async def upload(
        request: Request, caller: Identity, ingest: Callable[..., Accepted]
    ) -> Accepted:
        async with uploaders.turn(str(caller)):
            # read inside the caller's turn: one body per caller in memory, not one per
            # connection it opens
            data = await _body(request, limit)
            spent = [0.0]

            def work() -> Accepted:
                start = time.thread_time()  # this thread's CPU: not the wait for the lane
                try:
                    return ingest(node, data, caller=caller)
                finally:
                    spent[0] = time.thread_time() - start

            try:
                return await to_thread.run_sync(work, limiter=lane(data))
            except GatewayError as exc:
                if exc.http_status < 500:
                    # still in the caller's turn: its next upload waits, nobody else does
                    await sleep(spent[0] * REFUSAL_PENALTY)
                raise

    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
        log.info("api.refused", path=request.url.path, code=exc.code, status=exc.http_status)
        if isinstance(exc, AuthError | RelayMalformed):
            await run_in_threadpool(_audit_auth_failure, node, request, exc)
        return JSONResponse(exc.to_dict(), status_code=exc.http_status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Starlette's own 404/405 (unknown path, method not allowed) in our error shape too.
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "HTTP_ERROR")
        body = {"code": code, "message": str(exc.detail), "detail": {}}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(ClientDisconnect)
    async def disconnected(request: Request, exc: ClientDisconnect) -> Response:
        # the client left (or the server timed its body out and answered 408): nobody reads
        # this answer, uvicorn drops it
        log.info("api.client_disconnected", path=request.url.path)
        return Response(status_code=400)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        error = RequestError(
            "the request's parameters are invalid",
            detail={"errors": [str(e.get("msg")) for e in exc.errors()][:10]},
        )
        return JSONResponse(error.to_dict(), status_code=422)

    def accepted_body(request: Request, accepted: Accepted) -> JSONResponse:
        # built by hand, not through the response model: this is the hot path (the model
        # still documents it in the OpenAPI), and url_for walks every route on each call
        base = str(request.base_url).rstrip("/")
        body = {
            "id": accepted.id,
            "kind": accepted.kind.value,
            "duplicate": accepted.duplicate,
            "receipt": accepted.receipt,
            "status_url": f"{base}/api/v1/documents/{accepted.id}/status",
        }
        return JSONResponse(body, status_code=202)

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], responses={503: {"model": ErrorBody}})
    async def readyz() -> JSONResponse:
        """Database reachable, migrations current, certificates valid."""
        problems = await run_in_threadpool(readiness, node)
        if problems:
            body = {
                "code": "NOT_READY",
                "message": "; ".join(problems),
                "detail": {"problems": problems},
            }
            return JSONResponse(body, status_code=503)
        return JSONResponse({"status": "ready"})

    @app.post("/api/v1/documents", tags=["documents"], **_INGEST_ROUTE)
    async def post_document(request: Request, caller: Caller) -> JSONResponse:
        """Submit a signed edXML document package (the body is the package bytes)."""
        return accepted_body(request, await upload(request, caller, ingest_document))

    @app.post("/api/v1/statuses", tags=["statuses"], **_INGEST_ROUTE)
    async def post_status(request: Request, caller: Caller) -> JSONResponse:
        """Submit a signed edXML status package (01-06, 13, 15, 16) about a document."""
        return accepted_body(request, await upload(request, caller, ingest_status))

    @app.get("/api/v1/inbox", response_model=InboxBody, tags=["inbox"])
    async def inbox(
        caller: Caller,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        after: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
    ) -> InboxBody:
        """Packages waiting for the calling agency, oldest first, paged."""
        page = await run_in_threadpool(list_inbox, node, caller, limit=limit, after=after)
        return InboxBody(items=[InboxItem(**i) for i in page.items], next_after=page.next_after)

    @app.get(
        "/api/v1/documents/{doc_id}",
        tags=["documents"],
        response_class=Response,
        responses={200: {"content": {_XML: {}}, "description": "the exact stored bytes"}},
    )
    async def get_document(doc_id: str, caller: Caller) -> Response:
        """The exact stored bytes of a document the caller sent or received."""
        data = await run_in_threadpool(fetch, node, caller, doc_id)
        return Response(content=data, media_type=_XML)

    @app.post("/api/v1/documents/{doc_id}/ack", response_model=AckBody, tags=["inbox"])
    async def ack(doc_id: str, caller: Caller) -> AckBody:
        """Record that the calling agency's DMS has the document."""
        state = await run_in_threadpool(acknowledge, node, caller, doc_id)
        return AckBody(id=doc_id, state=state)

    @app.get(
        "/api/v1/documents/{doc_id}/status",
        response_model=StatusBody,
        tags=["documents"],
        name="document_status",
    )
    async def document_status(doc_id: str, caller: Caller) -> StatusBody:
        """Per recipient: the transport state and every business status, with times."""
        view = await run_in_threadpool(status_view, node, caller, doc_id)
        return StatusBody(**view)

    @app.post(
        "/api/v1/relay",
        response_model=RelayBody,
        tags=["relay"],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/vnd.edxml-gateway.relay": {
                        "schema": {"type": "string", "format": "binary"}
                    }
                },
            }
        },
    )
    async def relay(request: Request, caller: Neighbour) -> JSONResponse:
        """A neighbour node relays a batch of packages (see adapters.peer for the framing)."""
        data = await _body(request, relay_limit)

        def receive() -> list[dict[str, Any]]:
            # the framing is parsed in the lane too: an 8 MB manifest is CPU work
            items = decode_batch(data, max_items=MAX_RELAY_ITEMS, max_depth=limits.max_json_depth)
            return receive_batch(node, caller, items)

        results = await to_thread.run_sync(receive, limiter=relaying)
        return JSONResponse({"results": results})

    @app.get("/api/v1/directory", tags=["directory"])
    async def directory(caller: Caller) -> dict[str, Any]:
        """This node, its tier and agencies, its parent and its children (what they serve)."""
        return await run_in_threadpool(directory_view, node)

    @app.get("/api/v1/admin/deliveries", response_model=DeliveriesBody, tags=["admin"])
    async def deliveries(
        caller: Admin,
        state: Annotated[str | None, Query(pattern="^[a-z_]{1,16}$")] = None,
        peer: Annotated[str | None, Query(pattern="^[a-z0-9-]{1,128}$")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> DeliveriesBody:
        """Deliveries, newest first (``state=failed``: dead letters; ``waiting``: the outbox)."""
        rows = await run_in_threadpool(
            lambda: list_deliveries(node, state=state, peer=peer, limit=limit)
        )
        return DeliveriesBody(items=[DeliveryBody(**r) for r in rows])

    @app.post(
        "/api/v1/admin/deliveries/requeue",
        response_model=RequeuedBody,
        tags=["admin"],
        **_REQUEUE_ROUTE,
    )
    async def requeue_deliveries(request: Request, caller: Admin) -> RequeuedBody:
        """Send failed deliveries again (routed afresh, attempts reset); audited."""
        body = await _json_body(
            request, RequeueBody, limit=limits.max_json_bytes, depth=limits.max_json_depth
        )
        done = await run_in_threadpool(
            lambda: requeue(node, body.ids, actor=f"admin:node:{caller.node}")
        )
        return RequeuedBody(requeued=done)

    @app.get("/api/v1/documents/{doc_id}/evidence", tags=["documents"])
    async def evidence(doc_id: str, caller: Caller) -> dict[str, Any]:
        """The package's provable path: every hop record and receipt this node holds."""
        return await run_in_threadpool(evidence_view, node, caller, doc_id)

    _refuse_body_parameters(app)
    app.add_middleware(LastResort)
    return app


def _refuse_body_parameters(app: FastAPI) -> None:
    """Fail at start-up if a route lets FastAPI read its body (before its dependencies)."""
    for route in app.routes:
        if isinstance(route, APIRoute) and route.body_field is not None:
            raise TypeError(
                f"{route.path}: declare no body parameter; read the body in the route, after "
                "authentication (gateway.api.app docstring)"
            )
