"""``gateway bench hub``: sendEdoc through the hub API against the node's own API, in one run.

Both legs push the same kind of document into the same node process, and only the API differs:

* **own**: ``POST /api/v1/documents``, the package as the body, the agency's client certificate
  on the TLS connection (what ``gateway bench node`` measures);
* **hub**: ``POST <prefix>/sendEdoc`` as a DMS on the national SDK sends it (HUB-PROTOCOL.md):
  no client certificate; ``XroadVnpt-<k>`` headers for ``systemid``, ``timestamp``,
  ``Content-Type``, ``from``, ``servicetype``, ``messagetype`` and the unpadded ``hash-file``,
  the ``sign-header`` (compact JSON of the same entries), its ``sign-header-key`` list and its
  ``hash-header`` (HMAC-SHA256 under the system's secret), ``XroadVnpt-version``, the SDK's
  ``User-Agent``; body = the package + CRLF; the answer the JSON trio with a ``DocId``.

One run:

* **setup** (not measured): a dev PKI, one RSA-2048 agency per client, a node configuration on
  SQLite with ``[hub] enabled = true`` hosting those agencies (``gateway db upgrade``), one
  connected system per agency made with :func:`gateway.node.systems.add_system` on the node's
  database before the node starts (policy ``require``: the packages are signed as on the own
  API), and every document signed ahead of time in a process pool (5 KB before signing, as in
  ``gateway bench node``; each its own DocumentId, From the client's agency To the next one).
  The hub requests' headers (hash, sign-header, HMAC) are computed ahead too, as the DMS would
  before sending.
* **the node**: one ``gateway serve`` for the whole run. The legs alternate, ``rounds`` times
  each (own hub hub own ...: a linear drift of the machine hits both alike); each leg run opens
  ``clients`` new keep-alive HTTPS connections from the one client process (each with one
  request in flight, as in ``gateway bench node``), sends ``warm`` documents per connection
  before the clock, then pushes its share of the documents. Node CPU is ``utime + stime`` of
  the node process (every thread, any worker process) from ``/proc`` before and after each
  push. A round is two adjacent runs, one of each leg; the targets are judged on the median
  round's ratios (a burst of other work during one run moves them less than the totals').
* **the client**: ``bare`` (the default) is the node bench's asyncio + uvloop client writing
  HTTP/1.1 by hand (0.2 ms of CPU per request); ``httpx`` is one ``httpx.AsyncClient`` per
  connection (keep-alive, one connection each; about 2.4 ms of CPU per request, measured, so
  at 300 documents/s it takes most of the core the node needs). Both legs always use the same
  one, in one client process.

Printed: docs/s, p50/p99 latency, node CPU ms per document (split into the node's main thread,
the event loop, and its other threads, where ingest and the hub's authentication run) and cores
busy per leg (all its runs together) with the hub/own ratios; the median round's ratios and
their targets (hub throughput at least 0.8x the own API's; hub CPU per document at most 1/0.8 =
1.25x the own API's); the documents stored (all, and those received through the hub API, read
from the node's database); each round's figures. Figures drift ±20% run to run on 2 shared
cores: compare the ratios, measured in one run.

Usage::

    run_hub_bench(documents=2000, clients=16)       # what `gateway bench hub` calls
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import sqlite3
import ssl
import statistics
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import click

from gateway.bench.common import (
    DOCUMENTS_PATH,
    GATEWAY,
    SPAWN,
    Agency,
    count_documents,
    cpu_seconds,
    exchange,
    ms_per,
    percentile,
    sign_all,
    start_node,
    stop_node,
    upgrade,
    work_folder,
)
from gateway.dev.network import free_port

__all__ = [
    "HubBenchResult",
    "LegFigures",
    "own_request",
    "run_hub_bench",
    "sdk_hash_file",
    "send_edoc_request",
]

#: the issue's target: the hub API at least 0.8x the own API (throughput; CPU per document at
#: most 1 / 0.8 of the own API's)
TARGET_RATIO: Final = 0.8
#: the hub API's path prefix on the benchmark's node
PREFIX: Final = "/vdxp"
#: what the SDK sends (HUB-PROTOCOL.md 2, 3.1)
SDK_VERSION: Final = "3.0.201608"
SDK_USER_AGENT: Final = "JAVASDKAgent/1.0.0 XRoad/VPCP"

Leg = Literal["own", "hub"]
ClientKind = Literal["bare", "httpx"]
CLIENTS: Final = ("bare", "httpx")
LEGS: Final[tuple[Leg, Leg]] = ("own", "hub")

#: one request: its headers (Host and Content-Length added by the client) and body
_Request = tuple[tuple[tuple[str, str], ...], bytes]


@dataclass(frozen=True)
class LegFigures:
    """One leg's figures: one run of it, or all its runs together."""

    documents: int
    wall_seconds: float
    node_cpu_seconds: float
    #: the node's main thread alone: the event loop (TLS, HTTP, routing, the answer, the
    #: access log) when the node is one process
    loop_cpu_seconds: float
    client_cpu_seconds: float
    p50_ms: float
    p99_ms: float
    failures: int

    @property
    def docs_per_second(self) -> float:
        return self.documents / self.wall_seconds

    @property
    def node_cpu_ms(self) -> float:
        return ms_per(self.node_cpu_seconds, self.documents)

    @property
    def loop_cpu_ms(self) -> float:
        return ms_per(self.loop_cpu_seconds, self.documents)

    @property
    def threads_cpu_ms(self) -> float:
        """The node's other threads (ingest in its lane, the hub's authentication)."""
        return ms_per(self.node_cpu_seconds - self.loop_cpu_seconds, self.documents)

    @property
    def client_cpu_ms(self) -> float:
        return ms_per(self.client_cpu_seconds, self.documents)

    @property
    def cores_busy(self) -> float:
        return self.node_cpu_seconds / self.wall_seconds


@dataclass(frozen=True)
class HubBenchResult:
    """What one run measured (also printed)."""

    own: LegFigures
    hub: LegFigures
    #: every leg run in the order run: (round, leg, figures)
    runs: list[tuple[int, Leg, LegFigures]]
    clients: int
    client: ClientKind
    mean_size: float
    #: mean request head bytes per leg (what the client writes before the body)
    head_bytes: dict[Leg, float]
    #: documents in the node's database at the end, and how many were sent (warm-ups included)
    stored: int
    sent: int
    #: of those stored, the documents the node received through the hub API, and how many the
    #: hub leg sent
    stored_via_hub: int
    sent_via_hub: int
    figures: dict[str, float] = field(default_factory=dict)

    @property
    def throughput_ratio(self) -> float:
        """hub docs/s / own docs/s, every run of each leg together."""
        return self.hub.docs_per_second / self.own.docs_per_second

    @property
    def cpu_ratio(self) -> float:
        """hub node CPU per document / own node CPU per document, every run together."""
        return self.hub.node_cpu_ms / self.own.node_cpu_ms

    @property
    def rounds(self) -> list[tuple[int, LegFigures, LegFigures]]:
        """(round, own figures, hub figures) of each round: two adjacent runs."""
        by_round: dict[int, dict[Leg, LegFigures]] = {}
        for number, leg, figures in self.runs:
            by_round.setdefault(number, {})[leg] = figures
        return [(n, legs["own"], legs["hub"]) for n, legs in sorted(by_round.items())]

    @property
    def median_throughput_ratio(self) -> float:
        """The median over the rounds of hub docs/s / own docs/s: a burst of other work on the
        machine during one run moves it less than the ratio of the totals."""
        return statistics.median(h.docs_per_second / o.docs_per_second for _, o, h in self.rounds)

    @property
    def median_cpu_ratio(self) -> float:
        """The median over the rounds of hub CPU per document / own CPU per document."""
        return statistics.median(h.node_cpu_ms / o.node_cpu_ms for _, o, h in self.rounds)

    @property
    def failures(self) -> int:
        return self.own.failures + self.hub.failures

    @property
    def throughput_ok(self) -> bool:
        """The target, judged on the median round."""
        return self.median_throughput_ratio >= TARGET_RATIO

    @property
    def cpu_ok(self) -> bool:
        """The target, judged on the median round."""
        return self.median_cpu_ratio <= 1 / TARGET_RATIO


# --- the hub protocol's request, as the SDK signs it (HUB-PROTOCOL.md 3.1, 5.1) -------------


def sdk_hash_file(file: bytes) -> str:
    """SHA-256 as the SDK writes it: ``%x`` per byte, so unpadded."""
    return "".join(format(b, "x") for b in hashlib.sha256(file).digest())


def send_edoc_request(
    systemid: str, secret: str, timestamp: str, sender: str, file: bytes
) -> _Request:
    """The headers and body of one sendEdoc, signed with ``secret``."""
    entries = {
        "systemid": systemid,
        "timestamp": timestamp,
        "Content-Type": "application/octet-stream",
        "from": sender,
        "servicetype": "eDoc",
        "messagetype": "edoc",
        "hash-file": sdk_hash_file(file),
    }
    sign = json.dumps({f"XroadVnpt-{k}": v for k, v in entries.items()}, separators=(",", ":"))
    mac = hmac.new(secret.encode("utf-8"), sign.encode("utf-8"), hashlib.sha256).hexdigest()
    headers = (
        *((f"XroadVnpt-{k}", v) for k, v in entries.items()),
        ("XroadVnpt-sign-header", sign),
        ("XroadVnpt-sign-header-key", ";".join(entries)),
        ("XroadVnpt-hash-header", mac),
        ("XroadVnpt-version", SDK_VERSION),
        ("Content-Type", "application/octet-stream"),
        ("User-Agent", SDK_USER_AGENT),
    )
    return headers, file + b"\r\n"


def own_request(file: bytes) -> _Request:
    """The headers and body of one ``POST /api/v1/documents``."""
    return (("Content-Type", "application/xml"),), file


def _sdk_timestamp() -> str:
    """``ddMMyyyy'T'HHmmss+SSSS``, SSSS the milliseconds (frozen per SDK object: one per
    system here)."""
    now = time.time()
    return time.strftime("%d%m%YT%H%M%S", time.localtime(now)) + f"+{int(now % 1 * 1000):04d}"


def _bare_head(port: int, path: str, headers: Sequence[tuple[str, str]]) -> bytes:
    """The request head for :func:`gateway.bench.common.exchange` (``%d``: the body's length)."""
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers).replace("%", "%%")
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{lines}Content-Length: %d\r\n\r\n"
    ).encode("latin-1")


def _accepted(leg: Leg, status: int, answer: bytes) -> bool:
    """The own API accepts with 202; the hub with 200 and the trio OK, "0" and a DocId."""
    if leg == "own":
        return status == 202
    if status != 200:
        return False
    try:
        trio = json.loads(answer)
    except ValueError:
        return False
    return (
        isinstance(trio, dict)
        and trio.get("status") == "OK"
        and trio.get("ErrorCode") == "0"
        and bool(trio.get("DocId"))
    )


# --- the clients (their own process) -----------------------------------------------------------


@dataclass(frozen=True)
class _Connection:
    """One keep-alive connection of one leg run: its TLS identity (None: the hub's DMS presents
    no certificate) and its requests."""

    leg: Leg
    path: str
    cert: str | None
    key: str | None
    warm: list[_Request]
    requests: list[_Request]


_Outcome = tuple[float, float, float, list[float], list[str]]
#: a leg run: the client's outcome, the node's CPU seconds, its main thread's CPU seconds
_Run = tuple[_Outcome, float, float]


def _client_process(
    client: ClientKind, port: int, root_cert: str, commands: Any, replies: Any
) -> None:
    """Serve leg runs until ``None``: for each (its connections), connect and warm up, reply
    "ready", wait for "go", push, reply the outcome; the connections are closed after each."""
    try:
        import uvloop

        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        while (connections := commands.get()) is not None:
            replies.put(
                ("done", _leg_run(loop, client, port, root_cert, connections, commands, replies))
            )
        loop.close()
    except BaseException:
        replies.put(("error", traceback.format_exc()))


def _leg_run(
    loop: asyncio.AbstractEventLoop,
    client: ClientKind,
    port: int,
    root_cert: str,
    connections: list[_Connection],
    commands: Any,
    replies: Any,
) -> _Outcome:
    send = _Bare(port, root_cert) if client == "bare" else _Httpx(port, root_cert)
    failures: list[str] = []
    opened: list[tuple[_Send, list[Any], list[Any]]] = []

    async def open_all() -> None:
        for spec in connections:
            opened.append(await send.open(spec))
        for (one, warm, _), spec in zip(opened, connections, strict=True):
            for request in warm:
                status, answer = await one(request)
                if not _accepted(spec.leg, status, answer):
                    raise RuntimeError(f"warm-up answered {status}: {answer[:500]!r}")

    async def push(one: _Send, requests: list[Any], leg: Leg) -> list[float]:
        latencies = []
        for request in requests:
            t0 = time.perf_counter()
            status, answer = await one(request)
            latencies.append(time.perf_counter() - t0)
            if not _accepted(leg, status, answer):
                failures.append(f"{leg} {status}: {answer[:300]!r}")
        return latencies

    async def push_all() -> list[list[float]]:
        return await asyncio.gather(
            *(
                push(one, requests, spec.leg)
                for (one, _, requests), spec in zip(opened, connections, strict=True)
            )
        )

    loop.run_until_complete(open_all())
    replies.put(("ready", None))
    if commands.get() != "go":
        raise RuntimeError("the client process expected go")
    cpu0, start = time.process_time(), time.perf_counter()
    per_connection = loop.run_until_complete(push_all())
    end, cpu = time.perf_counter(), time.process_time() - cpu0
    loop.run_until_complete(send.close())
    latencies = [x for each in per_connection for x in each]
    return start, end, cpu, latencies, failures


def _context(root_cert: str, spec: _Connection) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=root_cert)
    if spec.cert is not None and spec.key is not None:
        context.load_cert_chain(spec.cert, spec.key)
    return context


#: send one prepared request on a connection: (HTTP status, answer body)
_Send = Callable[[Any], Awaitable[tuple[int, bytes]]]


class _Bare:
    """The node bench's client: HTTP/1.1 written by hand on an asyncio stream."""

    def __init__(self, port: int, root_cert: str) -> None:
        self.port, self.root_cert = port, root_cert
        self.writers: list[asyncio.StreamWriter] = []

    async def open(self, spec: _Connection) -> tuple[_Send, list[Any], list[Any]]:
        """Connect; the sender and the warm-up and timed requests, prepared for it (the heads
        written ahead: the clock measures the node, not the client's formatting)."""
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", self.port, ssl=_context(self.root_cert, spec)
        )
        self.writers.append(writer)

        def prepared(requests: list[_Request]) -> list[tuple[bytes, bytes]]:
            return [(_bare_head(self.port, spec.path, h), body) for h, body in requests]

        async def one(request: tuple[bytes, bytes]) -> tuple[int, bytes]:
            return await exchange(reader, writer, *request)

        return one, prepared(spec.warm), prepared(spec.requests)

    async def close(self) -> None:
        for writer in self.writers:
            writer.close()
        await asyncio.sleep(0)


class _Httpx:
    """One ``httpx.AsyncClient`` per connection (keep-alive, at most one connection each)."""

    def __init__(self, port: int, root_cert: str) -> None:
        self.port, self.root_cert = port, root_cert
        self.clients: list[Any] = []

    async def open(self, spec: _Connection) -> tuple[_Send, list[Any], list[Any]]:
        """The client (it connects on its first request, a warm-up one) and the requests."""
        import httpx

        client = httpx.AsyncClient(
            base_url=f"https://127.0.0.1:{self.port}",
            verify=_context(self.root_cert, spec),
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            timeout=120.0,
        )
        self.clients.append(client)

        async def one(request: _Request) -> tuple[int, bytes]:
            answer = await client.post(spec.path, content=request[1], headers=list(request[0]))
            return answer.status_code, answer.content

        return one, spec.warm, spec.requests

    async def close(self) -> None:
        for client in self.clients:
            await client.aclose()


def _thread_cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of the main thread of ``pid`` alone (the event loop's, in a
    node of one process)."""
    try:
        stat = Path(f"/proc/{pid}/task/{pid}/stat").read_text()
    except FileNotFoundError:
        return float("nan")
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Clients:
    """The client process (one for the whole run: no start-up between leg runs)."""

    def __init__(self, client: ClientKind, port: int, root_cert: Path) -> None:
        self._commands: Any = SPAWN.Queue()
        self._replies: Any = SPAWN.Queue()
        self._process = SPAWN.Process(
            target=_client_process,
            args=(client, port, str(root_cert), self._commands, self._replies),
            daemon=True,
        )
        self._process.start()

    def _reply(self, expected: str, timeout: float) -> Any:
        kind, payload = self._replies.get(timeout=timeout)
        if kind != expected:
            raise click.ClickException(f"the client process failed:\n{payload}")
        return payload

    def run(self, node_pid: int, connections: list[_Connection]) -> _Run:
        """One leg run: its outcome, the node's CPU seconds meanwhile (every thread and
        process) and its main thread's."""
        self._commands.put(connections)
        self._reply("ready", 300)
        cpu0, main0 = cpu_seconds(node_pid), _thread_cpu_seconds(node_pid)
        self._commands.put("go")
        outcome: _Outcome = self._reply("done", 3600)
        node_cpu = cpu_seconds(node_pid) - cpu0
        return outcome, node_cpu, _thread_cpu_seconds(node_pid) - main0

    def close(self) -> None:
        if self._process.is_alive():
            self._commands.put(None)
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()


def _figures(runs: Sequence[_Run]) -> LegFigures:
    latencies = sorted(x for o, _, _ in runs for x in o[3])
    return LegFigures(
        documents=len(latencies),
        wall_seconds=sum(o[1] - o[0] for o, _, _ in runs),
        node_cpu_seconds=sum(cpu for _, cpu, _ in runs),
        loop_cpu_seconds=sum(main for _, _, main in runs),
        client_cpu_seconds=sum(o[2] for o, _, _ in runs),
        p50_ms=percentile(latencies, 0.50) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        failures=sum(len(o[4]) for o, _, _ in runs),
    )


# --- setup -------------------------------------------------------------------------------------


def _write_config(
    path: Path,
    *,
    pki: Any,
    ca: Any,
    agencies: Sequence[str],
    database: Path,
    port: int,
    log_level: str,
    workers: int,
) -> Path:
    """``bench-node``'s settings (as ``gateway bench node`` writes them) with ``[hub]`` on."""
    from gateway.dev.nodeconfig import write_node_config

    return write_node_config(
        path,
        name="bench-node",
        agencies=agencies,
        node=pki,
        ca=ca,
        database_url=f"sqlite:///{database}",
        port=port,
        extra={
            "logging": {"level": log_level},
            "server": {"workers": workers},
            "hub": {"enabled": True, "prefix": PREFIX},
        },
    )


def _add_systems(config: str, log: str, codes: list[str]) -> list[str]:
    """One connected system per agency code (``bench.NN``) on the node's database; their
    secrets (runs in a fresh process: its logs go to the node's log file, not the output)."""
    from gateway.logs import configure
    from gateway.node.container import Node
    from gateway.node.systems import add_system
    from gateway.settings import load_settings
    from gateway.storage import db

    settings = load_settings(Path(config))
    with open(log, "a", encoding="utf-8") as sink:
        sys.stderr = sink
        configure("warning")
        engine = db.make_engine(settings)
        try:
            node = Node.from_settings(settings, engine)
            return [
                add_system(node, f"bench.{n:02d}", [code], actor="admin:bench")[1]
                for n, code in enumerate(codes, start=1)
            ]
        finally:
            engine.dispose()
            sys.stderr = sys.__stderr__


def _count_via_hub(database: Path) -> int:
    """Documents the node received from a connected system (``received_from`` "agency:CODE
    via hub:SYSTEMID"), read-only: the node is not asked."""
    sql = "SELECT count(*) FROM documents WHERE received_from LIKE '% via hub:%'"
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as conn:
        (count,) = conn.execute(sql).fetchone()
    return int(count)


def _schedule(rounds: int) -> list[tuple[int, Leg]]:
    """own hub, hub own, own hub, ...: each leg as often first as second (A B B A)."""
    runs: list[tuple[int, Leg]] = []
    for r in range(rounds):
        order = LEGS if r % 2 == 0 else LEGS[::-1]
        runs.extend((r + 1, leg) for leg in order)
    return runs


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (p < total % parts) for p in range(parts)]


def run_hub_bench(
    documents: int = 2000,
    clients: int = 16,
    *,
    rounds: int = 4,
    size: int = 5 * 1024,
    warm: int = 3,
    client: ClientKind = "bare",
    log_level: str = "info",
    workers: int = 1,
    keep: Path | None = None,
    node_command: Sequence[str] = (),
    echo: Callable[[str], None] = click.echo,
) -> HubBenchResult:
    """Push ``documents`` signed ~``size``-byte packages through each API (own and hub) of one
    node with ``clients`` connections, the legs alternating ``rounds`` times each; print.

    ``warm`` documents per connection go before each leg run's clock; ``keep`` keeps the PKI,
    configuration, database and node log in that folder. ``node_command`` replaces the
    ``gateway`` executable that starts the node (``serve --config FILE`` is appended), to
    measure a variant, as in :func:`gateway.bench.node.run_node_bench`.
    """
    if clients < 1 or rounds < 1 or warm < 0 or documents < clients * rounds:
        raise click.BadParameter("documents >= clients * rounds, clients >= 1, rounds >= 1")
    if clients > 99:
        raise click.BadParameter("at most 99 clients (one agency code each)")
    if client not in CLIENTS:
        raise click.BadParameter(f"client: {' or '.join(CLIENTS)}")
    from gateway.dev.pki import init_ca, issue

    with work_folder(keep, "gw-hub-") as directory:
        setup0 = time.perf_counter()
        pki = directory / "pki"
        ca = init_ca(pki)
        node_paths = issue(pki, node="bench-node")
        agencies = []
        for n in range(1, clients + 1):
            paths = issue(pki, agency=f"000.00.{n:02d}.H49")
            agencies.append(Agency(code=f"000.00.{n:02d}.H49", key=paths.key, cert=paths.cert))
        port = free_port()
        config = _write_config(
            directory / "node.toml",
            pki=node_paths,
            ca=ca,
            agencies=[a.code for a in agencies],
            database=directory / "node.db",
            port=port,
            log_level=log_level,
            workers=workers,
        )
        upgrade(config)
        node_log = directory / "node.log"
        with ProcessPoolExecutor(max_workers=1, mp_context=SPAWN) as one:
            secrets = one.submit(
                _add_systems, str(config), str(node_log), [a.code for a in agencies]
            ).result()

        # each leg run: per client, `warm` documents, then its share of the leg's documents
        schedule = _schedule(rounds)
        shares = [_split(n, clients) for n in _split(documents, rounds)]
        per_run = {(r, leg): shares[r - 1] for r, leg in schedule}
        counts = [sum(warm + per_run[run][c] for run in schedule) for c in range(clients)]
        signed = sign_all(agencies, counts, size)
        timestamps = [_sdk_timestamp() for _ in agencies]

        def request(leg: Leg, c: int, file: bytes) -> _Request:
            if leg == "own":
                return own_request(file)
            systemid = f"bench.{c + 1:02d}"
            return send_edoc_request(systemid, secrets[c], timestamps[c], agencies[c].code, file)

        plans: list[tuple[int, Leg, list[_Connection]]] = []
        cursor = [0] * clients
        for r, leg in schedule:
            connections = []
            for c, agency in enumerate(agencies):
                taken = signed[c][cursor[c] : cursor[c] + warm + per_run[(r, leg)][c]]
                cursor[c] += len(taken)
                requests = [request(leg, c, file) for file in taken]
                connections.append(
                    _Connection(
                        leg=leg,
                        path=DOCUMENTS_PATH if leg == "own" else f"{PREFIX}/sendEdoc",
                        cert=str(agency.cert) if leg == "own" else None,
                        key=str(agency.key) if leg == "own" else None,
                        warm=requests[:warm],
                        requests=requests[warm:],
                    )
                )
            plans.append((r, leg, connections))
        sent = sum(counts)
        sent_via_hub = sum(
            len(c.warm) + len(c.requests) for _, leg, cs in plans if leg == "hub" for c in cs
        )
        mean_size = statistics.fmean(len(d) for docs in signed for d in docs)
        head_bytes = {
            leg: statistics.fmean(
                len(_bare_head(port, conns[0].path, req[0]))
                for _, lg, conns in plans
                if lg == leg
                for req in conns[0].requests
            )
            for leg in LEGS
        }
        echo(
            f"setup {time.perf_counter() - setup0:.1f} s: {sent} documents of "
            f"{size / 1024:.1f} KB signed (RSA-2048, 2 certificates embedded): "
            f"{mean_size / 1024:.1f} KB each on the wire; {clients} connected systems"
        )

        load_before = os.getloadavg()[0]
        process = start_node(node_command or [GATEWAY], config, node_log, port, ca.root_cert)
        outcomes: list[tuple[int, Leg, _Run]] = []
        try:
            with contextlib.closing(_Clients(client, port, ca.root_cert)) as clients_process:
                for r, leg, connections in plans:
                    outcomes.append((r, leg, clients_process.run(process.pid, connections)))
        finally:
            stop_node(process)
        load_after = os.getloadavg()[0]

        failures = [f for _, _, (o, _, _) in outcomes for f in o[4]]
        result = HubBenchResult(
            own=_figures([o for _, leg, o in outcomes if leg == "own"]),
            hub=_figures([o for _, leg, o in outcomes if leg == "hub"]),
            runs=[(r, leg, _figures([o])) for r, leg, o in outcomes],
            clients=clients,
            client=client,
            mean_size=mean_size,
            head_bytes=head_bytes,
            stored=count_documents(directory / "node.db"),
            sent=sent,
            stored_via_hub=_count_via_hub(directory / "node.db"),
            sent_via_hub=sent_via_hub,
            figures={"load_before": load_before, "load_after": load_after},
        )
        _print(result, echo, rounds=rounds, workers=workers)
        if failures:
            echo(f"first failure: {failures[0]}")
        return result


def _print(
    result: HubBenchResult, echo: Callable[[str], None], *, rounds: int, workers: int
) -> None:
    r = result
    f = r.figures
    client = "asyncio + uvloop, bare HTTP/1.1" if r.client == "bare" else "httpx.AsyncClient each"
    echo(
        f"node: gateway serve ({workers} worker process(es), uvicorn, SQLite WAL "
        f"synchronous=FULL, [hub] enabled); {r.clients} keep-alive HTTPS connections in one "
        f"client process ({client}), one request in flight each"
    )
    echo(
        f"own: POST {DOCUMENTS_PATH}, client certificate, {r.head_bytes['own']:.0f} B head; "
        f"hub: POST {PREFIX}/sendEdoc, HMAC-signed XroadVnpt headers, no client certificate, "
        f"{r.head_bytes['hub']:.0f} B head, body + CRLF"
    )
    echo(
        f"legs alternate, {rounds} run(s) each: "
        + " ".join(f"{leg}" for _, leg, _ in r.runs)
        + f"; {r.own.documents} + {r.hub.documents} documents timed"
    )
    echo(
        f"load average (1 min) before / after the run: {f['load_before']:.2f} / "
        f"{f['load_after']:.2f} on {os.cpu_count()} cores (other processes take CPU too)"
    )
    verdict = {True: "PASS", False: "MISS"}
    echo(f"{'figure':<30}{'own':>10}{'hub':>10}{'hub/own':>10}  {'target':<10}{'result':<6}")

    def row(
        name: str, own: float, hub: float, digits: int, target: str = "", ok: bool | None = None
    ) -> None:
        ratio = f"{hub / own:.2f}x" if own else ""
        outcome = "" if ok is None else verdict[ok]
        line = f"{name:<30}{own:>10.{digits}f}{hub:>10.{digits}f}{ratio:>10}  {target:<10}{outcome}"
        echo(line.rstrip())

    def median(name: str, ratio: float, target: str, ok: bool) -> None:
        line = f"{name:<30}{'':>10}{'':>10}{ratio:>9.2f}x  {target:<10}{verdict[ok]}"
        echo(line)

    own, hub = r.own, r.hub
    row("documents/s", own.docs_per_second, hub.docs_per_second, 1)
    median(
        "  docs/s, median round", r.median_throughput_ratio, f">= {TARGET_RATIO}x", r.throughput_ok
    )
    row("latency p50 ms", own.p50_ms, hub.p50_ms, 1)
    row("latency p99 ms", own.p99_ms, hub.p99_ms, 1)
    row("node CPU ms/doc", own.node_cpu_ms, hub.node_cpu_ms, 3)
    median("  CPU/doc, median round", r.median_cpu_ratio, f"<= {1 / TARGET_RATIO:.2f}x", r.cpu_ok)
    if workers == 1:
        row("  event loop thread ms/doc", own.loop_cpu_ms, hub.loop_cpu_ms, 3)
        row("  other threads ms/doc", own.threads_cpu_ms, hub.threads_cpu_ms, 3)
    row("node cores busy", own.cores_busy, hub.cores_busy, 2)
    row("client CPU ms/doc", own.client_cpu_ms, hub.client_cpu_ms, 3)
    failed = f"{own.failures:>10}{hub.failures:>10}{'':>10}"
    echo(f"{'failures':<30}{failed}  {'0':<10}{verdict[r.failures == 0]}")
    echo(
        f"{'stored (incl. warm-up)':<30}{r.stored:>10}{'':>10}{'':>10}  "
        f"{r.sent:<10}{verdict[r.stored == r.sent]}"
    )
    echo(
        f"{'  through the hub API':<30}{r.stored_via_hub:>10}{'':>10}{'':>10}  "
        f"{r.sent_via_hub:<10}{verdict[r.stored_via_hub == r.sent_via_hub]}"
    )
    echo("each round (two adjacent runs, in the order shown); cores busy < 0.9: the node waited")
    echo(
        f"{'round':<7}{'order':<9}{'own docs/s':>11}{'hub docs/s':>11}{'hub/own':>9}"
        f"{'own ms/doc':>11}{'hub ms/doc':>11}{'hub/own':>9}{'busy own/hub':>14}"
    )
    first = {number: leg for number, leg, _ in reversed(r.runs)}
    for number, o, h in r.rounds:
        order = "own,hub" if first[number] == "own" else "hub,own"
        echo(
            f"{number:<7}{order:<9}{o.docs_per_second:>11.1f}{h.docs_per_second:>11.1f}"
            f"{h.docs_per_second / o.docs_per_second:>8.2f}x{o.node_cpu_ms:>11.3f}"
            f"{h.node_cpu_ms:>11.3f}{h.node_cpu_ms / o.node_cpu_ms:>8.2f}x"
            f"{o.cores_busy:>8.2f}/{h.cores_busy:.2f}"
        )
