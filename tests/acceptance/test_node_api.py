"""One real node process over real HTTPS: push, pull, ack, statuses, refusals, audit.

Runs on SQLite, and on PostgreSQL when GATEWAY_TEST_POSTGRES_URL is set.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import ssl
import subprocess
import time
from pathlib import Path

import factory
import httpx
import pytest
from harness import GATEWAY, H49, H49_A, H49_B, RunningNode
from sqlalchemy import select, update
from support import ATTACKS, INTEROP, DevPKI

from gateway.dev.pki import revoke
from gateway.evidence.receipts import verify_receipt
from gateway.settings import load_settings
from gateway.storage import db
from gateway.storage.tables import audit_log
from gateway.trust.store import TrustStore


def push(n: RunningNode, agency: str, body: bytes, path: str = "/api/v1/documents"):
    return n.client(agency).post(path, content=body, headers={"content-type": "application/xml"})


def signed_doc(n: RunningNode, sender: str, recipients: list[str], **kw: object) -> bytes:
    return factory.signed(factory.document(sender, recipients, **kw), n.key(sender))  # type: ignore[arg-type]


def inbox_ids(n: RunningNode, agency: str) -> list[str]:
    response = n.client(agency).get("/api/v1/inbox")
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


def test_push_pull_ack_round_trip(node: RunningNode) -> None:
    body = signed_doc(node, H49_A, [H49_B])
    response = push(node, H49_A, body)
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["duplicate"] is False
    # the receipt is signed by the node and names the stored bytes
    fields = verify_receipt(accepted["receipt"], TrustStore.from_pem_files([node.pki.ca.root_cert]))
    assert fields["sha256"] == hashlib.sha256(body).hexdigest()
    assert fields["document"] == accepted["id"]

    assert accepted["id"] in inbox_ids(node, H49_B)
    fetched = node.client(H49_B).get(f"/api/v1/documents/{accepted['id']}")
    assert fetched.status_code == 200
    assert fetched.content == body  # byte for byte
    ack = node.client(H49_B).post(f"/api/v1/documents/{accepted['id']}/ack")
    assert ack.status_code == 200 and ack.json()["state"] == "acknowledged"
    assert accepted["id"] not in inbox_ids(node, H49_B)

    view = node.client(H49_A).get(accepted["status_url"].replace(node.base_url, ""))
    assert view.status_code == 200, view.text
    [recipient] = view.json()["recipients"]
    assert recipient["recipient"] == H49_B
    assert recipient["transport"] == "acknowledged"
    assert [e["code"] for e in recipient["events"]] == [
        "accepted",
        "delivered",
        "fetched",
        "acknowledged",
    ]


def test_idempotent_repeat_and_conflict(node: RunningNode) -> None:
    body = signed_doc(node, H49_A, [H49_B], document_id="000.00.01.H49,2026/11/23,77/UBND")
    first = push(node, H49_A, body)
    again = push(node, H49_A, body)
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["duplicate"] is True
    assert again.json()["receipt"] == first.json()["receipt"]
    assert inbox_ids(node, H49_B).count(first.json()["id"]) == 1

    other = signed_doc(
        node, H49_A, [H49_B], document_id="000.00.01.H49,2026/11/23,77/UBND", subject="Khác"
    )
    conflict = push(node, H49_A, other)
    assert conflict.status_code == 409
    assert conflict.json()["code"] == "DOCUMENT_CONFLICT"


def test_agencies_see_only_their_own_documents(node: RunningNode) -> None:
    body = signed_doc(node, H49_A, [H49_B])
    doc_id = push(node, H49_A, body).json()["id"]
    stranger = node.client(H49).get(f"/api/v1/documents/{doc_id}")
    assert stranger.status_code == 404
    assert stranger.json()["code"] == "DOCUMENT_NOT_FOUND"
    assert node.client(H49).post(f"/api/v1/documents/{doc_id}/ack").status_code == 404
    assert node.client(H49_B).get(f"/api/v1/documents/{doc_id}/status").status_code == 404
    assert doc_id not in inbox_ids(node, H49)


def test_business_statuses_flow_back_and_bad_transitions_are_refused(node: RunningNode) -> None:
    body = signed_doc(node, H49_A, [H49_B])
    doc = push(node, H49_A, body).json()
    document_id = factory_document_id(body)

    def report(code: str) -> object:
        status = factory.status(H49_B, sender=H49_A, document_id=document_id, code=code)
        return push(node, H49_B, factory.signed(status, node.key(H49_B)), "/api/v1/statuses")

    early = report("06")
    assert early.status_code == 409, early.text
    assert early.json()["code"] == "STATUS_TRANSITION_INVALID"
    for code in ("01", "03", "06"):
        response = report(code)
        assert response.status_code == 202, response.text
    view = node.client(H49_A).get(f"/api/v1/documents/{doc['id']}/status").json()
    [recipient] = view["recipients"]
    assert [e["code"] for e in recipient["events"] if e["kind"] == "status"] == ["01", "03", "06"]
    assert recipient["status"] == "06"
    # the statuses reach the sender's inbox as status packages
    statuses = node.client(H49_A).get("/api/v1/inbox").json()["items"]
    assert {"01", "03", "06"} <= {i["status_code"] for i in statuses if i["kind"] == "status"}


def test_nothing_after_refusal(node: RunningNode) -> None:
    body = signed_doc(node, H49_A, [H49_B])
    push(node, H49_A, body)
    document_id = factory_document_id(body)

    def report(code: str) -> object:
        package = factory.status(H49_B, sender=H49_A, document_id=document_id, code=code)
        return push(node, H49_B, factory.signed(package, node.key(H49_B)), "/api/v1/statuses")

    assert report("01").status_code == 202
    assert report("02").status_code == 202
    later = report("03")
    assert later.status_code == 409
    assert later.json()["code"] == "STATUS_TRANSITION_INVALID"
    # only the recipient reports 01-06, and only the sender asks to take back (13)
    stranger = factory.status(H49, sender=H49_A, document_id=document_id, code="01")
    response = push(node, H49, factory.signed(stranger, node.key(H49)), "/api/v1/statuses")
    assert response.status_code == 403
    assert response.json()["code"] == "STATUS_NOT_ALLOWED"


def factory_document_id(body: bytes) -> str:
    start = body.index(b"<edXML:DocumentId>") + len(b"<edXML:DocumentId>")
    return body[start : body.index(b"</edXML:DocumentId>", start)].decode()


@pytest.mark.parametrize(
    ("case", "status", "code"),
    [
        ("malformed", 400, "XML_MALFORMED"),
        ("xxe", 400, "XML_EXTERNAL_ENTITY"),
        ("billion laughs", 400, "XML_ENTITY_EXPANSION"),
        ("wrapping", 422, "SIGNATURE_WRAPPED_ENVELOPE"),
        ("unsigned", 422, "SIGNATURE_MISSING"),
        ("tampered", 422, "SIGNATURE_DIGEST_MISMATCH"),
        ("signed by another agency", 403, "SIGNER_AGENCY_MISMATCH"),
        ("sent as another agency", 403, "AUTH_SENDER_MISMATCH"),
        ("too many recipients", 422, "REQUEST_TOO_MANY_RECIPIENTS"),
        ("recipient nobody serves", 422, "REQUEST_RECIPIENT_UNREACHABLE"),
        ("oversize", 413, "REQUEST_BODY_TOO_LARGE"),
        ("a status where a document is expected", 422, "REQUEST_WRONG_PACKAGE_KIND"),
    ],
)
def test_bad_input_is_refused_with_its_code_and_nothing_stored(
    node: RunningNode, case: str, status: int, code: str
) -> None:
    agency, recipient = H49_A, H49_B
    before = set(inbox_ids(node, recipient))
    if case == "malformed":
        body = (INTEROP / "edoc_new.edxml").read_bytes()
    elif case == "xxe":
        body = (ATTACKS / "xxe_file.edxml").read_bytes()
    elif case == "billion laughs":
        body = (ATTACKS / "billion_laughs.edxml").read_bytes()
    elif case == "wrapping":
        body = (ATTACKS / "wrap_forged_root.edxml").read_bytes()
    elif case == "unsigned":
        body = factory.document(agency, [recipient])
    elif case == "tampered":
        body = signed_doc(node, agency, [recipient]).replace("Công văn".encode(), b"Cong van", 1)
    elif case == "signed by another agency":
        body = factory.signed(factory.document(agency, [recipient]), node.key(H49))
    elif case == "sent as another agency":
        body = signed_doc(node, H49, [recipient])  # valid, but H49_A's client sends it
    elif case == "too many recipients":
        body = signed_doc(node, agency, [f"000.00.{i:02d}.H49" for i in range(3, 10)])
    elif case == "recipient nobody serves":
        body = signed_doc(node, agency, ["000.00.00.G12"])
    elif case == "oversize":
        body = b"<edXML>" + b" " * 60_000_001 + b"</edXML>"
    else:
        body = factory.signed(
            factory.status(agency, sender=recipient, document_id="x", code="01"), node.key(agency)
        )
    response = push(node, agency, body)
    assert response.status_code == status, response.text
    error = response.json()
    assert error["code"] == code
    assert set(error) == {"code", "message", "detail"}
    assert set(inbox_ids(node, recipient)) == before


def test_unknown_agency_and_missing_certificate(node: RunningNode) -> None:
    outsider = "000.00.09.H41"  # trusted CA, but not hosted by this node
    body = signed_doc(node, outsider, [H49_B])
    response = push(node, outsider, body)
    assert response.status_code == 403
    assert response.json()["code"] == "AUTH_UNKNOWN_AGENCY"
    engine = db.make_engine(load_settings(node.config, environ={}))

    def auth_failures() -> int:
        with engine.connect() as conn:
            return len(
                conn.execute(
                    select(audit_log.c.seq).where(audit_log.c.event == "auth_failure")
                ).all()
            )

    before = auth_failures()
    anonymous = node.client(None).get("/api/v1/inbox")
    assert anonymous.status_code == 401
    assert anonymous.json()["code"] == "AUTH_REQUIRED"
    assert auth_failures() == before + 1  # every auth failure is in the audit log
    engine.dispose()
    assert node.client(None).get("/healthz").status_code == 200


def test_readyz_and_openapi(node: RunningNode) -> None:
    ready = node.client(H49).get("/readyz")
    assert ready.status_code == 200, ready.text
    spec = node.client(H49).get("/openapi.json").json()
    assert "/api/v1/documents" in spec["paths"]


def test_audit_log_verifies_and_catches_tampering(node: RunningNode) -> None:
    push(node, H49_A, signed_doc(node, H49_A, [H49_B]))

    def audit_verify() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [GATEWAY, "audit", "verify", "--config", str(node.config), "--json"],
            capture_output=True,
            text=True,
        )

    done = audit_verify()
    assert done.returncode == 0, done.stdout + done.stderr
    engine = db.make_engine(load_settings(node.config, environ={}))
    with engine.begin() as conn:
        seq, data = conn.execute(
            select(audit_log.c.seq, audit_log.c.data).where(audit_log.c.event == "ingest").limit(1)
        ).one()
        conn.execute(
            update(audit_log).where(audit_log.c.seq == seq).values(data=data.replace("H49", "H50"))
        )
    try:
        broken = audit_verify()
        assert broken.returncode == 1, broken.stdout + broken.stderr
        assert json.loads(broken.stdout)["first_broken_seq"] == seq
    finally:
        with engine.begin() as conn:
            conn.execute(update(audit_log).where(audit_log.c.seq == seq).values(data=data))
        engine.dispose()
    assert audit_verify().returncode == 0


def test_revoked_client_certificate_is_refused_without_a_restart(node: RunningNode) -> None:
    """A CA publishes a new CRL: the running node rereads it and refuses the revoked agency.

    The TLS handshake still passes (OpenSSL reads no CRL); the app answers 401."""
    # a code of its own: the PKI is shared by the SQLite and PostgreSQL nodes of this module
    revoked = f"{secrets.randbelow(900) + 100:03d}.00.03.H49"
    issued = node.pki.issue(revoked)
    client = node.client(revoked)
    # not hosted here, so an unknown document is 404 while trusted, 401 once revoked
    probe = "/api/v1/documents/0123456789abcdef0123456789abcdef/status"
    assert client.get(probe).status_code == 404  # trusted before the revocation
    assert node.process is not None
    pid = node.process.pid
    revoke(node.pki.directory, issued.serial)
    deadline = time.monotonic() + 15
    response = client.get(probe)
    while response.status_code == 404 and time.monotonic() < deadline:
        time.sleep(0.2)
        response = client.get(probe)
    assert response.status_code == 401, response.text
    assert response.json()["code"] == "AUTH_CERT_UNTRUSTED"
    assert node.process is not None and node.process.pid == pid  # the same process


def test_client_certificate_from_an_untrusted_ca_fails_the_handshake(
    node: RunningNode, other_pki: DevPKI
) -> None:
    stranger = other_pki.issue(H49_A)
    context = ssl.create_default_context(cafile=str(node.pki.ca.root_cert))
    context.load_cert_chain(str(stranger.cert), str(stranger.key))
    with (
        httpx.Client(base_url=node.base_url, verify=context, timeout=10) as client,
        pytest.raises(httpx.TransportError),
    ):
        client.get("/api/v1/inbox")


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_a_50_mb_envelope_is_accepted_in_a_small_multiple_of_its_size(
    node: RunningNode,
) -> None:
    attachment = base64.b64encode(os.urandom(37 * 1024 * 1024)).decode()
    unsigned = factory.document(H49_A, [H49_B]).replace(b"UEsDBBQAAAAIAA==", attachment.encode(), 1)
    body = factory.signed(unsigned, node.key(H49_A))
    assert len(body) > 49_000_000
    assert node.process is not None
    before = _peak_rss(node.process.pid)
    response = push(node, H49_A, body)
    assert response.status_code == 202, response.text[:500]
    growth = _peak_rss(node.process.pid) - before
    multiple = growth / len(body)
    print(f"50 MB envelope: {len(body)} bytes, node peak RSS grew {growth} bytes = {multiple:.1f}x")
    assert multiple < 12, f"peak memory grew {multiple:.1f}x the envelope size"
    fetched = node.client(H49_B).get(f"/api/v1/documents/{response.json()['id']}")
    assert hashlib.sha256(fetched.content).digest() == hashlib.sha256(body).digest()


def test_a_document_to_oneself_is_fetched_and_acknowledged_like_any_other(
    node: RunningNode,
) -> None:
    doc_id = push(node, H49, signed_doc(node, H49, [H49])).json()["id"]
    assert doc_id in inbox_ids(node, H49)
    assert node.client(H49).get(f"/api/v1/documents/{doc_id}").status_code == 200
    ack = node.client(H49).post(f"/api/v1/documents/{doc_id}/ack")
    assert ack.status_code == 200, ack.text
    assert doc_id not in inbox_ids(node, H49)
