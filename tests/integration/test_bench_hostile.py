"""`gateway bench hostile` runs end to end with tiny numbers (no timing asserted).

What it must show whatever the machine's speed: every hostile class refused with its own code,
in-process and over HTTPS, nothing of the attacker's stored, and the victim's uploads all
accepted while the attack runs.
"""

from __future__ import annotations

import pytest
from benchtable import bench_row

from gateway.bench.hostile import run_hostile_bench
from gateway.dev.hostile import CASES

#: small classes, so the run stays short; the bench itself runs every class by default
CLASSES = (
    "1 500 unknown attributes on Subject (14 KB)",
    "300 namespace declarations, 3 per element",
    "nesting 250 deep",
    "2 MiB text node in Subject",
)


@pytest.mark.slow
def test_hostile_bench_refuses_every_class_and_stores_nothing_of_the_attacker() -> None:
    lines: list[str] = []
    result = run_hostile_bench(victim_documents=8, attackers=2, classes=CLASSES, echo=lines.append)
    out = "\n".join(lines)
    assert {name: code for name, (_, code, _, _) in result.refusals.items()} == {
        name: CASES[name].code for name in CLASSES
    }, out
    assert all(refusal > 0 and parse > 0 for _, _, refusal, parse in result.refusals.values())
    for name in CLASSES:  # size, code, refusal ms, parse ms, ratio; no "(expected ...)"
        row = bench_row(lines, name)
        assert row.cells[1] == CASES[name].code and len(row.cells) == 5, row.line
        assert all(n > 0 for n in row.numbers), row.line

    assert result.hostile_sent > 0
    assert bench_row(lines, "hostile packages sent").values == (result.hostile_sent,)
    assert set(result.hostile_codes) <= {CASES[name].code for name in CLASSES}, out
    stored = bench_row(lines, "hostile packages stored")
    assert (stored.values, stored.verdict) == ((0,), "PASS"), out
    assert result.stored_hostile == 0
    failures = bench_row(lines, "victim failures")
    assert (failures.values, failures.verdict) == ((0,), "PASS"), out
    assert result.victim_failures == 0
    for name in ("victim p50 ms alone / attacked", "victim p99 ms alone / attacked"):
        alone, attacked = bench_row(lines, name).values
        assert alone > 0 and attacked > 0, out
    assert bench_row(lines, "victim p50 attacked/alone").verdict in ("PASS", "MISS"), out
