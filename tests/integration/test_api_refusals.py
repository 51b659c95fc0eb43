"""Every refusal a client can receive comes from the error tree, the framework's own included
(unknown path, wrong method, invalid parameters, bytes that are not HTTP, an unready node), on
a real node over real HTTPS; and the API is assembled from its routers without losing its
authenticate-first rule or a URL."""

from __future__ import annotations

import json
from collections.abc import Iterator

import anyio
import httpx
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from pydantic import BaseModel
from served import H49, NODE, PARENT, STRANGER, Served, serve_node
from support import DevPKI

import gateway.api.operations
from gateway.api import admin, agency, operations, relay
from gateway.api.app import _refuse_body_parameters, create_app
from gateway.api.edge import admin as admin_dependency
from gateway.api.edge import authenticate, neighbour
from gateway.errors import (
    Forbidden,
    MethodNotAllowed,
    NodeNotReady,
    ParametersInvalid,
    PathNotFound,
    RequestMalformed,
)

#: every URL of the API, with the router (audience) that serves it: URLs are API too
ROUTES = {
    ("GET", "/healthz"): operations,
    ("GET", "/readyz"): operations,
    ("POST", "/api/v1/documents"): agency,
    ("POST", "/api/v1/statuses"): agency,
    ("GET", "/api/v1/inbox"): agency,
    ("GET", "/api/v1/documents/{doc_id}"): agency,
    ("POST", "/api/v1/documents/{doc_id}/ack"): agency,
    ("GET", "/api/v1/documents/{doc_id}/status"): agency,
    ("GET", "/api/v1/documents/{doc_id}/evidence"): agency,
    ("GET", "/api/v1/directory"): agency,
    ("POST", "/api/v1/relay"): relay,
    ("GET", "/api/v1/admin/deliveries"): admin,
    ("POST", "/api/v1/admin/deliveries/requeue"): admin,
}
#: who each router lets in, by its first dependency (None: anyone)
GUARDS = {operations: None, agency: authenticate, relay: neighbour, admin: admin_dependency}


@pytest.fixture(scope="module", params=["httptools", "h11"])
def served(
    request: pytest.FixtureRequest, pki: DevPKI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    directory = tmp_path_factory.mktemp(f"refusals-{request.param}")
    with serve_node(pki, directory, http=request.param) as served:
        yield served


def _error(response: httpx.Response, error: type, status: int) -> dict[str, object]:
    assert response.status_code == status == error.http_status, response.text
    body = response.json()
    assert set(body) == {"code", "message", "detail"}
    assert body["code"] == error.code
    return body


def test_an_unknown_path_is_request_path_not_found(served: Served) -> None:
    _error(served.client(H49).get("/api/v2/inbox"), PathNotFound, 404)
    _error(served.client(None).get("/nothing-here"), PathNotFound, 404)


def test_a_wrong_method_is_request_method_not_allowed(served: Served) -> None:
    response = served.client(None).delete("/healthz")
    body = _error(response, MethodNotAllowed, 405)
    assert body["detail"] == {"allow": ["GET"]}
    assert response.headers["allow"] == "GET"


def test_invalid_parameters_are_request_parameters_invalid(served: Served) -> None:
    body = _error(served.client(H49).get("/api/v1/inbox?limit=0"), ParametersInvalid, 422)
    assert body["detail"]["errors"]


def test_invalid_parameters_are_refused_after_authentication(served: Served) -> None:
    assert served.client(None).get("/api/v1/inbox?limit=0").json()["code"] == "AUTH_REQUIRED"


@pytest.mark.parametrize(
    "garbage",
    [b"\x16\x03\x01 not http\r\n\r\n", b"GET /healthz HTTP/1.1\r\nbad header line\r\n\r\n"],
    ids=["binary", "header without colon"],
)
def test_bytes_that_are_not_http_get_request_malformed_as_json(
    served: Served, garbage: bytes
) -> None:
    with served.raw(None) as sock:
        sock.sendall(garbage)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), data[:200]
    assert b"content-type: application/json" in head.lower()
    assert json.loads(body) == RequestMalformed().to_dict()


def test_only_the_nodes_own_certificate_is_admin(served: Served) -> None:
    path = "/api/v1/admin/deliveries"
    assert served.client(NODE).get(path).status_code == 200
    for other in (H49, PARENT, STRANGER):
        body = _error(served.client(other).get(path), Forbidden, 403)
        assert "admin endpoint" in str(body["message"])


def test_an_unready_node_answers_node_not_ready(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app(served.node)
    monkeypatch.setattr(
        gateway.api.operations, "readiness", lambda node: ["DATABASE_UNAVAILABLE: gone"]
    )

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
            return await client.get("/readyz")

    body = _error(anyio.run(call), NodeNotReady, 503)
    assert body["detail"] == {"problems": ["DATABASE_UNAVAILABLE: gone"]}


def test_the_api_is_its_routers(served: Served) -> None:
    routes = {}
    for context in iter_route_contexts(create_app(served.node).routes):
        route = context.original_route
        if isinstance(route, APIRoute):
            for method in route.methods:
                routes[(method, route.path)] = route
    assert set(routes) == set(ROUTES)
    for key, route in routes.items():
        module = ROUTES[key]
        assert route.endpoint.__module__ == module.__name__, key
        # authenticate first: the route's first dependency decides who it lets in
        guard = GUARDS[module]
        first = route.dependant.dependencies[0].call if route.dependant.dependencies else None
        assert first is guard, key


class _Body(BaseModel):
    ids: list[int]


def test_a_body_parameter_in_an_included_router_is_refused() -> None:
    router = APIRouter()

    @router.post("/api/v1/sneaky")
    async def sneaky(body: _Body) -> None:  # FastAPI would read this before any dependency
        return None

    app = FastAPI()
    app.include_router(router)
    with pytest.raises(TypeError, match="/api/v1/sneaky: declare no body parameter"):
        _refuse_body_parameters(app)


def test_the_openapi_document_lists_every_route(served: Served) -> None:
    paths = create_app(served.node).openapi()["paths"]
    documented = {(m.upper(), p) for p, ops in paths.items() for m in ops}
    assert documented == set(ROUTES)
