"""The operations routes: is the process up (``/healthz``), can the node take a document now
(``/readyz``). Neither asks for a certificate: a load balancer or an orchestrator calls them.

Usage: ``app.include_router(operations.router)`` (done by :func:`gateway.api.app.create_app`).
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from starlette.requests import Request

from gateway.api.edge import edge_of
from gateway.api.models import ErrorBody
from gateway.errors import NodeNotReady
from gateway.node.readiness import readiness

__all__ = ["router"]

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"model": ErrorBody}})
async def readyz(request: Request) -> JSONResponse:
    """Database reachable, migrations current, certificates valid."""
    problems = await run_in_threadpool(readiness, edge_of(request).node)
    if problems:
        raise NodeNotReady("; ".join(problems), detail={"problems": problems})
    return JSONResponse({"status": "ready"})
