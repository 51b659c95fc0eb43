"""`gateway bench node` runs end to end with tiny numbers: every figure printed and a number,
nothing failed, every document stored. No timing is asserted: PASS and MISS are both fine."""

from __future__ import annotations

import pytest
from benchtable import bench_row

from gateway.bench.node import run_node_bench

#: rows whose value is a positive measurement
MEASURED = (
    "documents/s",
    "latency p50 ms",
    "latency p99 ms",
    "node CPU ms/doc",
    "floor CPU ms/doc",
    "node/floor CPU",
    "node cores busy",
    "floor: verify alone CPU ms/doc",
    "floor CPU ms/doc before / after",
    "client CPU ms/doc",
)


@pytest.mark.slow
def test_node_bench_measures_every_figure_and_stores_every_document() -> None:
    lines: list[str] = []
    result = run_node_bench(documents=12, clients=2, warm=1, floor_documents=10, echo=lines.append)
    out = "\n".join(lines)
    for name in MEASURED:
        row = bench_row(lines, name)
        assert row.values and all(v > 0 for v in row.values), row.line
    for name in ("documents/s", "node/floor CPU"):
        assert bench_row(lines, name).verdict in ("PASS", "MISS"), out
    assert bench_row(lines, "latency p99 ms").values >= bench_row(lines, "latency p50 ms").values

    failures = bench_row(lines, "failures")
    assert (failures.values, failures.verdict) == ((0,), "PASS"), out
    assert result.failures == 0, out
    assert result.documents == 12
    # the pushed documents and one warm-up per client, read back from the node's database
    assert result.stored == 12 + 2
    assert bench_row(lines, "stored (incl. warm-up)").values == (14,)
    assert bench_row(lines, "node/floor CPU").values == (round(result.ratio, 2),)
