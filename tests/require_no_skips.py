"""Fail CI when a test was skipped without an allowed reason, or the PostgreSQL cases did not run.

Usage::

    GATEWAY_TEST_POSTGRES_URL=postgresql+psycopg://postgres@127.0.0.1:5432/test \\
        python -m pytest --junitxml=report.xml
    python tests/require_no_skips.py report.xml --slowest 25

Reads a pytest JUnit XML report. Exits 1 when any test was skipped unless :data:`ALLOWED` lists
it (a test id pattern and the reason it may skip for), or when no test whose id contains
"postgresql" was in the report at all (the storage tests were not collected: a run that never
tried PostgreSQL is not a run on PostgreSQL); exits 2 when the report cannot be read; 0
otherwise. An expected failure (xfail) is not a skip. ``--slowest N`` first prints the N
slowest tests (setup, call and teardown together).

A skip hides a test that CI believes ran: a PostgreSQL case skipped because the server was
unreachable, an interop test skipped because ``openssl`` is missing. Add an entry to
:data:`ALLOWED` only for a skip that is a verdict about the input, never about the machine.
"""

from __future__ import annotations

import argparse
import fnmatch
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Allowed:
    """A skip CI accepts: a test id pattern (fnmatch), the skip message it must give, and why."""

    pattern: str
    reason: str
    why: str

    def admits(self, test_id: str, message: str) -> bool:
        return fnmatch.fnmatchcase(test_id, self.pattern) and self.reason in message


#: the skips CI accepts; anything else fails the build
ALLOWED: tuple[Allowed, ...] = (
    Allowed(
        pattern="tests.unit.test_schema::test_lxml_and_xmlschema_agree[[]*[]]",
        reason="not well-formed: refused before any schema",
        why="a file of tests/data/invalid that is not XML has no schema verdict to compare",
    ),
)

#: part of a test id that must be in the report (the storage tests on PostgreSQL)
REQUIRED = "postgresql"


def case_id(case: ET.Element) -> str:
    """``tests.integration.test_storage::test_x[postgresql]``, from classname and name."""
    return f"{case.get('classname', '')}::{case.get('name', '')}"


def skipped(case: ET.Element) -> ET.Element | None:
    """The ``<skipped>`` of a test that was skipped (an expected failure is not a skip)."""
    for child in case.findall("skipped"):
        if child.get("type") != "pytest.xfail":
            return child
    return None


def print_slowest(cases: list[ET.Element], count: int) -> None:
    timed = sorted(cases, key=lambda c: float(c.get("time") or 0), reverse=True)[:count]
    total = sum(float(c.get("time") or 0) for c in cases)
    print(f"== {len(timed)} slowest of {len(cases)} tests ({total:.0f} s of test time in all)")
    for case in timed:
        print(f"{float(case.get('time') or 0):8.2f} s  {case_id(case)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="pytest --junitxml file")
    parser.add_argument("--slowest", type=int, default=0, metavar="N", help="print N slowest")
    args = parser.parse_args(argv)
    try:
        root = ET.parse(args.report).getroot()  # our own pytest's report, not untrusted input
    except (OSError, ET.ParseError) as exc:
        print(f"error: cannot read {args.report}: {exc}", file=sys.stderr)
        return 2
    cases = list(root.iter("testcase"))
    if args.slowest:
        print_slowest(cases, args.slowest)

    allowed, refused = [], []
    for case in cases:
        skip = skipped(case)
        if skip is None:
            continue
        name, message = case_id(case), skip.get("message", "")
        if any(entry.admits(name, message) for entry in ALLOWED):
            allowed.append(name)
        else:
            refused.append((name, message))
    for name, message in refused:
        print(f"skipped: {name}: {message}", file=sys.stderr)
    status = 0
    if refused:
        print(
            f"error: {len(refused)} tests were skipped for a reason not allowed in "
            f"{Path(__file__).name} (ALLOWED)",
            file=sys.stderr,
        )
        status = 1
    if not any(REQUIRED in case_id(c) for c in cases):
        print(f"error: no {REQUIRED} test in {args.report}", file=sys.stderr)
        status = 1
    if status == 0:
        print(f"ok: {len(cases)} tests; {len(allowed)} skipped, each for a reason in ALLOWED")
    return status


if __name__ == "__main__":
    sys.exit(main())
