"""Read the table a benchmark prints, as a user reads it: for tests that can fail.

Columns are separated by two spaces or more: the row's name, its value (a number, ``1.23x``, or
``a/b``), and for a row with a target, the target and PASS or MISS.

Usage::

    row = bench_row(lines, "failures")
    assert row.values == (0,) and row.verdict == "PASS"
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["BenchRow", "bench_row"]

_GAP = re.compile(r"\s{2,}")
_NUMBER = re.compile(r"^-?(\d+(\.\d*)?|nan|inf)x?$")


@dataclass(frozen=True)
class BenchRow:
    """One printed row: its name and the cells after it."""

    line: str
    name: str
    cells: tuple[str, ...]

    @property
    def values(self) -> tuple[float, ...]:
        """The value cell as numbers (``1.2/3.4`` is two); fails unless each is finite."""
        return self._numbers(self.cells[0]) if self.cells else ()

    @property
    def numbers(self) -> tuple[float, ...]:
        """Every cell that is a number, in order (codes and words skipped), each finite."""
        return tuple(n for cell in self.cells if _NUMBER.match(cell) for n in self._numbers(cell))

    @property
    def verdict(self) -> str:
        """PASS or MISS for a row with a target, "" otherwise."""
        last = self.cells[-1] if self.cells else ""
        return last if last in ("PASS", "MISS") else ""

    def _numbers(self, cell: str) -> tuple[float, ...]:
        try:
            numbers = tuple(float(part) for part in cell.removesuffix("x").split("/"))
        except ValueError:
            raise AssertionError(f"not a number: {cell!r} in {self.line!r}") from None
        assert all(math.isfinite(n) for n in numbers), f"not finite: {self.line!r}"
        return numbers


def bench_row(lines: Sequence[str], name: str) -> BenchRow:
    """The first printed row whose name starts with ``name``; fails when there is none."""
    for line in lines:
        if line.startswith(name):
            first, *rest = _GAP.split(line.strip())
            return BenchRow(line=line, name=first, cells=tuple(rest))
    text = "\n".join(lines)
    raise AssertionError(f"no {name!r} row in:\n{text}")
