"""A four-node network under chaos: nodes SIGKILLed at random, one node cut off, then frozen.

Real ``gateway serve`` processes (:class:`gateway.dev.network.Network`, the Quảng Ninh layout:
central > h49 > h49-halong > h49-bachdang), each with its own SQLite database.

* **chaos**: client threads push pre-signed documents from several agencies, up and down the
  tree, while a killer thread SIGKILLs a random node at random moments and restarts it after a
  short pause. A push that meets a dead node is re-sent, the SAME bytes, until it is answered (a
  repeat gets the original 202). At the end every node runs again; once the network has drained,
  every (document, recipient) pair accepted must be in that recipient's inbox exactly once::

      chaos seed=... kills=5 documents=1000 sent=1333 delivered=1333 duplicated=0 lost=0

* **partition**: h49-halong (the district) is stopped, then started but frozen (SIGSTOP: its
  connections hang, so its parent times out), then thawed; documents sent meanwhile from G12 to
  the commune below it wait at h49 (the admin API shows them, with attempts and the last error)
  and reach the commune's inbox in the order they were sent.

``GATEWAY_CHAOS_DOCUMENTS`` sets how many documents the chaos run pushes (default 1000);
``GATEWAY_CHAOS_SEED`` replays a run's kill schedule (the moments also depend on timing).
"""

from __future__ import annotations

import os
import random
import resource
import signal
import ssl
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.dev.network import Network, wait_for

G22 = "000.00.00.G22"  # Government Office, on central
G12 = "000.00.00.G12"  # on central
H49 = "000.00.00.H49"  # provincial People's Committee, on h49
DISTRICT = "000.00.01.H49"  # Hạ Long city, on h49-halong
COMMUNE = "000.01.01.H49"  # Bạch Đằng ward, on h49-bachdang
AGENCIES = (G22, G12, H49, DISTRICT, COMMUNE)

#: documents pushed by the chaos run, by this many client threads
DOCUMENTS = int(os.environ.get("GATEWAY_CHAOS_DOCUMENTS") or 1000)
PUSHERS = 4
#: (sender, recipients): up, down and across the tree; some documents have two recipients
FLOWS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (COMMUNE, (G12,)),
    (G22, (COMMUNE,)),
    (G22, (DISTRICT, COMMUNE)),
    (H49, (G12,)),
    (DISTRICT, (H49, G22)),
    (G12, (COMMUNE,)),
)
#: how many times a node is killed, the wait before each kill, how long it stays down (s)
KILLS = (4, 6)
KILL_DELAYS = (1.0, 4.0)
DOWN = (0.2, 1.5)
#: the push phase must end within this many seconds; the drain within this many more
PUSH_DEADLINE = 150.0
DRAIN_TIMEOUT = 180.0
#: pause between re-sends while a node is down
RETRY_PAUSE = 0.1
#: delivery settings of every node in the chaos run: short backoffs (a killed peer is back in
#: seconds), a lease not much longer than a relay request may take (a killed sender's claimed
#: rows come back once it runs out)
CHAOS_DELIVERY: dict[str, Any] = {
    "batch_size": 50,
    "timeout": 20,
    "connect_timeout": 2,
    "lease": 25,
    "backoff_initial": 0.5,
    "backoff_max": 3,
    "backoff_jitter": 0.5,
}

#: documents sent from G12 to the commune while h49-halong is stopped, and again while frozen
PARTITION_DOCUMENTS = 25
PARTITION_DELIVERY: dict[str, Any] = {
    "timeout": 2,
    "connect_timeout": 1,
    "backoff_initial": 0.5,
    "backoff_max": 2,
    "backoff_jitter": 0.2,
}


# --- helpers -------------------------------------------------------------------------------


@dataclass
class Push:
    """One pre-signed document and what its sender's node answered."""

    sender: str
    #: the sender's node (where it is pushed)
    node: str
    recipients: tuple[str, ...]
    document_id: str
    body: bytes
    #: gateway ids of every 202 (a re-send after a kill may get one more, ``duplicate: true``)
    ids: list[str] = field(default_factory=list)
    repeats: int = 0
    transport_errors: int = 0
    refusals: list[str] = field(default_factory=list)

    @property
    def accepted(self) -> bool:
        return bool(self.ids)


def _agency_client(net: Network, agency: str) -> httpx.Client:
    """A client of the pusher thread's own (``net.client`` is shared and closed by ``stop``)."""
    assert net.ca is not None
    context = ssl.create_default_context(cafile=str(net.ca.root_cert))
    context.load_cert_chain(str(net.pki / f"{agency}.cert.pem"), str(net.pki / f"{agency}.key.pem"))
    return httpx.Client(
        base_url=net.url(net.node_of(agency)),
        verify=context,
        timeout=httpx.Timeout(30.0, connect=2.0),
    )


def _push_once(client: httpx.Client, push: Push) -> bool:
    """Send ``push.body`` once; True when it is answered (202 or a refusal), False to retry."""
    try:
        response = client.post(
            "/api/v1/documents", content=push.body, headers={"content-type": "application/xml"}
        )
    except httpx.TransportError:
        push.transport_errors += 1
        return False
    if response.status_code == 202:
        answer = response.json()
        push.ids.append(str(answer["id"]))
        push.repeats += bool(answer["duplicate"])
        return True
    push.refusals.append(f"{response.status_code} {response.text[:200]}")
    # a 4xx refusal is an answer (the count shows the document as not sent); a 5xx: the node
    # is there but not ready
    return response.status_code < 500


class Backlog:
    """Documents not answered yet. When a push meets a dead node, that node's documents rest a
    little (the push goes to the back, to be re-sent, the same bytes), so that the threads keep
    pushing to the nodes that run."""

    def __init__(self, pushes: Sequence[Push]) -> None:
        self._waiting: deque[Push] = deque(pushes)
        self._resting: dict[str, float] = {}
        self._lock = threading.Lock()

    def take(self) -> Push | None:
        """The next push whose node is not resting (None: nothing left)."""
        while True:
            with self._lock:
                if not self._waiting:
                    return None
                now = time.monotonic()
                for _ in range(len(self._waiting)):
                    push = self._waiting.popleft()
                    if self._resting.get(push.node, 0.0) <= now:
                        return push
                    self._waiting.append(push)
            time.sleep(RETRY_PAUSE / 2)

    def again(self, push: Push) -> None:
        with self._lock:
            self._resting[push.node] = time.monotonic() + RETRY_PAUSE
            self._waiting.append(push)


def _pusher(net: Network, backlog: Backlog, deadline: float, failures: list[BaseException]) -> None:
    clients: dict[str, httpx.Client] = {}
    try:
        while (push := backlog.take()) is not None:
            if push.sender not in clients:
                clients[push.sender] = _agency_client(net, push.sender)
            if _push_once(clients[push.sender], push):
                continue
            if time.monotonic() > deadline:
                push.refusals.append("no answer before the deadline")
                continue
            backlog.again(push)
    except BaseException as exc:  # reported by the test, not lost in the thread
        failures.append(exc)
    finally:
        for client in clients.values():
            client.close()


@dataclass
class Kill:
    node: str
    #: seconds since the push phase began; documents accepted by then
    at: float
    accepted: int
    down: float
    restart: float = 0.0

    def __str__(self) -> str:
        return (
            f"{self.node}@{self.at:.1f}s/{self.accepted}acc/down{self.down:.1f}s/"
            f"restart{self.restart:.1f}s"
        )


def _killer(
    net: Network,
    rng: random.Random,
    plan: int,
    pushes: Sequence[Push],
    started: float,
    kills: list[Kill],
    failures: list[BaseException],
) -> None:
    try:
        names = sorted(net.nodes)
        for _ in range(plan):
            time.sleep(rng.uniform(*KILL_DELAYS))
            name = rng.choice(names)
            kill = Kill(
                node=name,
                at=time.monotonic() - started,
                accepted=sum(p.accepted for p in pushes),
                down=rng.uniform(*DOWN),
            )
            net.stop(name, signal.SIGKILL)
            kills.append(kill)
            time.sleep(kill.down)
            began = time.monotonic()
            net.start(name, timeout=90)
            kill.restart = time.monotonic() - began
    except BaseException as exc:
        failures.append(exc)


def _admin(
    net: Network, node: str, state: str, peer: str | None = None, limit: int = 1000
) -> list[dict[str, Any]]:
    """Deliveries of ``node`` through its admin API (the node's own certificate)."""
    params: dict[str, Any] = {"state": state, "limit": limit}
    if peer is not None:
        params["peer"] = peer
    response = net.client(node).get("/api/v1/admin/deliveries", params=params)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def _cpu() -> float:
    """CPU seconds of this process and its children waited for (the nodes, once stopped)."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _inboxes(net: Network) -> dict[str, list[dict[str, Any]]]:
    return {agency: net.inbox(agency) for agency in AGENCIES}


# --- chaos ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_documents_cross_a_network_whose_nodes_are_killed(tmp_path: Path) -> None:
    seed = int(os.environ.get("GATEWAY_CHAOS_SEED") or random.SystemRandom().randrange(2**32))
    rng = random.Random(seed)
    plan = rng.randint(*KILLS)
    where = f"chaos seed={seed}"
    cpu = _cpu()
    print(f"{where}: {DOCUMENTS} documents, {plan} kills planned")
    with Network(tmp_path / "net", settings={"delivery": CHAOS_DELIVERY}) as net:
        net.create()
        began = time.monotonic()
        pushes: list[Push] = []
        for i in range(DOCUMENTS):
            sender, recipients = FLOWS[i % len(FLOWS)]
            document_id, body = net.signed_document(sender, recipients, subject=f"Chaos {i + 1}")
            pushes.append(Push(sender, net.node_of(sender), recipients, document_id, body))
        signed_in = time.monotonic() - began
        assert len({p.document_id for p in pushes}) == DOCUMENTS
        net.start(timeout=90)

        backlog = Backlog(pushes)
        failures: list[BaseException] = []
        kills: list[Kill] = []
        started = time.monotonic()
        deadline = started + PUSH_DEADLINE
        pushers = [
            threading.Thread(
                target=_pusher, args=(net, backlog, deadline, failures), name=f"pusher-{i}"
            )
            for i in range(PUSHERS)
        ]
        killer = threading.Thread(
            target=_killer,
            args=(net, rng, plan, pushes, started, kills, failures),
            name="killer",
        )
        for thread in [*pushers, killer]:
            thread.start()
        for thread in pushers:
            thread.join(timeout=max(0.0, deadline - time.monotonic()) + 60)
        pushed_in = time.monotonic() - started
        killer.join(timeout=180)
        assert not any(t.is_alive() for t in [*pushers, killer]), f"{where}: a thread is stuck"
        assert not failures, f"{where}: {failures!r}"
        net.start(timeout=90)  # every node runs again (a failed restart would show here)

        # --- drained: nothing waits in any outbox and every inbox is complete, twice in a row
        accepted = [p for p in pushes if p.accepted]
        expected = {(p.document_id, r) for p in accepted for r in p.recipients}
        want = Counter(r for _, r in expected)
        drain_began = time.monotonic()
        previous: list[tuple[str, int]] | None = None
        snapshot: list[tuple[str, int]] = []
        inboxes: dict[str, list[dict[str, Any]]] = {}
        while True:
            # cheap first: is anything still waiting in an outbox (documents or notices)?
            waiting = {name: len(_admin(net, name, "waiting", limit=1)) for name in net.nodes}
            timed_out = time.monotonic() - drain_began > DRAIN_TIMEOUT
            if not any(waiting.values()) or timed_out:
                inboxes = _inboxes(net)
                have = Counter(
                    {a: sum(i["kind"] == "document" for i in items) for a, items in inboxes.items()}
                )
                snapshot = sorted(have.items())
                if timed_out or (+have == want and snapshot == previous):
                    break
                previous = snapshot
            else:
                previous = None
            time.sleep(2.0)
        stuck: list[str] = []
        if any(waiting.values()):
            rows = {name: _admin(net, name, "waiting") for name in net.nodes}
            waiting = {name: len(r) for name, r in rows.items()}
            stuck = [f"waiting at {name}: {r}" for name, items in rows.items() for r in items[:5]]
        drained_in = time.monotonic() - drain_began

        # --- count, per (document, recipient) pair, as the recipients see it
        seen: Counter[tuple[str, str]] = Counter()
        notices: list[str] = []
        for agency, items in inboxes.items():
            for item in items:
                if item["kind"] == "document":
                    seen[(str(item["document_id"]), agency)] += 1
                else:
                    notices.append(f"{agency}: {item['kind']} {item['subject']}")
        delivered = len(expected & set(seen))
        duplicated = sum(1 for n in seen.values() if n > 1)
        lost = len(expected - set(seen))
        strays = sorted(set(seen) - expected)
        failed = {name: _admin(net, name, "failed") for name in net.nodes}

    line = (
        f"{where} kills={len(kills)} documents={len(pushes)} sent={len(expected)} "
        f"delivered={delivered} duplicated={duplicated} lost={lost}"
    )
    detail = (
        f"{where} signed_in={signed_in:.1f}s pushed_in={pushed_in:.1f}s "
        f"drained_in={drained_in:.1f}s cpu={_cpu() - cpu:.0f}s "
        f"accepted={len(accepted)}/{len(pushes)} "
        f"resent={sum(p.transport_errors for p in pushes)} "
        f"repeat_202s={sum(p.repeats for p in pushes)} "
        f"kills=[{', '.join(str(k) for k in kills)}]"
    )
    print(line)
    print(detail)
    refused = [f"{p.document_id}: {p.refusals}" for p in pushes if p.refusals]
    dead = [f"{name}: {r}" for name, rows in failed.items() for r in rows]
    message = "\n".join(
        [
            line,
            detail,
            f"last inbox counts: {snapshot}, waiting: {waiting}",
            f"expected per recipient: {sorted(want.items())}",
            *stuck,
            *refused[:10],
            *dead[:10],
            *notices[:10],
            *(f"stray {s}" for s in strays[:10]),
        ]
    )
    assert len(kills) == plan, message
    assert len(accepted) == len(pushes), message
    assert delivered == len(expected), message
    assert duplicated == lost == len(strays) == 0, message
    assert not dead and not notices, message
    assert not any(waiting.values()), message


# --- partition -----------------------------------------------------------------------------


def _queued(net: Network, ids: Sequence[str], *, error: str) -> list[dict[str, Any]] | None:
    """Every row waiting at h49 for h49-halong, once the documents ``ids`` all wait there and
    a row that was tried shows ``error`` (else None). With h49's circuit breaker open only the
    oldest row is tried (probed), so the error may be on an older document than ``ids``."""
    rows = _admin(net, "h49", "waiting", peer="h49-halong")
    ours = [r for r in rows if r["document_id"] in ids and r["recipient"] == COMMUNE]
    if len(ours) != len(ids):
        return None
    if not any(r["attempts"] >= 1 and error in (r["last_error"] or "") for r in rows):
        return None
    return rows


@pytest.mark.slow
def test_partition_queues_and_delivers_in_order(tmp_path: Path) -> None:
    with Network(tmp_path / "net", settings={"delivery": PARTITION_DELIVERY}) as net:
        net.create()
        documents = [
            net.signed_document(G12, [COMMUNE], subject=f"Partition {i + 1}")
            for i in range(2 * PARTITION_DOCUMENTS)
        ]
        net.start(timeout=90)
        began = time.monotonic()
        sent: list[str] = []

        # 1. the district node is down: connections refused, the documents wait at h49
        net.stop("h49-halong")
        for document_id, body in documents[:PARTITION_DOCUMENTS]:
            net.push(G12, body)
            sent.append(document_id)
        down = wait_for(
            lambda: _queued(net, sent, error="cannot be reached: ConnectError"), timeout=90
        )
        head = min(down, key=lambda r: r["id"])
        print(
            f"partition: h49-halong down: {len(down)} waiting at h49, "
            f"attempts {sorted({r['attempts'] for r in down})}, "
            f"head attempts={head['attempts']} last_error={head['last_error']!r}"
        )
        assert {r["document_id"] for r in down} == set(sent), down
        assert all(r["next_hop"] == "h49-halong" and r["next_attempt_at"] for r in down)
        assert head["attempts"] >= 1 and head["last_error"], head

        # 2. it runs again but is frozen: connections hang, h49 times out
        net.start("h49-halong", timeout=90)
        process = net.nodes["h49-halong"].process
        assert process is not None
        os.kill(process.pid, signal.SIGSTOP)
        try:
            frozen_ids: list[str] = []
            for document_id, body in documents[PARTITION_DOCUMENTS:]:
                net.push(G12, body)
                sent.append(document_id)
                frozen_ids.append(document_id)
            frozen = wait_for(lambda: _queued(net, frozen_ids, error="Timeout"), timeout=90)
            timed_out = [r for r in frozen if "Timeout" in (r["last_error"] or "")]
            print(
                f"partition: h49-halong frozen: {len(frozen)} waiting at h49 "
                f"({len(frozen_ids)} sent while frozen), {len(timed_out)} tried and timed out, "
                f"e.g. {timed_out[0]['last_error']!r}"
            )
            assert not [i for i in net.inbox(COMMUNE) if i["document_id"] in frozen_ids], (
                "a document crossed a frozen node"
            )
            time.sleep(2.0)
        finally:
            os.kill(process.pid, signal.SIGCONT)

        # 3. thawed: everything queued reaches the commune, in the order it was sent
        def arrived() -> list[str] | None:
            got = [
                str(i["document_id"])
                for i in net.inbox(COMMUNE)
                if i["kind"] == "document" and i["sender"] == G12
            ]
            return got if set(got) >= set(sent) else None

        try:
            got = wait_for(arrived, timeout=120, every=0.5)
        except TimeoutError:
            got = [str(i["document_id"]) for i in net.inbox(COMMUNE)]
        wait_for(lambda: not _admin(net, "h49", "waiting", peer="h49-halong"), timeout=60)
        took = time.monotonic() - began
        failed = {name: _admin(net, name, "failed") for name in net.nodes}

    counts = Counter(got)
    delivered = len(set(sent) & set(counts))
    duplicated = sum(1 for n in counts.values() if n > 1)
    lost = len(set(sent) - set(counts))
    in_order = got == sent
    line = (
        f"partition sent={len(sent)} delivered={delivered} duplicated={duplicated} lost={lost} "
        f"in_order={in_order} took={took:.1f}s"
    )
    print(line)
    message = "\n".join(
        [line, f"sent:  {sent}", f"inbox: {got}", *(f"{n}: {r}" for n, r in failed.items() if r)]
    )
    assert delivered == len(sent) and duplicated == lost == 0, message
    assert in_order, message
    assert not any(failed.values()), message
