"""How the API refuses: every refusal a class of :mod:`gateway.errors`, rendered as JSON
``{code, message, detail}`` with the class's HTTP status, and nothing unexpected a 500 with a
traceback.

* A :class:`~gateway.errors.GatewayError` is rendered as is (and an authentication failure
  or a malformed relay is audited).
* The framework's own refusals become classes of the tree too: an unknown path
  :class:`~gateway.errors.PathNotFound`, a wrong method
  :class:`~gateway.errors.MethodNotAllowed`, invalid path or query parameters
  :class:`~gateway.errors.ParametersInvalid`; any other 4xx it raises
  :class:`~gateway.errors.RequestMalformed`.
* :class:`LastResort`: an exception that escapes anyway is logged (``api.internal_error``:
  type and place, never the message, which may quote input) and answered
  :class:`~gateway.errors.InternalError` in the same shape.

Usage::

    install_refusals(app)
    app.add_middleware(LastResort)
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

import structlog
from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect, Request

from gateway.api.edge import edge_of
from gateway.errors import (
    AuthError,
    GatewayError,
    InternalError,
    MethodNotAllowed,
    ParametersInvalid,
    PathNotFound,
    RelayMalformed,
    RequestMalformed,
)
from gateway.evidence import audit
from gateway.node.container import Node

__all__ = ["LastResort", "install_refusals", "render"]

log = structlog.get_logger("gateway.api")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def render(error: GatewayError, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """``error`` as the API answers it: ``{code, message, detail}`` with its HTTP status.

    Usage: ``return render(NodeNotReady(...))``.
    """
    return JSONResponse(error.to_dict(), status_code=error.http_status, headers=headers)


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


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    log.info("api.refused", path=request.url.path, code=exc.code, status=exc.http_status)
    if isinstance(exc, AuthError | RelayMalformed):
        await run_in_threadpool(_audit_auth_failure, edge_of(request).node, request, exc)
    return render(exc)


def _framework_refusal(exc: StarletteHTTPException) -> GatewayError:
    """The tree's class for a refusal Starlette or FastAPI raised itself."""
    if exc.status_code == 404:
        return PathNotFound()
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        return MethodNotAllowed(detail={"allow": [m.strip() for m in allowed.split(",") if m]})
    if 400 <= exc.status_code < 500:
        return RequestMalformed(detail={"reason": str(exc.detail)})
    return InternalError()


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    error = _framework_refusal(exc)
    log.info("api.refused", path=request.url.path, code=error.code, status=error.http_status)
    return render(error, headers=exc.headers)


async def _invalid_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    error = ParametersInvalid(
        "the request's parameters are invalid",
        detail={"errors": [str(e.get("msg")) for e in exc.errors()][:10]},
    )
    log.info("api.refused", path=request.url.path, code=error.code, status=error.http_status)
    return render(error)


async def _disconnected(request: Request, exc: Exception) -> Response:
    # the client left (or the server timed its body out and answered 408 itself): nobody
    # reads this answer, uvicorn drops it
    log.info("api.client_disconnected", path=request.url.path)
    return Response(status_code=400)


def install_refusals(app: FastAPI) -> None:
    """Register the handlers that render every refusal of ``app`` from the error tree.

    Usage: ``install_refusals(app)`` (done by :func:`gateway.api.app.create_app`).
    """
    app.add_exception_handler(GatewayError, _gateway_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _disconnected)
    app.add_exception_handler(RequestValidationError, _invalid_request)


class LastResort:
    """ASGI middleware: an exception no handler maps becomes ``INTERNAL_ERROR`` in the API's
    error shape, without a traceback or the exception's text in the body.

    Usage: ``app.add_middleware(LastResort)``.

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
