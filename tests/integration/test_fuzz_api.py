"""Generated garbage, with valid credentials, at every route that takes a body: never a 5xx.

A real node over real HTTPS (tests/integration/served.py). Hypothesis makes the bodies: random
bytes, random JSON shapes, deep and unbalanced nesting, XML-looking text, relay framings with
a JSON manifest and random package bytes. Each route is called as the caller it is meant for
(an agency for uploads, a neighbour node for the relay, the node itself for the admin requeue),
so the garbage gets past authentication to the parsers. Every answer must be a 4xx in the
``{code, message, detail}`` shape with a known stable code (or, for the relay, a 200 whose
items are each refused with one), and never mention a traceback. Bounded: a few dozen examples
per route.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from served import H49, NODE, PARENT, Served, serve_node
from support import DevPKI

from gateway.api.refusals import LastResort
from gateway.errors import InternalError, all_error_classes
from gateway.network.wire import RELAY_CONTENT_TYPE

#: every code the API may answer with: the error tree's (Starlette's own 404/405 included)
CODES = {cls.code for cls in all_error_classes()}

#: (path, content type, caller) of each route that takes a body
ROUTES = {
    "documents": ("/api/v1/documents", "application/xml", H49),
    "statuses": ("/api/v1/statuses", "application/xml", H49),
    "relay": ("/api/v1/relay", RELAY_CONTENT_TYPE, PARENT),
    "requeue": ("/api/v1/admin/deliveries/requeue", "application/json", NODE),
}

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)


def _json(value: Any) -> bytes:
    return json.dumps(value).encode("utf-8")


def _nested(depth: int, opener: bytes, closer: bytes, balanced: bool) -> bytes:
    return opener * depth + (closer * depth if balanced else b"")


NESTED = st.builds(
    _nested,
    st.integers(1, 20_000),
    st.sampled_from([b"[", b'{"a":', b'[{"x":']),
    st.sampled_from([b"]", b"}", b"}]"]),
    st.booleans(),
)
XMLISH = st.text(max_size=200).map(
    lambda t: f'<?xml version="1.0"?><edXML:MessageHeader>{t}</edXML:MessageHeader>'.encode()
)
KINDS = st.sampled_from(["document", "status", "notice", "virus", None, ["document"], 1])
FRAMINGS = st.builds(
    lambda items, tail: _json({"v": 1, "items": items}) + b"\n" + tail,
    st.lists(
        st.fixed_dictionaries(
            {
                "kind": KINDS,
                "size": st.one_of(st.integers(-2, 64), st.floats(), st.text(max_size=3)),
                "hops": st.one_of(st.lists(JSON_VALUES, max_size=2), JSON_VALUES),
                "receipts": st.one_of(st.lists(JSON_VALUES, max_size=2), JSON_VALUES),
            }
        ),
        max_size=3,
    ),
    st.binary(max_size=64),
)
GARBAGE = st.one_of(
    st.binary(max_size=2048),
    JSON_VALUES.map(_json),
    NESTED,
    NESTED.map(lambda b: b + b"\n"),
    XMLISH,
    FRAMINGS,
)


@pytest.fixture(scope="module")
def served(pki: DevPKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serve_node(pki, tmp_path_factory.mktemp("fuzz")) as served:
        yield served


def check(route: str, response: httpx.Response) -> None:
    assert response.status_code < 500, (route, response.status_code, response.text[:500])
    assert "Traceback" not in response.text and 'File "' not in response.text, response.text
    body = response.json()
    if route == "relay" and response.status_code == 200:
        for result in body["results"]:
            assert result["ok"] is False and result["code"] in CODES, result
        return
    if route == "requeue" and response.status_code == 200:
        assert set(body) == {"requeued"}, body  # garbage that happens to be a valid request
        return
    assert 400 <= response.status_code < 500, (route, response.status_code, response.text[:500])
    assert set(body) == {"code", "message", "detail"}, body
    assert body["code"] in CODES, body


@pytest.mark.parametrize("route", list(ROUTES))
@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=GARBAGE)
def test_garbage_bodies_get_a_stable_4xx(served: Served, route: str, body: bytes) -> None:
    path, content_type, caller = ROUTES[route]
    response = served.client(caller).post(
        path, content=body, headers={"content-type": content_type}
    )
    check(route, response)


@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize(
    "content_type", ["application/json", "text/plain", "multipart/form-data; boundary=x", ""]
)
def test_any_content_type_gets_a_stable_4xx(served: Served, route: str, content_type: str) -> None:
    path, _, caller = ROUTES[route]
    response = served.client(caller).post(
        path, content=b'{"ids": [1, "2"]}', headers={"content-type": content_type}
    )
    check(route, response)


def test_an_unmapped_exception_is_internal_error_without_its_text() -> None:
    """The last resort: a bug answers INTERNAL_ERROR in the error shape, and says nothing of
    the exception (its message may quote the input)."""

    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("secret-input-fragment")

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=LastResort(broken))
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
            return await client.post("/api/v1/documents", content=b"<x/>")

    response = anyio.run(call)
    assert response.status_code == 500
    assert response.json() == InternalError().to_dict()
    assert "secret-input-fragment" not in response.text and "RuntimeError" not in response.text
