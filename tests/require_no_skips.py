"""Fail CI when the PostgreSQL cases of the storage tests did not run.

Usage::

    GATEWAY_TEST_POSTGRES_URL=postgresql+psycopg://postgres@127.0.0.1:5432/test \\
        python -m pytest --junitxml=report.xml
    python tests/require_no_skips.py report.xml

Reads a pytest JUnit XML report; exits 1 when a test whose id contains "postgresql" was skipped
(the variable was unset or the server unreachable at setup), or when no such test was in the
report at all (the storage tests were not collected); exits 2 when the report cannot be read;
0 otherwise. ``--pattern`` checks another part of the test id instead.
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def case_id(case: ET.Element) -> str:
    """``tests.integration.test_storage::test_x[postgresql]``, from classname and name."""
    return f"{case.get('classname', '')}::{case.get('name', '')}"


def skipped(case: ET.Element) -> ET.Element | None:
    """The ``<skipped>`` of a test that was skipped (an expected failure is not a skip)."""
    for child in case.findall("skipped"):
        if child.get("type") != "pytest.xfail":
            return child
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="pytest --junitxml file")
    parser.add_argument("--pattern", default="postgresql", help="part of the test id to check")
    args = parser.parse_args(argv)
    try:
        root = ET.parse(args.report).getroot()  # our own pytest's report, not untrusted input
    except (OSError, ET.ParseError) as exc:
        print(f"error: cannot read {args.report}: {exc}", file=sys.stderr)
        return 2
    cases = [c for c in root.iter("testcase") if args.pattern in case_id(c)]
    if not cases:
        print(f"error: no {args.pattern} test in {args.report}", file=sys.stderr)
        return 1
    missed = [(case_id(c), s.get("message", "")) for c in cases if (s := skipped(c)) is not None]
    for name, reason in missed:
        print(f"skipped: {name}: {reason}", file=sys.stderr)
    if missed:
        print(
            f"error: {len(missed)} of {len(cases)} {args.pattern} tests were skipped",
            file=sys.stderr,
        )
        return 1
    print(f"ok: {len(cases)} {args.pattern} tests ran, none skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
