"""`gateway bench network` runs end to end with tiny numbers and prints its rows (no timing)."""

from __future__ import annotations

import pytest

from gateway.bench.network import run_network_bench

ROWS = (
    "baseline: commune ingest docs/s",
    "baseline: commune CPU ms/doc",
    "end-to-end documents/s",
    "end-to-end / baseline",
    "latency p50 ms",
    "latency p99 ms",
    "backlog pushed",
    "drain documents/s",
    "drained (at the district)",
    "failures",
    "[delivery] batch_size=",
    "h49-bachdang ",
    "h49-halong ",
    "h49 ",
    "central ",
    "total ",
)


@pytest.mark.slow
def test_network_bench_prints_its_rows_and_drains_everything() -> None:
    lines: list[str] = []
    result = run_network_bench(
        documents=30, backlog=60, clients=2, baseline_documents=8, echo=lines.append
    )
    out = "\n".join(lines)
    for row in ROWS:
        assert any(line.startswith(row) for line in lines), f"no {row!r} row in:\n{out}"
    assert "PASS" in out or "MISS" in out
    assert result.failures == 0, out
    assert result.arrived == 30
    assert result.backlog_pushed == 60
    assert result.drained == result.backlog_pushed, out
    assert set(result.cpu_ms) == {"h49-bachdang", "h49-halong", "h49", "central", "total"}
    assert result.cpu_ms["total"] > 0 and result.baseline_cpu_ms > 0
