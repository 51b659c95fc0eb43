"""Hostile packages sent to a real node's ingest and to the verifier: refused, never stored.

Each class the hostile-input review found is grafted into a validly signed document (see
``tests/hostile.py``), then handed to :func:`~gateway.node.ingest.ingest_document` on a real node
(SQLite, migrated, the session dev PKI) and to ``gateway verify``. Every refusal must carry the
class's stable code, store nothing but the refusal's audit entry, and stop before the expensive
steps (schema, canonicalisation, signature). No test here asserts a time: the benchmark in
``tests/unit/test_xml_budgets.py`` prints what refusals cost.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import factory
import pytest
from lxml import etree
from sqlalchemy import func, select
from support import DevPKI

from gateway.agency import AgencyCode
from gateway.dev.hostile import CASES, into_root_tag
from gateway.dev.nodeconfig import write_node_config
from gateway.envelope.model import EDXML_NS
from gateway.errors import GatewayError
from gateway.node.container import Node
from gateway.node.ingest import ingest_document
from gateway.settings import load_settings
from gateway.storage import db
from gateway.storage.tables import audit_log, deliveries, documents
from gateway.trust.caller import Identity
from gateway.trust.signing import sign_package
from gateway.trust.verification import CHECK_NAMES, Verifier, VerifyPolicy

H49 = "000.00.00.H49"
G12 = "000.00.00.G12"
GATEWAY = shutil.which("gateway", path=str(Path(sys.executable).parent)) or "gateway"


@pytest.fixture(scope="module")
def node(pki: DevPKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """A node hosting H49 and G12 on a fresh SQLite database, default [limits]."""
    directory = tmp_path_factory.mktemp("hostile-node")
    config = write_node_config(
        directory / "node.toml",
        name="hostile-node",
        agencies=(H49, G12),
        node=pki.issue("hostile-node"),
        ca=pki.ca,
        database_url=f"sqlite:///{directory / 'node.db'}",
    )
    settings = load_settings(config, environ={})
    engine = db.make_engine(settings)
    db.upgrade(engine)
    yield Node.from_settings(settings, engine)
    engine.dispose()


@pytest.fixture(scope="module")
def signed(pki: DevPKI) -> bytes:
    """A valid signed 5 KB document from H49 to G12."""
    return sign_package(factory.document(H49, [G12]), pki.key(H49))


def caller(pki: DevPKI, code: str = H49) -> Identity:
    return Identity(
        kind="agency", agency=AgencyCode.parse(code), certificate=pki.key(code).certificate
    )


def stored(node: Node) -> tuple[int, int]:
    """(documents, deliveries) rows."""
    with node.reader.connect() as conn:
        count_documents = conn.execute(select(func.count()).select_from(documents)).scalar_one()
        count_deliveries = conn.execute(select(func.count()).select_from(deliveries)).scalar_one()
    return count_documents, count_deliveries


def last_refusal(node: Node) -> dict[str, Any]:
    with node.reader.connect() as conn:
        row = conn.execute(
            select(audit_log.c.event, audit_log.c.data).order_by(audit_log.c.seq.desc()).limit(1)
        ).one()
    assert row.event == "refuse"
    facts: dict[str, Any] = json.loads(row.data)
    return facts


def refused_by_ingest(node: Node, data: bytes, who: Identity) -> GatewayError:
    before = stored(node)
    with pytest.raises(GatewayError) as info:
        ingest_document(node, data, caller=who)
    assert stored(node) == before, "a refused package left rows behind"
    assert last_refusal(node)["code"] == info.value.code
    return info.value


def test_the_untouched_package_is_accepted(node: Node, pki: DevPKI, signed: bytes) -> None:
    # the control: what the hostile cases are grafted into is a package the node accepts
    before = stored(node)
    accepted = ingest_document(node, signed, caller=caller(pki))
    assert not accepted.duplicate
    assert stored(node)[0] == before[0] + 1


# --- each class, through ingest and the verifier -------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_each_hostile_class_is_refused_by_ingest_and_nothing_is_stored(
    node: Node, pki: DevPKI, signed: bytes, name: str
) -> None:
    case = CASES[name]
    error = refused_by_ingest(node, case.build(signed), caller(pki))
    assert error.code == case.code
    assert 400 <= error.http_status < 500


@pytest.mark.parametrize("name", list(CASES))
def test_each_hostile_class_stops_the_verifier_before_any_expensive_step(
    pki: DevPKI, signed: bytes, name: str
) -> None:
    case = CASES[name]
    report = pki.verifier().verify(case.build(signed))
    assert [e.code for e in report.errors] == [case.code]
    assert report.check("xml").ok is False
    # schema, canonicalisation and signature never ran
    assert all(report.check(n).ok is None for n in CHECK_NAMES[1:])


def test_namespace_declarations_are_refused_before_canonicalisation(
    pki: DevPKI, signed: bytes
) -> None:
    # 100 000 unused declarations on the root took 16.8 s to canonicalise, then verified (they
    # are not signed content): now refused while parsing, canonicalisation never runs
    data = into_root_tag(signed, b" ".join(b'xmlns:n%d="urn:%d"' % (n, n) for n in range(100_000)))
    report = pki.verifier().verify(data)
    assert [e.code for e in report.errors] == ["XML_TOO_MANY_NAMESPACES"]
    assert report.errors[0].detail["count"] == 100_001  # and the root's own default namespace
    assert report.check("signature").detail.startswith("not run")


# --- error reports that cannot blow up -----------------------------------------------------------


def test_thousands_of_unknown_attributes_get_a_short_schema_report(
    pki: DevPKI, signed: bytes
) -> None:
    # With the attribute budget lifted, the package reaches the schema step: 1 500 unknown
    # attributes on one element once took ~10 s there (one error built per attribute, each
    # formatting all of them). The report stays short, whatever the package holds.
    many = b" ".join(b"unknown%d='%s'" % (n, b"v" * n) for n in range(1_500))
    data = signed.replace(b"<edXML:Subject>", b"<edXML:Subject " + many + b">", 1)
    limits = dataclasses.replace(VerifyPolicy().limits, max_attributes=10_000)
    report = pki.verifier(limits=limits).verify(data)
    error = report.first_error()
    assert error is not None and error.code == "SCHEMA_INVALID"
    assert 1 <= len(error.detail["errors"]) <= 10
    assert len(error.message) < 700
    assert len(json.dumps(error.to_dict())) < 10_000


# --- a signed document without its sender's TraceHeader -------------------------------------------


@pytest.fixture(scope="module")
def without_own_trace(pki: DevPKI) -> bytes:
    """Validly signed by H49, but every TraceHeader names another agency (none is H49's)."""
    root = etree.fromstring(factory.document(H49, [G12]))
    for organ in root.iter(f"{{{EDXML_NS}}}TraceHeader"):
        organ.find(f"{{{EDXML_NS}}}OrganId").text = G12  # type: ignore[union-attr]
    unsigned = etree.tostring(root, xml_declaration=True, encoding="UTF-8")
    return sign_package(unsigned, pki.key(H49), stamp_trace=False)


def test_a_document_without_its_senders_trace_header_is_refused_by_name(
    pki: DevPKI, without_own_trace: bytes
) -> None:
    report = pki.verifier().verify(without_own_trace)
    assert not report.valid
    assert [e.code for e in report.errors] == ["ENVELOPE_MISSING_ELEMENT"]
    error = report.errors[0]
    assert error.detail["element"] == "TraceHeader"
    assert error.detail["organ_id"] == H49
    # the signature itself is fine: only the claimed signing time is missing
    assert report.check("signature").ok is True
    assert report.check("envelope").ok is False
    assert report.package is None
    with pytest.raises(GatewayError) as info:
        report.accepted()
    assert info.value.code == "ENVELOPE_MISSING_ELEMENT"


def test_ingest_refuses_it_with_the_code_instead_of_a_500(
    node: Node, pki: DevPKI, without_own_trace: bytes
) -> None:
    error = refused_by_ingest(node, without_own_trace, caller(pki))
    assert error.code == "ENVELOPE_MISSING_ELEMENT"
    assert error.http_status == 422


def test_gateway_verify_names_the_missing_trace_header(
    pki: DevPKI, without_own_trace: bytes, tmp_path: Path
) -> None:
    path = tmp_path / "no-own-trace.edxml"
    path.write_bytes(without_own_trace)
    done = subprocess.run(
        [GATEWAY, "verify", str(path), "--trust", str(pki.ca.root_cert), "--json"],
        capture_output=True,
        text=True,
        check=False,
        env=dict(os.environ),
        timeout=120,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    body = json.loads(done.stdout)
    assert body["valid"] is False
    assert [e["code"] for e in body["errors"]] == ["ENVELOPE_MISSING_ELEMENT"]


# --- the upload budget ---------------------------------------------------------------------------


def ticking(seconds_per_call: float) -> Callable[[], float]:
    """A CPU clock on which every reading is ``seconds_per_call`` later than the one before."""
    now = [0.0]

    def clock() -> float:
        now[0] += seconds_per_call
        return now[0]

    return clock


def test_a_verification_past_its_budget_stops_at_the_next_step(pki: DevPKI, signed: bytes) -> None:
    # each step "takes" one second: xml at 1 s, structure at 2 s, schema at 3 s > 2.5 s
    verifier = Verifier(pki.trust(), VerifyPolicy(upload_budget=2.5), clock=ticking(1.0))
    report = verifier.verify(signed)
    assert [e.code for e in report.errors] == ["REQUEST_BUDGET_EXCEEDED"]
    assert report.check("structure").ok is True
    failed = report.check("schema")
    assert failed.ok is False
    assert report.errors[0].detail == {"spent": 3.0, "budget": 2.5, "check": "schema"}
    assert all(report.check(n).ok is None for n in CHECK_NAMES[CHECK_NAMES.index("schema") + 1 :])
    # within budget, the same package verifies
    assert (
        Verifier(pki.trust(), VerifyPolicy(upload_budget=100), clock=ticking(1.0))
        .verify(signed, now=dt.datetime.now(dt.UTC))
        .valid
    )


def test_ingest_refuses_a_package_past_the_budget_and_stores_nothing(
    node: Node, pki: DevPKI
) -> None:
    data = sign_package(factory.document(H49, [G12]), pki.key(H49))
    slow = Verifier(node.trust, VerifyPolicy(upload_budget=2.5), clock=ticking(1.0))
    error = refused_by_ingest(dataclasses.replace(node, verifier=slow), data, caller(pki))
    assert error.code == "REQUEST_BUDGET_EXCEEDED"
    assert error.http_status == 422


# --- [limits] max_attachments -------------------------------------------------------------------


def _with_attachments(package: bytes, count: int) -> bytes:
    """``package`` (one attachment) carrying ``count`` copies of it, each referenced."""
    root = etree.fromstring(package)
    attachment = next(root.iter(f"{{{EDXML_NS}}}Attachment", "Attachment"))
    reference = next(root.iter(f"{{{EDXML_NS}}}Reference"))
    for n in range(1, count):
        new_attachment, new_reference = copy.deepcopy(attachment), copy.deepcopy(reference)
        for element in (*new_attachment.iter(), *new_reference.iter()):
            if etree.QName(element).localname == "ContentId" and element.text:
                element.text = f"{element.text}-{n}"
            if etree.QName(element).localname == "AttachmentName" and element.text:
                element.text = f"{n}-{element.text}"
        attachment.addnext(new_attachment)
        reference.addnext(new_reference)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def test_a_document_with_more_attachments_than_the_limit_is_refused_and_not_stored(
    pki: DevPKI, tmp_path: Path
) -> None:
    config = write_node_config(
        tmp_path / "node.toml",
        name="attachments-node",
        agencies=(H49, G12),
        node=pki.issue("attachments-node"),
        ca=pki.ca,
        database_url=f"sqlite:///{tmp_path / 'node.db'}",
        extra={"limits": {"max_attachments": 2}},
    )
    settings = load_settings(config, environ={})
    engine = db.make_engine(settings)
    db.upgrade(engine)
    small = Node.from_settings(settings, engine)
    try:
        two = sign_package(_with_attachments(factory.document(H49, [G12]), 2), pki.key(H49))
        three = sign_package(_with_attachments(factory.document(H49, [G12]), 3), pki.key(H49))
        assert not ingest_document(small, two, caller=caller(pki)).duplicate
        error = refused_by_ingest(small, three, caller(pki))
        assert error.code == "REQUEST_TOO_MANY_ATTACHMENTS"
        assert error.detail == {"attachments": 3, "limit": 2}
    finally:
        engine.dispose()
