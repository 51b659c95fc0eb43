"""Crash safety: documents pushed while the node process is SIGKILLed at random moments.

Pusher threads send pre-signed documents; a killer thread SIGKILLs the node at random moments
and restarts it. A push that meets a dead node (refused, reset, timed out) is re-sent, the SAME
bytes, until the node answers: a repeat of a stored document returns its original 202 with
``duplicate: true``. After the last restart every document that got a 202 must be in the
recipient's inbox exactly once, retrievable byte for byte, and stored whole: one delivery row,
its ``accepted`` and ``delivered`` events and its ``ingest`` and ``deliver`` audit entries; the
audit chain must verify.

Each run prints (and puts in its assertion message) one count line::

    crash[sqlite] seed=... kills=4 sent=150 acknowledged=150 present=150 intact=150
        duplicated=0 lost=0 half_stored=0

Runs on SQLite, and on PostgreSQL when GATEWAY_TEST_POSTGRES_URL is set. Set
GATEWAY_CRASH_SEED to replay a run's kill schedule (the moments also depend on timing).
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import ssl
import statistics
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import factory
import httpx
import pytest
from harness import GATEWAY, H49_A, H49_B, RunningNode, free_port, upgrade, write_config
from pg import SKIP_REASON, postgres_url, temporary_database
from sqlalchemy import Engine, create_engine, select
from sqlalchemy.pool import NullPool
from support import DevPKI, make_pki

from gateway.storage.tables import audit_log, deliveries, documents, events

#: documents pushed per run, by this many client threads
DOCUMENTS = 150
PUSHERS = 3
#: how many times the node is killed, and the delay before each kill (seconds)
KILLS = (3, 5)
DELAYS = (0.2, 1.5)
#: once a push is out, the kill comes this much later (seconds; an ingest takes 10-30 ms)
JITTER = (0.0, 0.012)
#: the whole push phase must end within this many seconds
PUSH_DEADLINE = 90.0
#: pause between re-sends while the node is down (it restarts in a second or two)
RETRY_PAUSE = 0.05
#: the pushes are spread over the kill schedule plus this many seconds, so that every kill
#: lands while documents are still being pushed (a node takes 60-150 documents a second)
TAIL = 2.0


@dataclass
class Push:
    """One document and what the node answered about it."""

    document_id: str
    body: bytes
    #: the gateway ids of every 202 received (a re-send after a kill may get one more)
    ids: list[str] = field(default_factory=list)
    #: how many 202s said ``duplicate: true``
    repeats: int = 0
    #: how many sends failed at the transport (dead node) and were re-sent
    transport_errors: int = 0
    #: every answer other than 202, as "status code"
    refusals: list[str] = field(default_factory=list)
    #: a request is out, not answered yet
    sending: bool = False
    #: how long the answered request took (seconds)
    latency: float = 0.0

    @property
    def acknowledged(self) -> bool:
        return bool(self.ids)


@dataclass
class Kills:
    """What the killer thread did."""

    #: per kill: seconds since the push phase began, documents acknowledged by then, and
    #: requests out at that moment
    moments: list[tuple[float, int, int]] = field(default_factory=list)
    #: seconds each restart took
    restarts: list[float] = field(default_factory=list)


class Pacer:
    """Releases one push every ``interval`` seconds at most, whatever the number of threads."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
            now = time.monotonic()
            at = max(self._next, now)  # no burst after a restart: the node was down, not idle
            self._next = at + self.interval
        time.sleep(at - now)


# --- the node ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def crash_pki(tmp_path_factory: pytest.TempPathFactory) -> DevPKI:
    return make_pki(tmp_path_factory.mktemp("crash-pki"))


@dataclass
class CrashNode:
    node: RunningNode
    engine: str
    #: the database URL a reader outside the node opens (absolute SQLite path, or PG database)
    database_url: str


@pytest.fixture(params=["sqlite", "postgresql", "sqlite-2-workers"])
def crash_node(
    request: pytest.FixtureRequest, crash_pki: DevPKI, tmp_path: Path
) -> Iterator[CrashNode]:
    """A node of this test's own (it is killed): a new folder and database, started.

    ``sqlite-2-workers``: the node runs a supervisor and two worker processes
    (``[server] workers = 2``); the kill hits the supervisor, whose workers die with it.
    """
    workers = 2 if request.param.endswith("-2-workers") else 1
    with ExitStack() as stack:
        if request.param.startswith("sqlite"):
            url = "sqlite:///node.db"
            reader_url = f"sqlite:///file:{tmp_path / 'node.db'}?mode=ro&uri=true"
        else:
            server = postgres_url()
            if server is None:
                pytest.skip(SKIP_REASON)
            url = reader_url = stack.enter_context(temporary_database(server, "gateway_crash"))
        port = free_port()
        config = write_config(tmp_path, crash_pki, port=port, database_url=url, workers=workers)
        upgrade(config)
        running = RunningNode(
            base_url=f"https://127.0.0.1:{port}", directory=tmp_path, config=config, pki=crash_pki
        )
        stack.callback(_stop, running)
        running.start()
        yield CrashNode(node=running, engine=request.param, database_url=reader_url)


def _stop(node: RunningNode) -> None:
    """Stop the node, whatever state a failed test left it in."""
    process = node.process
    try:
        node.stop()
    finally:
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=15)


def _kill(node: RunningNode) -> None:
    process = node.process
    assert process is not None
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=15)
    node.process = None


# --- pushing -------------------------------------------------------------------------------


def _client(node: RunningNode, agency: str, timeout: float = 15.0) -> httpx.Client:
    """An HTTPS client of ``agency`` (the harness's way: an ssl context, not ``cert=``)."""
    context = ssl.create_default_context(cafile=str(node.pki.ca.root_cert))
    issued = node.pki.issue(agency)
    context.load_cert_chain(str(issued.cert), str(issued.key))
    return httpx.Client(
        base_url=node.base_url, verify=context, timeout=httpx.Timeout(timeout, connect=2.0)
    )


def _prepare(node: RunningNode, count: int) -> list[Push]:
    key = node.key(H49_A)
    run = uuid.uuid4().hex[:8]
    pushes = []
    for i in range(count):
        document_id = f"{H49_A},2026/11/23,{i + 1}-{run}/CRASH"
        body = factory.signed(
            factory.document(H49_A, [H49_B], document_id=document_id, subject=f"Crash {i + 1}"),
            key,
        )
        pushes.append(Push(document_id=document_id, body=body))
    assert len({p.body for p in pushes}) == count
    return pushes


def _push_until_answered(client: httpx.Client, push: Push, deadline: float) -> None:
    """Send ``push.body`` until the node answers it (the same bytes every time)."""
    while time.monotonic() < deadline:
        push.sending = True
        sent_at = time.monotonic()
        try:
            response = client.post(
                "/api/v1/documents",
                content=push.body,
                headers={"content-type": "application/xml"},
            )
        except httpx.TransportError:
            push.transport_errors += 1
            time.sleep(RETRY_PAUSE)
            continue
        finally:
            push.sending = False
        push.latency = time.monotonic() - sent_at
        if response.status_code == 202:
            answer = response.json()
            push.ids.append(answer["id"])
            push.repeats += bool(answer["duplicate"])
            return
        push.refusals.append(f"{response.status_code} {response.text[:200]}")
        if response.status_code < 500:
            return  # a refusal is an answer: the count shows it as not acknowledged
        time.sleep(RETRY_PAUSE)  # 5xx: the node is there but not ready; ask again
    push.refusals.append("no answer before the deadline")


def _pusher(
    node: RunningNode,
    queue: list[Push],
    lock: threading.Lock,
    pacer: Pacer,
    deadline: float,
    failures: list[BaseException],
) -> None:
    try:
        with _client(node, H49_A) as client:
            while True:
                pacer.wait()
                with lock:
                    if not queue:
                        return
                    push = queue.pop()
                _push_until_answered(client, push, deadline)
    except BaseException as exc:  # reported by the test, not lost in the thread
        failures.append(exc)


def _killer(
    node: RunningNode,
    delays: list[float],
    jitters: list[float],
    pushes: list[Push],
    started: float,
    done: threading.Event,
    kills: Kills,
    failures: list[BaseException],
) -> None:
    try:
        for delay, jitter in zip(delays, jitters, strict=True):
            if done.wait(delay):
                return  # every document was answered before this kill was due
            # the moment: while a push is being handled (the node is not idle), at a random
            # point of it (reading, verifying, storing, committing, answering)
            waited = time.monotonic()
            while not any(p.sending for p in pushes) and time.monotonic() - waited < 1.0:
                if done.wait(0.002):
                    return
            time.sleep(jitter)
            out = sum(p.sending for p in pushes)
            _kill(node)
            moment = time.monotonic() - started
            kills.moments.append((moment, sum(p.acknowledged for p in pushes), out))
            began = time.monotonic()
            node.start()
            kills.restarts.append(time.monotonic() - began)
    except BaseException as exc:
        failures.append(exc)


# --- counting ------------------------------------------------------------------------------


def _inbox(client: httpx.Client) -> list[dict[str, object]]:
    items: list[dict[str, object]] = []
    after = 0
    for _ in range(1000):
        response = client.get("/api/v1/inbox", params={"limit": 50, "after": after})
        assert response.status_code == 200, response.text
        page = response.json()
        items += page["items"]
        if page["next_after"] is None:
            return items
        after = page["next_after"]
    raise AssertionError("the inbox never ends")


def _half_stored(engine: Engine, sent: dict[str, bytes]) -> tuple[int, list[str]]:
    """How many documents are stored; every one not whole, and every piece without its own."""
    problems: list[str] = []
    with engine.connect() as conn:
        docs = conn.execute(
            select(
                documents.c.seq,
                documents.c.id,
                documents.c.document_id,
                documents.c.sha256,
                documents.c.size,
                documents.c.envelope,
            )
        ).all()
        by_seq = {d.seq: d for d in docs}
        delivery_rows = Counter(
            seq for (seq,) in conn.execute(select(deliveries.c.document_seq)).all()
        )
        codes: dict[int, set[str]] = {}
        for seq, kind, code in conn.execute(
            select(events.c.document_seq, events.c.kind, events.c.code)
        ).all():
            if kind == "transport":
                codes.setdefault(seq, set()).add(code)
        audited = Counter(
            subject
            for (subject,) in conn.execute(
                select(audit_log.c.subject).where(audit_log.c.event == "ingest")
            ).all()
        )
        delivered_audit = Counter(
            subject
            for (subject,) in conn.execute(
                select(audit_log.c.subject).where(audit_log.c.event == "deliver")
            ).all()
        )
    for d in docs:
        envelope = bytes(d.envelope)
        whole = (
            delivery_rows[d.seq] == 1
            and {"accepted", "delivered"} <= codes.get(d.seq, set())
            and audited[d.id] == 1
            and delivered_audit[d.id] == 1
            and hashlib.sha256(envelope).hexdigest() == d.sha256
            and len(envelope) == d.size
            and sent.get(d.document_id) == envelope
        )
        if not whole:
            problems.append(
                f"document {d.id} ({d.document_id}): deliveries={delivery_rows[d.seq]} "
                f"events={sorted(codes.get(d.seq, set()))} audit={audited[d.id]}"
                f"+{delivered_audit[d.id]} "
                f"bytes_as_sent={sent.get(d.document_id) == envelope}"
            )
    ids = {d.id for d in docs}
    for seq in sorted((set(delivery_rows) | set(codes)) - set(by_seq)):
        problems.append(f"deliveries/events for document seq {seq}, which is not stored")
    for subject in sorted(set(audited) - ids, key=str):
        problems.append(f"audit entry 'ingest' for {subject}, which is not stored")
    return len(docs), problems


def _reader(url: str) -> Engine:
    if url.startswith("sqlite"):
        return create_engine(url, poolclass=NullPool)
    return create_engine(
        url, poolclass=NullPool, connect_args={"options": "-c default_transaction_read_only=on"}
    )


# --- the test ------------------------------------------------------------------------------


@pytest.mark.slow
def test_documents_survive_sigkill(crash_node: CrashNode) -> None:
    node = crash_node.node
    seed = int(os.environ.get("GATEWAY_CRASH_SEED") or random.SystemRandom().randrange(2**32))
    rng = random.Random(seed)
    delays = [rng.uniform(*DELAYS) for _ in range(rng.randint(*KILLS))]
    jitters = [rng.uniform(*JITTER) for _ in delays]
    print(f"crash[{crash_node.engine}] seed={seed}: {len(delays)} kills planned")
    pushes = _prepare(node, DOCUMENTS)
    queue = list(reversed(pushes))  # popped from the end: sent in order
    lock = threading.Lock()
    pacer = Pacer((sum(delays) + TAIL) / len(pushes))
    failures: list[BaseException] = []
    kills = Kills()
    done = threading.Event()
    started = time.monotonic()
    deadline = started + PUSH_DEADLINE
    pushers = [
        threading.Thread(
            target=_pusher, args=(node, queue, lock, pacer, deadline, failures), name=f"pusher-{i}"
        )
        for i in range(PUSHERS)
    ]
    killer = threading.Thread(
        target=_killer,
        args=(node, delays, jitters, pushes, started, done, kills, failures),
        name="killer",
    )
    for thread in [*pushers, killer]:
        thread.start()
    for thread in pushers:
        thread.join(timeout=max(0.0, deadline - time.monotonic()) + 30)
    done.set()
    killer.join(timeout=60)
    pushed_in = time.monotonic() - started
    where = f"crash[{crash_node.engine}] seed={seed}"
    assert not any(t.is_alive() for t in [*pushers, killer]), f"{where}: a thread is stuck"
    assert not failures, f"{where}: {failures!r}"
    assert node.process is not None and node.process.poll() is None, f"{where}: node is down"

    # --- count, as the recipient sees it
    acknowledged = [p for p in pushes if p.acknowledged]
    with _client(node, H49_B) as recipient:
        inbox = _inbox(recipient)
        listed = Counter(str(item["id"]) for item in inbox)
        ids_of = Counter(str(item["document_id"]) for item in inbox)
        present = intact = duplicated = lost = 0
        for push in acknowledged:
            [first, *others] = push.ids
            if set(others) - {first} or listed[first] > 1 or ids_of[push.document_id] > 1:
                duplicated += 1
            fetched = recipient.get(f"/api/v1/documents/{first}")
            if fetched.status_code != 200 or listed[first] == 0:
                lost += 1
                continue
            present += 1
            intact += fetched.content == push.body

    # --- count, in the database: stop the node first so that nothing moves under the reader
    node.stop()
    reader = _reader(crash_node.database_url)
    try:
        stored, problems = _half_stored(reader, {p.document_id: p.body for p in pushes})
    finally:
        reader.dispose()
    verified = subprocess.run(
        [GATEWAY, "audit", "verify", "--config", str(node.config)],
        capture_output=True,
        text=True,
        timeout=120,
    )

    line = (
        f"crash[{crash_node.engine}] seed={seed} kills={len(kills.moments)} sent={len(pushes)} "
        f"acknowledged={len(acknowledged)} present={present} intact={intact} "
        f"duplicated={duplicated} lost={lost} half_stored={len(problems)}"
    )
    latency = statistics.median(p.latency for p in acknowledged) if acknowledged else 0.0
    detail = (
        f"crash[{crash_node.engine}] pushed_in={pushed_in:.1f}s "
        f"kills_at={[f'{t:.1f}s/{n}acked/{o}out' for t, n, o in kills.moments]} "
        f"restarts={[f'{r:.1f}s' for r in kills.restarts]} "
        f"stored={stored} median_202_latency={latency * 1000:.0f}ms "
        f"resent={sum(p.transport_errors for p in pushes)} "
        f"repeat_202s={sum(p.repeats for p in pushes)} "
        f"audit_verify_exit={verified.returncode}"
    )
    print(line)
    print(detail)
    refused = [f"{p.document_id}: {p.refusals}" for p in pushes if p.refusals]
    message = "\n".join([line, detail, *problems[:20], *refused[:20], verified.stdout[-2000:]])
    assert len(kills.moments) == len(delays), message  # every planned kill landed mid-push
    assert len(acknowledged) == len(pushes), message
    assert present == intact == len(acknowledged), message
    assert duplicated == lost == len(problems) == 0, message
    assert stored == len(acknowledged), message
    assert verified.returncode == 0, message + verified.stderr
