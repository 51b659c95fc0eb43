"""The relay route: a neighbour node (this node's parent or a child) sends a batch of
packages with their hop records (:mod:`gateway.network.wire` has the framing).

Usage: ``app.include_router(relay.router)`` (done by :func:`gateway.api.app.create_app`).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.requests import Request

from gateway.api.bodies import read_body
from gateway.api.edge import Neighbour, edge_of
from gateway.api.models import RelayBody
from gateway.network.relay import receive_batch
from gateway.network.wire import RELAY_CONTENT_TYPE, decode_batch
from gateway.settings import MAX_RELAY_ITEMS

__all__ = ["router"]

router = APIRouter(tags=["relay"])


@router.post(
    "/api/v1/relay",
    response_model=RelayBody,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {RELAY_CONTENT_TYPE: {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def relay(request: Request, caller: Neighbour) -> JSONResponse:
    """A neighbour node relays a batch of packages (see adapters.peer for the framing)."""
    edge = edge_of(request)
    data = await read_body(request, edge.relay_limit)
    depth = edge.node.settings.limits.max_json_depth

    def receive() -> list[dict[str, Any]]:
        # the framing is parsed in the lane too: an 8 MB manifest is CPU work
        items = decode_batch(data, max_items=MAX_RELAY_ITEMS, max_depth=depth)
        return receive_batch(edge.node, caller, items)

    results = await edge.lanes.relay(receive)
    return JSONResponse({"results": results})
