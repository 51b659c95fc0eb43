"""Webhook signatures as Standard Webhooks defines them, checked against the project's own
library (``standardwebhooks``) both ways, and the exact bytes that are signed."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from gateway.node.webhooks import headers, payload, sign, signature_base

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
KEY = bytes(range(32))


def test_the_signed_bytes_are_id_dot_timestamp_dot_body() -> None:
    body = b'{"type":"inbox.arrived","data":{"agency":"000.00.00.G12"}}'
    assert (
        signature_base("msg_0123", 1674087231, body)
        == b'msg_0123.1674087231.{"type":"inbox.arrived","data":{"agency":"000.00.00.G12"}}'
    )
    expected = hmac.new(KEY, signature_base("msg_0123", 1674087231, body), hashlib.sha256)
    assert sign([KEY], "msg_0123", 1674087231, body) == "v1," + base64.b64encode(
        expected.digest()
    ).decode("ascii")


def test_the_standardwebhooks_library_verifies_what_the_node_signs() -> None:
    body = '{"data":{"from":"Văn phòng"}}'.encode()  # non-ASCII: signed as UTF-8 bytes
    now = int(time.time())
    sent = headers([KEY], "msg_abc", now, body)
    assert sent["webhook-timestamp"] == str(now)
    assert Webhook(SECRET).verify(body, sent) == {"data": {"from": "Văn phòng"}}
    with pytest.raises(WebhookVerificationError):  # one byte changed
        Webhook(SECRET).verify(body.replace(b"from", b"frim"), sent)
    with pytest.raises(WebhookVerificationError):  # another id: another signature
        Webhook(SECRET).verify(body, {**sent, "webhook-id": "msg_abd"})
    stale = headers([KEY], "msg_abc", now - 3600, body)
    with pytest.raises(WebhookVerificationError):  # an hour old: a replay
        Webhook(SECRET).verify(body, stale)


def test_the_node_signs_exactly_as_the_library_does() -> None:
    body = b'{"type":"inbox.arrived"}'
    at = dt.datetime(2026, 12, 6, 3, 4, 5, tzinfo=dt.UTC)
    library = Webhook(SECRET).sign("msg_xyz", at, body)
    assert sign([KEY], "msg_xyz", int(at.timestamp()), body) == library


def test_several_secrets_sign_side_by_side_for_a_rotation() -> None:
    old, new = os.urandom(32), os.urandom(32)
    body = b"{}"
    now = int(time.time())
    sent = headers([new, old], "msg_rot", now, body)
    assert len(sent["webhook-signature"].split(" ")) == 2
    for key in (old, new):  # a DMS holding either secret accepts it
        secret = "whsec_" + base64.b64encode(key).decode()
        assert Webhook(secret).verify(body, sent) == {}


def test_the_payload_is_thin_compact_json_with_links() -> None:
    doc = SimpleNamespace(
        id="ab" * 16,
        kind="notice",
        sender="000.00.00.H49",
        document_id=None,
        sha256="cd" * 32,
        status_code=None,
    )
    at = dt.datetime(2026, 12, 6, 3, 4, 5, 6, tzinfo=dt.UTC)
    text = payload("https://gw.example:8443", doc, "000.00.00.H49", at)
    assert " " not in text  # compact: what is sent is what is signed, byte for byte
    body = json.loads(text)
    assert body["type"] == "inbox.arrived"
    assert body["timestamp"] == "2026-12-06T03:04:05.000006Z"
    assert body["data"]["links"] == {
        "package": f"https://gw.example:8443/api/v1/documents/{'ab' * 16}",
        "ack": f"https://gw.example:8443/api/v1/documents/{'ab' * 16}/ack",
        "evidence": f"https://gw.example:8443/api/v1/documents/{'ab' * 16}/evidence",
        "inbox": "https://gw.example:8443/api/v1/inbox",
    }


#: docs/webhooks.md's worked example, byte for byte
DOC_BODY = (
    b'{"type":"inbox.arrived","timestamp":"2026-12-06T03:24:05.123456Z","data":{"id":'
    b'"9f1c2a7e0b6d4f3e8a5c1b2d3e4f5a6b","kind":"document","agency":"000.00.00.G12","from":'
    b'"000.01.01.H49","document_id":"000.01.01.H49,2026/11/23,12/QD","status_code":null,'
    b'"sha256":"<hex>","links":{"package":"https://gateway.example:8443/api/v1/documents/'
    b'9f1c2a7e0b6d4f3e8a5c1b2d3e4f5a6b","ack":"https://gateway.example:8443/api/v1/documents/'
    b'9f1c2a7e0b6d4f3e8a5c1b2d3e4f5a6b/ack","evidence":"https://gateway.example:8443/api/v1/'
    b'documents/9f1c2a7e0b6d4f3e8a5c1b2d3e4f5a6b/evidence","inbox":"https://gateway.example:8443'
    b'/api/v1/inbox","statuses":"https://gateway.example:8443/api/v1/statuses"}}}'
)


def test_the_worked_example_of_the_docs() -> None:
    assert SECRET == "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
    message_id, stamp = "msg_5f0c3e1b9a0d4c4f8f6b2a7d9e1c3b5a", 1796527446
    expected = "v1,72Meylg06KPg1+r6mWM98BVpGPxRWjJkccGpP60Uj5o="
    assert sign([KEY], message_id, stamp, DOC_BODY) == expected
    at = dt.datetime.fromtimestamp(stamp, dt.UTC)
    assert Webhook(SECRET).sign(message_id, at, DOC_BODY) == expected
    text = (Path(__file__).resolve().parents[2] / "docs" / "webhooks.md").read_text()
    assert DOC_BODY.decode() in text and expected in text


def test_the_standard_library_example_of_the_docs_verifies_what_the_node_signs() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "webhooks.md").read_text()
    block = text.split("With the standard library only:\n\n```python\n", 1)[1].split("```")[0]
    namespace: dict[str, object] = {}
    exec(compile(block, "docs/webhooks.md", "exec"), namespace)
    verify = cast(Callable[[str, dict[str, str], bytes], bool], namespace["verify"])
    body = b'{"type":"inbox.arrived"}'
    sent = headers([KEY], "msg_doc", int(time.time()), body)
    assert verify(SECRET, {k.title(): v for k, v in sent.items()}, body) is True
    assert verify(SECRET, sent, body + b" ") is False
    stale = headers([KEY], "msg_doc", int(time.time()) - 600, body)
    assert verify(SECRET, stale, body) is False
