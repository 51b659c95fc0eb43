"""Hostile-XML-safe parsing: every edXML byte string enters the gateway through here.

Checks, in order, before any schema or signature work:

1. size cap on the raw bytes;
2. the prolog is scanned *before* parsing: any DOCTYPE is refused, classified so the caller
   learns what was attempted (external entity, nested entity expansion, entity declaration, or a
   bare DOCTYPE), and nothing in it is ever resolved or expanded;
3. lxml parses with entity resolution, network access and DTD loading off;
4. depth and element-count caps.

Usage::

    root = parse_bytes(data, XMLLimits(max_bytes=60_000_000))

.. warning:: Never parse untrusted edXML with a bare ``etree.fromstring``: libxml2's defaults
   resolve internal entities, and ``huge_tree`` (needed for 50 MB attachments) lifts its
   amplification guards.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lxml import etree

from gateway.errors import (
    DoctypeForbidden,
    EntityDeclarationForbidden,
    EntityExpansionForbidden,
    ExternalEntityForbidden,
    MalformedXML,
    UsageError,
    XMLTooDeep,
    XMLTooLarge,
    XMLTooManyElements,
)

__all__ = [
    "DEFAULT_LIMITS",
    "INTERNAL_PARSER",
    "XMLLimits",
    "parse_bytes",
    "read_limited",
]

# libxml2 refuses a single text node above 10 MB unless huge_tree is set; a 50 MB attachment
# is one ~67 MB base64 text node. huge_tree is safe here only because DTDs never reach lxml.
_HUGE_TREE_ABOVE = 8 * 1024 * 1024


@dataclass(frozen=True, kw_only=True, slots=True)
class XMLLimits:
    """Caps applied to every package before it is parsed or while it is parsed."""

    #: largest package accepted, in bytes (50 MB of attachments is ~67 MB of base64)
    max_bytes: int = 80 * 1024 * 1024
    #: deepest element nesting accepted (the edXML tree is about 8 deep)
    max_depth: int = 64
    #: most nodes accepted in one package: elements, comments and processing instructions
    max_elements: int = 100_000
    #: most attributes on one element
    max_attributes: int = 32
    #: most namespace declarations on one element
    max_namespaces_per_element: int = 16
    #: most namespace declarations in the whole package
    max_namespaces: int = 256
    #: largest text node or attribute value in bytes; attachment payloads
    #: (``ContentTransferEncoded``) are bounded by max_bytes alone
    max_text_bytes: int = 1024 * 1024


DEFAULT_LIMITS = XMLLimits()

_ENTITY_DECL = re.compile(
    rb"<!ENTITY\s+(%\s+)?([^\s>]+)\s+(?:(SYSTEM|PUBLIC)\b|(\"[^\"]*\"|'[^']*'))", re.DOTALL
)
_ENTITY_REF = re.compile(rb"[&%][A-Za-z_:][\w.:-]*;")
_DOCTYPE_EXTERNAL_ID = re.compile(rb"<!DOCTYPE\s+[^\s\[>]+\s+(SYSTEM|PUBLIC)\b")


def _prolog_for_scan(data: bytes) -> bytes:
    """The bytes to scan for a DOCTYPE, transcoded to UTF-8 when the package is UTF-16/32."""
    head = data[:4]
    for bom, codec in (
        (b"\x00\x00\xfe\xff", "utf-32-be"),
        (b"\xff\xfe\x00\x00", "utf-32-le"),
        (b"\xfe\xff", "utf-16-be"),
        (b"\xff\xfe", "utf-16-le"),
    ):
        if head.startswith(bom):
            return data.decode(codec, errors="replace").encode("utf-8")
    if head in (b"\x00<\x00?", b"\x00<\x00!"):
        return data.decode("utf-16-be", errors="replace").encode("utf-8")
    if head in (b"<\x00?\x00", b"<\x00!\x00"):
        return data.decode("utf-16-le", errors="replace").encode("utf-8")
    return data


def _find_doctype(data: bytes) -> bytes | None:
    """Return the DOCTYPE declaration (with its internal subset) if the prolog has one.

    Walks the prolog only: XML declaration, processing instructions, comments and white space
    may precede the root element; a DOCTYPE can stand nowhere else.
    """
    text = _prolog_for_scan(data)
    pos = 0
    if text.startswith(b"\xef\xbb\xbf"):
        pos = 3
    n = len(text)
    while pos < n:
        while pos < n and text[pos] in b" \t\r\n":
            pos += 1
        if text.startswith(b"<?", pos):
            end = text.find(b"?>", pos + 2)
            if end < 0:
                return None
            pos = end + 2
        elif text.startswith(b"<!--", pos):
            end = text.find(b"-->", pos + 4)
            if end < 0:
                return None
            pos = end + 3
        elif text.startswith(b"<!DOCTYPE", pos) or text.startswith(b"<!doctype", pos):
            # The declaration ends at the first '>' after the internal subset's ']' (if any).
            bracket = text.find(b"[", pos)
            close = text.find(b">", pos)
            if bracket != -1 and (close == -1 or bracket < close):
                end_subset = text.find(b"]", bracket)
                close = text.find(b">", end_subset if end_subset != -1 else bracket)
            return text[pos : (close + 1 if close != -1 else n)]
        else:
            return None
    return None


def _refuse_doctype(doctype: bytes) -> None:
    """Raise the most specific refusal for a DOCTYPE declaration."""
    detail: dict[str, object] = {}
    entities = _ENTITY_DECL.findall(doctype)
    if _DOCTYPE_EXTERNAL_ID.search(doctype) or any(m[2] for m in entities):
        names = [m[1].decode("utf-8", "replace") for m in entities if m[2]]
        detail["entities"] = names
        raise ExternalEntityForbidden(
            "the package declares an external entity or DTD; it is refused and never fetched",
            detail=detail,
        )
    if entities:
        detail["entities"] = [m[1].decode("utf-8", "replace") for m in entities]
        if any(_ENTITY_REF.search(m[3]) for m in entities):
            raise EntityExpansionForbidden(
                "the package declares entities that expand other entities (billion laughs); "
                "refused and never expanded",
                detail=detail,
            )
        raise EntityDeclarationForbidden(
            "the package declares an internal entity (quadratic blowup risk); refused and "
            "never expanded",
            detail=detail,
        )
    raise DoctypeForbidden("a DOCTYPE declaration is not allowed in an edXML package")


def _parser(huge: bool) -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=huge,
        collect_ids=False,
        remove_blank_text=False,
    )


_PARSER = _parser(False)
_HUGE_PARSER = _parser(True)
#: For re-parsing the gateway's own serialisation of an already-vetted tree (signxml's copies).
INTERNAL_PARSER = _HUGE_PARSER


def parse_bytes(data: bytes, limits: XMLLimits = DEFAULT_LIMITS) -> etree._Element:
    """Parse untrusted package bytes and return the root element, or raise an XMLError.

    Malformed input raises :class:`MalformedXML` with ``detail = {line, column, reason}``.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise UsageError("parse_bytes takes bytes")
    data = bytes(data)
    if len(data) > limits.max_bytes:
        raise XMLTooLarge(
            f"the package is {len(data)} bytes; this node accepts at most {limits.max_bytes}",
            detail={"size": len(data), "limit": limits.max_bytes},
        )
    if not data.strip():
        raise MalformedXML("the package is empty", detail={"line": 1, "column": 1})
    doctype = _find_doctype(data)
    if doctype is not None:
        _refuse_doctype(doctype)
    parser = _HUGE_PARSER if len(data) > _HUGE_TREE_ABOVE else _PARSER
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        line, column = exc.position if exc.position else (exc.lineno or 0, 0)
        reason = (exc.msg or str(exc)).split(", line ")[0]
        raise MalformedXML(
            f"not well-formed XML at line {line}, column {column}: {reason}",
            detail={"line": line, "column": column, "reason": reason},
        ) from None
    docinfo: Any = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None:
        # The prolog scan should have caught it; refuse anyway, never use it.
        raise DoctypeForbidden("a DOCTYPE declaration is not allowed in an edXML package")
    _check_shape(root, limits)
    return root


_COUNT_ELEMENTS = etree.XPath("count(//*)")


@functools.lru_cache(maxsize=8)
def _deeper_than(depth: int) -> etree.XPath:
    # An element at depth + 1 exists iff the path of that many "*" steps matches something.
    return etree.XPath("boolean(" + "/*" * (depth + 1) + ")")


def _check_shape(root: etree._Element, limits: XMLLimits) -> None:
    # Both questions are answered by libxml2's XPath engine in C, not by a Python walk.
    count = int(_COUNT_ELEMENTS(root))  # type: ignore[arg-type]  # count() is a float
    if count > limits.max_elements:
        raise XMLTooManyElements(
            f"{count} elements; at most {limits.max_elements} accepted",
            detail={"count": count, "limit": limits.max_elements},
        )
    if _deeper_than(limits.max_depth)(root):
        raise XMLTooDeep(
            f"elements nest deeper than {limits.max_depth}", detail={"limit": limits.max_depth}
        )


def read_limited(path: Path, limits: XMLLimits = DEFAULT_LIMITS) -> bytes:
    """Read a file, refusing it before reading if it exceeds the size cap."""
    try:
        size = path.stat().st_size
        if size > limits.max_bytes:
            raise XMLTooLarge(
                f"{path} is {size} bytes; at most {limits.max_bytes} accepted",
                detail={"size": size, "limit": limits.max_bytes},
            )
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
