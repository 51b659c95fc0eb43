"""The hub-compatible API over real HTTPS, driven by a client that behaves like the national SDK.

A node hosting three agencies of Quảng Ninh serves ``[hub]`` under ``/vdxp``; two connected
systems (DMS) speak for two of them. :mod:`hubsdk` (written from HUB-PROTOCOL.md alone) sends
what the SDK sends: raw body + CRLF, unpadded ``hash-file``, a frozen timestamp, a map that
keeps stale keys, ``Expect: 100-continue`` on ``{}`` bodies, ASCII-only parsing of sendEdoc's
answer. Every refusal is the trio with FAIL and a stable code, stores nothing and is audited.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from factory import document, signed, status
from hubsdk import HubService, Tamper, hash_file
from served import Served, serve_node
from sqlalchemy import func, select
from support import DevPKI

from adapters.hub.client import HubClient, hub_code
from gateway.agency import AgencyCode
from gateway.errors import PeerRefused
from gateway.evidence.attestations import verify_attestation
from gateway.node.inbox import status_view
from gateway.node.systems import add_system, disable_system
from gateway.storage.tables import audit_log, documents
from gateway.trust.caller import Identity

H49 = "000.00.00.H49"
A = "000.00.01.H49"  # Sở Nội vụ: its DMS is system "vxp.a"
B = "000.00.02.H49"  # Sở Tài chính: system "vxp.b"
SAMPLES = Path(__file__).resolve().parents[1] / "data" / "interop"


def _sender_of(package: bytes) -> str:
    found = re.search(rb"<(?:\w+:)?From>\s*<(?:\w+:)?OrganId>([^<]+)<", package)
    assert found is not None
    return found.group(1).decode().strip()


#: the sender of the SDK's own example package (a DMS built from it sends as this agency)
FIELD = _sender_of((SAMPLES / "edoc.edxml").read_bytes())


class Hub:
    """The served node, its systems' secrets, and SDK service objects for them."""

    def __init__(self, served: Served, secrets: dict[str, str]) -> None:
        self.served = served
        self.secrets = secrets
        self.services: list[HubService] = []

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.served.port}/vdxp"

    def service(self, systemid: str, *, endpoint: str | None = None, **kw: Any) -> HubService:
        svc = HubService(
            endpoint or self.endpoint,
            systemid,
            self.secrets[systemid],
            ca_file=str(self.served.pki.ca.root_cert),
            timeout=20.0,
            **kw,
        )
        self.services.append(svc)
        return svc

    def stored(self, kind: str = "document") -> int:
        with self.served.node.reader.connect() as conn:
            return int(
                conn.execute(
                    select(func.count()).select_from(documents).where(documents.c.kind == kind)
                ).scalar_one()
            )

    def audited(self, event: str) -> list[dict[str, Any]]:
        with self.served.node.reader.connect() as conn:
            rows = conn.execute(
                select(audit_log.c.actor, audit_log.c.data)
                .where(audit_log.c.event == event)
                .order_by(audit_log.c.seq)
            ).all()
        return [{"actor": r.actor, **json.loads(r.data)} for r in rows]


@pytest.fixture
def hub(pki: DevPKI, tmp_path: Path) -> Iterator[Hub]:
    with serve_node(
        pki,
        tmp_path / "node",
        hub={"enabled": True, "prefix": "/vdxp"},
        agencies=(H49, A, B, FIELD),
    ) as served:
        node = served.node
        secrets = {
            "vxp.a": add_system(node, "vxp.a", [A], actor="admin:test")[1],
            "vxp.b": add_system(node, "vxp.b", [B], actor="admin:test")[1],
        }
        hub = Hub(served, secrets)
        try:
            yield hub
        finally:
            for svc in hub.services:
                svc.close()


def _package(pki: DevPKI, sender: str, recipients: list[str]) -> bytes:
    return signed(document(sender, recipients), pki.key(sender))


def test_a_dms_sends_lists_fetches_and_acknowledges_through_the_sdk(hub: Hub, pki: DevPKI) -> None:
    """The whole exchange with one reused SDK object per DMS: stale keys, frozen timestamps."""
    sender, receiver = hub.service("vxp.a"), hub.service("vxp.b")
    package = _package(pki, A, [B])
    sent = sender.send_edoc(A, package, to=[B])
    assert (sent.status, sent.error_code) == ("OK", "0"), sent.body_text
    assert sent.doc_id and sent.doc_id.isalnum()  # file-name safe
    assert sent.raw.isascii() and b"\\u00e0" in sent.raw  # "Thành công", ASCII-escaped

    listed = receiver.get_received_edoc_list("edoc")
    assert listed.status == "OK"
    assert isinstance(listed.data, list) and len(listed.data) == 1
    item = listed.data[0]
    assert (item["from"], item["to"], item["messageType"]) == (A, B, "edoc")
    assert b"null" not in listed.raw

    fetched = receiver.get_edoc(item["docId"], file_path="/data/in")
    assert fetched.status == "OK" and fetched.data_bytes == package  # byte for byte
    assert fetched.got_100_continue  # the SDK's {} body is not stalled for 3 s

    assert receiver.count_receive_edoc().count == 1
    done = receiver.update_status(item["docId"], "done")
    assert done.status == "OK"
    again = receiver.update_status(item["docId"], "done")  # the SDK retries: idempotent
    assert again.status == "OK"
    assert receiver.get_received_edoc_list("edoc").data == []
    assert receiver.count_receive_edoc().count == 0

    # the sender's trace, with the map still holding getEdoc's stale docId/filePath keys
    trace = sender.get_sent_edoc_list(sent.doc_id)
    assert trace.status == "OK" and isinstance(trace.data, list)
    (row,) = trace.data
    assert (row["senderDocId"], row["fromCode"], row["toCode"]) == (sent.doc_id, A, B)
    assert row["sendStatus"] == "acknowledged"


def test_a_status_package_goes_back_the_same_way(hub: Hub, pki: DevPKI) -> None:
    sender, receiver = hub.service("vxp.a"), hub.service("vxp.b")
    package = _package(pki, A, [B])
    assert sender.send_edoc(A, package).status == "OK"
    document_id = _document_id(package)
    report = signed(status(B, sender=A, document_id=document_id, code="01"), pki.key(B))
    answered = receiver.send_edoc(B, report, messagetype="status", to=A)
    assert answered.status == "OK", answered.body_text
    statuses = sender.get_received_edoc_list("status")
    assert isinstance(statuses.data, list) and len(statuses.data) == 1
    assert statuses.data[0]["messageType"] == "status"
    assert sender.get_edoc(statuses.data[0]["docId"]).data_bytes == report
    assert sender.count_receive_status().count == 1
    assert sender.get_received_edoc_list("edoc").data == []  # a status is not a document


def test_a_send_that_arrives_twice_is_one_document_with_the_first_docid(
    hub: Hub, pki: DevPKI
) -> None:
    svc = hub.service("vxp.a")
    first, second = svc.send_edoc_twice(A, _package(pki, A, [B]))
    assert first.status == second.status == "OK"
    assert first.doc_id == second.doc_id
    assert hub.stored() == 1


def test_a_new_service_object_per_call_and_a_multipart_client_work_too(
    hub: Hub, pki: DevPKI
) -> None:
    fresh = hub.service("vxp.a", reuse=False)
    assert fresh.send_edoc(A, _package(pki, A, [B])).status == "OK"
    multipart = hub.service("vxp.a").send_edoc_multipart(A, _package(pki, A, [B]))
    assert multipart.status == "OK", multipart.body_text
    # a trailing slash in the DMS's endpoint: /vdxp//getReceivedEdocList
    slashed = hub.service("vxp.b", endpoint=hub.endpoint + "/", reuse=False)
    listed = slashed.get_received_edoc_list("edoc")
    assert isinstance(listed.data, list) and len(listed.data) == 2


def test_the_agencies_list_names_every_agency_here_without_nulls(hub: Hub) -> None:
    svc = hub.service("vxp.a")
    listed = svc.get_agencies_list()
    assert listed.status == "OK" and isinstance(listed.data, list)
    assert {a["code"] for a in listed.data} >= {H49, A, B}  # the caller's own included
    assert b"null" not in listed.raw
    qd20 = svc.get_agencies_list_qd20("1")
    assert isinstance(qd20.data, list) and all(a["code102"] for a in qd20.data)


def test_download_edoc_answers_the_raw_bytes(hub: Hub, pki: DevPKI) -> None:
    package = _package(pki, A, [B])
    hub.service("vxp.a").send_edoc(A, package)
    receiver = hub.service("vxp.b")
    (item,) = receiver.get_received_edoc_list("edoc").data or []
    assert isinstance(item, dict)
    downloaded = receiver.download_edoc(item["docId"], file_path="/tmp")
    assert downloaded.raw == package
    nothing = receiver.download_edoc("0" * 32)
    assert nothing.raw == b""  # an empty body: any other body reads as SUCCESS


# --- refusals: the trio with FAIL and a stable code, nothing stored, audited ----------------


@pytest.mark.parametrize(
    ("tamper", "systemid", "code"),
    [
        (Tamper(secret="not-the-secret"), "vxp.a", "AUTH_HMAC_INVALID"),
        (Tamper(drop_headers=["XroadVnpt-hash-header"]), "vxp.a", "AUTH_HMAC_INVALID"),
        (None, "vxp.unknown", "AUTH_SYSTEM_UNKNOWN"),
    ],
)
def test_authentication_failures_answer_fail_and_are_audited(
    hub: Hub, pki: DevPKI, tamper: Tamper | None, systemid: str, code: str
) -> None:
    hub.secrets.setdefault("vxp.unknown", "whatever")
    svc = hub.service(systemid)
    sent = svc.send_edoc(A, _package(pki, A, [B]), tamper=tamper)
    assert (sent.status, sent.error_code, sent.doc_id) == ("FAIL", code, "")
    assert sent.http_status == 200  # sendEdoc: the JDK stack reads error bodies as 200s
    listed = svc.get_received_edoc_list("edoc", tamper=tamper)
    assert (listed.status, listed.error_code) == ("FAIL", code)
    assert hub.stored() == 0
    refusals = hub.audited("hub_auth_refuse")
    assert [r["code"] for r in refusals] == [code, code]
    assert all("not-the-secret" not in json.dumps(r) for r in refusals)


def test_a_disabled_system_is_refused(hub: Hub, pki: DevPKI) -> None:
    disable_system(hub.served.node, "vxp.a", actor="admin:test")
    sent = hub.service("vxp.a").send_edoc(A, _package(pki, A, [B]))
    assert (sent.status, sent.error_code) == ("FAIL", "AUTH_SYSTEM_DISABLED")
    assert hub.stored() == 0


def test_sending_as_an_agency_not_the_systems_is_refused(hub: Hub, pki: DevPKI) -> None:
    sent = hub.service("vxp.a").send_edoc(B, _package(pki, B, [A]))
    assert (sent.status, sent.error_code) == ("FAIL", "AUTH_SYSTEM_AGENCY_FORBIDDEN")
    assert hub.stored() == 0
    assert [r["code"] for r in hub.audited("hub_refuse")] == ["AUTH_SYSTEM_AGENCY_FORBIDDEN"]


def test_a_package_from_another_agency_is_refused_and_audited_once(hub: Hub, pki: DevPKI) -> None:
    """The system may send as A, and says so, but the package is B's: ingest refuses it and
    audits the refusal; the hub API does not write a second entry for it."""
    sent = hub.service("vxp.a").send_edoc(A, _package(pki, B, [A]))
    assert (sent.status, sent.error_code) == ("FAIL", "AUTH_SENDER_MISMATCH")
    assert hub.stored() == 0
    assert [r["code"] for r in hub.audited("refuse")] == ["AUTH_SENDER_MISMATCH"]
    assert hub.audited("hub_refuse") == []


def test_a_body_that_does_not_match_its_hash_file_is_refused(hub: Hub, pki: DevPKI) -> None:
    package = _package(pki, A, [B])
    wrong = hash_file(package[:-1] + b" ")
    sent = hub.service("vxp.a").send_edoc(A, package, tamper=Tamper(hash_file=wrong))
    assert (sent.status, sent.error_code) == ("FAIL", "REQUEST_HASH_FILE_MISMATCH")
    assert hub.stored() == 0
    assert [r["code"] for r in hub.audited("hub_refuse")] == ["REQUEST_HASH_FILE_MISMATCH"]


def test_the_unpadded_hash_file_is_what_is_checked() -> None:
    data = (SAMPLES / "edoc.edxml").read_bytes()
    assert hash_file(data) == "7e4a746b898d9b54749de74b58e7bd24c8b86287a386653f6593adf9db5eb"
    assert hashlib.sha256(data).hexdigest() != hash_file(data)


def test_field_packages_are_refused_under_require_with_their_own_code(hub: Hub) -> None:
    """The SDK's own example: undeclared xlink:/edXML: prefixes and a placeholder signature.
    Under ``require`` (the default) it is refused, with the code that names its XML defect."""
    sample = (SAMPLES / "edoc.edxml").read_bytes()
    system, secret = add_system(hub.served.node, "vxp.field", [FIELD], actor="admin:test")
    hub.secrets[system.systemid] = secret
    sent = hub.service("vxp.field").send_edoc(FIELD, sample)
    assert (sent.status, sent.error_code) == ("FAIL", "XML_PREFIX_UNDECLARED")
    assert hub.stored() == 0
    assert [r["code"] for r in hub.audited("refuse")] == ["XML_PREFIX_UNDECLARED"]
    assert hub.audited("hub_refuse") == []


def test_a_malformed_package_is_refused_as_malformed(hub: Hub) -> None:
    sent = hub.service("vxp.a").send_edoc(A, b"<edXML><unclosed></edXML>")
    assert (sent.status, sent.error_code) == ("FAIL", "XML_MALFORMED")
    assert hub.stored() == 0


def test_unknown_operations_and_wrong_methods_answer_the_trio(hub: Hub) -> None:
    svc = hub.service("vxp.a")
    unknown = svc.call("registerAgency", '{"AgencyCode":"x"}')
    assert (unknown.status, unknown.error_code, unknown.http_status) == (
        "FAIL",
        "REQUEST_PATH_NOT_FOUND",
        404,
    )
    wrong = svc.call("getReceivedEdocList", '{"messagetype":"edoc"}', method="GET")
    assert (wrong.status, wrong.error_code, wrong.http_status) == (
        "FAIL",
        "REQUEST_METHOD_NOT_ALLOWED",
        405,
    )
    unsigned = svc.download_edoc2("x")  # the SDK's bug: no auth headers
    assert unsigned.raw == b"" and unsigned.http_status == 401
    assert hub.audited("hub_auth_refuse")[-1]["code"] == "AUTH_HMAC_INVALID"


def test_update_status_refuses_two_different_doc_ids(hub: Hub, pki: DevPKI) -> None:
    hub.service("vxp.a").send_edoc(A, _package(pki, A, [B]))
    receiver = hub.service("vxp.b")
    (item,) = receiver.get_received_edoc_list("edoc").data or []
    assert isinstance(item, dict)
    both = receiver.update_status(f'{{"docId":"{item["docId"]}","docid":"other","status":"done"}}')
    assert (both.status, both.error_code) == ("FAIL", "REQUEST_PARAMETERS_INVALID")
    assert len(receiver.get_received_edoc_list("edoc").data or []) == 1  # still there


def test_another_systems_document_is_not_found(hub: Hub, pki: DevPKI) -> None:
    hub.service("vxp.a").send_edoc(A, _package(pki, A, [H49]))
    with hub.served.node.reader.connect() as conn:
        gid = conn.execute(select(documents.c.id)).scalar_one()
    stranger = hub.service("vxp.b")
    got = stranger.get_edoc(gid)
    assert (got.status, got.error_code) == ("FAIL", "DOCUMENT_NOT_FOUND")
    assert stranger.get_sent_edoc_list(gid).error_code == "DOCUMENT_NOT_FOUND"


def _document_id(package: bytes) -> str:
    from lxml import etree

    found = etree.fromstring(package).find(".//{*}MessageHeader/{*}DocumentId")
    assert found is not None and found.text
    return str(found.text)


def test_the_nodes_own_hub_client_speaks_the_protocol(hub: Hub, pki: DevPKI) -> None:
    """adapters.hub.client (what a node uses toward a real hub) against the hub API."""
    ca = str(hub.served.pki.ca.root_cert)
    with (
        HubClient(hub.endpoint, "vxp.a", hub.secrets["vxp.a"], verify=ca) as sender,
        HubClient(hub.endpoint + "/", "vxp.b", hub.secrets["vxp.b"], verify=ca) as receiver,
    ):
        package = _package(pki, A, [B])
        doc_id = sender.send_edoc(A, package, to=[B])
        assert sender.send_edoc(A, package) == doc_id  # a repeat: the first DocId
        (item,) = receiver.received("edoc")
        assert receiver.get_edoc(item["docId"]) == package
        receiver.update_status(item["docId"], "done")
        assert receiver.received("edoc") == []
        assert [row["sendStatus"] for row in sender.sent(doc_id)] == ["acknowledged"]
        assert {a["code"] for a in sender.agencies()} >= {A, B}
        with pytest.raises(PeerRefused) as refused:
            sender.send_edoc(B, package)
        assert hub_code(refused.value) == "AUTH_SYSTEM_AGENCY_FORBIDDEN"
    assert hub.secrets["vxp.a"] not in repr(sender)


# --- the attest policy ----------------------------------------------------------------------


def _attest_system(hub: Hub, agency: str, systemid: str = "vxp.field") -> HubService:
    system, secret = add_system(
        hub.served.node, systemid, [agency], policy="attest", actor="admin:test"
    )
    hub.secrets[system.systemid] = secret
    return hub.service(system.systemid)


def test_under_attest_the_sdks_own_example_is_accepted_and_says_it_was_not_verified(
    hub: Hub,
) -> None:
    """Placeholder signature and undeclared prefixes: every other check passes, so the node
    keeps the bytes untouched and seals an intake attestation that every view shows."""
    sample = (SAMPLES / "edoc.edxml").read_bytes()
    svc = _attest_system(hub, FIELD)
    sent = svc.send_edoc(FIELD, sample)
    assert sent.status == "OK", sent.body_text
    node = hub.served.node
    with node.reader.connect() as conn:
        row = conn.execute(
            select(documents.c.envelope, documents.c.attestation, documents.c.signer).where(
                documents.c.id == sent.doc_id
            )
        ).one()
    assert bytes(row.envelope) == sample  # byte for byte
    sealed = json.loads(row.attestation)
    fields = verify_attestation(
        sealed, trust=hub.served.pki.trust(), sha256=hashlib.sha256(sample).hexdigest()
    )
    assert (fields["node"], fields["systemid"], fields["agency"]) == (
        node.name,
        "vxp.field",
        FIELD,
    )
    assert fields["xml_defects"] == {"undeclared_prefixes": ["xlink", "edXML"]}
    assert "SIGNATURE_WEAK_ALGORITHM" in fields["failed"]
    assert json.loads(row.signer)["verified"] is False
    # the timeline says it in plain words
    view = status_view(node, _hub_caller(FIELD), sent.doc_id)
    assert view["attested_by"] == node.name
    first = view["recipients"][0]["events"][0]
    assert first["description"].startswith("sender signature not verified; intake attested")
    assert [r["code"] for r in hub.audited("refuse")] == []


def test_under_attest_everything_but_the_signature_still_refuses(hub: Hub, pki: DevPKI) -> None:
    svc = _attest_system(hub, A, "vxp.attest-a")
    broken = svc.send_edoc(A, b"<edXML><unclosed></edXML>")
    assert (broken.status, broken.error_code) == ("FAIL", "XML_MALFORMED")
    not_edxml = svc.send_edoc(A, b"<other xmlns='urn:x'/>")
    assert (not_edxml.status, not_edxml.error_code) == ("FAIL", "ENVELOPE_UNKNOWN_KIND")
    # the package's From is not the system's agency
    someone_else = svc.send_edoc(A, _package(pki, B, [A]))
    assert (someone_else.status, someone_else.error_code) == ("FAIL", "AUTH_SENDER_MISMATCH")
    assert hub.stored() == 0
    # a package that verifies is simply verified: no attestation
    ok = svc.send_edoc(A, _package(pki, A, [B]))
    assert ok.status == "OK"
    with hub.served.node.reader.connect() as conn:
        assert conn.execute(select(documents.c.attestation)).scalar_one() is None


def _hub_caller(agency: str) -> Identity:
    return Identity(
        kind="agency", agency=AgencyCode.parse(agency), certificate=None, source="hub", system="t"
    )
