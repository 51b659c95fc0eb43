"""Lost answers on a real link: a fault-injecting proxy between two real nodes.

The four-tier Quảng Ninh network (:data:`gateway.dev.network.QUANG_NINH`), each node a real
``gateway serve`` process on its own SQLite database, with the link between the district and the
province going through a :class:`faultproxy.FaultProxy`, one per direction::

    central (G22, G12)
      └ h49 (H49)
          ▲ │            up:   h49-halong ──▶ proxy ──▶ h49      (h49-halong's parent URL)
          │ ▼            down: h49 ──▶ proxy ──▶ h49-halong      (h49's child URL)
          └ h49-halong (HALONG)
              └ h49-bachdang (COMMUNE)

Each proxy terminates the caller's mutual TLS and passes its client certificate on in the
``[tls] proxy_cert_header`` header, from 127.0.0.2, the only address the far node lists in
``[tls] trusted_proxies``. While documents go up and down across the link (some from an agency
hosted right at the link, some from one tier further), and their recipients send status
packages back, the proxies drop answers after the far node committed, hold answers past the
caller's peer timeout, and send requests twice. Then the faults stop, the network drains, and::

    lost-responses seed=... sent=48 delivered=48 duplicated=0 lost=0 false_failure_notices=0
        waiting=0 leased=0 statuses=72 statuses_arrived=72 statuses_confirmed=72
        proxy: requests=.. dropped=.. delayed=.. duplicated=.. repeated_receipts=..

(``repeated_receipts``: packages relayed across the link that the far node answered with the
receipt it had already given: it had committed them before, and its answer was lost or repeated.)

* every document is in its recipient's inbox exactly once, and every status package in its
  document sender's inbox exactly once;
* no sender got a failure notice, no node has a ``failed`` delivery row, and no row anywhere is
  left waiting (``next_attempt_at``) or leased (``leased_by``);
* at the sender's node each document's timeline went ``accepted``, ``in_transit`` at every node
  on the way, then ``delivered`` at the recipient's node;
* each status package shows ``delivered`` at its reporter's node (its row and its timeline);
* the proxies did inject every kind of fault, the far nodes took the proxied callers for the
  nodes whose certificates the proxies passed on, and no node logged an error or a traceback.

The status confirmation (the last test) needs the reporter's node to learn that its status
package arrived: a "delivered" notice for statuses, as for documents.

``GATEWAY_LOST_SEED`` replays a run's fault choices (which request gets which fault also depends
on timing); ``GATEWAY_LOST_DOCUMENTS`` sets how many documents are sent (default 48).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sqlite3
import time
from collections import Counter
from contextlib import ExitStack, closing, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from faultproxy import Fault, FaultCounts, FaultProxy, FaultRates
from network_support import WAIT, admin_deliveries, audit_events, status_of, stop_all

from gateway.dev.network import QUANG_NINH, Network, free_port, wait_for
from gateway.dev.samples import status
from gateway.trust.signing import sign_package

pytestmark = pytest.mark.slow

G22 = "000.00.00.G22"  # Government Office, at central
G12 = "000.00.00.G12"  # a ministry, at central
H49 = "000.00.00.H49"  # provincial People's Committee, at h49
HALONG = "000.00.01.H49"  # Hạ Long city, at h49-halong (right below the faulty link)
COMMUNE = "000.01.01.H49"  # Bạch Đằng ward, at h49-bachdang (one tier further down)

#: the nodes of the tree, top to bottom (QUANG_NINH is a single branch)
LINE = tuple(spec.name for spec in QUANG_NINH)
#: the faulty link: child, parent
CHILD, PARENT = "h49-halong", "h49"

#: (sender, recipient): across the link both ways, from right at it and from one tier away
FLOWS: tuple[tuple[str, str], ...] = (
    (COMMUNE, G12),
    (HALONG, H49),
    (G22, COMMUNE),
    (H49, HALONG),
)
DOCUMENTS = int(os.environ.get("GATEWAY_LOST_DOCUMENTS") or 48)
#: each recipient answers every document "01 received", and every other one "03 accepted" too
STATUS_CODES = (("01", "03"), ("01",))

RATES = FaultRates(drop=0.25, delay=0.10, duplicate=0.15)
#: the nodes' peer timeout, and how long the proxy holds a delayed answer (well beyond it)
PEER_TIMEOUT = 1.5
DELAY = 2.5
#: delivery settings of every node: small batches (more requests, so more faults), quick retries
DELIVERY: dict[str, Any] = {
    "batch_size": 3,
    "timeout": PEER_TIMEOUT,
    "connect_timeout": 1.0,
    "backoff_initial": 0.2,
    "backoff_max": 1.0,
    "backoff_jitter": 0.2,
    "lease": 15,
    "breaker_probe_interval": 1.0,
}
#: the proxies connect to the far node from this loopback address; only it is a trusted proxy
#: (the test's own clients, on 127.0.0.1, keep authenticating with their TLS certificates)
PROXY_ADDRESS = "127.0.0.2"
CERT_HEADER = "x-client-cert"
#: seconds between two pushes, and between two looks at the recipients' inboxes
PACE = 0.05
POLL = 0.5
#: the faulty phase ends when everything arrived, or after this many seconds
FAULT_PHASE = 75.0


@dataclass(frozen=True)
class Doc:
    """A document pushed by ``sender`` to ``recipient``, and its id at the sender's node."""

    sender: str
    recipient: str
    document_id: str
    body: bytes
    index: int
    gid: str = ""


@dataclass(frozen=True)
class Status:
    """A status package the recipient of ``about`` pushed; its id at the reporter's node."""

    about: Doc
    code: str
    gid: str
    sha256: str

    @property
    def reporter(self) -> str:
        return self.about.recipient


@dataclass
class Logs:
    """What the nodes' logs say (every log file each node wrote)."""

    #: error-level (or worse) lines and traceback lines, per node
    problems: dict[str, list[str]]
    #: callers identified from a trusted proxy's header, per node: "caller from peer"
    proxied: dict[str, Counter[str]]


@dataclass
class Outcome:
    """Everything the run observed, for the tests below to judge."""

    line: str
    docs: list[Doc]
    statuses: list[Status]
    #: (document_id, recipient) -> how many times it is in that inbox
    seen: Counter[tuple[str, str]]
    #: status package sha256 -> how many times it is in its document sender's inbox
    statuses_seen: Counter[str]
    #: notices in the senders' inboxes ("agency: subject")
    notices: list[str]
    #: failed delivery rows, per node
    failed: dict[str, list[dict[str, Any]]]
    #: rows with next_attempt_at set / leased_by set, per node (SQLite, read-only)
    waiting: dict[str, list[tuple[Any, ...]]]
    leased: dict[str, list[tuple[Any, ...]]]
    #: document index -> the sender's node's transport events for its recipient (code, node)
    timelines: dict[int, list[tuple[str, str | None]]]
    #: status gid -> the reporter's node's view of it for the document's sender
    status_views: dict[str, dict[str, Any]]
    proxies: dict[str, FaultCounts]
    proxy_errors: list[str]
    logs: Logs
    drained: bool
    timings: dict[str, float] = field(default_factory=dict)


# --- helpers ---------------------------------------------------------------------------------


def path(sender_node: str, recipient_node: str) -> list[str]:
    """The nodes a package goes through, both ends included (the tree is one branch)."""
    a, b = LINE.index(sender_node), LINE.index(recipient_node)
    return list(LINE[a : b + 1]) if a <= b else list(reversed(LINE[b : a + 1]))


def node_of(agency: str) -> str:
    """The node of the layout hosting ``agency``."""
    return next(spec.name for spec in QUANG_NINH if agency in spec.agencies)


def expected_transport(doc: Doc) -> list[tuple[str, str | None]]:
    """The transport events the sender's node should show: accepted there, in transit at each
    node on the way (the next hop's, when the recipient's node is the next hop: the delivered
    notice implies the last hop), delivered at the recipient's node."""
    nodes = path(node_of(doc.sender), node_of(doc.recipient))
    hops = nodes[1:-1] or nodes[1:]
    return [
        ("accepted", nodes[0]),
        *(("in_transit", n) for n in hops),
        ("delivered", nodes[-1]),
    ]


def _rows(net: Network, name: str, where: str) -> list[tuple[Any, ...]]:
    """Delivery rows of node ``name`` matching ``where``, read from its SQLite file read-only."""
    database = Path(net.root) / name / "node.db"
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)) as conn:
        return list(
            conn.execute(
                "SELECT id, document_seq, recipient, next_hop, state, attempts, next_attempt_at,"
                f" leased_by, last_error FROM deliveries WHERE {where}"
            ).fetchall()
        )


def read_logs(net: Network) -> Logs:
    """Scan every log file each node of ``net`` wrote."""
    problems: dict[str, list[str]] = {}
    proxied: dict[str, Counter[str]] = {}
    for name, running in net.nodes.items():
        found: list[str] = []
        callers: Counter[str] = Counter()
        for log in sorted(running.folder.glob("node-*.log")):
            for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
                entry: Any = None
                with suppress(ValueError):
                    entry = json.loads(line)
                if not isinstance(entry, dict):
                    entry = {}
                level = str(entry.get("level", "")).lower()
                if level in ("error", "critical", "exception") or "Traceback" in line:
                    found.append(f"{log.name}: {line[:500]}")
                if entry.get("event") == "auth.certificate_verified" and (
                    entry.get("source") == "proxy"
                ):
                    callers[f"{entry.get('caller')} from {entry.get('peer')}"] += 1
        problems[name], proxied[name] = found, callers
    return Logs(problems, proxied)


def report(net: Network, doc: Doc, code: str) -> Status:
    """The recipient of ``doc`` pushes a signed status package ``code`` about it."""
    data = sign_package(
        status(doc.recipient, sender=doc.sender, document_id=doc.document_id, code=code),
        net.key(doc.recipient),
    )
    answer = net.push(doc.recipient, data, "/api/v1/statuses")
    return Status(doc, code, str(answer["id"]), hashlib.sha256(data).hexdigest())


def inboxes(net: Network) -> dict[str, list[dict[str, Any]]]:
    agencies = sorted({a for flow in FLOWS for a in flow})
    return {agency: net.inbox(agency) for agency in agencies}


def arrivals(
    net: Network, docs: list[Doc], statuses: list[Status]
) -> tuple[Counter[tuple[str, str]], Counter[str], list[str]]:
    """(documents seen per (document_id, recipient), status packages seen per sha256, notices)
    as the agencies' inboxes show them."""
    seen: Counter[tuple[str, str]] = Counter()
    statuses_seen: Counter[str] = Counter()
    notices: list[str] = []
    wanted = {s.sha256 for s in statuses}
    senders = {d.sender for d in docs}
    for agency, items in inboxes(net).items():
        for item in items:
            if item["kind"] == "document":
                seen[(str(item["document_id"]), agency)] += 1
            elif item["kind"] == "status" and item["sha256"] in wanted:
                statuses_seen[str(item["sha256"])] += 1
            elif item["kind"] == "notice" and agency in senders:
                notices.append(f"{agency}: {item['subject']}")
    return seen, statuses_seen, notices


def complete(
    docs: list[Doc],
    statuses: list[Status],
    seen: Counter[tuple[str, str]],
    statuses_seen: Counter[str],
) -> bool:
    return all(seen[(d.document_id, d.recipient)] for d in docs) and all(
        statuses_seen[s.sha256] for s in statuses
    )


# --- the run ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    seed = int(os.environ.get("GATEWAY_LOST_SEED") or random.SystemRandom().randrange(2**32))
    where = f"lost-responses seed={seed}"
    began = time.monotonic()
    timings: dict[str, float] = {}
    up_port, down_port = free_port(), free_port()
    proxied: dict[str, Any] = {"trusted_proxies": [PROXY_ADDRESS], "proxy_cert_header": CERT_HEADER}
    halong = next(spec for spec in QUANG_NINH if spec.name == CHILD)
    node_settings: dict[str, dict[str, dict[str, Any]]] = {
        CHILD: {
            "tls": proxied,
            "directory": {"parent": {"name": PARENT, "url": f"https://127.0.0.1:{up_port}"}},
        },
        PARENT: {
            "tls": proxied,
            "directory": {
                "children": [
                    {
                        "name": CHILD,
                        "url": f"https://127.0.0.1:{down_port}",
                        "serves": list(halong.serves),
                    }
                ]
            },
        },
    }
    root = tmp_path_factory.mktemp("lost-responses")
    with ExitStack() as stack:
        net = stack.enter_context(
            Network(root, settings={"delivery": DELIVERY}, node_settings=node_settings)
        )
        net.create()
        assert net.ca is not None
        proxies = {
            "up": FaultProxy(
                name="up",
                port=up_port,
                upstream=net.url(PARENT),
                server_cert=net.pki / f"{PARENT}.cert.pem",
                server_key=net.pki / f"{PARENT}.key.pem",
                client_ca=net.ca.root_cert,
                rates=RATES,
                delay=DELAY,
                seed=seed,
                first=(Fault.DROP, Fault.DELAY, Fault.DUPLICATE),
                cert_header=CERT_HEADER,
                source_address=PROXY_ADDRESS,
            ),
            "down": FaultProxy(
                name="down",
                port=down_port,
                upstream=net.url(CHILD),
                server_cert=net.pki / f"{CHILD}.cert.pem",
                server_key=net.pki / f"{CHILD}.key.pem",
                client_ca=net.ca.root_cert,
                rates=RATES,
                delay=DELAY,
                seed=seed + 1,
                first=(Fault.DROP, Fault.DELAY, Fault.DUPLICATE),
                cert_header=CERT_HEADER,
                source_address=PROXY_ADDRESS,
            ),
        }
        for proxy in proxies.values():
            stack.enter_context(proxy)
        pending: list[Doc] = []
        for i in range(DOCUMENTS):
            sender, recipient = FLOWS[i % len(FLOWS)]
            document_id, body = net.signed_document(
                sender, [recipient], subject=f"Lost responses {i + 1}"
            )
            pending.append(Doc(sender, recipient, document_id, body, i))
        timings["created"] = time.monotonic() - began
        net.start(timeout=90)
        stack.callback(stop_all, net)
        timings["started"] = time.monotonic() - began

        # --- 1. faults on: push every document; each recipient reports as soon as it has one
        docs: list[Doc] = []
        statuses: list[Status] = []
        reported: set[int] = set()
        fault_deadline = time.monotonic() + FAULT_PHASE
        next_poll = 0.0
        while (pending or len(reported) < DOCUMENTS) and time.monotonic() < fault_deadline:
            if pending:
                doc = pending.pop(0)
                answer = net.push(doc.sender, doc.body)
                assert answer["duplicate"] is False, answer
                docs.append(replace(doc, gid=str(answer["id"])))
                time.sleep(PACE)
            else:
                time.sleep(POLL / 2)
            if time.monotonic() < next_poll:
                continue
            next_poll = time.monotonic() + POLL
            seen, _, _ = arrivals(net, docs, [])
            for doc in docs:
                if doc.index not in reported and seen[(doc.document_id, doc.recipient)]:
                    reported.add(doc.index)
                    for code in STATUS_CODES[doc.index % len(STATUS_CODES)]:
                        statuses.append(report(net, doc, code))
        timings["pushed"] = time.monotonic() - began
        # ...and the faults stay on until everything has arrived (or the phase is over)
        while time.monotonic() < fault_deadline:
            seen, statuses_seen, _ = arrivals(net, docs, statuses)
            if complete(docs, statuses, seen, statuses_seen):
                break
            time.sleep(POLL)
        timings["arrived"] = time.monotonic() - began

        # --- 2. faults off: the network drains (nothing waiting anywhere, twice in a row)
        for proxy in proxies.values():
            proxy.set_rates(FaultRates())

        def drained() -> bool:
            seen, statuses_seen, _ = arrivals(net, docs, statuses)
            if not complete(docs, statuses, seen, statuses_seen):
                return False
            return not any(admin_deliveries(net, name, state="waiting") for name in net.nodes)

        def twice() -> bool:
            if not drained():
                return False
            time.sleep(0.5)
            return drained()

        try:
            wait_for(twice, timeout=WAIT, every=0.5)
            quiet = True
        except TimeoutError:
            quiet = False
        timings["drained"] = time.monotonic() - began

        # the reporters' nodes learn that their status packages arrived (a grace period: a
        # confirmation still on its way would be a waiting row, so this is quick once quiet)
        def confirmed() -> bool:
            return all(
                status_of(net, s.reporter, s.gid)[s.about.sender]["transport"] in AT_RECIPIENT
                for s in statuses
            )

        with suppress(TimeoutError):
            wait_for(confirmed, timeout=5.0, every=0.5)

        # --- 3. what everyone sees
        seen, statuses_seen, notices = arrivals(net, docs, statuses)
        failed = {name: admin_deliveries(net, name, state="failed") for name in net.nodes}
        waiting = {name: _rows(net, name, "next_attempt_at IS NOT NULL") for name in net.nodes}
        leased = {name: _rows(net, name, "leased_by IS NOT NULL") for name in net.nodes}
        timelines: dict[int, list[tuple[str, str | None]]] = {}
        for doc in docs:
            view = status_of(net, doc.sender, doc.gid)[doc.recipient]
            timelines[doc.index] = [
                (str(e["code"]), e["node"]) for e in view["events"] if e["kind"] == "transport"
            ]
        status_views = {s.gid: status_of(net, s.reporter, s.gid)[s.about.sender] for s in statuses}
        counts = {name: proxy.counts() for name, proxy in proxies.items()}
        # receipts the far node gave again across the link: what it had already committed
        far = {CHILD: PARENT, PARENT: CHILD}
        repeats = sum(
            1
            for name, to in far.items()
            for d in audit_events(net, name, "relay_out")
            if d["to"] == to and d["duplicate"]
        )
        proxy_errors = [f"{n}: {e}" for n, p in proxies.items() for e in p.errors]
        stack.close()  # the nodes stop (their shutdown is logged too), then the proxies
    timings["stopped"] = time.monotonic() - began

    expected = {(d.document_id, d.recipient) for d in docs}
    total = counts["up"] + counts["down"]
    false_failures = len(notices) + sum(len(rows) for rows in failed.values())
    line = (
        f"{where} sent={len(expected)} delivered={len(expected & set(seen))} "
        f"duplicated={sum(1 for k, n in seen.items() if k in expected and n > 1)} "
        f"lost={len(expected - set(seen))} false_failure_notices={false_failures} "
        f"waiting={sum(map(len, waiting.values()))} leased={sum(map(len, leased.values()))} "
        f"statuses={len(statuses)} "
        f"statuses_arrived={sum(1 for s in statuses if statuses_seen[s.sha256] == 1)} "
        f"statuses_confirmed="
        f"{sum(1 for v in status_views.values() if v['transport'] == 'delivered')} "
        f"proxy: requests={total.requests} dropped={total.dropped} delayed={total.delayed} "
        f"duplicated={total.duplicated} repeated_receipts={repeats}"
    )
    print(line)
    print(f"{where} rates: {RATES} peer_timeout={PEER_TIMEOUT}s delay={DELAY}s")
    for name, c in counts.items():
        print(f"{where} proxy {name}: {c}")
    print(
        f"{where} timings: "
        + " ".join(f"{k}={v:.1f}s" for k, v in timings.items())
        + f" drained={'yes' if quiet else 'NO'}"
    )
    return Outcome(
        line=line,
        docs=docs,
        statuses=statuses,
        seen=seen,
        statuses_seen=statuses_seen,
        notices=notices,
        failed=failed,
        waiting=waiting,
        leased=leased,
        timelines=timelines,
        status_views=status_views,
        proxies=counts,
        proxy_errors=proxy_errors,
        logs=read_logs(net),
        drained=quiet,
        timings=timings,
    )


# --- the verdicts ----------------------------------------------------------------------------


def test_every_document_and_status_arrives_exactly_once(outcome: Outcome) -> None:
    assert len(outcome.docs) == DOCUMENTS, outcome.line
    expected = Counter((d.document_id, d.recipient) for d in outcome.docs)
    got = Counter({k: n for k, n in outcome.seen.items() if k in expected})
    missing = [d for d in outcome.docs if not got[(d.document_id, d.recipient)]]
    twice = {k: n for k, n in got.items() if n > 1}
    assert not missing and not twice, (
        f"{outcome.line}\nlost: {[(d.index, d.sender, d.recipient) for d in missing]}"
        f"\nduplicated: {twice}"
    )
    # every status package the recipients sent is in the document sender's inbox, once
    wrong = {
        s.gid: (s.code, s.reporter, s.about.sender, outcome.statuses_seen[s.sha256])
        for s in outcome.statuses
        if outcome.statuses_seen[s.sha256] != 1
    }
    assert not wrong, f"{outcome.line}\nstatus packages not seen exactly once: {wrong}"
    assert len(outcome.statuses) == sum(
        len(STATUS_CODES[d.index % len(STATUS_CODES)]) for d in outcome.docs
    ), outcome.line
    assert outcome.drained, f"{outcome.line}\nthe network never drained"


def test_no_false_failure_and_nothing_left_waiting_or_leased(outcome: Outcome) -> None:
    failed = {name: rows for name, rows in outcome.failed.items() if rows}
    assert not outcome.notices and not failed, (
        f"{outcome.line}\nnotices: {outcome.notices[:10]}\nfailed rows: {failed}"
    )
    waiting = {name: rows for name, rows in outcome.waiting.items() if rows}
    leased = {name: rows for name, rows in outcome.leased.items() if rows}
    assert not waiting and not leased, f"{outcome.line}\nwaiting: {waiting}\nleased: {leased}"


def test_sender_timelines_reach_delivered_after_in_transit(outcome: Outcome) -> None:
    wrong = {}
    for doc in outcome.docs:
        want = expected_transport(doc)
        if outcome.timelines[doc.index] != want:
            wrong[doc.index] = (doc.sender, doc.recipient, outcome.timelines[doc.index], want)
    assert not wrong, f"{outcome.line}\ntimelines (got, wanted): {wrong}"


def test_the_proxies_really_injected_faults(outcome: Outcome) -> None:
    for name, counts in outcome.proxies.items():
        assert counts.dropped > 0 and counts.delayed > 0 and counts.duplicated > 0, (
            f"{outcome.line}\nproxy {name}: {counts}"
        )
        assert counts.passed > 0, f"proxy {name}: {counts}"
    assert not outcome.proxy_errors, outcome.proxy_errors
    # the far nodes took each proxied caller for the node whose certificate the proxy passed
    # on, and only from the proxy's own address
    proxied = {name: dict(c) for name, c in outcome.logs.proxied.items() if c}
    assert set(proxied) == {PARENT, CHILD}, proxied
    assert set(proxied[PARENT]) == {f"node:{CHILD} from {PROXY_ADDRESS}"}, proxied
    assert set(proxied[CHILD]) == {f"node:{PARENT} from {PROXY_ADDRESS}"}, proxied


#: delivered, or later: the original sender's DMS may have fetched or acknowledged it since
AT_RECIPIENT = ("delivered", "fetched", "acknowledged")


def test_node_logs_hold_no_error_and_no_traceback(outcome: Outcome) -> None:
    problems = {name: lines[:10] for name, lines in outcome.logs.problems.items() if lines}
    assert not problems, f"{outcome.line}\n" + json.dumps(problems, indent=1, ensure_ascii=False)


def test_statuses_are_confirmed_delivered_to_their_reporters(outcome: Outcome) -> None:
    """A status package crossed to the document's sender: its reporter's node says so (the row
    is ``delivered``, not left ``in_transit``, and the timeline has ``delivered``)."""
    wrong = {}
    for s in outcome.statuses:
        view = outcome.status_views[s.gid]
        codes = [e["code"] for e in view["events"] if e["kind"] == "transport"]
        if view["transport"] not in AT_RECIPIENT or "delivered" not in codes:
            wrong[s.gid] = (s.code, s.reporter, s.about.sender, view["transport"], codes)
    assert not wrong, (
        f"{outcome.line}\n{len(wrong)} of {len(outcome.statuses)} status packages not confirmed "
        f"at their reporter's node, e.g. {list(wrong.values())[:5]}"
    )
