"""schemathesis against the node's own OpenAPI: the JSON endpoints answer as documented.

The app is built in-process (``create_app``) over a real :class:`~gateway.node.Node`: a
temporary SQLite database migrated to head, settings loaded from a TOML file written here, the
session dev PKI. The caller is identified by the real :func:`~gateway.identity.require_identity`
code path: an ASGI middleware puts the agency's certificate in
``scope["extensions"]["tls"]``, exactly as :mod:`gateway.server`'s protocols do.

Every generated request (valid and invalid parameters, unknown and seeded document ids,
arbitrary bodies on the XML endpoints) must get

* no 5xx;
* a status code the OpenAPI documents, and a body matching its schema;
* for every 4xx, the error body ``{code, message, detail}`` and nothing else.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import factory
import hypothesis
import pytest
import schemathesis
from hypothesis import strategies as st
from support import DevPKI

from gateway import db
from gateway.api import create_app
from gateway.identity import identify
from gateway.ingest import ingest_document
from gateway.node import Node
from gateway.settings import load_settings

#: the agencies the node hosts; the tests call as H49
H49 = "000.00.00.H49"
H49_A = "000.00.01.H49"
HOSTED = (H49, H49_A)

#: the operations under test (the XML-body POSTs are included: arbitrary bodies must be refused
#: with a documented error). GET /api/v1/documents/{doc_id} answers XML bytes: left to the
#: acceptance tests.
JSON_OPERATIONS = [
    "GET /healthz",
    "GET /readyz",
    "GET /api/v1/inbox",
    "POST /api/v1/documents/{doc_id}/ack",
    "GET /api/v1/documents/{doc_id}/status",
    "POST /api/v1/documents",
    "POST /api/v1/statuses",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]


class ClientCertificate:
    """ASGI middleware: the TLS extension a client-certificate connection gives each request."""

    def __init__(self, app: ASGIApp, chain: list[str]) -> None:
        self.app = app
        self.chain = chain

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
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
    node = pki.issue("schema-node")
    config = directory / "node.toml"
    hosted = ", ".join(f'"{a}"' for a in HOSTED)
    config.write_text(
        f"""
[node]
name = "schema-node"
tier = "province"
agencies = [{hosted}]
key = "{node.key}"
cert = "{node.cert}"

[tls]
cert = "{node.cert}"
key = "{node.key}"

[database]
url = "sqlite:///node.db"

[trust]
anchors = ["{pki.ca.root_cert}"]
crls = ["{pki.ca.crl}"]
intermediates = ["{pki.ca.intermediate_cert}"]

[limits]
max_envelope_bytes = 200000
max_recipients = 5
""",
        encoding="utf-8",
    )
    return config


def _seed(node: Node, pki: DevPKI) -> list[str]:
    """Two documents the caller H49 can see: one it sent, one waiting in its inbox."""
    ids = []
    for sender, recipient in ((H49, H49_A), (H49_A, H49)):
        pem = pki.issue(sender).cert.read_text(encoding="ascii")
        caller = identify(
            {"type": "http", "extensions": {"tls": {"client_cert_chain": [pem]}}},
            trust=node.trust,
            settings=node.settings,
        )
        data = factory.signed(factory.document(sender, [recipient]), pki.key(sender))
        ids.append(ingest_document(node, data, caller=caller).id)
    return ids


@pytest.fixture(scope="module")
def api_schema(pki: DevPKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    directory = tmp_path_factory.mktemp("api-schema")
    settings = load_settings(_write_config(directory, pki), environ={})
    engine = db.make_engine(settings)
    db.upgrade(engine)
    node = Node.from_settings(settings, engine)
    seeded = _seed(node, pki)
    app = ClientCertificate(create_app(node), [pki.issue(H49).cert.read_text(encoding="ascii")])
    schema = schemathesis.openapi.from_asgi("/openapi.json", app).include(
        name=JSON_OPERATIONS
    )

    @schema.hook
    def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any]) -> Any:
        # half the time, an id that exists (so 200s are validated too)
        if "doc_id" not in path_parameters:
            return st.just(path_parameters)
        return st.one_of(
            st.just(path_parameters),
            st.sampled_from(seeded).map(lambda i: {**path_parameters, "doc_id": i}),
        )

    yield schema
    engine.dispose()


schema = schemathesis.pytest.from_fixture("api_schema")


def _is_error_body(body: Any) -> bool:
    return (
        isinstance(body, dict)
        and set(body) == {"code", "message", "detail"}
        and isinstance(body["code"], str)
        and isinstance(body["message"], str)
        and isinstance(body["detail"], dict)
    )


@schema.parametrize()
@hypothesis.settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(hypothesis.HealthCheck),
)
def test_json_endpoints_conform_to_openapi(case: Any) -> None:
    response = case.call_and_validate()
    assert response.status_code < 500, (case.as_curl_command(), response.text)
    if response.status_code >= 400:
        body = json.loads(response.content)
        assert _is_error_body(body), (response.status_code, body)
