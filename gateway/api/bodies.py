"""Reading a request's body, capped while it streams in: the routes call these themselves,
after their dependencies have authenticated and authorised the caller (see
:mod:`gateway.api.app`, "Authenticate first").

Usage::

    data = await read_body(request, limit=edge.upload_limit)
    body = await read_json(request, RequeueBody, limit=limits.max_json_bytes,
                           depth=limits.max_json_depth)
"""

from __future__ import annotations

import json
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from gateway import jsonsafe
from gateway.errors import BodyInvalid, BodyTooLarge

__all__ = ["read_body", "read_json"]

Model = TypeVar("Model", bound=BaseModel)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (:class:`BodyTooLarge`) as soon as it passes ``limit`` bytes,
    never held whole.

    Usage: ``data = await read_body(request, limit)``.
    """
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


async def read_json(request: Request, model: type[Model], *, limit: int, depth: int) -> Model:
    """The request's JSON body as ``model``: capped at ``limit`` bytes while it streams in, at
    ``depth`` levels before it is parsed (``REQUEST_JSON_TOO_DEEP``), then validated
    (``REQUEST_BODY_INVALID``).

    Usage: ``body = await read_json(request, RequeueBody, limit=65536, depth=32)``.

    .. warning:: Call it only after the caller is authenticated and authorised.
    """
    data = await read_body(request, limit)
    try:
        value = jsonsafe.loads(data, max_depth=depth)
    except ValueError as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
        raise BodyInvalid("the body is not UTF-8 JSON", detail={"reason": reason}) from None
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise BodyInvalid(
            "the request's body is invalid",
            detail={"errors": [str(e.get("msg")) for e in exc.errors()][:10]},
        ) from None
