"""The agency routes: what an agency's DMS calls with its client certificate. Push signed
documents and statuses, pull the inbox, acknowledge, follow a document's status and evidence,
read the directory.

Uploads go through the lanes (:mod:`gateway.api.lanes`): the caller's own queue, then one
shared CPU lane; the body is read only then, after the caller is authenticated.

Usage: ``app.include_router(agency.router)`` (done by :func:`gateway.api.app.create_app`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from starlette.requests import Request

from gateway.api.bodies import read_body
from gateway.api.edge import Caller, edge_of
from gateway.api.models import AcceptedBody, AckBody, InboxBody, InboxItem, StatusBody
from gateway.node.container import Node, directory_view
from gateway.node.inbox import acknowledge, evidence_view, fetch, list_inbox, status_view
from gateway.node.ingest import Accepted, ingest_document, ingest_status
from gateway.trust.caller import Identity

__all__ = ["router"]

router = APIRouter()

_XML = "application/xml"

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

Ingest = Callable[..., Accepted]


async def _upload(request: Request, caller: Identity, ingest: Ingest) -> JSONResponse:
    """Read, verify and store one package in the caller's turn and a lane; answer 202."""
    edge = edge_of(request)

    async def read() -> bytes:
        return await read_body(request, edge.upload_limit)

    def work(data: bytes) -> Accepted:
        return ingest(edge.node, data, caller=caller)

    accepted = await edge.lanes.upload(caller, read=read, work=work)
    # built by hand, not through the response model: this is the hot path (the model still
    # documents it in the OpenAPI), and url_for walks every route on each call
    base = str(request.base_url).rstrip("/")
    body = {
        "id": accepted.id,
        "kind": accepted.kind.value,
        "duplicate": accepted.duplicate,
        "receipt": accepted.receipt,
        "status_url": f"{base}/api/v1/documents/{accepted.id}/status",
    }
    return JSONResponse(body, status_code=202)


def _node(request: Request) -> Node:
    return edge_of(request).node


@router.post("/api/v1/documents", tags=["documents"], **_INGEST_ROUTE)
async def post_document(request: Request, caller: Caller) -> JSONResponse:
    """Submit a signed edXML document package (the body is the package bytes)."""
    return await _upload(request, caller, ingest_document)


@router.post("/api/v1/statuses", tags=["statuses"], **_INGEST_ROUTE)
async def post_status(request: Request, caller: Caller) -> JSONResponse:
    """Submit a signed edXML status package (01-06, 13, 15, 16) about a document."""
    return await _upload(request, caller, ingest_status)


@router.get("/api/v1/inbox", response_model=InboxBody, tags=["inbox"])
async def inbox(
    request: Request,
    caller: Caller,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    after: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
) -> InboxBody:
    """Packages waiting for the calling agency, oldest first, paged."""
    page = await run_in_threadpool(list_inbox, _node(request), caller, limit=limit, after=after)
    return InboxBody(items=[InboxItem(**i) for i in page.items], next_after=page.next_after)


@router.get(
    "/api/v1/documents/{doc_id}",
    tags=["documents"],
    response_class=Response,
    responses={200: {"content": {_XML: {}}, "description": "the exact stored bytes"}},
)
async def get_document(request: Request, doc_id: str, caller: Caller) -> Response:
    """The exact stored bytes of a document the caller sent or received."""
    data = await run_in_threadpool(fetch, _node(request), caller, doc_id)
    return Response(content=data, media_type=_XML)


@router.post("/api/v1/documents/{doc_id}/ack", response_model=AckBody, tags=["inbox"])
async def ack(request: Request, doc_id: str, caller: Caller) -> AckBody:
    """Record that the calling agency's DMS has the document."""
    state = await run_in_threadpool(acknowledge, _node(request), caller, doc_id)
    return AckBody(id=doc_id, state=state)


@router.get(
    "/api/v1/documents/{doc_id}/status",
    response_model=StatusBody,
    tags=["documents"],
    name="document_status",
)
async def document_status(request: Request, doc_id: str, caller: Caller) -> StatusBody:
    """Per recipient: the transport state and every business status, with times."""
    view = await run_in_threadpool(status_view, _node(request), caller, doc_id)
    return StatusBody(**view)


@router.get("/api/v1/documents/{doc_id}/evidence", tags=["documents"])
async def evidence(request: Request, doc_id: str, caller: Caller) -> dict[str, Any]:
    """The package's provable path: every hop record and receipt this node holds."""
    return await run_in_threadpool(evidence_view, _node(request), caller, doc_id)


@router.get("/api/v1/directory", tags=["directory"])
async def directory(request: Request, caller: Caller) -> dict[str, Any]:
    """This node, its tier and agencies, its parent and its children (what they serve)."""
    return await run_in_threadpool(directory_view, _node(request))
