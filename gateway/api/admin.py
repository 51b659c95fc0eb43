"""The admin routes: the node's deliveries (the outbox and its dead letters) and the requeue of
failed ones. Only the node's own certificate, held by its operators, may call them (``Admin``).

Usage: ``app.include_router(admin.router)`` (done by :func:`gateway.api.app.create_app`).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from starlette.requests import Request

from gateway.api.bodies import read_json
from gateway.api.edge import Admin, edge_of
from gateway.api.models import DeliveriesBody, DeliveryBody, RequeueBody, RequeuedBody
from gateway.node.admin import list_deliveries, requeue

__all__ = ["router"]

router = APIRouter(tags=["admin"])

#: the requeue's body, documented by hand: the route reads it itself (authenticate first)
_REQUEUE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": RequeueBody.model_json_schema()}},
    }
}


@router.get("/api/v1/admin/deliveries", response_model=DeliveriesBody)
async def deliveries(
    request: Request,
    caller: Admin,
    state: Annotated[str | None, Query(pattern="^[a-z_]{1,16}$")] = None,
    peer: Annotated[str | None, Query(pattern="^[a-z0-9-]{1,128}$")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> DeliveriesBody:
    """Deliveries, newest first (``state=failed``: dead letters; ``waiting``: the outbox)."""
    node = edge_of(request).node
    rows = await run_in_threadpool(
        lambda: list_deliveries(node, state=state, peer=peer, limit=limit)
    )
    return DeliveriesBody(items=[DeliveryBody(**r) for r in rows])


@router.post(
    "/api/v1/admin/deliveries/requeue", response_model=RequeuedBody, openapi_extra=_REQUEUE_BODY
)
async def requeue_deliveries(request: Request, caller: Admin) -> RequeuedBody:
    """Send failed deliveries again (routed afresh, attempts reset); audited."""
    node = edge_of(request).node
    limits = node.settings.limits
    body = await read_json(
        request, RequeueBody, limit=limits.max_json_bytes, depth=limits.max_json_depth
    )
    done = await run_in_threadpool(
        lambda: requeue(node, body.ids, actor=f"admin:node:{caller.node}")
    )
    return RequeuedBody(requeued=done)
