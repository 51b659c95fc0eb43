"""`gateway bench node` runs end to end with tiny numbers and prints its rows (no timing)."""

from __future__ import annotations

import pytest

from gateway.bench.node import run_node_bench

ROWS = (
    "documents/s",
    "latency p50 ms",
    "latency p99 ms",
    "node CPU ms/doc",
    "floor CPU ms/doc",
    "node/floor CPU",
    "client CPU ms/doc",
    "failures",
)


@pytest.mark.slow
def test_node_bench_prints_its_rows() -> None:
    lines: list[str] = []
    result = run_node_bench(documents=12, clients=2, warm=1, floor_documents=10, echo=lines.append)
    out = "\n".join(lines)
    for row in ROWS:
        assert any(line.startswith(row) for line in lines), f"no {row!r} row in:\n{out}"
    assert "PASS" in out or "MISS" in out
    assert result.failures == 0, out
    assert result.documents == 12
    assert result.stored == 12 + 2  # the pushed documents and one warm-up per client
    assert result.node_cpu_ms > 0 and result.floor_cpu_ms > 0
