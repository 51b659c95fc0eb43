"""`gateway bench network` runs end to end with tiny numbers: every figure printed and a number,
every document arrived, the whole backlog drained, nothing failed. No timing is asserted: PASS
and MISS are both fine."""

from __future__ import annotations

import pytest
from benchtable import bench_row

from gateway.bench.network import PATH, run_network_bench

#: rows whose value is a positive measurement
MEASURED = (
    "baseline: commune ingest docs/s",
    "baseline: commune CPU ms/doc",
    "end-to-end documents/s",
    "end-to-end / baseline",
    "latency p50 ms",
    "latency p99 ms",
    "e2e push into the commune docs/s",
    "backlog push docs/s",
    "drain documents/s",
    "drain docs/s (first -> last)",
)


@pytest.mark.slow
def test_network_bench_delivers_everything_and_measures_every_figure() -> None:
    lines: list[str] = []
    result = run_network_bench(
        documents=30, backlog=60, clients=2, baseline_documents=8, echo=lines.append
    )
    out = "\n".join(lines)
    for name in MEASURED:
        row = bench_row(lines, name)
        assert row.values and all(v > 0 for v in row.values), row.line
    for name in ("end-to-end documents/s", "drain documents/s"):
        assert bench_row(lines, name).verdict in ("PASS", "MISS"), out
    assert bench_row(lines, "latency p99 ms").values >= bench_row(lines, "latency p50 ms").values
    assert any(line.startswith("[delivery] batch_size=") for line in lines), out

    failures = bench_row(lines, "failures")
    assert (failures.values, failures.verdict) == ((0,), "PASS"), out
    assert result.failures == 0, out
    assert result.arrived == 30
    assert result.backlog_pushed == 60
    assert bench_row(lines, "backlog pushed").values == (60,)
    drained = bench_row(lines, "drained (at the district)")
    assert (drained.values, drained.verdict) == ((60,), "PASS"), out
    assert result.drained == 60

    # CPU per node: to the last arrival, until quiet, cores busy, and (for the two nodes the
    # backlog passes) the drain
    for node in (*PATH, "total"):
        numbers = bench_row(lines, f"{node} ").numbers
        assert len(numbers) in (3, 4) and all(n >= 0 for n in numbers), out
    assert set(result.cpu_ms) == {*PATH, "total"}
    assert result.cpu_ms["total"] > 0 and result.baseline_cpu_ms > 0
    assert result.cpu_ms_quiet["total"] >= result.cpu_ms["total"]
