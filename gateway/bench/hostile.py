"""``gateway bench hostile``: what the worst inputs cost a node, and what they cost its neighbours.

Two parts, one run:

* **refusal cost** (in-process): each class of hostile package found by the hostile-input
  review (millions of comments or processing instructions under the size cap, thousands of
  attributes on one element, tens of thousands of namespace declarations, deep nesting, a huge
  text node, too many elements) is built at test time around a real signed package and handed
  to the verifier, the same code path as ingest and ``gateway verify``. Printed per class: its
  size, the stable code it was refused with, the CPU time of the refusal, and the ratio to
  *parsing* (``lxml.etree.fromstring``, nothing else) a normal package of the same size, a
  signed document whose attachment was grown to match. A ratio near 1 means a refusal costs
  what reading the bytes costs: the budgets are checked before the expensive steps.
* **latency under attack** (real processes): ``gateway serve`` on SQLite with two hosted
  agencies. A victim agency uploads signed 5 KB documents one at a time over one keep-alive
  HTTPS connection, first alone, then while an attacker agency's ``attackers`` connections (in
  another process) send the hostile packages in a loop as fast as the node refuses them.
  Printed: the victim's p50/p99 latency in both phases and their ratio (target: within 2x),
  how many hostile packages were refused, with which codes, and that none was stored.

Figures drift ±20% run to run on 2 shared cores: compare the ratios, measured in one run.

Usage::

    run_hostile_bench(victim_documents=200, attackers=8)     # what `gateway bench hostile` calls
"""

from __future__ import annotations

import http.client
import json
import ssl
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import click
from lxml import etree

from gateway.bench.common import (
    DOCUMENTS_PATH,
    GATEWAY,
    SPAWN,
    Agency,
    count_documents,
    percentile,
    sign_all,
    start_node,
    stop_node,
    upgrade,
    work_folder,
    write_config,
)
from gateway.dev.hostile import CASES, normal_of_size
from gateway.dev.network import free_port

__all__ = ["HostileBenchResult", "run_hostile_bench"]

#: the issue's target: the victim's latency under attack within this factor of its latency alone
TARGET_LATENCY_RATIO: Final = 2.0


@dataclass(frozen=True)
class HostileBenchResult:
    """What one run measured (also printed)."""

    #: class -> (size in bytes, code, refusal CPU ms, parse-a-normal-package CPU ms)
    refusals: dict[str, tuple[int, str, float, float]]
    #: class -> the code it must be refused with
    expected: dict[str, str]
    victim_alone_p50_ms: float
    victim_alone_p99_ms: float
    victim_attacked_p50_ms: float
    victim_attacked_p99_ms: float
    hostile_sent: int
    hostile_codes: dict[str, int]
    stored_hostile: int
    victim_failures: int
    figures: dict[str, float] = field(default_factory=dict)

    @property
    def p50_ratio(self) -> float:
        return self.victim_attacked_p50_ms / self.victim_alone_p50_ms

    @property
    def p99_ratio(self) -> float:
        return self.victim_attacked_p99_ms / self.victim_alone_p99_ms


def _cpu_ms(work: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.thread_time()
        work()
        times.append(time.thread_time() - t0)
    return statistics.median(times) * 1000


def _refusal_costs(
    config: Path, signed: bytes, packages: dict[str, bytes], echo: Callable[[str], None]
) -> dict[str, tuple[int, str, float, float]]:
    """Per class: (size, the code it was refused with, refusal CPU ms, parse CPU ms)."""
    from gateway.errors import GatewayError
    from gateway.node.container import Node
    from gateway.settings import load_settings
    from gateway.storage import db

    settings = load_settings(config)
    node = Node.from_settings(settings, db.make_engine(settings))  # the verifier as served
    verifier = node.verifier
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=True)
    out: dict[str, tuple[int, str, float, float]] = {}
    for name, data in packages.items():
        codes: list[str] = []

        def refuse(data: bytes = data, codes: list[str] = codes) -> None:
            try:
                report = verifier.verify(data)
            except GatewayError as exc:  # the report form is the norm; a raise is also a code
                codes.append(exc.code)
                return
            error = report.first_error()
            codes.append(error.code if error else "ACCEPTED")

        normal = normal_of_size(signed, len(data))
        repeat = 3 if len(data) > 1_000_000 else 7
        refusal = _cpu_ms(refuse, repeat)

        def parse_normal(normal: bytes = normal) -> object:
            return etree.fromstring(normal, parser)

        parse = _cpu_ms(parse_normal, repeat)
        out[name] = (len(data), codes[0], refusal, parse)
        echo(f"  measured {name}: {codes[0]}")
    node.engine.dispose()
    return out


# --- latency under attack ----------------------------------------------------------------------


def _connection(port: int, root_cert: Path, cert: Path, key: Path) -> http.client.HTTPSConnection:
    context = ssl.create_default_context(cafile=str(root_cert))
    context.load_cert_chain(str(cert), str(key))
    return http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=120)


def _post(conn: http.client.HTTPSConnection, body: bytes) -> tuple[int, bytes]:
    conn.request("POST", DOCUMENTS_PATH, body=body, headers={"Content-Type": "application/xml"})
    response = conn.getresponse()
    return response.status, response.read()


def _attacker_process(
    port: int,
    root_cert: str,
    cert: str,
    key: str,
    packages: list[bytes],
    connections: int,
    stop: Any,
    results: Any,
) -> None:
    """``connections`` threads, each sending the hostile packages round robin until ``stop``."""
    codes: Counter[str] = Counter()
    sent = [0]
    lock = threading.Lock()

    def loop(offset: int) -> None:
        conn = _connection(port, Path(root_cert), Path(cert), Path(key))
        n = offset
        while not stop.is_set():
            body = packages[n % len(packages)]
            n += 1
            try:
                status, answer = _post(conn, body)
                code = json.loads(answer).get("code", str(status)) if status >= 400 else "OK"
            except (OSError, http.client.HTTPException, ValueError) as exc:
                code = type(exc).__name__
                conn.close()
                conn = _connection(port, Path(root_cert), Path(cert), Path(key))
            with lock:
                codes[code] += 1
                sent[0] += 1
        conn.close()

    threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results.put((sent[0], dict(codes)))


def _victim(
    port: int, root_cert: Path, cert: Path, key: Path, documents: Sequence[bytes]
) -> tuple[list[float], int]:
    conn = _connection(port, root_cert, cert, key)
    latencies: list[float] = []
    failures = 0
    try:
        for body in documents:
            t0 = time.perf_counter()
            status, _ = _post(conn, body)
            latencies.append(time.perf_counter() - t0)
            failures += status != 202
    finally:
        conn.close()
    return latencies, failures


def _ms_at(values: Sequence[float], fraction: float) -> float:
    return percentile(sorted(values), fraction) * 1000


def run_hostile_bench(
    victim_documents: int = 200,
    attackers: int = 8,
    *,
    classes: Sequence[str] | None = None,
    keep: Path | None = None,
    echo: Callable[[str], None] = click.echo,
) -> HostileBenchResult:
    """Measure refusal costs in-process, then the victim's latency alone and under attack.

    ``classes`` picks some of :data:`gateway.dev.hostile.CASES` by name (default: all of them).
    """
    from gateway.dev.pki import init_ca, issue

    with work_folder(keep, "gw-hostile-") as directory:
        pki = directory / "pki"
        ca = init_ca(pki)
        node_paths = issue(pki, node="bench-node")
        agencies = []
        for n in (1, 2):
            paths = issue(pki, agency=f"000.00.{n:02d}.H49")
            agencies.append(Agency(code=f"000.00.{n:02d}.H49", key=paths.key, cert=paths.cert))
        victim, attacker = agencies
        port = free_port()
        config = write_config(
            directory / "node.toml",
            node_key=node_paths.key,
            node_cert=node_paths.cert,
            agencies=[a.code for a in agencies],
            database=directory / "node.db",
            port=port,
            ca=ca,
            log_level="info",
        )
        upgrade(config)
        warm = 10
        victim_signed, attacker_signed = sign_all(
            agencies, [2 * victim_documents + warm, 1], 5 * 1024
        )
        names = list(CASES) if classes is None else list(classes)
        packages = {name: CASES[name].build(attacker_signed[0]) for name in names}

        echo("refusal cost, in-process (the verifier: the path of ingest and `gateway verify`)")
        refusals = _refusal_costs(config, attacker_signed[0], packages, echo)

        process = start_node([GATEWAY], config, directory / "node.log", port, ca.root_cert)
        try:
            _victim(port, ca.root_cert, victim.cert, victim.key, victim_signed[:warm])
            alone, failures_alone = _victim(
                port,
                ca.root_cert,
                victim.cert,
                victim.key,
                victim_signed[warm : warm + victim_documents],
            )
            stop = SPAWN.Event()
            results: Any = SPAWN.Queue()
            attack = SPAWN.Process(
                target=_attacker_process,
                args=(
                    port,
                    str(ca.root_cert),
                    str(attacker.cert),
                    str(attacker.key),
                    list(packages.values()),
                    attackers,
                    stop,
                    results,
                ),
                daemon=True,
            )
            attack.start()
            time.sleep(2.0)  # the attack reaches full speed before the victim starts
            try:
                attacked, failures_attacked = _victim(
                    port,
                    ca.root_cert,
                    victim.cert,
                    victim.key,
                    victim_signed[warm + victim_documents :],
                )
            finally:
                stop.set()
            sent, codes = results.get(timeout=300)
            attack.join(timeout=30)
        finally:
            stop_node(process)
        stored_hostile = count_documents(directory / "node.db", sender=attacker.code)

        result = HostileBenchResult(
            refusals=refusals,
            expected={name: CASES[name].code for name in names},
            victim_alone_p50_ms=_ms_at(alone, 0.5),
            victim_alone_p99_ms=_ms_at(alone, 0.99),
            victim_attacked_p50_ms=_ms_at(attacked, 0.5),
            victim_attacked_p99_ms=_ms_at(attacked, 0.99),
            hostile_sent=sent,
            hostile_codes=codes,
            stored_hostile=stored_hostile,
            victim_failures=failures_alone + failures_attacked,
        )
        _print(result, echo, attackers=attackers, victim_documents=victim_documents)
        return result


def _print(
    r: HostileBenchResult, echo: Callable[[str], None], *, attackers: int, victim_documents: int
) -> None:
    echo("")
    echo(f"{'class':<52}{'size':>9}  {'code':<25}{'refusal ms':>11}{'parse ms':>9}{'ratio':>9}")
    for name, (size, code, refusal, parse) in r.refusals.items():
        ratio = refusal / parse if parse > 0 else float("inf")
        mark = "" if code == r.expected.get(name) else f"  (expected {r.expected.get(name)})"
        echo(f"{name:<52}{size:>9}  {code:<25}{refusal:>11.2f}{parse:>9.2f}{ratio:>8.2f}x{mark}")
    echo("  (parse ms: lxml parsing a normal signed package of the same size, nothing else)")
    echo("")
    echo(
        f"latency under attack: one victim agency, {victim_documents} signed 5 KB documents "
        f"one at a time; attacker: {attackers} connections sending the classes above in a loop"
    )
    verdict = {True: "PASS", False: "MISS"}
    echo(f"{'figure':<36}{'value':>10}  {'target':<8}{'result':<6}")
    rows = [
        (
            "victim p50 ms alone / attacked",
            f"{r.victim_alone_p50_ms:.1f}/{r.victim_attacked_p50_ms:.1f}",
        ),
        (
            "victim p99 ms alone / attacked",
            f"{r.victim_alone_p99_ms:.1f}/{r.victim_attacked_p99_ms:.1f}",
        ),
    ]
    for name, value in rows:
        echo(f"{name:<36}{value:>10}")
    ok50 = r.p50_ratio <= TARGET_LATENCY_RATIO
    echo(f"{'victim p50 attacked/alone':<36}{r.p50_ratio:>9.2f}x  {'<= 2x':<8}{verdict[ok50]}")
    echo(f"{'victim p99 attacked/alone':<36}{r.p99_ratio:>9.2f}x")
    echo(f"{'hostile packages sent':<36}{r.hostile_sent:>10}")
    echo(
        f"{'hostile packages stored':<36}{r.stored_hostile:>10}  {'0':<8}"
        f"{verdict[r.stored_hostile == 0]}"
    )
    echo(
        f"{'victim failures':<36}{r.victim_failures:>10}  {'0':<8}{verdict[r.victim_failures == 0]}"
    )
    echo(
        "codes the attacker received: "
        + ", ".join(f"{code} x{count}" for code, count in sorted(r.hostile_codes.items()))
    )
