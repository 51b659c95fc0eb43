"""The agency API (FastAPI): a thin edge over :mod:`gateway.ingest` and :mod:`gateway.inbox`.

Every refusal is JSON ``{code, message, detail}`` with the error's HTTP status; a body is never
logged. Agencies authenticate with their client certificate (:mod:`gateway.identity`).

Usage::

    app = create_app(node)
    # served by `gateway serve` (gateway.supervisor), or gateway.server.run(app, settings)

FastAPI reads the route signatures at run time, so this module does not use postponed
annotations (``Caller`` is local to :func:`create_app`).
"""

import functools
from typing import Annotated, Any, Final

import structlog
from anyio import CapacityLimiter, to_thread
from fastapi import Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from adapters.peer import decode_batch
from gateway import __version__, audit
from gateway.admin import list_deliveries, requeue
from gateway.errors import (
    AuthError,
    BodyTooLarge,
    Forbidden,
    GatewayError,
    RelayMalformed,
    RequestError,
)
from gateway.identity import Identity, require_identity
from gateway.inbox import acknowledge, evidence_view, fetch, list_inbox, status_view
from gateway.ingest import Accepted, ingest_document, ingest_status
from gateway.node import Node, directory_view
from gateway.readiness import readiness
from gateway.relay import receive_batch
from gateway.settings import MAX_RELAY_ITEMS

__all__ = ["create_app"]

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
    limit = node.settings.limits.max_envelope_bytes
    # Ingests are CPU work under one GIL: more in flight only trade the GIL (and starve the
    # event loop thread that does TLS); the rest wait here, in order of arrival.
    ingesting = CapacityLimiter(INGESTS_IN_FLIGHT)
    ingesting_large = CapacityLimiter(INGESTS_IN_FLIGHT)
    relaying = CapacityLimiter(RELAYS_IN_FLIGHT)

    def lane(data: bytes) -> CapacityLimiter:
        return ingesting_large if len(data) > LARGE_UPLOAD_BYTES else ingesting

    relay_limit = limit + node.settings.delivery.batch_bytes + 8 * 1024 * 1024

    def require_admin(caller: Identity) -> None:
        # the node's own certificate is the admin credential (held by its operators)
        if caller.kind != "node" or caller.node != node.name:
            raise Forbidden("this is an admin endpoint: present the node's own certificate")

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
        data = await _body(request, limit)
        accepted = await to_thread.run_sync(
            functools.partial(ingest_document, node, data, caller=caller), limiter=lane(data)
        )
        return accepted_body(request, accepted)

    @app.post("/api/v1/statuses", tags=["statuses"], **_INGEST_ROUTE)
    async def post_status(request: Request, caller: Caller) -> JSONResponse:
        """Submit a signed edXML status package (01-06, 13, 15, 16) about a document."""
        data = await _body(request, limit)
        accepted = await to_thread.run_sync(
            functools.partial(ingest_status, node, data, caller=caller), limiter=lane(data)
        )
        return accepted_body(request, accepted)

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
    async def relay(request: Request, caller: Caller) -> JSONResponse:
        """A neighbour node relays a batch of packages (see adapters.peer for the framing)."""
        if caller.kind != "node":
            raise Forbidden("only a neighbour node may relay packages")
        data = await _body(request, relay_limit)
        items = decode_batch(data, max_items=MAX_RELAY_ITEMS)
        results = await to_thread.run_sync(receive_batch, node, caller, items, limiter=relaying)
        return JSONResponse({"results": results})

    @app.get("/api/v1/directory", tags=["directory"])
    async def directory(caller: Caller) -> dict[str, Any]:
        """This node, its tier and agencies, its parent and its children (what they serve)."""
        return await run_in_threadpool(directory_view, node)

    @app.get("/api/v1/admin/deliveries", response_model=DeliveriesBody, tags=["admin"])
    async def deliveries(
        caller: Caller,
        state: Annotated[str | None, Query(pattern="^[a-z_]{1,16}$")] = None,
        peer: Annotated[str | None, Query(pattern="^[a-z0-9-]{1,128}$")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> DeliveriesBody:
        """Deliveries, newest first (``state=failed``: dead letters; ``waiting``: the outbox)."""
        require_admin(caller)
        rows = await run_in_threadpool(
            lambda: list_deliveries(node, state=state, peer=peer, limit=limit)
        )
        return DeliveriesBody(items=[DeliveryBody(**r) for r in rows])

    @app.post("/api/v1/admin/deliveries/requeue", response_model=RequeuedBody, tags=["admin"])
    async def requeue_deliveries(body: RequeueBody, caller: Caller) -> RequeuedBody:
        """Send failed deliveries again (routed afresh, attempts reset); audited."""
        require_admin(caller)
        done = await run_in_threadpool(
            lambda: requeue(node, body.ids, actor=f"admin:node:{caller.node}")
        )
        return RequeuedBody(requeued=done)

    @app.get("/api/v1/documents/{doc_id}/evidence", tags=["documents"])
    async def evidence(doc_id: str, caller: Caller) -> dict[str, Any]:
        """The package's provable path: every hop record and receipt this node holds."""
        return await run_in_threadpool(evidence_view, node, caller, doc_id)

    return app
