"""JSON from callers, parsed only after a cheap nesting scan: hostile JSON cannot recurse.

``json.loads`` recurses once per nesting level, so ``[[[[...`` a few thousand deep raises
``RecursionError`` (not a ``ValueError``) after having used the whole C stack budget. Here the
depth is measured first, in a pass that costs about what reading the bytes costs: strings are
blanked out by one regular expression (brackets inside them do not count), everything but the
four bracket bytes is deleted by ``bytes.translate``, and only the brackets left are walked,
stopping at the first one past the limit.

Usage::

    value = loads(body, max_depth=32)   # JSONTooDeep, or ValueError for anything not JSON

Used by the JSON routes of :mod:`gateway.api.app` and by the relay framing (:mod:`adapters.peer`).
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

from gateway.errors import JSONTooDeep

__all__ = ["depth_exceeds", "loads"]

#: a JSON string: quote, then runs of plain bytes or escapes (unrolled: linear, no backtracking)
_STRING: Final = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
#: every byte but the four brackets, for bytes.translate(None, delete=...)
_NOT_BRACKETS: Final = bytes(b for b in range(256) if b not in b"[]{}")
_OPEN: Final = frozenset(b"[{")


def depth_exceeds(data: bytes, max_depth: int) -> bool:
    """True when ``data`` (UTF-8 JSON text) nests arrays and objects deeper than ``max_depth``.

    Usage: ``if depth_exceeds(body, 32): refuse()``.

    Brackets inside strings do not count. Unbalanced input is not judged here (the parser
    refuses it); an unterminated string makes the rest count as brackets, which can only refuse
    text that is not JSON anyway.
    """
    brackets = _STRING.sub(b"", data).translate(None, delete=_NOT_BRACKETS)
    if len(brackets) <= max_depth:
        return False
    depth = 0
    for byte in brackets:
        if byte in _OPEN:
            depth += 1
            if depth > max_depth:
                return True
        else:
            depth -= 1
            if depth < 0:  # more closers than openers: not JSON, the parser will say so
                return False
    return False


def loads(data: bytes, *, max_depth: int) -> Any:
    """Parse UTF-8 JSON ``data`` nested at most ``max_depth`` deep.

    Usage: ``value = loads(body, max_depth=32)``.

    Raises :class:`JSONTooDeep` past the depth, and ``ValueError`` (``UnicodeDecodeError``,
    ``json.JSONDecodeError``, an integer of more than 4300 digits) for anything else that is
    not JSON; never ``RecursionError``.
    """
    if depth_exceeds(data, max_depth):
        raise JSONTooDeep(
            f"the JSON nests deeper than {max_depth} levels", detail={"limit": max_depth}
        )
    # JSON between systems is UTF-8 (RFC 8259 section 8.1); json.loads(bytes) would also guess
    # UTF-16 and UTF-32, where the scan above does not see the brackets
    return json.loads(data.decode("utf-8"))
