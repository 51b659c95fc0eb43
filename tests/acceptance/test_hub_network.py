"""The hub-compatible API across a real four-tier network: DMS on the national SDK at two tiers.

Four ``gateway serve`` processes (:data:`gateway.dev.network.QUANG_NINH`), each serving the hub
protocol under ``/vdxp`` (HUB-PROTOCOL.md) beside its own API, over HTTPS with the dev CA; the
ward's node serves it on a listener of its own (``[hub] port``, prefix ``/``, two workers)::

    central       000.00.00.G12: a DMS on the SDK, system vxp.btc.vanthu     (hub)
      └ h49       000.00.00.H49: a DMS on the node's API, client certificate (own API)
          └ h49-halong   000.00.01.H49: a DMS on the node's API             (own API)
              └ h49-bachdang   000.01.01.H49: a DMS on the SDK, vxp.bachdang  (hub)

The SDK DMS are :class:`hubsdk.HubService` objects (stale keys, frozen timestamp, CRLF bodies,
``100-continue``): one reused object per DMS, as a DMS keeps it, and in one flow a fresh object
per call (``reuse=False``). Each is a connected system of its own node, made with ``gateway
systems add`` as an operator does. A document sent through sendEdoc crosses the tiers to the
other SDK DMS, which lists, fetches, acknowledges and answers with status packages; the sender
sees them in its inbox and in getSentEdocList. Documents from a DMS on the node's API reach an
SDK DMS, and the other way round, each arriving byte for byte and listed the same way
whichever API its sender used.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from hubsdk import HubResult, HubService
from lxml import etree
from network_support import WAIT, documents_named, inbox_items, stop_all, wait_inbox, wait_status

from gateway.dev.network import HUB_SETTINGS, Network, free_port, wait_for

pytestmark = pytest.mark.slow

G12 = "000.00.00.G12"  # a ministry, at central: its DMS on the SDK
H49 = "000.00.00.H49"  # the provincial People's Committee, at h49: its DMS on the node's API
HALONG = "000.00.01.H49"  # Hạ Long city, at h49-halong: its DMS on the node's API
BACHDANG = "000.01.01.H49"  # Bạch Đằng ward, at h49-bachdang: its DMS on the SDK


@dataclass
class Tally:
    """What the module sent and what arrived, for the count line at the end."""

    #: (DocumentId, recipient) of every document sent
    expected: set[tuple[str, str]] = field(default_factory=set)
    #: the same, once the recipient's DMS had fetched it byte for byte
    delivered: set[tuple[str, str]] = field(default_factory=set)
    #: status packages seen by the document's sender (hub inbox or node timeline)
    statuses_back: int = 0

    def sent(self, document_id: str, recipients: list[str]) -> None:
        self.expected.update((document_id, r) for r in recipients)

    def arrived(self, document_id: str, recipient: str, data: bytes, sent: bytes) -> None:
        assert data == sent, f"{document_id} reached {recipient} changed"
        self.delivered.add((document_id, recipient))


@dataclass
class Dms:
    """A DMS on the SDK: its agency, its node's hub endpoint, its system and secret."""

    agency: str
    node: str
    systemid: str
    secret: str
    endpoint: str
    ca_file: str
    #: the DMS's service object, reused for its life (the normal case)
    svc: HubService

    def fresh(self) -> HubService:
        """A DMS that builds a new SDK service object for every call (fresh map, timestamp)."""
        return self.sdk(reuse=False, seed=7)

    def sdk(self, **kw: Any) -> HubService:
        return HubService(
            self.endpoint, self.systemid, self.secret, ca_file=self.ca_file, timeout=30.0, **kw
        )


WARD_NODE = "h49-bachdang"
SYSTEMS = {  # agency: (node, systemid)
    BACHDANG: (WARD_NODE, "vxp.bachdang"),
    G12: ("central", "vxp.btc.vanthu"),
}


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    """The four tiers, each node serving the hub API beside its own; the ward's node on a
    listener of its own (``[hub] port``, prefix "/"), with two worker processes."""
    with Network(
        tmp_path_factory.mktemp("hub-network"),
        settings=HUB_SETTINGS,
        node_settings={
            WARD_NODE: {
                "hub": {"port": free_port(), "prefix": "/", "keepalive_timeout": 2},
                "server": {"workers": 2},
            }
        },
    ) as network:
        network.create()
        network.start(timeout=90)
        try:
            yield network
        finally:
            stop_all(network)


@pytest.fixture(scope="module")
def dms(net: Network) -> Iterator[dict[str, Dms]]:
    """The two SDK DMS, each made a connected system of its running node by its operator
    (``gateway systems add``), with the service object it keeps."""
    with ThreadPoolExecutor(len(SYSTEMS)) as pool:  # two nodes: two key files, in parallel
        secrets = {
            agency: pool.submit(net.add_system, node, systemid, [agency])
            for agency, (node, systemid) in SYSTEMS.items()
        }
    found: dict[str, Dms] = {}
    for agency, (node, systemid) in SYSTEMS.items():
        endpoint = net.hub_endpoint(node)
        if node == WARD_NODE:  # a listener of its own, the SDK's ENDPOINT without a path
            assert endpoint.startswith("https://127.0.0.1:") and endpoint != net.url(node)
        else:
            assert endpoint == f"{net.url(node)}/vdxp"
        secret, ca_file = secrets[agency].result(), str(net.ca_file)
        svc = HubService(endpoint, systemid, secret, ca_file=ca_file, timeout=30.0)
        found[agency] = Dms(agency, node, systemid, secret, endpoint, ca_file, svc)
    try:
        yield found
    finally:
        for one in found.values():
            one.svc.close()


@pytest.fixture(scope="module")
def tally() -> Tally:
    return Tally()


# --- what a DMS on the SDK does --------------------------------------------------------------


def ok(result: HubResult) -> HubResult:
    """The call succeeded as DMS code tests it (``status == "OK"``, ErrorCode 0)."""
    assert (result.status, result.error_code) == ("OK", "0"), (
        result.operation,
        result.body_text,
        result.error,
    )
    return result


def listed(svc: HubService, messagetype: str) -> list[dict[str, str]]:
    result = ok(svc.get_received_edoc_list(messagetype))
    assert result.items is not None, result.body_text
    return result.items


def wait_document(svc: HubService, document_id: str, sender: str) -> tuple[dict[str, str], bytes]:
    """Poll getReceivedEdocList until ``sender``'s ``document_id`` is listed; (item, bytes)."""
    fetched: dict[str, bytes] = {}

    def check() -> tuple[dict[str, str], bytes] | None:
        for item in listed(svc, "edoc"):
            if item.get("from") != sender:
                continue
            if item["docId"] not in fetched:
                got = ok(svc.get_edoc(item["docId"], file_path="/data/vanthu/den"))
                assert got.data_bytes is not None
                fetched[item["docId"]] = got.data_bytes
            if read(fetched[item["docId"]], "MessageHeader/{*}DocumentId") == document_id:
                return item, fetched[item["docId"]]
        return None

    return wait_for(check, timeout=WAIT, every=0.3)


def read(data: bytes, path: str) -> str:
    """The text at ``.//{*}<path>`` of a package, read as a DMS reads it (any prefix)."""
    root = etree.fromstring(data, etree.XMLParser(resolve_entities=False, no_network=True))
    return (root.findtext(".//{*}" + path) or "").strip()


def answers(data: bytes) -> tuple[str, str]:
    """(the DocumentId it answers, StatusCode) of a status package."""
    return read(data, "ResponseFor/{*}DocumentId"), read(data, "StatusCode")


def wait_statuses(
    svc: HubService, document_id: str, count: int
) -> list[tuple[dict[str, str], str]]:
    """Poll getReceivedEdocList (status) until ``count`` status packages about
    ``document_id`` are listed; fetch each, acknowledge it (updateStatus done)."""
    seen: dict[str, tuple[dict[str, str], str] | None] = {}

    def check() -> list[tuple[dict[str, str], str]] | None:
        for item in listed(svc, "status"):
            if item["docId"] in seen:
                continue
            assert item.get("messageType") == "status", item
            got = ok(svc.get_edoc(item["docId"]))
            assert got.data_bytes is not None
            about, code = answers(got.data_bytes)
            seen[item["docId"]] = (item, code) if about == document_id else None
            if about == document_id:
                ok(svc.update_status(item["docId"], "done"))
        mine = [s for s in seen.values() if s is not None]
        return mine if len(mine) >= count else None

    return wait_for(check, timeout=WAIT, every=0.3)


def wait_sent(
    svc: HubService, doc_id: str, done: Callable[[dict[str, dict[str, str]]], bool]
) -> dict[str, dict[str, str]]:
    """Poll getSentEdocList(``doc_id``) until its rows, by ``toCode``, satisfy ``done``."""

    def check() -> dict[str, dict[str, str]] | None:
        result = ok(svc.get_sent_edoc_list(doc_id))
        assert result.items is not None, result.body_text
        rows = {row["toCode"]: row for row in result.items}
        return rows if done(rows) else None

    try:
        return wait_for(check, timeout=WAIT, every=0.3)
    except TimeoutError:
        last = svc.get_sent_edoc_list(doc_id).body_text
        raise AssertionError(f"getSentEdocList never settled: {last}") from None


def node_api_fetch(net: Network, agency: str, item_id: str) -> bytes:
    response = net.client(agency).get(f"/api/v1/documents/{item_id}")
    assert response.status_code == 200, response.text
    return response.content


# --- 1. two DMS on the SDK, two tiers apart ------------------------------------------------------


def test_a_document_between_sdk_dms_on_two_tiers(
    net: Network, dms: dict[str, Dms], tally: Tally
) -> None:
    """The ward's DMS sends to the ministry through sendEdoc; the ministry's DMS lists, fetches,
    acknowledges and answers 01, 03, 06 with status packages; the ward sees them come back."""
    ward, ministry = dms[BACHDANG].svc, dms[G12].svc
    document_id, package = net.signed_document(BACHDANG, [G12], subject="Báo cáo gửi Bộ (SDK)")
    sent = ok(ward.send_edoc(BACHDANG, package, to=[G12]))
    assert sent.doc_id and sent.raw.isascii()
    tally.sent(document_id, [G12])

    item, data = wait_document(ministry, document_id, BACHDANG)
    tally.arrived(document_id, G12, data, package)
    assert (item["to"], item["messageType"], item["serviceType"]) == (G12, "edoc", "eDoc")
    ok(ministry.update_status(item["docId"], "done"))
    ok(ministry.update_status(item["docId"], "done"))  # the SDK retries: idempotent
    assert item["docId"] not in {i["docId"] for i in listed(ministry, "edoc")}

    # the ministry's DMS answers with signed status packages, through sendEdoc (the map still
    # holds getEdoc's and updateStatus's docId, filePath and status: stale, and ignored)
    for code in ("01", "03", "06"):
        answer = net.signed_status(G12, sender=BACHDANG, document_id=document_id, code=code)
        assert ok(ministry.send_edoc(G12, answer, messagetype="status", to=[BACHDANG])).doc_id
    assert "docId" in ministry.params and "filePath" in ministry.params

    back = wait_statuses(ward, document_id, 3)
    assert sorted(code for _, code in back) == ["01", "03", "06"]
    assert {(i["from"], i["to"]) for i, _ in back} == {(G12, BACHDANG)}
    tally.statuses_back += len(back)
    assert not [i for i in listed(ward, "status") if i["docId"] in {s["docId"] for s, _ in back}]

    # the ministry's updateStatus done reaches the ward's node too (a progress notice)
    rows = wait_sent(
        ward,
        sent.doc_id,
        lambda r: (
            r.get(G12, {}).get("receiveStatus") == "06"
            and r.get(G12, {}).get("sendStatus") == "acknowledged"
        ),
    )
    row = rows[G12]
    assert (row["senderDocId"], row["fromCode"], row["sendStatus"]) == (
        sent.doc_id,
        BACHDANG,
        "acknowledged",
    ), row
    assert row["sendStatusDesc"].startswith("done:"), row
    assert row["receivedTime"], row
    assert list(rows) == [G12]
    print(
        f"sdk to sdk: tiers=commune>central sent=1 arrived=1 identical=1 "
        f"statuses_back={len(back)} sent_list={row['sendStatus']}/{row['receiveStatus']}"
    )


# --- 2. either API, the same document -----------------------------------------------------------


def test_documents_reach_a_dms_the_same_way_whichever_api_sent_them(
    net: Network, dms: dict[str, Dms], tally: Tally
) -> None:
    """Hạ Long's DMS (the node's API) and the ministry's (the SDK, a fresh service object per
    call) each send one document to the ward (the SDK) and the province (the node's API). Each
    recipient gets both byte for byte, listed alike; each answers 01 through its own API, and
    each sender sees both answers through its own."""
    ward = dms[BACHDANG].svc
    ministry = dms[G12].fresh()
    try:
        x_id, x = net.signed_document(HALONG, [BACHDANG, H49], subject="Công văn của thành phố")
        x_answer = net.push(HALONG, x)
        tally.sent(x_id, [BACHDANG, H49])
        y_id, y = net.signed_document(G12, [BACHDANG, H49], subject="Công văn của Bộ (SDK)")
        y_sent = ok(ministry.send_edoc(G12, y, to=[BACHDANG, H49]))
        assert y_sent.doc_id
        tally.sent(y_id, [BACHDANG, H49])

        # the ward's DMS (SDK): both listed the same way, both byte for byte
        x_item, x_at_ward = wait_document(ward, x_id, HALONG)
        y_item, y_at_ward = wait_document(ward, y_id, G12)
        tally.arrived(x_id, BACHDANG, x_at_ward, x)
        tally.arrived(y_id, BACHDANG, y_at_ward, y)
        assert set(x_item) == set(y_item), (x_item, y_item)
        for item in (x_item, y_item):
            assert (item["to"], item["messageType"], item["serviceType"]) == (
                BACHDANG,
                "edoc",
                "eDoc",
            )
        # the province's DMS (node API): both in its inbox the same way, both byte for byte
        [x_in] = wait_inbox(net, H49, x_id)
        [y_in] = wait_inbox(net, H49, y_id)
        tally.arrived(x_id, H49, node_api_fetch(net, H49, x_in["id"]), x)
        tally.arrived(y_id, H49, node_api_fetch(net, H49, y_in["id"]), y)
        assert set(x_in) == set(y_in), (x_in, y_in)
        assert (x_in["sender"], y_in["sender"]) == (HALONG, G12)
        assert (x_in["sha256"], y_in["sha256"]) == (
            hashlib.sha256(x).hexdigest(),
            hashlib.sha256(y).hexdigest(),
        )
        # the same bytes whichever DMS fetched them, whichever API sent them
        assert x_at_ward == node_api_fetch(net, H49, x_in["id"])
        assert y_at_ward == node_api_fetch(net, H49, y_in["id"])

        # each recipient acknowledges and answers 01 through its own API
        for item, sender, document_id in ((x_item, HALONG, x_id), (y_item, G12, y_id)):
            ok(ward.update_status(item["docId"], "done"))
            answer = net.signed_status(BACHDANG, sender=sender, document_id=document_id, code="01")
            ok(ward.send_edoc(BACHDANG, answer, messagetype="status", to=[sender]))
        for item, sender, document_id in ((x_in, HALONG, x_id), (y_in, G12, y_id)):
            net.client(H49).post(f"/api/v1/documents/{item['id']}/ack").raise_for_status()
            net.report(H49, sender=sender, document_id=document_id, code="01")

        # Hạ Long (node API) sees both answers in its timeline, the SDK one like the other
        for recipient in (BACHDANG, H49):
            view = wait_status(
                net,
                HALONG,
                x_answer["id"],
                recipient,
                lambda v: v["status"] == "01" and v["transport"] == "acknowledged",
            )
            codes = [e["code"] for e in view["events"] if e["kind"] == "transport"]
            # each recipient's DMS fetched it, then acknowledged it: both came back
            assert codes[-3:] == ["delivered", "fetched", "acknowledged"], view
            tally.statuses_back += 1

        def packages_at_halong() -> list[dict[str, Any]] | None:
            found = [
                i
                for i in net.inbox(HALONG)
                if i["kind"] == "status"
                and answers(node_api_fetch(net, HALONG, i["id"]))[0] == x_id
            ]
            return found if len(found) >= 2 else None

        at_halong = wait_for(packages_at_halong, timeout=WAIT, every=0.3)
        assert {i["sender"] for i in at_halong} == {BACHDANG, H49}

        # the ministry (SDK, fresh objects) sees both in getSentEdocList and in its inbox
        rows = wait_sent(
            ministry,
            str(y_sent.doc_id),
            lambda r: all(
                r.get(a, {}).get("receiveStatus") == "01"
                and r.get(a, {}).get("sendStatus") == "acknowledged"
                for a in (BACHDANG, H49)
            ),
        )
        # the ward said done through the SDK, the province acknowledged through the node's
        # API: both reach the ministry's node, each in its own words
        assert rows[BACHDANG]["sendStatusDesc"].startswith("done:"), rows
        assert rows[H49]["sendStatusDesc"] == "acknowledged", rows
        back = wait_statuses(ministry, y_id, 2)
        assert sorted((i["from"], code) for i, code in back) == [(H49, "01"), (BACHDANG, "01")]
        tally.statuses_back += len(back)
        # a fresh object per call: no key of its sendEdoc calls travelled with later calls
        assert not {"from", "hash-file", "messagetype"} & set(ministry.params), ministry.params
        assert {"from", "hash-file", "docId"} <= set(ward.params)  # the reused one: all of them
    finally:
        ministry.close()
    print(
        "either api: sent=2 (own api 1, sdk 1) recipients=4 identical=4 listed_alike=2 "
        "answers_back=4 (each through the sender's own api)"
    )


# --- 3. a listener of its own ---------------------------------------------------------------


def test_the_wards_hub_listener_serves_the_hub_api_only_and_drops_idle_connections(
    net: Network, dms: dict[str, Dms]
) -> None:
    """On the ward's node the hub API has a port of its own: the node's API is not there (a
    404 trio, as the SDK parses it), the node's own listener no longer serves the hub API (the
    node's 404), and an idle kept-alive connection is closed after ``keepalive_timeout``."""
    ward = dms[BACHDANG]
    context = ssl.create_default_context(cafile=ward.ca_file)
    with httpx.Client(verify=context, timeout=10) as plain:
        stray = plain.get(ward.endpoint + "/api/v1/inbox")
    assert stray.status_code == 404, stray.text
    trio = stray.json()
    assert (trio["status"], trio["ErrorCode"]) == ("FAIL", "REQUEST_PATH_NOT_FOUND"), trio
    on_node = net.client(BACHDANG).post("/getAgenciesList")
    assert on_node.status_code == 404 and on_node.json()["code"] == "REQUEST_PATH_NOT_FOUND"
    assert ok(ward.svc.get_agencies_list()).items  # and the hub API answers on its own port

    url = httpx.URL(ward.endpoint)
    with (
        socket.create_connection((url.host, url.port), timeout=15) as raw,
        context.wrap_socket(raw, server_hostname=url.host) as tls,
    ):
        tls.sendall(b"GET /getAgenciesList HTTP/1.1\r\nHost: ward\r\n\r\n")
        started = time.monotonic()
        answer = b""
        while chunk := tls.recv(65536):  # the answer, then the end: the server closed
            answer += chunk
        idle = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 405"), answer[:80]
    # keepalive_timeout = 2 here; the node's own listener keeps them 30 s
    assert 1.5 <= idle < 12, f"an idle connection was closed after {idle:.1f} s"
    print(f"hub listener: stray path 404 trio, node listener 404, idle closed after {idle:.1f} s")


# --- 4. the count ---------------------------------------------------------------------------


def test_nothing_duplicated_nothing_lost(net: Network, tally: Tally) -> None:
    """Every recipient's node stores each document once; the count line of the module."""
    assert tally.expected, "the tests above sent nothing"
    copies = {
        (document_id, recipient): documents_named(net, net.node_of(recipient), document_id)
        for document_id, recipient in tally.expected
    }
    duplicated = sum(max(n - 1, 0) for n in copies.values())
    lost = len(tally.expected - tally.delivered)
    # nothing left unacknowledged in the node-API DMS's inbox either
    leftover = [
        (d, r) for d, r in tally.expected if r == H49 and inbox_items(net, r, d, "document")
    ]
    documents = len({d for d, _ in tally.expected})
    print(
        f"hub network: documents sent={documents} delivered={len(tally.delivered)}/"
        f"{len(tally.expected)} duplicated={duplicated} lost={lost} "
        f"statuses back={tally.statuses_back}"
    )
    assert (duplicated, lost, leftover) == (0, 0, []), copies
