"""A hub as parent: one of our nodes serves the hub API, another uses it as its parent hub, and
documents and statuses flow both ways through the hub protocol alone.

The "hub" is a real node served over real HTTPS (``served.py``) with ``[hub] enabled``: it
hosts the ministry (``X``, whose DMS uses the node's own API) and, as the national hub does for
a province's agencies, the district's agency ``C``, for which the child node's connected system
``vxp.child`` reads and sends. The child node hosts ``C`` and has ``[directory] parent = {kind =
"hub", ...}``: its dispatcher sends through sendEdoc (:class:`adapters.hub.parent.
HubAwareTransport`) and its poller pulls (:class:`adapters.hub.parent.HubPoller`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from factory import document, signed, status
from served import Served, serve_node
from sqlalchemy import func, select
from support import DevPKI

from adapters.hub.client import HubClient
from adapters.hub.parent import HubAwareTransport, HubPoller, hub_client
from adapters.peer import HttpsPeerTransport
from gateway.agency import AgencyCode
from gateway.dev.nodeconfig import write_node_config
from gateway.network.dispatcher import Dispatcher
from gateway.node.container import Node
from gateway.node.inbox import fetch, list_inbox, status_view
from gateway.node.ingest import ingest_document, ingest_status
from gateway.node.systems import add_system
from gateway.settings import load_settings
from gateway.storage import db
from gateway.storage.tables import audit_log, documents
from gateway.trust.caller import Identity

X = "000.00.00.G12"  # at the hub node: the ministry (own API)
C = "000.00.01.H49"  # the district agency: at the hub (for the child system) and the child


@dataclass
class World:
    hub: Served
    child: Node
    poller: HubPoller
    dispatcher: Dispatcher
    pki: DevPKI

    def caller(self, code: str) -> Identity:
        return Identity(
            kind="agency",
            agency=AgencyCode.parse(code),
            certificate=self.pki.key(code).certificate,
        )


@pytest.fixture
def world(pki: DevPKI, tmp_path: Path) -> Iterator[World]:
    with serve_node(pki, tmp_path / "hub", hub={"enabled": True}, agencies=(X, C)) as hub:
        _, secret = add_system(hub.node, "vxp.child", [C], actor="admin:test")
        (tmp_path / "child").mkdir()
        secret_file = tmp_path / "child" / "hub.secret"
        secret_file.write_text(secret + "\n", encoding="utf-8")
        config = write_node_config(
            tmp_path / "child" / "node.toml",
            name="child-node",
            agencies=[C],
            node=pki.issue("child-node"),
            ca=pki.ca,
            database_url=f"sqlite:///{tmp_path / 'child' / 'node.db'}",
            tier="district",
            parent={
                "name": "national-hub",
                "url": f"https://127.0.0.1:{hub.port}/vdxp",
                "kind": "hub",
                "systemid": "vxp.child",
                "secret_file": "hub.secret",
            },
        )
        settings = load_settings(config, environ={})
        engine = db.make_engine(settings)
        db.upgrade(engine)
        child = Node.from_settings(settings, engine)
        transport = HubAwareTransport(settings, HttpsPeerTransport(settings))
        poller = HubPoller(child)
        yield World(
            hub=hub,
            child=child,
            poller=poller,
            dispatcher=Dispatcher(child, transport),
            pki=pki,
        )
        transport.close()
        poller.close()
        engine.dispose()


def _count(node: Node, kind: str) -> int:
    with node.reader.connect() as conn:
        return int(
            conn.execute(
                select(func.count()).select_from(documents).where(documents.c.kind == kind)
            ).scalar_one()
        )


def _document_id(package: bytes) -> str:
    from lxml import etree

    found = etree.fromstring(package).find(".//{*}MessageHeader/{*}DocumentId")
    assert found is not None and found.text
    return str(found.text)


def test_documents_and_statuses_flow_both_ways_through_the_hub_protocol(
    world: World, pki: DevPKI
) -> None:
    hub_node = world.hub.node
    # down: the ministry (own API at the hub node) writes to the district agency
    down = signed(document(X, [C]), pki.key(X))
    ingest_document(hub_node, down, caller=world.caller(X))
    assert world.poller.poll() == {"stored": 1, "repeated": 0, "refused": 0}
    (item,) = list_inbox(world.child, world.caller(C)).items
    assert fetch(world.child, world.caller(C), item["id"]) == down  # byte for byte
    assert list_inbox(hub_node, world.caller(C)).items == []  # acknowledged at the hub
    with world.child.reader.connect() as conn:
        origin = conn.execute(select(documents.c.received_from)).scalar_one()
    assert origin == "hub:national-hub"  # the evidence says which bytes came from the hub
    assert world.poller.poll() == {"stored": 0, "repeated": 0, "refused": 0}

    # up: the district agency answers through its own node; the child sends with sendEdoc
    up = signed(document(C, [X]), pki.key(C))
    accepted = ingest_document(world.child, up, caller=world.caller(C))
    assert world.dispatcher.run_peer("national-hub") == 1
    (arrived,) = list_inbox(hub_node, world.caller(X)).items
    assert fetch(hub_node, world.caller(X), arrived["id"]) == up
    sent = status_view(world.child, world.caller(C), accepted.id)
    assert sent["recipients"][0]["transport"] == "in_transit"  # at the hub

    # statuses both ways: X reports 01 on C's document; C reports 01 on X's
    report = signed(status(X, sender=C, document_id=_document_id(up), code="01"), pki.key(X))
    ingest_status(hub_node, report, caller=world.caller(X))
    answer = signed(status(C, sender=X, document_id=_document_id(down), code="01"), pki.key(C))
    ingest_status(world.child, answer, caller=world.caller(C))
    assert world.dispatcher.run_peer("national-hub") == 1
    assert world.poller.poll()["stored"] == 1
    view = status_view(world.child, world.caller(C), accepted.id)
    assert view["recipients"][0]["status"] == "01"  # X's status reached C's timeline
    assert view["recipients"][0]["transport"] == "delivered"  # a status proves delivery
    (reported,) = [i for i in list_inbox(hub_node, world.caller(X)).items if i["kind"] == "status"]
    assert fetch(hub_node, world.caller(X), reported["id"]) == answer


class _CrashAfterStoring(HubClient):
    """The node dies between storing a package and acknowledging it (once)."""

    crashed = False

    def update_status(self, doc_id: str, status: str) -> None:
        if not self.crashed:
            self.crashed = True
            raise KeyboardInterrupt("killed before updateStatus")
        super().update_status(doc_id, status)


def test_a_crash_between_storing_and_acknowledging_loses_and_duplicates_nothing(
    world: World, pki: DevPKI
) -> None:
    hub_node = world.hub.node
    ingest_document(hub_node, signed(document(X, [C]), pki.key(X)), caller=world.caller(X))
    with hub_client(world.child.settings) as real:
        endpoint, systemid = real.endpoint, real.systemid
    secret = (world.child.settings.directory.parent.secret_file or Path()).read_text().strip()  # type: ignore[union-attr]
    with (
        _CrashAfterStoring(endpoint, systemid, secret, verify=str(pki.ca.root_cert)) as crashing,
        pytest.raises(KeyboardInterrupt),
    ):
        HubPoller(world.child, crashing).poll()
    assert _count(world.child, "document") == 1  # stored, not acknowledged
    assert len(list_inbox(hub_node, world.caller(C)).items) == 1  # still offered
    # the restarted node polls again: found stored, acknowledged, not stored twice
    assert world.poller.poll() == {"stored": 0, "repeated": 1, "refused": 0}
    assert _count(world.child, "document") == 1
    assert list_inbox(hub_node, world.caller(C)).items == []
    assert len(list_inbox(world.child, world.caller(C)).items) == 1
    print("hub crash: sent=1 delivered=1 duplicated=0 lost=0")


def test_a_package_the_child_refuses_is_acknowledged_fail_and_audited(
    world: World, pki: DevPKI
) -> None:
    """Under ``require`` an unsigned package from the hub is refused: the hub is told ``fail``
    (it stops offering it), nothing is stored, the refusal is audited."""
    hub_node = world.hub.node
    _, secret = add_system(hub_node, "vxp.loose", [X], policy="attest", actor="admin:test")
    with HubClient(
        f"https://127.0.0.1:{world.hub.port}/vdxp",
        "vxp.loose",
        secret,
        verify=str(world.pki.ca.root_cert),
    ) as loose:
        loose.send_edoc(X, document(X, [C]))  # unsigned: accepted at the hub under attest
    assert world.poller.poll() == {"stored": 0, "repeated": 0, "refused": 1}
    assert _count(world.child, "document") == 0
    assert list_inbox(hub_node, world.caller(C)).items == []
    with world.child.reader.connect() as conn:
        refused = (
            conn.execute(select(audit_log.c.data).where(audit_log.c.event == "hub_in_refuse"))
            .scalars()
            .all()
        )
    assert len(refused) == 1 and "SIGNATURE_MISSING" in refused[0]
