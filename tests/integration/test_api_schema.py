"""schemathesis against the node's own OpenAPI: the JSON endpoints answer as documented.

The app under test is built in-process (``create_app``) over a real
:class:`~gateway.node.container.Node`: settings loaded from a TOML file written here, a temporary
SQLite database migrated to head, the session dev PKI, two seeded documents. Callers are identified
by the real :func:`~gateway.api.auth.require_identity` code path: an ASGI middleware puts the
caller's certificate in ``scope["extensions"]["tls"]``, as :mod:`gateway.api.server`'s protocols
do. Each operation is run as a hosted agency, as the node itself, without a certificate and with an
untrusted one.

Every request schemathesis makes (valid and invalid parameters, unknown and seeded document ids,
arbitrary bodies on the XML endpoints, undocumented methods) must get

* no 5xx;
* a documented status code and content type, and a body matching the documented schema;
* for every error, exactly ``{code, message, detail}``;
* no traceback or exception text in any body.

Every operation is fuzzed, the JSON routes included, in every phase (the schema's examples,
the coverage phase's boundary and invalid values, Hypothesis fuzzing) and in both generation
modes: positive (data the schema allows) and negative (data it does not: wrong types, values
out of range, missing fields), which must be refused with a 4xx. Bounded: at most
``max_examples`` fuzzed cases per operation and caller (the coverage phase is finite).

The schema is loaded when this module is imported, because schemathesis's lazy
``from_fixture`` loader does not run under pytest 9.2 (it sets ``Item._nodeid``). It is taken
from an app built the same way over no node; the fixture checks that the real app serves the
very same document.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import factory
import hypothesis
import pytest
import schemathesis
from hypothesis import strategies as st
from support import DevPKI

from gateway.api.app import create_app
from gateway.api.auth import identify
from gateway.dev.nodeconfig import write_node_config
from gateway.node.container import Node
from gateway.node.ingest import ingest_document
from gateway.settings import Settings, load_settings
from gateway.storage import db

NODE_NAME = "schema-node"
#: the agencies the node hosts; the agency caller is H49
H49 = "000.00.00.H49"
H49_A = "000.00.01.H49"
HOSTED = (H49, H49_A)

#: answers GET /api/v1/documents/{doc_id}: the stored XML bytes, not JSON (acceptance tests)
XML_DOWNLOAD = "GET /api/v1/documents/{doc_id}"
#: the XML-body endpoints: any bytes are schema-valid there, and no signed package is any
#: bytes, so a documented refusal is the right answer to "valid" data
XML_UPLOADS = ["POST /api/v1/documents", "POST /api/v1/statuses", "POST /api/v1/relay"]
XML_REFUSALS = ["2xx", "400", "401", "403", "404", "409", "413", "422"]

#: ids of the seeded documents (set by the ``node_app`` fixture): about half of the generated
#: ``doc_id`` values are replaced by one of them, so the 200 answers are checked too
SEEDED: list[str] = []

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _openapi() -> dict[str, Any]:
    """The app's OpenAPI document; ``create_app`` reads only these attributes when it builds."""
    stand_in = SimpleNamespace(
        name=NODE_NAME, trust=None, settings=Settings(), on_trust_change=lambda _listener: None
    )
    document: dict[str, Any] = create_app(stand_in).openapi()  # type: ignore[arg-type]
    return document


OPENAPI = _openapi()

# the relay body (adapters.peer) is bytes like the XML uploads: send what is generated as is
schemathesis.serializer.alias("application/vnd.edxml-gateway.relay", "application/octet-stream")

CONFIG = schemathesis.Config.from_dict(
    {
        # spelled out, not left to the defaults: negative cases are the point
        "generation": {"mode": "all"},  # positive and negative
        "phases": {
            "examples": {"enabled": True},
            "coverage": {"enabled": True},
            "fuzzing": {"enabled": True},
        },
        "operations": [
            {
                "include-name": XML_UPLOADS,
                "checks": {"positive_data_acceptance": {"expected-statuses": XML_REFUSALS}},
            }
        ],
    }
)

# exclude(), not include(): with [[operations]] in the config, schemathesis 4.32 ORs an include
# filter with "every operation", so include() selects nothing away
schema = schemathesis.openapi.from_dict(OPENAPI, config=CONFIG).exclude(name=XML_DOWNLOAD)


@schema.hook
def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any] | None) -> Any:
    generated = dict(path_parameters or {})
    if not SEEDED or "doc_id" not in generated:
        return st.just(path_parameters)
    return st.one_of(
        st.just(path_parameters),
        st.sampled_from(list(SEEDED)).map(lambda doc_id: {**generated, "doc_id": doc_id}),
    )


def error_body(ctx: Any, response: Any, case: Any) -> None:
    """A schemathesis check: every error answer is exactly ``{code, message, detail}``."""
    if response.status_code < 400 or case.method.upper() == "HEAD":
        return
    try:
        body = json.loads(response.content)
    except ValueError:
        raise AssertionError(f"the error body is not JSON: {response.content[:200]!r}") from None
    assert isinstance(body, dict), f"the error body is not an object: {body!r}"
    assert set(body) == {"code", "message", "detail"}, f"error body keys {sorted(body)}: {body!r}"
    assert isinstance(body["code"], str) and body["code"], f"error code: {body!r}"
    assert isinstance(body["message"], str), f"error message: {body!r}"
    assert isinstance(body["detail"], dict), f"error detail: {body!r}"


#: what a body must never contain: a Python traceback, or uvicorn's plain-text 500
TRACEBACK_MARKERS = ("Traceback (most recent call last)", 'File "/', "Internal Server Error")


def no_traceback(ctx: Any, response: Any, case: Any) -> None:
    """A schemathesis check: no answer shows a traceback or an unhandled error's text."""
    text = response.content.decode("utf-8", "replace")
    for marker in TRACEBACK_MARKERS:
        assert marker not in text, f"{marker!r} in the body: {text[:300]}"


class ClientCertificate:
    """ASGI middleware: each request arrives as on a TLS connection with this client chain."""

    def __init__(self, app: ASGIApp, chain: list[str]) -> None:
        self.app = app
        self.chain = chain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope.setdefault("extensions", {})["tls"] = {
                "server_cert": None,
                "client_cert_chain": list(self.chain),
                "client_cert_name": None,
                "client_cert_error": None,
                "tls_version": 0x0304,
                "cipher_suite": None,
            }
        await self.app(scope, receive, send)


def _write_config(directory: Path, pki: DevPKI) -> Path:
    return write_node_config(
        directory / "node.toml",
        name=NODE_NAME,
        agencies=HOSTED,
        node=pki.issue(NODE_NAME),
        ca=pki.ca,
        database_url="sqlite:///node.db",
        extra={"limits": {"max_envelope_bytes": 200000, "max_recipients": 5}},
    )


def _pem(pki: DevPKI, name: str) -> str:
    return pki.issue(name).cert.read_text(encoding="ascii")


def _seed(node: Node, pki: DevPKI) -> list[str]:
    """Two documents H49 sees: one it sent (its status), one waiting in its inbox (to ack)."""
    ids = []
    for sender, recipient in ((H49, H49_A), (H49_A, H49)):
        caller = identify(
            {"type": "http", "extensions": {"tls": {"client_cert_chain": [_pem(pki, sender)]}}},
            trust=node.trust,
            settings=node.settings,
        )
        data = factory.signed(factory.document(sender, [recipient]), pki.key(sender))
        ids.append(ingest_document(node, data, caller=caller).id)
    return ids


@pytest.fixture(scope="module")
def node_app(pki: DevPKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ASGIApp]:
    """The node's app on a fresh database with two seeded documents."""
    directory = tmp_path_factory.mktemp("api-schema")
    settings = load_settings(_write_config(directory, pki), environ={})
    engine = db.make_engine(settings)
    db.upgrade(engine)
    node = Node.from_settings(settings, engine)
    app = create_app(node)
    assert app.openapi() == OPENAPI, "the schema under test is not the one the node serves"
    SEEDED[:] = _seed(node, pki)
    try:
        yield app
    finally:
        SEEDED.clear()
        engine.dispose()


@pytest.fixture(scope="module", params=["agency", "node", "anonymous", "untrusted"])
def api_app(
    request: pytest.FixtureRequest, node_app: ASGIApp, pki: DevPKI, other_pki: DevPKI
) -> ASGIApp:
    """The app as one caller reaches it: H49's DMS, the node itself, no or an untrusted cert."""
    chain = {
        "agency": lambda: [_pem(pki, H49)],
        "node": lambda: [_pem(pki, NODE_NAME)],
        "anonymous": lambda: [],
        "untrusted": lambda: [_pem(other_pki, H49)],
    }[request.param]()
    return ClientCertificate(node_app, chain)


@schema.parametrize()
@hypothesis.settings(max_examples=15, deadline=None)
def test_operations_conform_to_openapi(case: Any, api_app: ASGIApp) -> None:
    response = case.call_and_validate(app=api_app, additional_checks=[error_body, no_traceback])
    assert response.status_code < 500, case.as_curl_command()


#: requests the generators rarely or never make, checked the same way (agency caller)
EDGE_CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "inbox after past int64": ("GET /api/v1/inbox", {"query": {"after": 2**63}}),
    "inbox limit past int64": ("GET /api/v1/inbox", {"query": {"limit": 2**63}}),
    "status of an id with a slash": (
        "GET /api/v1/documents/{doc_id}/status",
        {"path_parameters": {"doc_id": "a/b"}},
    ),
    "ack of an id with a slash": (
        "POST /api/v1/documents/{doc_id}/ack",
        {"path_parameters": {"doc_id": "a/b"}},
    ),
    "document larger than the limit": (
        "POST /api/v1/documents",
        {"body": b"<a/>" * 60000, "media_type": "application/xml"},
    ),
}


@pytest.mark.parametrize("name", list(EDGE_CASES))
def test_edge_requests_conform_to_openapi(name: str, node_app: ASGIApp, pki: DevPKI) -> None:
    label, parts = EDGE_CASES[name]
    operation = schema.find_operation_by_label(label)
    assert operation is not None, label
    app = ClientCertificate(node_app, [_pem(pki, H49)])
    response = operation.Case(**parts).call_and_validate(
        app=app, additional_checks=[error_body, no_traceback]
    )
    assert response.status_code < 500


@pytest.mark.parametrize("label", ["GET /healthz", "GET /api/v1/inbox", *XML_UPLOADS])
def test_undocumented_method_is_refused_with_an_error_body(
    label: str, node_app: ASGIApp, pki: DevPKI
) -> None:
    operation = schema.find_operation_by_label(label)
    assert operation is not None, label
    app = ClientCertificate(node_app, [_pem(pki, H49)])
    case = operation.Case(method="DELETE")
    response = case.call(app=app)
    assert response.status_code == 405
    error_body(None, response, case)


REQUEUE = "POST /api/v1/admin/deliveries/requeue"
#: admin requeue bodies the generators do not make, with the refusal each must get
ADMIN_EDGE_CASES: dict[str, tuple[bytes, int, str]] = {
    "nested past max_json_depth": (
        b'{"ids":' + b"[" * 40 + b"]" * 40 + b"}",
        400,
        "REQUEST_JSON_TOO_DEEP",
    ),
    "nested thousands deep": (b"[" * 60_000, 400, "REQUEST_JSON_TOO_DEEP"),
    "larger than max_json_bytes": (
        b'{"ids":[' + b"1," * 40_000 + b"1]}",
        413,
        "REQUEST_BODY_TOO_LARGE",
    ),
    "not JSON": (b"{ids: [1]}", 422, "REQUEST_BODY_INVALID"),
    "not UTF-8": (b'{"ids":[1]}\xff', 422, "REQUEST_BODY_INVALID"),
    "an integer of 5000 digits": (b'{"ids":[' + b"9" * 5000 + b"]}", 422, "REQUEST_BODY_INVALID"),
    "ids of the wrong type": (b'{"ids":{"a":1}}', 422, "REQUEST_BODY_INVALID"),
}


@pytest.mark.parametrize("name", list(ADMIN_EDGE_CASES))
def test_admin_json_edge_bodies_get_their_code(name: str, node_app: ASGIApp, pki: DevPKI) -> None:
    body, status, code = ADMIN_EDGE_CASES[name]
    operation = schema.find_operation_by_label(REQUEUE)
    assert operation is not None
    app = ClientCertificate(node_app, [_pem(pki, NODE_NAME)])
    case = operation.Case(body=body, media_type="application/octet-stream")
    response = case.call(app=app)
    assert response.status_code == status, response.text
    error_body(None, response, case)
    no_traceback(None, response, case)
    assert response.json()["code"] == code
