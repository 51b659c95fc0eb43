"""A real four-tier network: four ``gateway serve`` processes over real HTTPS, SQLite each.

The layout is :data:`gateway.dev.network.QUANG_NINH`::

    central (000.00.00.G22, 000.00.00.G12)
      └ h49 (000.00.00.H49)
          └ h49-halong (000.00.01.H49)
              └ h49-bachdang (000.01.01.H49)

Documents go up and down every tier and arrive byte for byte; business statuses and delivery
notices come back; an auditor rechecks the path offline from what the recipient's node hands
out; neighbours that lie are refused and audited; a delivery to a dead node is dead-lettered,
the sender is told, and an admin's requeue (API or CLI) delivers it exactly once.

One network serves every test of this module but the dead-letter ones, which stop a node and
so run on a two-node network of their own.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from network_support import (
    WAIT,
    admin_deliveries,
    audit_events,
    client_as,
    documents_named,
    documents_stored,
    inbox_items,
    node_key,
    status_of,
    stop_all,
    trust_store,
    wait_inbox,
    wait_quiet,
    wait_status,
)

from gateway.dev.network import GATEWAY, Network, NodeSpec, wait_for
from gateway.dev.pki import issue
from gateway.errors import (
    EnvelopeTampered,
    HopSignatureInvalid,
    SignatureValueMismatch,
)
from gateway.evidence.hops import sign_hop, verify_hops, verify_notice
from gateway.evidence.receipts import verify_receipt
from gateway.network.wire import RELAY_CONTENT_TYPE, RELAY_PATH, RelayItem, encode_batch
from gateway.trust.verification import Verifier, VerifyPolicy

pytestmark = pytest.mark.slow

G22 = "000.00.00.G22"  # Government Office, at central
G12 = "000.00.00.G12"  # a ministry, at central
H49 = "000.00.00.H49"  # provincial People's Committee, at h49
HALONG = "000.00.01.H49"  # Hạ Long city, at h49-halong
BACHDANG = "000.01.01.H49"  # Bạch Đằng ward, at h49-bachdang
NOBODY = "000.00.00.G99"  # an agency no node serves


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    with Network(tmp_path_factory.mktemp("quang-ninh")) as network:
        network.create()
        network.start(timeout=90)
        try:
            yield network
        finally:
            stop_all(network)


@dataclass(frozen=True)
class Sent:
    """A document pushed by ``sender`` and what its node answered."""

    sender: str
    document_id: str
    body: bytes
    #: the sender node's gateway id (each node has its own id for the package)
    gid: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.body).hexdigest()


def send(net: Network, sender: str, recipients: list[str], subject: str) -> Sent:
    document_id, body = net.signed_document(sender, recipients, subject=subject)
    answer = net.push(sender, body)
    assert answer["duplicate"] is False
    return Sent(sender=sender, document_id=document_id, body=body, gid=answer["id"])


def fetch(net: Network, agency: str, gid: str) -> bytes:
    response = net.client(agency).get(f"/api/v1/documents/{gid}")
    assert response.status_code == 200, response.text
    return response.content


@pytest.fixture(scope="module")
def upward(net: Network) -> Sent:
    """A document from the commune to the ministry, arrived at central."""
    sent = send(net, BACHDANG, [G12], "Báo cáo của phường Bạch Đằng gửi Bộ")
    wait_inbox(net, G12, sent.document_id)
    return sent


# --- 1. documents cross the four tiers -----------------------------------------------------------


def test_document_goes_up_from_commune_to_ministry(net: Network, upward: Sent) -> None:
    [item] = inbox_items(net, G12, upward.document_id, "document")
    assert item["sender"] == BACHDANG
    assert item["sha256"] == upward.sha256
    assert fetch(net, G12, item["id"]) == upward.body  # byte for byte
    # each node on the way passed it one tier up
    path = (("h49-bachdang", "h49-halong"), ("h49-halong", "h49"), ("h49", "central"))
    for node, next_hop in path:
        [row] = [
            r
            for r in admin_deliveries(net, node, document_id=upward.document_id)
            if r["kind"] == "document"
        ]
        assert row["next_hop"] == next_hop, (node, row)
    print(f"up: hops=3 arrived=1 bytes={len(upward.body)} identical=1")


def test_document_goes_down_and_fans_out_per_next_hop(net: Network) -> None:
    sent = send(net, G12, [BACHDANG, HALONG], "Công văn của Bộ gửi Hạ Long và Bạch Đằng")
    [at_commune] = wait_inbox(net, BACHDANG, sent.document_id)
    [at_district] = wait_inbox(net, HALONG, sent.document_id)
    assert fetch(net, BACHDANG, at_commune["id"]) == sent.body
    assert fetch(net, HALONG, at_district["id"]) == sent.body

    def next_hops(node: str) -> dict[str, str]:
        rows = admin_deliveries(net, node, document_id=sent.document_id)
        return {r["recipient"]: r["next_hop"] for r in rows if r["kind"] == "document"}

    # both recipients lie below h49-halong: one relay per hop until the paths part there
    assert next_hops("central") == {BACHDANG: "h49", HALONG: "h49"}
    assert next_hops("h49") == {BACHDANG: "h49-halong", HALONG: "h49-halong"}
    assert next_hops("h49-halong") == {BACHDANG: "h49-bachdang", HALONG: "local"}
    assert next_hops("h49-bachdang") == {BACHDANG: "local"}
    # the hop records say the same: one package per next hop, carrying the recipients beyond it
    evidence = net.client(BACHDANG).get(f"/api/v1/documents/{at_commune['id']}/evidence")
    assert evidence.status_code == 200, evidence.text
    path = [(h["from"], h["to"], h["record"]["hop"]["recipients"]) for h in evidence.json()["hops"]]
    assert path == [
        ("central", "h49", [BACHDANG, HALONG]),
        ("h49", "h49-halong", [BACHDANG, HALONG]),
        ("h49-halong", "h49-bachdang", [BACHDANG]),
    ]
    # and so do the nodes' audit logs: each node sent it once to each next hop
    relays = {
        node: [
            (d["to"], d["recipients"])
            for d in audit_events(net, node, "relay_out")
            if d["sha256"] == sent.sha256
        ]
        for node in ("central", "h49", "h49-halong")
    }
    assert relays == {
        "central": [("h49", [BACHDANG, HALONG])],
        "h49": [("h49-halong", [BACHDANG, HALONG])],
        "h49-halong": [("h49-bachdang", [BACHDANG])],
    }
    for node in ("central", "h49", "h49-halong", "h49-bachdang"):
        assert documents_named(net, node, sent.document_id) == 1
    # each recipient gets it once
    assert len(inbox_items(net, BACHDANG, sent.document_id, "document")) == 1
    assert len(inbox_items(net, HALONG, sent.document_id, "document")) == 1
    count = sum(len(r) for r in relays.values())
    print(f"down: recipients=2 arrived=2 identical=2 relays={count} (one per next hop)")


# --- 2. statuses come back -----------------------------------------------------------------------


def test_statuses_and_the_whole_path_come_back_to_the_sender(net: Network, upward: Sent) -> None:
    [item] = inbox_items(net, G12, upward.document_id, "document")
    fetch(net, G12, item["id"])
    for code in ("01", "03", "06"):
        net.report(G12, sender=BACHDANG, document_id=upward.document_id, code=code)

    # the ministry's DMS fetched it: a progress notice brings that back too
    view = wait_status(
        net,
        BACHDANG,
        upward.gid,
        G12,
        lambda v: v["status"] == "06" and v["transport"] == "fetched",
    )
    assert view["next_hop"] == "h49-halong"
    events = view["events"]
    assert [e["code"] for e in events if e["kind"] == "status"] == ["01", "03", "06"]
    transport = [(e["code"], e["node"]) for e in events if e["kind"] == "transport"]
    assert transport == [
        ("accepted", "h49-bachdang"),
        ("in_transit", "h49-halong"),
        ("in_transit", "h49"),
        ("delivered", "central"),
        ("fetched", "central"),
    ], view
    # every hop has its time, between the push and the delivery, then the fetch: each the
    # time where it happened (the delivery's and the fetch's from central's signed notices)
    accepted, *hop_times, delivered, fetched = [
        dt.datetime.fromisoformat(e["at"]) for e in events if e["kind"] == "transport"
    ]
    assert all(accepted <= t <= delivered for t in hop_times), events
    assert delivered <= fetched, events

    # the signed status packages themselves reach the sender's DMS (a status package has no
    # DocumentId of its own: its ResponseFor names the document)
    def statuses() -> list[dict[str, Any]] | None:
        found = [
            item
            for item in net.inbox(BACHDANG)
            if item["kind"] == "status"
            and item["sender"] == G12
            and upward.document_id.encode() in fetch(net, BACHDANG, item["id"])
        ]
        return found if len(found) >= 3 else None

    arrived = wait_for(statuses, timeout=WAIT, every=0.3)
    assert [s["status_code"] for s in arrived] == ["01", "03", "06"]
    print(f"statuses: reported=3 back_at_sender=3 timeline_events={len(events)}")


# --- 3. an auditor rechecks everything offline ---------------------------------------------------


def test_auditor_verifies_signature_hops_and_receipts(
    net: Network, upward: Sent, tmp_path: Path
) -> None:
    assert net.ca is not None
    [item] = inbox_items(net, G12, upward.document_id, "document")
    body = fetch(net, G12, item["id"])
    stored = tmp_path / "document.edxml"
    stored.write_bytes(body)
    verified = subprocess.run(
        [GATEWAY, "verify", str(stored), "--trust", str(net.ca.root_cert), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    report = json.loads(verified.stdout)
    assert report["valid"] is True
    assert report["signer"]["agency_code"] == BACHDANG

    response = net.client(G12).get(f"/api/v1/documents/{item['id']}/evidence")
    assert response.status_code == 200, response.text
    evidence = response.json()
    digest = hashlib.sha256(body).hexdigest()
    assert (evidence["sha256"], evidence["size"]) == (digest, len(body))
    assert evidence["node"] == "central"
    records = [h["record"] for h in evidence["hops"]]
    trust = trust_store(net)
    chain = verify_hops(records, trust=trust, sha256=digest, size=len(body), to_node="central")
    assert [(h["from"], h["to"]) for h in chain] == [
        ("h49-bachdang", "h49-halong"),
        ("h49-halong", "h49"),
        ("h49", "central"),
    ]
    for hop in evidence["hops"]:
        fields = verify_receipt(hop["receipt"], trust)
        assert fields["node"] == hop["to"]
        assert (fields["sha256"], fields["size"]) == (digest, len(body))
    assert verify_receipt(evidence["receipt"], trust)["node"] == "central"

    # one changed byte anywhere and the auditor notices
    tampered = json.loads(json.dumps(records))
    at = tampered[1]["hop"]["at"]
    tampered[1]["hop"]["at"] = at[:-2] + ("1" if at[-2] != "1" else "2") + at[-1]
    with pytest.raises(HopSignatureInvalid):
        verify_hops(tampered, trust=trust, sha256=digest, size=len(body), to_node="central")
    middle = len(body) // 2
    other = body[:middle] + bytes([body[middle] ^ 0x01]) + body[middle + 1 :]
    assert not Verifier(trust, VerifyPolicy()).verify(other).valid
    with pytest.raises(EnvelopeTampered):
        verify_hops(
            records,
            trust=trust,
            sha256=hashlib.sha256(other).hexdigest(),
            size=len(other),
            to_node="central",
        )
    receipt = json.loads(json.dumps(evidence["hops"][0]["receipt"]))
    receipt["receipt"]["size"] += 1
    with pytest.raises(SignatureValueMismatch):
        verify_receipt(receipt, trust)
    receipts = len(evidence["hops"]) + 1
    print(f"auditor: signature=ok hops={len(chain)} receipts={receipts} tampered_caught=4/4")


# --- 4. the directory ----------------------------------------------------------------------------


def test_directory_of_the_province(net: Network) -> None:
    response = net.client(H49).get("/api/v1/directory")
    assert response.status_code == 200, response.text
    directory = response.json()
    assert directory["node"] == "h49"
    assert directory["tier"] == "province"
    assert directory["hosted"] == [H49]
    assert directory["parent"] == {"name": "central", "url": net.url("central")}
    assert directory["children"] == [
        {"name": "h49-halong", "url": net.url("h49-halong"), "serves": [HALONG]}
    ]


# --- 5. a recipient nobody serves ----------------------------------------------------------------


def test_unknown_recipient_refused_at_once_at_the_top(net: Network) -> None:
    document_id, body = net.signed_document(G22, [NOBODY])
    response = net.client(G22).post(
        "/api/v1/documents", content=body, headers={"content-type": "application/xml"}
    )
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "REQUEST_RECIPIENT_UNREACHABLE"
    assert documents_named(net, "central", document_id) == 0


def test_unknown_recipient_from_below_comes_back_as_a_signed_notice(net: Network) -> None:
    sent = send(net, BACHDANG, [NOBODY], "Gửi một cơ quan không tồn tại")
    [notice] = wait_inbox(net, BACHDANG, sent.document_id, "notice")
    assert notice["sender"] == BACHDANG
    fields = verify_notice(json.loads(fetch(net, BACHDANG, notice["id"])), trust=trust_store(net))
    assert fields["event"] == "failed"
    assert fields["code"] == "REQUEST_RECIPIENT_UNREACHABLE"
    assert fields["node"] == "central"
    assert fields["recipients"] == [NOBODY]
    assert (fields["document_id"], fields["sha256"]) == (sent.document_id, sent.sha256)

    view = wait_status(net, BACHDANG, sent.gid, NOBODY, lambda v: v["transport"] == "failed")
    failed = [e for e in view["events"] if e["code"] == "failed"]
    assert failed and failed[-1]["node"] == "central"
    assert "REQUEST_RECIPIENT_UNREACHABLE" in (failed[-1]["description"] or "")
    # the document did go up to central, which could not route it
    assert documents_named(net, "central", sent.document_id) >= 1
    print("unknown recipient: refused_at_central=1 notices_at_commune=1 status=failed")


# --- 6. neighbours that lie ----------------------------------------------------------------------


def relay(client: httpx.Client, items: list[RelayItem]) -> httpx.Response:
    return client.post(
        RELAY_PATH, content=encode_batch(items), headers={"content-type": RELAY_CONTENT_TYPE}
    )


def refusals(net: Network, node: str, sha256: str) -> list[str]:
    return [d["code"] for d in audit_events(net, node, "relay_refuse") if d.get("sha256") == sha256]


def test_relays_from_strangers_and_liars_are_refused_and_audited(net: Network) -> None:
    document_id, body = net.signed_document(HALONG, [H49], subject="Chuyển tiếp giả mạo")
    digest = hashlib.sha256(body).hexdigest()
    halong = node_key(net, "h49-halong")

    def hop(size: int = len(body)) -> dict[str, Any]:
        return sign_hop(
            halong,
            kind="document",
            sender=HALONG,
            document_id=document_id,
            sha256=digest,
            size=size,
            from_node="h49-halong",
            to_node="h49",
            recipients=[H49],
            at=dt.datetime.now(dt.UTC),
            prev=None,
        )

    good = RelayItem(kind="document", body=body, hops=[hop()], receipts=[])

    # (a) a valid node certificate of this PKI, but no neighbour of h49
    issue(net.pki, node="rogue", key_type="ec-p256")
    with client_as(net, "rogue", "h49") as rogue:
        refused = relay(rogue, [good])
    assert refused.status_code == 403, refused.text
    assert refused.json()["code"] == "RELAY_PEER_UNKNOWN"

    wait_quiet(net)  # earlier tests' notices and statuses have all arrived
    stored = documents_stored(net, "h49")
    with client_as(net, "h49-halong", "h49") as neighbour:
        # (b) the hop record's signature is broken
        record = hop()
        signature = bytearray(base64.b64decode(record["signature"]))
        signature[len(signature) // 2] ^= 0x01
        record["signature"] = base64.b64encode(bytes(signature)).decode("ascii")
        broken = relay(neighbour, [RelayItem("document", body, [record], [])])
        # (c) a correctly signed hop, but one byte of the envelope changed on the way
        changed = bytearray(body)
        changed[len(changed) // 2] ^= 0x01
        tampered_body = bytes(changed)
        tampered = relay(neighbour, [RelayItem("document", tampered_body, [hop()], [])])
        for response, code in (
            (broken, "RELAY_HOP_SIGNATURE_INVALID"),
            (tampered, "RELAY_ENVELOPE_TAMPERED"),
        ):
            assert response.status_code == 200, response.text
            [result] = response.json()["results"]
            assert (result["ok"], result["code"]) == (False, code), result
        assert documents_stored(net, "h49") == stored  # nothing stored
        assert documents_named(net, "h49", document_id) == 0
        assert refusals(net, "h49", digest) == ["RELAY_HOP_SIGNATURE_INVALID"]
        assert refusals(net, "h49", hashlib.sha256(tampered_body).hexdigest()) == [
            "RELAY_ENVELOPE_TAMPERED"
        ]
        # control: the same relay, honest, is taken (the refusals were for the lies alone)
        honest = relay(neighbour, [good])
    assert honest.status_code == 200, honest.text
    [result] = honest.json()["results"]
    assert result["ok"] is True, result
    assert verify_receipt(result["receipt"], trust_store(net))["node"] == "h49"
    wait_inbox(net, H49, document_id)
    assert documents_named(net, "h49", document_id) == 1
    print("bad peers: stranger=403 broken_signature=refused tampered=refused honest=accepted")


def test_relay_from_a_stranger_is_audited(net: Network) -> None:
    document_id, body = net.signed_document(HALONG, [H49], subject="Người lạ chuyển tiếp")
    digest = hashlib.sha256(body).hexdigest()
    record = sign_hop(
        node_key(net, "h49-halong"),
        kind="document",
        sender=HALONG,
        document_id=document_id,
        sha256=digest,
        size=len(body),
        from_node="h49-halong",
        to_node="h49",
        recipients=[H49],
        at=dt.datetime.now(dt.UTC),
        prev=None,
    )
    issue(net.pki, node="stranger", key_type="ec-p256")
    with client_as(net, "stranger", "h49") as stranger:
        refused = relay(stranger, [RelayItem("document", body, [record], [])])
    assert refused.status_code == 403, refused.text
    assert documents_named(net, "h49", document_id) == 0
    audited = [
        d
        for event in ("relay_refuse", "auth_failure")
        for d in audit_events(net, "h49", event)
        if d.get("code") == "RELAY_PEER_UNKNOWN"
    ]
    assert audited, "a relay from a node outside the directory leaves no trace in the audit log"


# --- 7. dead letters and requeue -----------------------------------------------------------------

PAIR = (
    NodeSpec("central", "central", (G22,)),
    NodeSpec("h49", "province", (H49,), "central", (H49,)),
)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    """Two nodes that give up quickly: two attempts, short backoff, no circuit breaker."""
    settings = {
        "delivery": {
            "max_attempts": 2,
            "backoff_initial": 0.2,
            "backoff_max": 0.5,
            "backoff_jitter": 0.1,
            "breaker_threshold": 100,
        }
    }
    with Network(tmp_path_factory.mktemp("pair"), specs=PAIR, settings=settings) as network:
        network.create()
        network.start(timeout=90)
        try:
            yield network
        finally:
            stop_all(network)


@dataclass(frozen=True)
class DeadLetter:
    sent: Sent
    #: central's failed delivery row (admin API)
    row: dict[str, Any]


@pytest.fixture(scope="module")
def outage(pair: Network) -> dict[str, DeadLetter]:
    """While h49 is down, central is sent one document to requeue by API, one by CLI; it gives
    up on both; then h49 comes back (one restart for both cases: starting a node is slow)."""
    pair.stop("h49")
    letters = {how: send(pair, G22, [H49], f"Gửi khi tỉnh mất kết nối ({how})") for how in WAYS}

    def failed(sent: Sent) -> dict[str, Any]:
        def check() -> list[dict[str, Any]] | None:
            rows = admin_deliveries(pair, "central", state="failed", document_id=sent.document_id)
            return [r for r in rows if r["kind"] == "document"] or None

        [row] = wait_for(check, timeout=WAIT, every=0.2)
        return row

    dead = {how: DeadLetter(sent, failed(sent)) for how, sent in letters.items()}
    pair.start("h49", timeout=90)
    return dead


WAYS = ("api", "cli")


def test_delivery_to_a_dead_node_is_dead_lettered_and_the_sender_told(
    pair: Network, outage: dict[str, DeadLetter]
) -> None:
    trust = trust_store(pair)
    for letter in outage.values():
        row = letter.row
        assert (row["recipient"], row["next_hop"], row["next_attempt_at"]) == (H49, "h49", None)
        assert row["last_error"].startswith("RELAY_PEER_UNAVAILABLE"), row
        # the sender is told, in its inbox, with a notice signed by its node
        [notice] = wait_inbox(pair, G22, letter.sent.document_id, "notice")
        fields = verify_notice(json.loads(fetch(pair, G22, notice["id"])), trust=trust)
        assert (fields["event"], fields["code"]) == ("failed", "RELAY_PEER_UNAVAILABLE")
        assert (fields["node"], fields["failed_hop"]) == ("central", "h49")
        assert (fields["recipients"], fields["sha256"]) == ([H49], letter.sent.sha256)
        view = status_of(pair, G22, letter.sent.gid)[H49]
        assert view["transport"] == "failed", view
        # a dead letter stays dead: h49 is back, yet nothing is sent until an admin says so
        assert documents_named(pair, "h49", letter.sent.document_id) == 0
    print(f"dead letters: failed={len(outage)} notices={len(outage)} delivered_unasked=0")


def arrives_once(pair: Network, sent: Sent) -> None:
    """The requeued document reaches H49's inbox, once, byte for byte; the sender sees it."""
    [item] = wait_inbox(pair, H49, sent.document_id)
    assert fetch(pair, H49, item["id"]) == sent.body
    # delivered, then fetched (H49's DMS just fetched it: a progress notice says so)
    view = wait_status(pair, G22, sent.gid, H49, lambda v: v["transport"] == "fetched")
    codes = [e["code"] for e in view["events"] if e["kind"] == "transport"]
    assert codes[:2] == ["accepted", "failed"] and codes[-2:] == ["delivered", "fetched"], codes
    # the requeue is an event of its own, after which the timeline starts again
    assert codes.count("failed") == 1 and codes[2] == "requeued", codes
    assert len(inbox_items(pair, H49, sent.document_id, "document")) == 1
    assert documents_named(pair, "h49", sent.document_id) == 1


def test_requeue_through_the_admin_api(pair: Network, outage: dict[str, DeadLetter]) -> None:
    letter = outage["api"]
    ids = {"ids": [letter.row["id"]]}
    # only the node's own certificate may list or requeue
    assert pair.client(G22).get("/api/v1/admin/deliveries").status_code == 403
    refused = pair.client(G22).post("/api/v1/admin/deliveries/requeue", json=ids)
    assert refused.status_code == 403, refused.text
    response = pair.client("central").post("/api/v1/admin/deliveries/requeue", json=ids)
    assert response.status_code == 200, response.text
    assert response.json() == {"requeued": [letter.row["id"]]}
    arrives_once(pair, letter.sent)
    requeues = audit_events(pair, "central", "requeue")
    assert any(d["deliveries"] == [letter.row["id"]] for d in requeues), requeues
    # requeued again once delivered: refused, nothing is sent twice
    again = pair.client("central").post("/api/v1/admin/deliveries/requeue", json=ids)
    assert again.status_code == 409, again.text
    assert again.json()["code"] == "DELIVERY_NOT_FAILED", again.text
    assert len(inbox_items(pair, H49, letter.sent.document_id, "document")) == 1
    print("requeue (api): requeued=1 arrived=1 duplicates=0")


def test_requeue_with_the_cli(pair: Network, outage: dict[str, DeadLetter]) -> None:
    letter = outage["cli"]
    config = pair.nodes["central"].config
    command = [GATEWAY, "deliveries", "requeue", "--config", str(config), str(letter.row["id"])]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"requeued 1 deliveries: {letter.row['id']}" in done.stdout
    arrives_once(pair, letter.sent)
    assert any(
        d["deliveries"] == [letter.row["id"]] for d in audit_events(pair, "central", "requeue")
    )
    print("requeue (cli): requeued=1 arrived=1 duplicates=0")


def test_dead_letter_counts_every_attempt(outage: dict[str, DeadLetter]) -> None:
    for letter in outage.values():
        assert letter.row["attempts"] == 2, letter.row
