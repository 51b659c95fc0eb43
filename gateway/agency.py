"""QCVN 102:2016 agency codes (mã định danh): ``VVV.ZZ.YY.Lnn``, most significant part last.

``Lnn`` is the level-1 unit (``G..`` ministries and central bodies, ``H..`` provinces), ``YY``
level 2, ``ZZ`` level 3, ``VVV`` level 4; unused levels are zeros.

Usage::

    code = AgencyCode.parse("000.00.15.H51")
    code.level          # 2
    code.parent         # AgencyCode('000.00.00.H51')
    code.root.is_ancestor_of(code)  # True
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import total_ordering
from typing import Final

from gateway.errors import AgencyCodeError

__all__ = ["AgencyCode"]

# ASCII digits only: ``\d`` would also take Arabic-Indic and other Unicode digits, so that
# "٠٠٠.٠٠.٠٠.H٤٩" parsed, differed from "000.00.00.H49" and claimed level 4.
_PATTERN = re.compile(r"([0-9]{3})\.([0-9]{2})\.([0-9]{2})\.([A-Z][0-9]{2})")
_ALPHABET: Final = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ.")
#: values quoted in errors are clipped: an error message never grows with the input
_QUOTE_LIMIT: Final = 40


def _clip(text: str) -> str:
    return text if len(text) <= _QUOTE_LIMIT else text[:_QUOTE_LIMIT] + "..."


def _fault(text: str) -> str:
    """Why ``text`` (not a code) is refused, in words a DMS developer can act on."""
    if text and (text[0].isspace() or text[-1].isspace()):
        # str.isspace: XML whitespace and NBSP, ideographic space, line separators, ...
        return "leading or trailing whitespace"
    if not set(text) <= _ALPHABET:
        return "a character outside [0-9A-Z.]"
    return "not of the form VVV.ZZ.YY.Lnn"


@total_ordering
@dataclass(frozen=True, slots=True)
class AgencyCode:
    """A validated agency code. Build it with :meth:`parse`; the fields are its four parts."""

    #: level 4 (three digits; ``000`` when unused)
    l4: str
    #: level 3 (two digits; ``00`` when unused)
    l3: str
    #: level 2 (two digits; ``00`` when unused)
    l2: str
    #: level 1: a letter and two digits (``H49``, ``G22``)
    l1: str

    @classmethod
    def parse(cls, text: str) -> AgencyCode:
        """Parse exactly ``VVV.ZZ.YY.Lnn``; raise :class:`AgencyCodeError` naming the fault.

        Usage: ``AgencyCode.parse("000.00.00.H49")``. Nothing is stripped or folded: a code
        with leading or trailing whitespace of any kind (a space, a newline, a no-break space
        U+00A0), a lower-case letter or any character outside ``[0-9A-Z.]`` is refused
        (``detail["reason"]`` says which). Tolerating ``"000.00.00.H49\u00a0"`` here would
        route, store and show a code that other parsers read as a different agency.
        """
        if not isinstance(text, str):
            raise AgencyCodeError(detail={"value": _clip(repr(text)), "reason": "not a string"})
        match = _PATTERN.fullmatch(text)
        if match is None:
            reason = _fault(text)
            raise AgencyCodeError(
                f"{_clip(text)!r} is not a QCVN 102:2016 agency code ({reason}; expected "
                "VVV.ZZ.YY.Lnn, e.g. 000.00.00.H49)",
                detail={"value": _clip(text), "reason": reason},
            )
        l4, l3, l2, l1 = match.groups()
        return cls(l4=l4, l3=l3, l2=l2, l1=l1)

    @classmethod
    def is_valid(cls, text: str) -> bool:
        """True when ``text`` is exactly an agency code (as :meth:`parse` accepts it)."""
        return isinstance(text, str) and _PATTERN.fullmatch(text) is not None

    @classmethod
    def is_near_miss(cls, text: str) -> bool:
        """True when ``text`` is not a code but would be after trimming or folding it.

        Usage: ``AgencyCode.is_near_miss("000.00.00.H49\u00a0")`` -> True. Surrounding
        whitespace, lower case and compatibility forms (full-width digits) are such misses:
        a certificate or field carrying one claims a code in a form the gateway refuses, and
        is refused, not read as "no code".
        """
        if not isinstance(text, str) or _PATTERN.fullmatch(text) is not None:
            return False
        folded = unicodedata.normalize("NFKC", text).strip().upper()
        return _PATTERN.fullmatch(folded) is not None

    def __str__(self) -> str:
        return f"{self.l4}.{self.l3}.{self.l2}.{self.l1}"

    def __repr__(self) -> str:
        return f"AgencyCode({str(self)!r})"

    @property
    def level(self) -> int:
        """1 for a ministry or province, 2 for its departments, 3 and 4 below them."""
        if self.l4 != "000":
            return 4
        if self.l3 != "00":
            return 3
        if self.l2 != "00":
            return 2
        return 1

    @property
    def parent(self) -> AgencyCode | None:
        """The code one level up (the most specific non-zero part zeroed); None at level 1."""
        if self.l4 != "000":
            return AgencyCode(l4="000", l3=self.l3, l2=self.l2, l1=self.l1)
        if self.l3 != "00":
            return AgencyCode(l4="000", l3="00", l2=self.l2, l1=self.l1)
        if self.l2 != "00":
            return AgencyCode(l4="000", l3="00", l2="00", l1=self.l1)
        return None

    @property
    def root(self) -> AgencyCode:
        """The level-1 unit this code belongs to (``000.00.00.Lnn``)."""
        return AgencyCode(l4="000", l3="00", l2="00", l1=self.l1)

    @property
    def is_central(self) -> bool:
        """True for ministries and central bodies (``G..``)."""
        return self.l1.startswith("G")

    @property
    def is_provincial(self) -> bool:
        """True for provinces and centrally run cities (``H..``)."""
        return self.l1.startswith("H")

    def ancestors(self) -> list[AgencyCode]:
        """Every code above this one, nearest first."""
        out: list[AgencyCode] = []
        node = self.parent
        while node is not None:
            out.append(node)
            node = node.parent
        return out

    def is_ancestor_of(self, other: AgencyCode) -> bool:
        """True when ``other`` lies strictly below this code."""
        return self in other.ancestors()

    def _key(self) -> tuple[str, str, str, str]:
        return (self.l1, self.l2, self.l3, self.l4)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, AgencyCode):
            return NotImplemented
        return self._key() < other._key()
