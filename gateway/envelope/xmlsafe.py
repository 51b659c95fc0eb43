"""Hostile-XML-safe parsing: every edXML byte string enters the gateway through here.

Checks, in order, before any schema or signature work:

1. size cap on the raw bytes;
2. the prolog is scanned *before* parsing: any DOCTYPE is refused, classified so the caller
   learns what was attempted (external entity, nested entity expansion, entity declaration, or a
   bare DOCTYPE), and nothing in it is ever resolved or expanded;
3. lxml parses with entity resolution, network access and DTD loading off, while one pass
   counts the budgets of :class:`XMLLimits` (nodes including comments and processing
   instructions, depth, attributes and namespace declarations per element, namespace
   declarations in all, text size) and stops at the first one exceeded, so a refused package
   costs about what parsing its first ``max_elements`` nodes costs and is never built whole.

Usage::

    root = parse_bytes(data, XMLLimits(max_bytes=60_000_000))

.. warning:: Never parse untrusted edXML with a bare ``etree.fromstring``: libxml2's defaults
   resolve internal entities, and ``huge_tree`` (needed for 50 MB attachments) lifts its
   amplification guards.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NoReturn

from lxml import etree

from gateway.envelope.model import EDXML_NS
from gateway.errors import (
    DoctypeForbidden,
    EntityDeclarationForbidden,
    EntityExpansionForbidden,
    ExternalEntityForbidden,
    MalformedXML,
    UndeclaredPrefix,
    UsageError,
    XMLTextTooLarge,
    XMLTooDeep,
    XMLTooLarge,
    XMLTooManyAttributes,
    XMLTooManyElements,
    XMLTooManyNamespaces,
)

__all__ = [
    "DEFAULT_LIMITS",
    "INTERNAL_PARSER",
    "KNOWN_PREFIXES",
    "XMLLimits",
    "declare_missing",
    "parse_bytes",
    "parse_declaring",
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
    max_elements: int = 20_000
    #: most attributes on one element
    max_attributes: int = 32
    #: most namespace declarations on one element
    max_namespaces_per_element: int = 16
    #: most namespace declarations in the whole package
    max_namespaces: int = 256
    #: largest text node, attribute value, comment or processing instruction, in characters;
    #: attachment payloads (``{edXML}ContentTransferEncoded``) are bounded by max_bytes alone
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


_PARSER_OPTIONS: dict[str, Any] = {
    "resolve_entities": False,
    "no_network": True,
    "load_dtd": False,
    "dtd_validation": False,
    "collect_ids": False,
    "remove_blank_text": False,
}


def _parser(huge: bool) -> etree.XMLParser:
    return etree.XMLParser(huge_tree=huge, **_PARSER_OPTIONS)


#: For re-parsing the gateway's own serialisation of an already-vetted tree (signxml's copies).
INTERNAL_PARSER = _parser(True)


def parse_bytes(data: bytes, limits: XMLLimits = DEFAULT_LIMITS) -> etree._Element:
    """Parse untrusted package bytes and return the root element, or raise an XMLError.

    Usage: ``root = parse_bytes(body, settings.limits.xml_limits())``

    Malformed input raises :class:`MalformedXML` with ``detail = {line, column, reason}``; a
    budget exceeded raises its own error (see :class:`XMLLimits`) with ``detail = {count or
    size, limit, line}``. Budgets are checked while parsing, in document order, and the first
    one exceeded stops the parse: a refused package never becomes a whole tree.
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
    root = _parse_within_budgets(data, limits)
    docinfo: Any = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None:
        # The prolog scan should have caught it; refuse anyway, never use it.
        raise DoctypeForbidden("a DOCTYPE declaration is not allowed in an edXML package")
    return root


# --- the budget pass -------------------------------------------------------------------------
#
# One pass does the parsing and the counting: lxml's pull parser (libxml2's push parser) is fed
# the package in chunks, and the events of each chunk are counted before the next is fed, so a
# refused package stops after the chunk where it went over budget: its tree never holds more
# than about max_elements nodes plus one chunk's worth, whatever it holds beyond.
#
# Measured (lxml 6.0.2, libxml2 2.14.6, 2 shared cores, min of 9 runs; the last column
# includes the crowded-tag search below; `PYTHONPATH=tests python tests/unit/test_xml_budgets.py`
# prints the figures again):
#
#   package                          etree.fromstring   old parse_bytes   this pass
#   5 KB document                         26 us              34 us           66 us
#   5 MB document (one attachment)       1.8 ms             1.8 ms          2.5 ms
#   60 MB document (one attachment)       61 ms              62 ms           66 ms
#
# The cost over fromstring is lxml making one Python event per node (~0.3 us each); a 5 KB
# package has ~70 elements, and a whole verification of it takes ~0.7 ms. A byte pre-filter
# (data.count(b"<") bounds the number of nodes) was measured and not kept: bytes.count runs at
# ~2 GB/s, the speed libxml2 parses a base64 attachment, so three counts tripled the cost of a
# 5 MB package, and refusing early needs the exact count anyway. The chunk size hardly matters
# between 64 KiB and 1 MiB (within noise on 5 MB and 60 MB); 256 KiB keeps a chunk of 7-byte
# comments (~37 000 nodes) small next to max_elements.

_CHUNK = 256 * 1024
#: a node takes at least 4 bytes (``<a/>``): a chunk no larger than 4 * max_elements holds no
#: more events than the budget allows, so a dense package stops after about max_elements nodes
#: rather than after a whole 256 KiB chunk of them (measured: 200 000 ``<a/>`` refused in 58 ms
#: with 256 KiB chunks, in ~30 ms with 80 KiB ones, at max_elements = 20 000)
_MIN_CHUNK = 16 * 1024
_EVENTS: Final = ("start", "end", "start-ns", "comment", "pi")
#: attachment payloads: one base64 text node as large as the attachment, bounded by max_bytes
_EXEMPT_TEXT = f"{{{EDXML_NS}}}ContentTransferEncoded"


def _parse_within_budgets(
    data: bytes, limits: XMLLimits, *, declare: bool = True
) -> etree._Element:
    """Parse ``data`` while counting its nodes; raise at the first budget exceeded."""
    if len(data) > limits.max_text_bytes:
        _refuse_crowded_tag(data, limits)
    parser = etree.XMLPullParser(
        events=_EVENTS, huge_tree=len(data) > _HUGE_TREE_ABOVE, **_PARSER_OPTIONS
    )
    # No text node or attribute value can be larger than the package: skip the text checks
    # (one Python string per node) for every package under max_text_bytes.
    budget = _Budget(limits, check_text=len(data) > limits.max_text_bytes)
    try:
        chunk = max(_MIN_CHUNK, min(_CHUNK, 4 * limits.max_elements))
        if len(data) <= chunk:
            parser.feed(data)
            budget.count(parser.read_events())
        else:
            for start in range(0, len(data), chunk):
                parser.feed(data[start : start + chunk])
                budget.count(parser.read_events())
        root: etree._Element = parser.close()
    except etree.XMLSyntaxError as exc:
        # The events before the error are still there: a budget they exceed is the first
        # problem in document order (libxml2's own depth ceiling of 256 comes after ours).
        budget.count(parser.read_events())
        code = getattr(exc, "code", None)
        if code == etree.ErrorTypes.NS_ERR_UNDEFINED_NAMESPACE and declare:
            # is that its only defect? parse a copy that declares the prefixes to find out
            _, prefixes = parse_declaring(data, limits)
            line, column = exc.position if exc.position else (exc.lineno or 0, 0)
            raise UndeclaredPrefix(
                f"the package uses namespace prefixes it never declares ({', '.join(prefixes)})"
                f", first at line {line}, column {column}: the national SDK's own example does;"
                " XML does not allow it",
                detail={"prefixes": prefixes, "line": line, "column": column},
            ) from None
        raise _malformed(exc) from None
    budget.count(parser.read_events())
    budget.finish()
    return root


#: longest libxml2 reason quoted: it names the offending tag or target, which can be 50 000
#: characters long (no message grows with the input)
_MAX_REASON = 160


# --- undeclared prefixes ---------------------------------------------------------------------
#
# The national SDK's example package (and DMS built from it) writes ``xlink:href`` without
# declaring ``xlink``; the national parser accepts it, XML does not. Such a package is refused
# with its own code (UndeclaredPrefix), and :func:`parse_declaring` reads it the one safe way:
# a COPY of the bytes gets the missing declarations on its root element, and that copy goes
# through the same parse and budgets as any package (never libxml2's recover mode, which would
# guess at other defects too). The stored bytes are never touched.

_UNDECLARED = re.compile(r"Namespace prefix ([A-Za-z_][\w.-]{0,63}) (?:for|on) ")
#: the namespaces the field's undeclared prefixes mean; any other gets a placeholder URN
KNOWN_PREFIXES: Final = {
    "xlink": "http://www.w3.org/1999/xlink",
    "edXML": EDXML_NS,
}
_MAX_PREFIXES = 8
_ROOT_TAG = re.compile(rb"<([A-Za-z_][\w.:-]*)")


def _past(data: bytes, at: int, end: bytes) -> int:
    found = data.find(end, at)
    if found < 0:
        raise MalformedXML("the prolog never ends", detail={"line": 1, "column": 1})
    return found + len(end)


def parse_declaring(
    data: bytes, limits: XMLLimits = DEFAULT_LIMITS
) -> tuple[etree._Element, list[str]]:
    """Parse ``data``, declaring on a copy's root the namespace prefixes it uses undeclared;
    the tree and those prefixes (``[]``: none were missing). Every other defect is refused as
    :func:`parse_bytes` refuses it.

    Usage: ``root, prefixes = parse_declaring(data, limits)``
    """
    copy, prefixes = declare_missing(data, limits)
    return _parse_within_budgets(copy, limits, declare=False), prefixes


def declare_missing(data: bytes, limits: XMLLimits = DEFAULT_LIMITS) -> tuple[bytes, list[str]]:
    """A copy of ``data`` that declares the namespace prefixes it uses undeclared, and those
    prefixes; the copy parses (else the defect that remains is raised). ``data`` itself is
    returned when nothing was missing.

    Usage: ``copy, prefixes = declare_missing(data, limits)`` (the hub's ``attest`` policy
    verifies the copy and stores ``data``).
    """
    prefixes: list[str] = []
    copy = data
    while True:
        try:
            _parse_within_budgets(copy, limits, declare=False)
            return copy, prefixes
        except MalformedXML as exc:
            found = _UNDECLARED.match(str(exc.detail.get("reason", "")))
            if found is None or len(prefixes) >= _MAX_PREFIXES:
                raise
            prefix = found.group(1)
            if prefix in prefixes:
                raise  # declared, still refused: not a missing declaration
            prefixes.append(prefix)
            copy = _declare(copy, prefix)


def _declare(data: bytes, prefix: str) -> bytes:
    """``data`` with ``xmlns:<prefix>`` declared on its root element (after the prolog: the
    XML declaration, comments and processing instructions)."""
    at = 0
    while True:
        at = data.find(b"<", at)
        if at < 0:
            raise MalformedXML("no root element", detail={"line": 1, "column": 1})
        if data.startswith(b"<?", at):
            at = _past(data, at, b"?>")
        elif data.startswith(b"<!--", at):
            at = _past(data, at, b"-->")
        else:
            break
    found = _ROOT_TAG.match(data, at)
    if found is None:
        raise MalformedXML("no root element", detail={"line": 1, "column": 1})
    uri = KNOWN_PREFIXES.get(prefix, f"urn:gateway:undeclared:{prefix}")
    declaration = f' xmlns:{prefix}="{uri}"'.encode("ascii")
    return data[: found.end()] + declaration + data[found.end() :]


def _malformed(exc: etree.XMLSyntaxError) -> MalformedXML:
    line, column = exc.position if exc.position else (exc.lineno or 0, 0)
    reason = (exc.msg or str(exc)).split(", line ")[0]
    if len(reason) > _MAX_REASON:
        reason = reason[: _MAX_REASON - 3] + "..."
    return MalformedXML(
        f"not well-formed XML at line {line}, column {column}: {reason}",
        detail={"line": line, "column": column, "reason": reason},
    )


# libxml2 parses a start tag in one go, once its '>' has arrived, and only then does lxml hand
# over the event: 2 million attributes on one element (23 MB) took it 1.6 s and 420 MB, and 2
# million namespace declarations (35 MB) 3.9 s and 560 MB, before the count could refuse them.
# So a package large enough to hold such a tag is first searched for a start tag with more
# syntactic attributes (namespace declarations included) than a text node of max_text_bytes
# could hold: (max_text_bytes // 5) + 1, each being at least ` a=""`. Such a tag cannot be a
# legitimate one: it breaks a budget by itself, and the same characters inside a comment,
# processing instruction or CDATA section would break the text budget. A tag under that bound
# costs libxml2 at most ~0.2 s and ~50 MB (1 MiB of attributes), and the count refuses it
# right after. Raising max_text_bytes raises that bound with it.
#
# Where to look: such a tag is longer than max_text_bytes and holds no '<' but its first, so
# one of the points every max_text_bytes // 2 bytes falls inside it, at most that far from its
# '<'. From each point, memrchr looks back that far for a '<' and the pattern is matched there
# only: ~0.1 ms on a 5 MB package, ~3 ms on 60 MB (a regex search over all the bytes took 1.4
# and 17 ms: the same speed as libxml2 parsing base64). Packages under max_text_bytes cannot
# hold such a tag and skip it.
_ATTRIBUTE = rb"""\s++([^\s=<>/]++)\s*+=\s*+(?:"[^"<]*+"|'[^'<]*+')"""


@functools.lru_cache(maxsize=8)
def _crowded_tag(count: int) -> re.Pattern[bytes]:
    return re.compile(rb"<[^\s<>!?/][^\s<>/]*+(?:" + _ATTRIBUTE + rb"){%d}" % count)


_ATTRIBUTE_NAMES = re.compile(_ATTRIBUTE)


def _refuse_crowded_tag(data: bytes, limits: XMLLimits) -> None:
    """Refuse a start tag too crowded to hand to libxml2 (see the comment above)."""
    step = max(1, limits.max_text_bytes // 2)
    crowded = _crowded_tag(limits.max_text_bytes // 5 + 1)
    seen = -1
    for point in range(step, len(data), step):
        start = data.rfind(b"<", max(0, point - step), point)
        if start <= seen:  # none that near, or the one looked at from the last point
            continue
        seen = start
        found = crowded.match(data, start)
        if found is not None:
            _refuse_tag(data, found, limits)


def _refuse_tag(data: bytes, found: re.Match[bytes], limits: XMLLimits) -> None:
    names = _ATTRIBUTE_NAMES.findall(found.group(0))
    namespaces = sum(1 for n in names if n == b"xmlns" or n.startswith(b"xmlns:"))
    attributes = len(names) - namespaces
    line = data.count(b"\n", 0, found.start()) + 1
    # The same order as the count below: attributes first, then namespace declarations.
    if attributes > limits.max_attributes:
        raise XMLTooManyAttributes(
            f"an element carries at least {attributes} attributes; at most "
            f"{limits.max_attributes} accepted (line {line})",
            detail={"count": attributes, "limit": limits.max_attributes, "line": line},
        )
    if namespaces > limits.max_namespaces_per_element:
        raise XMLTooManyNamespaces(
            f"at least {namespaces} namespace declarations on one element; at most "
            f"{limits.max_namespaces_per_element} accepted (line {line})",
            detail={
                "count": namespaces,
                "limit": limits.max_namespaces_per_element,
                "scope": "element",
                "line": line,
            },
        )
    # Budgets configured above this tag's size: the count decides.


class _Budget:
    """Counts the pull parser's events against :class:`XMLLimits`; raises at the first excess.

    Messages carry numbers only (never a name or a value from the package), so none grows with
    the input.
    """

    __slots__ = ("check_text", "depth", "limits", "namespaces", "nodes", "pending", "pending_ns")

    def __init__(self, limits: XMLLimits, *, check_text: bool) -> None:
        self.limits = limits
        self.check_text = check_text
        self.nodes = 0
        self.depth = 0
        self.namespaces = 0
        #: namespace declarations seen since the last start tag (they belong to the next one)
        self.pending_ns = 0
        #: the last node closed: its tail text is complete only at the next event
        self.pending: Any = None

    def count(self, events: Iterable[tuple[str, Any]]) -> None:
        limits = self.limits
        max_nodes, max_depth = limits.max_elements, limits.max_depth
        max_attributes = limits.max_attributes
        max_ns_here, max_ns = limits.max_namespaces_per_element, limits.max_namespaces
        nodes, depth, namespaces, pending_ns = (
            self.nodes,
            self.depth,
            self.namespaces,
            self.pending_ns,
        )
        check_text = self.check_text
        try:
            for event, node in events:
                if event == "start":
                    nodes += 1
                    depth += 1
                    if nodes > max_nodes:
                        _too_many_nodes(nodes, max_nodes, node)
                    if depth > max_depth:
                        raise XMLTooDeep(
                            f"elements nest deeper than {max_depth} (line {node.sourceline})",
                            detail={"depth": depth, "limit": max_depth, "line": node.sourceline},
                        )
                    attributes = len(node.attrib)
                    if attributes > max_attributes:
                        raise XMLTooManyAttributes(
                            f"an element carries {attributes} attributes; at most "
                            f"{max_attributes} accepted (line {node.sourceline})",
                            detail={
                                "count": attributes,
                                "limit": max_attributes,
                                "line": node.sourceline,
                            },
                        )
                    if pending_ns:
                        if pending_ns > max_ns_here:
                            _too_many_namespaces(pending_ns, max_ns_here, "element", node)
                        if namespaces > max_ns:
                            _too_many_namespaces(namespaces, max_ns, "package", node)
                        pending_ns = 0
                    if check_text:
                        self._check_tail()
                        self.pending = None
                        for value in node.values():
                            _check_size(len(value), limits, node, "attribute")
                elif event == "end":
                    depth -= 1
                    if check_text:
                        self._check_tail()
                        if node.tag != _EXEMPT_TEXT:
                            _check_size(len(node.text or ""), limits, node, "text")
                        self.pending = node
                elif event == "start-ns":
                    pending_ns += 1
                    namespaces += 1
                else:  # a comment or a processing instruction
                    nodes += 1
                    if nodes > max_nodes:
                        _too_many_nodes(nodes, max_nodes, node)
                    if check_text:
                        self._check_tail()
                        _check_size(len(node.text or ""), limits, node, event)
                        self.pending = node
        finally:
            self.nodes, self.depth, self.namespaces, self.pending_ns = (
                nodes,
                depth,
                namespaces,
                pending_ns,
            )

    def finish(self) -> None:
        """Check what only the end of the document completes (the last node's tail)."""
        if self.check_text:
            self._check_tail()

    def _check_tail(self) -> None:
        if self.pending is not None:
            _check_size(len(self.pending.tail or ""), self.limits, self.pending, "text")


def _too_many_nodes(count: int, limit: int, node: Any) -> NoReturn:
    raise XMLTooManyElements(
        f"more than {limit} nodes (elements, comments, processing instructions); refused at "
        f"line {node.sourceline}",
        detail={"count": count, "limit": limit, "line": node.sourceline},
    )


def _too_many_namespaces(count: int, limit: int, scope: str, node: Any) -> NoReturn:
    where = "on one element" if scope == "element" else "in the package"
    raise XMLTooManyNamespaces(
        f"{count} namespace declarations {where}; at most {limit} accepted "
        f"(line {node.sourceline})",
        detail={"count": count, "limit": limit, "scope": scope, "line": node.sourceline},
    )


_LABELS = {
    "text": "a text node",
    "attribute": "an attribute value",
    "comment": "a comment",
    "pi": "a processing instruction",
}


def _check_size(size: int, limits: XMLLimits, node: Any, what: str) -> None:
    if size > limits.max_text_bytes:
        raise XMLTextTooLarge(
            f"{_LABELS[what]} of {size} characters; at most {limits.max_text_bytes} accepted "
            f"outside attachment payloads (line {node.sourceline})",
            detail={
                "size": size,
                "limit": limits.max_text_bytes,
                "node": what,
                "line": node.sourceline,
            },
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
