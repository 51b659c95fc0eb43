"""``gateway bench network``: the four-tier network end to end, and a backlog drain after an outage.

One run on a development network (:class:`gateway.dev.network.Network`: four ``gateway serve``
processes on SQLite, the Quảng Ninh layout central > h49 > h49-halong > h49-bachdang):

* **setup** (not measured): the network's PKI, configurations and databases; every document
  of every phase signed ahead of time by the commune agency 000.01.01.H49 (RSA-2048, 5 KB before
  signing as in ``gateway bench node``, each with its own DocumentId) in a process pool, written
  to files the client process reads; then the four nodes start.
* **baseline**: the commune node alone, with no relay: documents addressed to the commune agency
  itself (delivered locally, nothing goes to the outbox), pushed by the same clients. Half runs
  before the end-to-end phase and half after, so drift hits both.
* **end to end**: documents From 000.01.01.H49 To the ministry 000.00.00.G12 (hosted by central),
  pushed into the commune node by ``clients`` keep-alive HTTPS connections (one request in
  flight each; asyncio + uvloop, bare HTTP/1.1, as in ``gateway bench node``), relayed
  commune > district > province > central. The clock runs from the first push until the last
  document is in G12's inbox at central: arrival times are ``documents.received_at`` in
  central's SQLite file (read-only; the nodes are not asked), matched by DocumentId to the
  client's push time (wall clock, same machine). The CPU of each node process
  (``/proc/<pid>/stat`` utime + stime) over that window is divided by the documents; a second
  window runs until the network is quiet again (every "delivered" notice back at the commune,
  no outbox row waiting anywhere), since each document also costs three notice hops back.
* **backlog drain**: the district node h49-halong is killed (SIGKILL: an outage); ``backlog``
  documents To the district agency 000.00.01.H49 are pushed into the commune node, where they
  wait in its outbox (its circuit breaker for the district opens once a few backoffs have
  failed: after about 15-30 s); the district starts again and the clock runs from its first
  ``/healthz`` answer until every one is delivered there (``deliveries`` rows in the district's
  SQLite file). Which of the two held the rows back at the restart, the breaker's probe or the
  rows' own backoff, is printed.

Figures drift ±20% run to run on 2 shared cores; the load average is printed.

Usage::

    run_network_bench(documents=2000, backlog=20000, clients=8)  # `gateway bench network`
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import click

from gateway.bench.common import SPAWN, cpu_seconds, document_template, percentile, work_folder
from gateway.bench.pusher import Batch, Pusher, Target, sign_phase
from gateway.bench.watch import Watch, await_count, await_quiet
from gateway.dev.network import Network, _issued_paths
from gateway.settings import DeliverySettings, load_settings

__all__ = ["NetworkBenchResult", "run_network_bench"]

#: the issue's targets on this 2-core machine
TARGET_E2E_DOCS_PER_SECOND: Final = 100.0
TARGET_DRAIN_DOCS_PER_SECOND: Final = 200.0

COMMUNE_AGENCY: Final = "000.01.01.H49"
DISTRICT_AGENCY: Final = "000.00.01.H49"
MINISTRY: Final = "000.00.00.G12"
COMMUNE: Final = "h49-bachdang"
DISTRICT: Final = "h49-halong"
#: the nodes a document passes, in order
PATH: Final = (COMMUNE, DISTRICT, "h49", "central")

#: phases, as the first digit of each document's serial
_WARM, _BASELINE, _E2E, _BACKLOG = 1, 2, 3, 4


@dataclass(frozen=True)
class NetworkBenchResult:
    """What one run measured (also printed)."""

    documents: int
    backlog: int
    clients: int
    mean_size: float
    baseline_docs_per_second: float
    baseline_cpu_ms: float
    e2e_docs_per_second: float
    p50_ms: float
    p99_ms: float
    #: node CPU ms per document, first push until the last arrival at central
    cpu_ms: dict[str, float]
    #: node CPU ms per document, first push until every notice is back (the network quiet)
    cpu_ms_quiet: dict[str, float]
    arrived: int
    backlog_pushed: int
    backlog_push_docs_per_second: float
    drain_docs_per_second: float
    drain_steady_docs_per_second: float
    drained: int
    drain_cpu_ms: dict[str, float]
    failures: int
    settings: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, float] = field(default_factory=dict)
    #: wall seconds of each step of the run, in order
    steps: list[tuple[str, float]] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        """End-to-end documents/s over the commune node's own ingest rate (same run)."""
        return self.e2e_docs_per_second / self.baseline_docs_per_second

    @property
    def e2e_ok(self) -> bool:
        return self.e2e_docs_per_second >= TARGET_E2E_DOCS_PER_SECOND

    @property
    def drain_ok(self) -> bool:
        return self.drain_docs_per_second >= TARGET_DRAIN_DOCS_PER_SECOND


def _document_id(serial: str) -> str:
    """The DocumentId :func:`~gateway.bench.common.document_template` gives the commune's."""
    return f"{COMMUNE_AGENCY},2026/11/23,{serial}/BENCH"


def _cpu(net: Network, names: Sequence[str] = PATH) -> dict[str, float]:
    out = {}
    for name in names:
        process = net.nodes[name].process
        assert process is not None, f"{name} is not running"
        out[name] = cpu_seconds(process.pid)
    return out


def _per_doc_ms(after: dict[str, float], before: dict[str, float], count: int) -> dict[str, float]:
    per = {name: (after[name] - before[name]) / count * 1000 for name in after}
    per["total"] = sum(per.values())
    return per


# --- the run -----------------------------------------------------------------------------------


@dataclass
class _Steps:
    """Wall seconds per step of the run (printed, to see where a run's minutes go)."""

    done: list[tuple[str, float]] = field(default_factory=list)
    last: float = field(default_factory=time.perf_counter)

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.done.append((name, now - self.last))
        self.last = now


def _baseline(
    net: Network, pusher: Pusher, clients: int, batch: Batch, warm: Batch
) -> tuple[int, float, float, list[str]]:
    """Push ``batch`` (addressed to the commune itself); (documents, wall s, CPU s, failures)."""
    pusher.prepare(clients, batch, warm)
    before = _cpu(net, [COMMUNE])[COMMUNE]
    pusher.go()
    pushed = pusher.result()
    cpu = _cpu(net, [COMMUNE])[COMMUNE] - before
    return len(pushed.starts), pushed.wall, cpu, pushed.failures


def run_network_bench(
    documents: int = 2000,
    backlog: int = 20000,
    clients: int = 8,
    *,
    keep: Path | None = None,
    batch_size: int | None = None,
    tick_interval: float | None = None,
    baseline_documents: int | None = None,
    size: int = 5 * 1024,
    echo: Callable[[str], None] = click.echo,
) -> NetworkBenchResult:
    """Run both phases on a fresh four-node development network; print and return the figures.

    ``batch_size`` and ``tick_interval`` set ``[delivery]`` on every node (default: the
    development network's settings). ``baseline_documents`` (default: ``documents`` up to
    1000) are pushed to the commune node addressed to its own agency, half before and half after
    the end-to-end phase. ``keep`` keeps the network's folder (PKI, configs, databases, logs).
    """
    if documents < clients or clients < 1 or backlog < 1:
        raise click.BadParameter("documents >= clients >= 1 and backlog >= 1")
    base = baseline_documents if baseline_documents is not None else min(documents, 1000)
    base = max(base, 2 * clients)
    delivery: dict[str, Any] = {}
    if batch_size is not None:
        delivery["batch_size"] = batch_size
    if tick_interval is not None:
        delivery["tick_interval"] = tick_interval

    with contextlib.ExitStack() as stack:
        directory = stack.enter_context(work_folder(keep, "gw-net-"))
        net = stack.enter_context(Network(directory / "net", settings={"delivery": delivery}))
        steps = _Steps()
        net.create()
        assert net.ca is not None
        agency_cert, agency_key = _issued_paths(net.pki, COMMUNE_AGENCY)
        target = Target(
            net.nodes[COMMUNE].port, str(net.ca.root_cert), str(agency_cert), str(agency_key)
        )
        pusher = stack.enter_context(contextlib.closing(Pusher(target)))
        settings = load_settings(net.nodes[COMMUNE].config, environ={})
        key = _issued_paths(net.pki, COMMUNE_AGENCY)[::-1]  # (key, cert)
        signed = directory / "signed"
        signed.mkdir(exist_ok=True)
        content = size - len(document_template(COMMUNE_AGENCY, MINISTRY, 16)) + 16
        local = document_template(COMMUNE_AGENCY, COMMUNE_AGENCY, content)
        with ProcessPoolExecutor(max_workers=os.cpu_count() or 2, mp_context=SPAWN) as pool:
            warm = [
                sign_phase(pool, key, local, _WARM, clients, signed, first=n * clients)
                for n in range(4)
            ]
            halves = [
                sign_phase(pool, key, local, _BASELINE, base // 2, signed),
                sign_phase(pool, key, local, _BASELINE, base - base // 2, signed, first=base // 2),
            ]
            e2e = sign_phase(
                pool,
                key,
                document_template(COMMUNE_AGENCY, MINISTRY, content),
                _E2E,
                documents,
                signed,
            )
            queued = sign_phase(
                pool,
                key,
                document_template(COMMUNE_AGENCY, DISTRICT_AGENCY, content),
                _BACKLOG,
                backlog,
                signed,
            )
            for batch in warm:
                batch.wait()
            total_bytes = sum(b.wait() for b in (*halves, e2e, queued))
        mean_size = total_bytes / (base + documents + backlog)
        steps.mark("setup")
        echo(
            f"setup {steps.done[-1][1]:.1f} s: {base + documents + backlog} documents of "
            f"{size / 1024:.1f} KB signed by {COMMUNE_AGENCY} (RSA-2048, 2 certificates "
            f"embedded): {mean_size / 1024:.1f} KB each on the wire"
        )
        net.start()
        steps.mark("start")
        load_before = os.getloadavg()[0]
        watch = stack.enter_context(contextlib.closing(Watch(net)))
        return _run(
            net,
            watch,
            pusher,
            clients=clients,
            warm=warm,
            halves=halves,
            e2e=e2e,
            queued=queued,
            mean_size=mean_size,
            delivery=settings.delivery,
            load_before=load_before,
            steps=steps,
            echo=echo,
        )


def _run(
    net: Network,
    watch: Watch,
    pusher: Pusher,
    *,
    clients: int,
    warm: list[Batch],
    halves: list[Batch],
    e2e: Batch,
    queued: Batch,
    mean_size: float,
    delivery: DeliverySettings,
    load_before: float,
    steps: _Steps,
    echo: Callable[[str], None],
) -> NetworkBenchResult:
    documents, backlog = len(e2e.serials), len(queued.serials)
    failures: list[str] = []

    # 1. baseline, first half: the commune node alone (local recipient, no relay)
    runs = [_baseline(net, pusher, clients, halves[0], warm[0])]
    failures += runs[0][3]
    steps.mark("baseline 1")

    # 2. end to end
    pusher.prepare(clients, e2e, warm[1])
    cpu0 = _cpu(net)
    pusher.go()
    await_count("arrivals at central", lambda: watch.delivered("central", MINISTRY), documents)
    cpu1 = _cpu(net)
    pushed = pusher.result()
    failures += pushed.failures
    steps.mark("end to end")
    # every "delivered" notice back at the commune, and nothing waiting anywhere
    await_count(
        "delivered notices at the commune",
        lambda: watch.delivered(COMMUNE, MINISTRY),
        documents,
    )
    quiet_at = await_quiet(watch)
    cpu2 = _cpu(net)
    steps.mark("quiet")
    arrivals = watch.arrivals("central", COMMUNE_AGENCY)
    ids = [_document_id(s) for s in e2e.serials]
    arrived = [arrivals[i] for i in ids if i in arrivals]
    latencies = sorted(arrivals[i] - t0 for i, t0 in zip(ids, pushed.starts, strict=True))
    first_push = min(pushed.starts)
    e2e_wall = max(arrived) - first_push

    # 3. baseline, second half
    runs.append(_baseline(net, pusher, clients, halves[1], warm[2]))
    failures += runs[1][3]
    steps.mark("baseline 2")
    base_docs = sum(r[0] for r in runs)
    base_wall = sum(r[1] for r in runs)
    base_cpu = sum(r[2] for r in runs)

    # 4. backlog: the district is down while the commune takes the documents, then comes back
    await_quiet(watch)
    net.stop(DISTRICT, signal.SIGKILL)  # an outage: the machine or the line is gone
    steps.mark("stop district")
    pusher.prepare(clients, queued, warm[3])
    push_cpu0 = _cpu(net, [COMMUNE])[COMMUNE]
    pusher.go()
    backlog_pushed = pusher.result()
    push_cpu = _cpu(net, [COMMUNE])[COMMUNE] - push_cpu0
    failures += backlog_pushed.failures
    steps.mark("backlog push")
    waiting = watch.count(
        COMMUNE,
        "SELECT count(*) FROM deliveries WHERE next_hop = ? AND next_attempt_at IS NOT NULL",
        DISTRICT,
    )
    breaker_open = watch.count(
        COMMUNE,
        "SELECT count(*) FROM audit_log WHERE event = 'peer_down' AND subject = ?",
        DISTRICT,
    )
    restart = time.time()
    net.start(DISTRICT)
    up = time.time()
    steps.mark("restart district")
    drain_cpu0 = _cpu(net, [COMMUNE, DISTRICT])
    await_count(
        "backlog at the district",
        lambda: watch.delivered(DISTRICT, DISTRICT_AGENCY),
        backlog,
        every=0.2,
    )
    drain_cpu1 = _cpu(net, [COMMUNE, DISTRICT])
    steps.mark("drain")
    drain_arrivals = [
        at
        for doc, at in watch.arrivals(DISTRICT, COMMUNE_AGENCY).items()
        if doc.split(",")[2].startswith(str(_BACKLOG))
    ]
    drained = watch.delivered(DISTRICT, DISTRICT_AGENCY)
    drain_first, drain_last = min(drain_arrivals), max(drain_arrivals)
    notices_back = await_count(
        "delivered notices for the backlog at the commune",
        lambda: watch.delivered(COMMUNE, DISTRICT_AGENCY),
        backlog,
        every=0.2,
    )
    load_after = os.getloadavg()[0]
    steps.mark("notices back")

    result = NetworkBenchResult(
        documents=documents,
        backlog=backlog,
        clients=clients,
        mean_size=mean_size,
        baseline_docs_per_second=base_docs / base_wall,
        baseline_cpu_ms=base_cpu / base_docs * 1000,
        e2e_docs_per_second=len(arrived) / e2e_wall,
        p50_ms=percentile(latencies, 0.50) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        cpu_ms=_per_doc_ms(cpu1, cpu0, documents),
        cpu_ms_quiet=_per_doc_ms(cpu2, cpu0, documents),
        arrived=len(arrived),
        backlog_pushed=len(backlog_pushed.starts) - len(backlog_pushed.failures),
        backlog_push_docs_per_second=len(backlog_pushed.starts) / backlog_pushed.wall,
        drain_docs_per_second=drained / (drain_last - up),
        drain_steady_docs_per_second=(drained - 1) / (drain_last - drain_first)
        if drained > 1
        else float("nan"),
        drained=drained,
        drain_cpu_ms=_per_doc_ms(drain_cpu1, drain_cpu0, drained),
        failures=len(failures),
        settings={
            name: getattr(delivery, name)
            for name in (
                "batch_size",
                "batch_bytes",
                "tick_interval",
                "breaker_threshold",
                "breaker_probe_interval",
                "backoff_initial",
                "backoff_max",
            )
        },
        figures={
            "e2e_wall": e2e_wall,
            "e2e_push_wall": pushed.wall,
            "e2e_push_docs_per_second": documents / pushed.wall,
            "e2e_quiet_after": quiet_at - first_push,
            "client_cpu_ms": pushed.client_cpu / documents * 1000,
            "baseline_docs": base_docs,
            "baseline_halves": runs[0][0] / runs[0][1],
            "baseline_halves_after": runs[1][0] / runs[1][1],
            "push_cpu_ms": push_cpu / len(backlog_pushed.starts) * 1000,
            "waiting_before_restart": waiting,
            "breaker_opened": breaker_open,
            "restart_seconds": up - restart,
            "first_after_up": drain_first - up,
            "drain_wall": drain_last - up,
            "notices_back_after": notices_back - up,
            "load_before": load_before,
            "load_after": load_after,
        },
        steps=steps.done,
    )
    _print(result, echo, first_failure=failures[0] if failures else None)
    return result


def _print(
    result: NetworkBenchResult, echo: Callable[[str], None], first_failure: str | None
) -> None:
    r, f = result, result.figures
    echo(
        "network: central > h49 > h49-halong > h49-bachdang, four `gateway serve` processes "
        "(SQLite WAL synchronous=FULL), one machine"
    )
    echo("[delivery] " + " ".join(f"{name}={value}" for name, value in r.settings.items()))
    echo(
        f"clients: {r.clients} keep-alive HTTPS connections as {COMMUNE_AGENCY} into the commune "
        f"node, one request in flight each, {r.mean_size / 1024:.1f} KB per document"
    )
    echo(
        f"load average (1 min) before / after the run: {f['load_before']:.2f} / "
        f"{f['load_after']:.2f} on {os.cpu_count()} cores (other processes take CPU too)"
    )
    verdict = {True: "PASS", False: "MISS"}
    rows = [
        (
            f"baseline: commune ingest docs/s ({int(f['baseline_docs'])} local)",
            f"{r.baseline_docs_per_second:.1f}",
            "",
            "",
        ),
        ("baseline: commune CPU ms/doc", f"{r.baseline_cpu_ms:.2f}", "", ""),
        (
            f"end-to-end documents/s ({r.documents})",
            f"{r.e2e_docs_per_second:.1f}",
            f">= {TARGET_E2E_DOCS_PER_SECOND:.0f}",
            verdict[r.e2e_ok],
        ),
        ("end-to-end / baseline", f"{r.ratio:.2f}x", "", ""),
        ("latency p50 ms (push -> central)", f"{r.p50_ms:.0f}", "", ""),
        ("latency p99 ms (push -> central)", f"{r.p99_ms:.0f}", "", ""),
        ("e2e push into the commune docs/s", f"{f['e2e_push_docs_per_second']:.1f}", "", ""),
        (f"backlog pushed, {DISTRICT} down", f"{r.backlog_pushed}", "", ""),
        ("backlog push docs/s", f"{r.backlog_push_docs_per_second:.1f}", "", ""),
        (
            "drain documents/s (from restart)",
            f"{r.drain_docs_per_second:.1f}",
            f">= {TARGET_DRAIN_DOCS_PER_SECOND:.0f}",
            verdict[r.drain_ok],
        ),
        ("drain docs/s (first -> last)", f"{r.drain_steady_docs_per_second:.1f}", "", ""),
        (
            "drained (at the district)",
            f"{r.drained}",
            f"{r.backlog_pushed}",
            verdict[r.drained == r.backlog_pushed],
        ),
        ("failures", f"{r.failures}", "0", verdict[r.failures == 0]),
    ]
    echo(f"{'figure':<42}{'value':>10}  {'target':<10}{'result':<6}")
    for name, value, target, outcome in rows:
        echo(f"{name:<42}{value:>10}  {target:<10}{outcome:<6}".rstrip())
    echo(
        f"node CPU ms per end-to-end document (to the last arrival, {f['e2e_wall']:.1f} s; "
        f"until quiet, {f['e2e_quiet_after']:.1f} s: notices back); drain CPU ms per document"
    )
    echo(f"{'node':<16}{'to arrival':>12}{'until quiet':>13}{'cores busy':>12}{'drain':>9}")
    for name in (*PATH, "total"):
        busy = r.cpu_ms[name] * r.documents / 1000 / f["e2e_wall"]
        drain = r.drain_cpu_ms.get(name)
        echo(
            f"{name:<16}{r.cpu_ms[name]:>12.2f}{r.cpu_ms_quiet[name]:>13.2f}{busy:>12.2f}"
            + (f"{drain:>9.2f}" if drain is not None else "")
        )
    echo(
        f"network CPU per end-to-end document / commune ingest CPU: "
        f"{r.cpu_ms_quiet['total'] / r.baseline_cpu_ms:.2f}x (until quiet)"
    )
    echo(
        f"district restart {f['restart_seconds']:.1f} s; {int(f['waiting_before_restart'])} rows "
        f"waited in the commune's outbox (its breaker for {DISTRICT} "
        f"{'open' if f['breaker_opened'] else 'still closed: rows wait out their backoff'}); "
        f"first arrival {f['first_after_up']:.1f} s after it "
        f"answered; all in {f['drain_wall']:.1f} s; notices all back after "
        f"{f['notices_back_after']:.1f} s"
    )
    echo(f"client CPU ms/doc {f['client_cpu_ms']:.3f}")
    echo("wall s per step: " + ", ".join(f"{name} {sec:.1f}" for name, sec in r.steps))
    if first_failure is not None:
        echo(f"first failure: {first_failure}")
