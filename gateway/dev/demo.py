"""``gateway demo``: the four-tier network, end to end, as a new user would see it.

Four nodes of Quảng Ninh's link to the centre (:mod:`gateway.dev.network`), each its own
``gateway serve`` process with its own SQLite file, certificates from a fresh dev PKI, each also
serving the hub-compatible API (docs/hub.md) under ``/vdxp``. A commune agency writes to a
ministry, the ministry writes back to the commune and the district; the recipients' DMS pull,
acknowledge and report statuses 01, 03, 06. The district's DMS speaks only the national hub
protocol (a connected system of its node, made with ``gateway systems add``): it pulls with
getReceivedEdocList and getEdoc, acknowledges with updateStatus, reports its statuses and sends
a document of its own with sendEdoc, and follows it with getSentEdocList. The district node goes
down while a document is on its way to the commune, and the province's outbox retries until it
is back; every document's timeline is printed as its sender's node sees it.

With ``keep`` the files stay there and the network keeps running until Ctrl-C; ``hub.json``
there gives, per node, the hub endpoint and a demo system (policy attest) for a DMS to use.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import Any

import click
from lxml import etree

from adapters.hub.client import HubClient
from gateway.dev.network import HUB_SETTINGS, Network, wait_for
from gateway.errors import GatewayError, UsageError
from gateway.logs import configure

__all__ = ["AGENCIES", "DEMO_SETTINGS", "run_demo"]

COMMUNE, DISTRICT, MINISTRY = "000.01.01.H49", "000.00.01.H49", "000.00.00.G12"

#: the agencies of the development network, by code
AGENCIES = {
    "000.00.00.G22": "Văn phòng Chính phủ",
    MINISTRY: "Bộ Tài chính",
    "000.00.00.H49": "UBND tỉnh Quảng Ninh",
    DISTRICT: "UBND thành phố Hạ Long",
    COMMUNE: "UBND phường Bạch Đằng",
}

#: quick retries, so an outage shows in seconds; every node serves the hub API under /vdxp
DEMO_SETTINGS: dict[str, dict[str, Any]] = {
    "delivery": {
        "backoff_initial": 0.5,
        "backoff_max": 2,
        "breaker_threshold": 3,
        "breaker_probe_interval": 1,
    },
    **HUB_SETTINGS,
}

#: the district's DMS speaks only the hub protocol: a connected system of its node
HUB_NODE, HUB_SYSTEM = "h49-halong", "vxp.halong.vanthu"

#: seconds to wait for anything to cross the network
PATIENCE = 20.0


def _step(text: str) -> None:
    click.secho(f"\n== {text}", bold=True)


class _Checks:
    """Each expectation, printed as it is checked; the demo passes when all held."""

    def __init__(self) -> None:
        self.failed: list[str] = []

    def __call__(self, ok: bool, what: str) -> bool:
        click.secho(f"   {'ok' if ok else 'FAILED'}: {what}", fg="green" if ok else "red")
        if not ok:
            self.failed.append(what)
        return ok


def _within(check: Callable[[], Any], timeout: float = PATIENCE) -> Any:
    """What ``check`` returned once truthy; None after ``timeout`` seconds."""
    try:
        return wait_for(check, timeout=timeout, every=0.1)
    except TimeoutError:
        return None


def _status(net: Network, sender: str, gid: str) -> dict[str, Any]:
    """The sender's view of its document: GET /api/v1/documents/{id}/status at its node."""
    response = net.client(sender).get(f"/api/v1/documents/{gid}/status")
    response.raise_for_status()
    view: dict[str, Any] = response.json()
    return view


def _statuses(net: Network, sender: str, gid: str) -> dict[str, str | None]:
    return {r["recipient"]: r["status"] for r in _status(net, sender, gid)["recipients"]}


def _showing(net: Network, sender: str, gid: str, wanted: dict[str, str]) -> Callable[[], bool]:
    """A check: the sender's node shows these statuses (recipient: last code)."""
    return lambda: _statuses(net, sender, gid) == wanted


def _waiting(net: Network) -> list[dict[str, Any]]:
    """h49's outbox, through its admin API (the node's own certificate)."""
    response = net.client("h49").get("/api/v1/admin/deliveries", params={"state": "waiting"})
    response.raise_for_status()
    rows: list[dict[str, Any]] = response.json()["items"]
    return rows


def _pull(net: Network, agency: str, document_id: str) -> bool:
    """``agency``'s DMS: find the document in its inbox, download it, check it, acknowledge it."""
    item = _within(
        lambda: next(
            (
                i
                for i in net.inbox(agency)
                if i["kind"] == "document" and i["document_id"] == document_id
            ),
            None,
        )
    )
    if item is None:
        click.echo(f"   {agency}: {document_id} did not arrive within {PATIENCE:.0f} s")
        return False
    client = net.client(agency)
    data = client.get(f"/api/v1/documents/{item['id']}").content
    intact: bool = hashlib.sha256(data).hexdigest() == item["sha256"]
    client.post(f"/api/v1/documents/{item['id']}/ack").raise_for_status()
    click.echo(
        f"   {agency} ({AGENCIES[agency]}) pulled {len(data)} bytes, "
        f"{'SHA-256 as announced' if intact else 'SHA-256 MISMATCH'}, acknowledged"
    )
    return intact


def _report(net: Network, agency: str, sender: str, document_id: str, codes: str) -> None:
    for code in codes.split():
        net.report(agency, sender=sender, document_id=document_id, code=code)
    click.echo(f"   {agency} reported statuses {codes}")


def _status_in(data: bytes) -> tuple[str, str]:
    """(the DocumentId it answers, StatusCode) of a status package a DMS fetched."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    root = etree.fromstring(data, parser)
    return (
        (root.findtext(".//{*}ResponseFor/{*}DocumentId") or "").strip(),
        (root.findtext(".//{*}StatusCode") or "").strip(),
    )


def _hub_pull(hub: HubClient, sender: str, document_id: str, signed: bytes) -> bool:
    """The district's DMS, on the hub API: list its inbox, fetch the document, acknowledge it."""
    item = _within(lambda: next((i for i in hub.received("edoc") if i["from"] == sender), None))
    if item is None:
        click.echo(f"   {DISTRICT}: nothing from {sender} in getReceivedEdocList")
        return False
    data = hub.get_edoc(item["docId"])
    hub.update_status(item["docId"], "done")
    listed = any(i["docId"] == item["docId"] for i in hub.received("edoc"))
    click.echo(
        f"   {DISTRICT} ({AGENCIES[DISTRICT]}) on the hub API: getReceivedEdocList lists it "
        f"(docId {item['docId'][:8]}…, from {item['from']}),"
    )
    click.echo(
        f"     getEdoc gives {len(data)} bytes, "
        f"{'identical to what ' + sender + ' signed' if data == signed else 'NOT what was signed'}"
        f"; updateStatus done: {'still listed' if listed else 'off the list'}"
    )
    return data == signed and document_id.encode() in data and not listed


def _hub_report(net: Network, hub: HubClient, sender: str, document_id: str, codes: str) -> None:
    """The district's DMS sends signed status packages with sendEdoc (messagetype status); a
    refusal raises PeerRefused (the hub's code: adapters.hub.client.hub_code)."""
    for code in codes.split():
        data = net.signed_status(DISTRICT, sender=sender, document_id=document_id, code=code)
        hub.send_edoc(DISTRICT, data, messagetype="status", to=[sender])
    click.echo(
        f"   {DISTRICT} reported statuses {codes} with sendEdoc messagetype=status "
        "(status packages signed with its agency key)"
    )


def _hub_statuses(hub: HubClient, document_id: str, wanted: list[str]) -> list[str]:
    """The district's DMS pulls the statuses of its document (getReceivedEdocList status)."""
    seen: dict[str, str] = {}

    def arrived() -> bool:
        for item in hub.received("status"):
            if item["docId"] not in seen:
                answers, code = _status_in(hub.get_edoc(item["docId"]))
                hub.update_status(item["docId"], "done")
                seen[item["docId"]] = code if answers == document_id else f"other:{code}"
        return sorted(seen.values()) == sorted(wanted)

    _within(arrived)
    return list(seen.values())


def _utc(text: str) -> dt.datetime:
    """A time from the API (SQLite gives it without a zone: it is UTC)."""
    at = dt.datetime.fromisoformat(text)
    return at.replace(tzinfo=dt.UTC) if at.tzinfo is None else at.astimezone(dt.UTC)


def _timeline(net: Network, sender: str, gid: str, subject: str) -> None:
    view = _status(net, sender, gid)
    click.secho(f"   {subject}: {sender} → {', '.join(r['recipient'] for r in view['recipients'])}")
    click.echo(f"   DocumentId {view['document_id']}, id {gid} at {net.node_of(sender)}")
    for r in view["recipients"]:
        click.echo(f"     to {r['recipient']}: {r['transport']}, status {r['status'] or '-'}")
        for e in r["events"]:
            what = f"status {e['code']}" if e["kind"] == "status" else e["code"]
            at = f"{_utc(e['at']):%H:%M:%S.%f}"[:-3]
            click.echo(f"       {at}  {e['node']:<13} {what}")


def _start(net: Network) -> HubClient:
    """Step 1: the PKI, the nodes, and the district DMS's connected system; its hub client."""
    _step(f"1. four nodes, each its own process and SQLite file; a fresh dev PKI in {net.pki}")
    began = time.monotonic()
    net.create()
    created = time.monotonic()
    with ThreadPoolExecutor(1) as pool:  # the operator's command runs while the nodes start
        adding = pool.submit(net.add_system, HUB_NODE, HUB_SYSTEM, [DISTRICT])
        net.start()
        secret = adding.result()
    click.echo(
        f"   PKI, settings and databases in {created - began:.1f} s; "
        f"four `gateway serve` processes up in {time.monotonic() - created:.1f} s"
    )
    for name, running in net.nodes.items():
        spec, depth, parent = running.spec, 0, running.spec.parent
        while parent is not None:
            depth, parent = depth + 1, net.nodes[parent].spec.parent
        tree = "  " * depth + ("└ " if depth else "") + name
        codes = ", ".join(f"{c} {AGENCIES.get(c, '')}".strip() for c in spec.agencies)
        click.echo(f"   {tree:<20} {spec.tier:<9} {net.url(name)}  {codes}")
    endpoint = net.hub_endpoint(HUB_NODE)
    click.echo("   each node also serves the national hub protocol (the SDK's) at its URL + /vdxp")
    click.echo(
        f"   {DISTRICT}'s DMS uses only that, at {endpoint}, as a connected system its "
        "operator made with"
    )
    command = net.systems_add_command(HUB_NODE, HUB_SYSTEM, [DISTRICT])
    click.echo(f"     gateway {' '.join(command[1:])}")
    click.echo(
        f"   the secret it printed once ({len(secret)} characters) signs each of the DMS's "
        "requests (HMAC-SHA256; no client certificate)"
    )
    return HubClient(endpoint, HUB_SYSTEM, secret, verify=str(net.ca_file))


def _exchange(net: Network, checks: _Checks, hub: HubClient) -> list[tuple[str, str, str]]:
    """Steps 2 to 4: documents both ways, the district's DMS on the hub API only; the
    (sender, id at its node, subject) of each document whose timeline step 6 shows."""
    _step(f"2. {COMMUNE} writes to {MINISTRY}; {MINISTRY} writes to {COMMUNE} and {DISTRICT}")
    up_id, up = net.send(COMMUNE, [MINISTRY], subject="Báo cáo tình hình phường Bạch Đằng")
    down_id, signed = net.signed_document(
        MINISTRY, [COMMUNE, DISTRICT], subject="Hướng dẫn quyết toán"
    )
    down = net.push(MINISTRY, signed)
    for sender, document_id, answer in ((COMMUNE, up_id, up), (MINISTRY, down_id, down)):
        receipt = answer["receipt"]
        click.echo(
            f"   {sender} pushed {document_id} to {net.node_of(sender)}: 202, "
            f"receipt signed by node {receipt['receipt']['node']} ({receipt['alg']})"
        )

    _step("3. the recipients' DMS pull, acknowledge and report 01 received, 03 accepted, 06 done")
    for agency, sender, document_id in ((MINISTRY, COMMUNE, up_id), (COMMUNE, MINISTRY, down_id)):
        if checks(_pull(net, agency, document_id), f"{document_id} reached {agency}"):
            _report(net, agency, sender, document_id, "01 03 06")
    pulled = _hub_pull(hub, MINISTRY, down_id, signed)
    if checks(pulled, f"{down_id} reached {DISTRICT} (hub API: listed, fetched, acknowledged)"):
        _hub_report(net, hub, MINISTRY, down_id, "01 03 06")
    for sender, gid, recipients in (
        (COMMUNE, up["id"], [MINISTRY]),
        (MINISTRY, down["id"], [COMMUNE, DISTRICT]),
    ):
        seen = _within(_showing(net, sender, gid, dict.fromkeys(recipients, "06")))
        checks(bool(seen), f"{sender}'s node shows status 06 from {', '.join(recipients)}")

    _step(f"4. {DISTRICT}'s DMS writes to {COMMUNE} with sendEdoc; {COMMUNE} answers 01, 03")
    own_id, own = net.signed_document(DISTRICT, [COMMUNE], subject="Kế hoạch của thành phố")
    doc_id = hub.send_edoc(DISTRICT, own, to=[COMMUNE])
    click.echo(f"   {DISTRICT}'s DMS: sendEdoc {own_id}, DocId {doc_id}")
    if checks(_pull(net, COMMUNE, own_id), f"{own_id} reached {COMMUNE}"):
        _report(net, COMMUNE, DISTRICT, own_id, "01 03")
    codes = _hub_statuses(hub, own_id, ["01", "03"])
    click.echo(
        f"   {DISTRICT}'s DMS: getReceivedEdocList messagetype=status lists {len(codes)} "
        f"status packages about it ({', '.join(codes)}); getEdoc and updateStatus done each"
    )
    checks(sorted(codes) == ["01", "03"], f"statuses 01, 03 reached {DISTRICT}'s DMS")

    def answered() -> dict[str, Any] | None:
        rows = hub.sent(doc_id)
        done = len(rows) == 1 and rows[0].get("receiveStatus") == "03"
        # the commune's DMS acknowledged it: a progress notice brings that back too
        return rows[0] if done and rows[0].get("sendStatus") == "acknowledged" else None

    row = _within(answered) or next(iter(hub.sent(doc_id)), {})
    click.echo(
        f"   {DISTRICT}'s DMS: getSentEdocList {doc_id[:8]}…: to {row.get('toCode')}, sendStatus "
        f"{row.get('sendStatus')}, receiveStatus {row.get('receiveStatus')}"
    )
    checks(
        (row.get("toCode"), row.get("sendStatus"), row.get("receiveStatus"))
        == (COMMUNE, "acknowledged", "03"),
        f"getSentEdocList shows it acknowledged by {COMMUNE}'s DMS, last status 03",
    )
    return [
        (COMMUNE, up["id"], "report"),
        (MINISTRY, down["id"], "guidance"),
    ]


def _outage(net: Network, checks: _Checks) -> tuple[str, str, str]:
    """Step 5: the district node down and back; the document sent meanwhile (for step 6)."""
    _step("5. the district node h49-halong stops; the ministry writes to the commune meanwhile")
    net.stop("h49-halong")
    late_id, late = net.send(MINISTRY, [COMMUNE], subject="Công văn gửi khi huyện mất kết nối")
    click.echo(f"   sent {late_id}; h49's outbox (GET /api/v1/admin/deliveries?state=waiting):")
    threshold = DEMO_SETTINGS["delivery"]["breaker_threshold"]
    most, polls, began = 0, 0, time.monotonic()
    while polls < 4 or (most < threshold and polls < 10):  # until the breaker has opened
        time.sleep(1.0)
        polls += 1
        for row in (r for r in _waiting(net) if r["document_id"] == late_id):
            most = max(most, row["attempts"])
            due = (_utc(row["next_attempt_at"]) - dt.datetime.now(dt.UTC)).total_seconds()
            error = (row["last_error"] or "").split(": ", 1)[-1]
            click.echo(
                f"     +{time.monotonic() - began:.0f} s  to {row['next_hop']}: attempts "
                f"{row['attempts']}, next in {max(due, 0):.1f} s, last error {error}"
            )
    click.echo(
        f"   after {threshold} failures in a row h49's circuit breaker for h49-halong opens: "
        "one probe a second, not counted as an attempt"
    )
    checks(most >= 2, f"h49 retried with backoff ({most} attempts)")
    net.start("h49-halong")
    back = time.monotonic()
    click.echo(f"   h49-halong restarted ({back - began:.0f} s after the document was sent)")
    arrived = _pull(net, COMMUNE, late_id)
    checks(arrived, f"the backlog reached {COMMUNE} {time.monotonic() - back:.1f} s later")
    if arrived:
        _report(net, COMMUNE, MINISTRY, late_id, "01")
    checks(bool(_within(lambda: not _waiting(net))), "h49's outbox is empty again")
    seen = _within(_showing(net, MINISTRY, late["id"], {COMMUNE: "01"}))
    checks(bool(seen), f"{MINISTRY}'s node shows status 01 from {COMMUNE}")
    return MINISTRY, late["id"], "sent during the outage"


def _admin(net: Network) -> None:
    """Step 7: where the admin API is, and how to call it."""
    _step("7. the admin API: a node's own certificate is its admin credential")
    click.echo(f"   in {net.pki}: each node's NAME.cert.pem and NAME.key.pem; the CA ca.cert.pem")
    for name in net.nodes:
        click.echo(f"   {name:<14} {net.url(name)}/api/v1/admin/deliveries  ({name}.cert.pem)")
    url = f"{net.url('h49')}/api/v1/admin/deliveries?state=failed"
    click.echo(f"   e.g. curl --cacert {net.ca_file} \\")
    click.echo(f"          --cert {net.pki / 'h49.cert.pem'} --key {net.pki / 'h49.key.pem'} \\")
    click.echo(f"          '{url}'")
    click.echo(f"   or:  gateway deliveries list --config {net.root / 'h49' / 'node.toml'}")
    click.echo('   requeue a dead letter: POST /api/v1/admin/deliveries/requeue {"ids": [...]}')


def _hub_json(net: Network, checks: _Checks, path: Path) -> None:
    """Step 8 (``--keep``): a demo system (policy attest) on every node, written to ``path``
    with its endpoint, for a DMS on the real SDK; each checked with getAgenciesList."""
    _step(f"8. the hub API for your own DMS: {path}")
    wanted = [(name, f"demo.{name}", r.spec.agencies[0]) for name, r in net.nodes.items()]
    # as `gateway systems add demo.NAME --agency CODE --policy attest --config ...` would, in
    # this process: four interpreters starting beside four nodes would take seconds
    secrets = [
        net.add_system(name, systemid, [agency], policy="attest", in_process=True)
        for name, systemid, agency in wanted
    ]
    entries = [
        {
            "node": name,
            "endpoint": net.hub_endpoint(name),
            "ca_file": str(net.ca_file),
            "systemid": systemid,
            "secret": secret,
            "agency": agency,
            "policy": "attest",
        }
        for (name, systemid, agency), secret in zip(wanted, secrets, strict=True)
    ]
    path.touch(mode=0o600, exist_ok=False)  # it holds secrets: never readable by others
    path.write_text(json.dumps(entries, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    answered = 0
    for entry in entries:
        with HubClient(
            entry["endpoint"], entry["systemid"], entry["secret"], verify=entry["ca_file"]
        ) as hub:
            try:
                listed = any(a.get("code") == entry["agency"] for a in hub.agencies())
            except GatewayError as exc:
                listed = False
                click.echo(f"   {entry['node']}: {exc}")
        answered += listed
        click.echo(
            f"   {entry['node']:<14} {entry['endpoint']}  {entry['systemid']:<19} "
            f"as {entry['agency']}"
        )
    checks(answered == len(entries), "each node answers getAgenciesList to its hub.json system")
    click.echo("   each entry: endpoint (the SDK's ENDPOINT), systemid, secret, agency, ca_file")
    click.echo(
        "   each system as `gateway systems add demo.NODE --agency CODE --policy attest` makes "
        "it: policy attest"
    )
    click.echo("   takes what the DMS sends on its system's authentication (docs/hub.md)")
    click.echo(
        f"   a JVM trusts the dev CA with: keytool -importcert -noprompt -alias gateway-dev "
        f"-file {net.ca_file} -keystore dev.jks -storepass changeit,"
    )
    click.echo(
        "   then java -Djavax.net.ssl.trustStore=dev.jks "
        "-Djavax.net.ssl.trustStorePassword=changeit ..."
    )


def _run(net: Network, checks: _Checks, keep: Path | None) -> None:
    hub = _start(net)
    try:
        documents = _exchange(net, checks, hub)
    finally:
        hub.close()
    documents.append(_outage(net, checks))

    _step("6. each document's timeline at its sender's node (GET /api/v1/documents/{id}/status)")
    click.echo("   times UTC; the node is where the event happened (statuses: where recorded)")
    for sender, gid, subject in documents:
        _timeline(net, sender, gid, subject)

    _admin(net)
    if keep is not None:
        _hub_json(net, checks, keep / "hub.json")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_demo(keep: Path | None = None) -> int:
    """Run the demonstration; 0 when every step behaved as expected, 1 otherwise.

    Raises UsageError when ``keep`` names a folder that is not empty.
    """
    if keep is not None and keep.exists() and any(keep.iterdir()):
        raise UsageError(f"{keep} is not empty: give a new or empty folder")
    configure("warning")  # like every gateway command: stdout is the demo's, problems on stderr
    work = keep if keep is not None else Path(tempfile.mkdtemp(prefix="gateway-demo-"))
    main = threading.current_thread() is threading.main_thread()
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    if main:  # `kill` stops the demo as Ctrl-C does
        signal.signal(signal.SIGTERM, _interrupt)
    net = Network(work, settings=DEMO_SETTINGS)
    checks = _Checks()
    began = time.monotonic()
    finished = False
    try:
        try:
            _run(net, checks, keep)
        except Exception as exc:  # a failed step still gets its summary and the clean-up
            checks(False, f"the demo stopped: {type(exc).__name__}: {exc}")
        _step("summary")
        click.echo(f"   elapsed {time.monotonic() - began:.1f} s")
        expected = not checks.failed
        click.echo(f"   demo {'behaved as expected' if expected else 'DID NOT behave as expected'}")
        for what in checks.failed:
            click.echo(f"   failed: {what}")
        finished = True
        if keep is not None and net.nodes:
            click.secho(f"\nThe network keeps running; its files are in {work}.", bold=True)
            if (work / "hub.json").is_file():
                click.secho(
                    f"Its hub API for your DMS (endpoints, systemids, secrets, the CA file): "
                    f"{work / 'hub.json'}",
                    bold=True,
                )
            click.secho("Press Ctrl-C to stop it.", bold=True)
            while True:
                time.sleep(3600)
        click.echo(
            "   the network stops now and its files are removed; to try the admin API, the hub "
            "API (hub.json) and the commands above, run `gateway demo --keep DIR`"
        )
        return 0 if expected else 1
    except KeyboardInterrupt:
        click.echo("\nstopping the nodes")
        return 0 if finished and not checks.failed else 1
    finally:
        if main:  # a second Ctrl-C must not leave nodes running
            for sig in handlers:
                signal.signal(sig, signal.SIG_IGN)
        try:
            net.close()
            if keep is None:
                shutil.rmtree(work, ignore_errors=True)
        finally:
            if main:
                for sig, handler in handlers.items():
                    signal.signal(sig, handler)
