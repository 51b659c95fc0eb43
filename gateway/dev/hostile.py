"""Hostile packages built on demand, one per class the hostile-input review found.

Each is a real package (usually a signed one) with something grafted in, small enough to pass
the size cap; nothing here is committed as a data file. Used by ``gateway bench hostile`` and by
the tests of the budgets, the verifier, ingest and the fuzzers. Development tooling: a node
never imports it.

Usage::

    for name, case in CASES.items():
        data = case.build(signed)      # the package with the hostile part grafted in
        case.code                      # the stable code it must be refused with
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "CASES",
    "HostileCase",
    "inject",
    "into_root_tag",
    "into_subject",
    "into_subject_tag",
    "normal_of_size",
]


def inject(package: bytes, blob: bytes) -> bytes:
    """``package`` with ``blob`` placed right after the root's start tag."""
    start = package.index(b"<edXML")
    end = package.index(b">", start) + 1
    return package[:end] + blob + package[end:]


def into_root_tag(package: bytes, attributes: bytes) -> bytes:
    """``package`` with ``attributes`` added to the root element's start tag."""
    start = package.index(b"<edXML")
    end = package.index(b">", start)
    return package[:end] + b" " + attributes + package[end:]


def into_subject_tag(package: bytes, attributes: bytes) -> bytes:
    """``package`` with ``attributes`` added to the Subject's start tag (a known element)."""
    end = package.index(b"Subject>") + len(b"Subject")
    return package[:end] + b" " + attributes + package[end:]


def into_subject(package: bytes, text: bytes) -> bytes:
    """``package`` with ``text`` prepended to the Subject's text."""
    start = package.index(b"Subject>") + len(b"Subject>")
    return package[:start] + text + package[start:]


def normal_of_size(package: bytes, size: int) -> bytes:
    """A normal package of about ``size`` bytes: ``package`` with its attachment grown."""
    # after the start tag's '>' (it may carry a namespace declaration), inside the payload
    start = package.index(b">", package.index(b"ContentTransferEncoded")) + 1
    grow = max(0, size - len(package))
    return package[:start] + b"QUJD" * (grow // 4) + package[start:]


def _namespaces(count: int) -> bytes:
    return b" ".join(b'xmlns:n%d="urn:x:%d"' % (n, n) for n in range(count))


@dataclass(frozen=True, slots=True)
class HostileCase:
    """How to build one hostile package around a package, and the code it is refused with."""

    build: Callable[[bytes], bytes]
    code: str
    #: what the review saw before the budgets (for the benchmark's printout)
    before: str


MiB = 1024 * 1024

#: every class, as the default ``[limits]`` refuse it
CASES: dict[str, HostileCase] = {
    "2 million comments (14 MB)": HostileCase(
        lambda p: inject(p, b"<!---->" * 2_000_000),
        "XML_TOO_MANY_ELEMENTS",
        "VALID (comments are not signed content) and stored; 10 M comments: 4 s, 1.7 GB",
    ),
    "2 million processing instructions (10 MB)": HostileCase(
        lambda p: inject(p, b"<?p?>" * 2_000_000),
        "XML_TOO_MANY_ELEMENTS",
        "same as comments",
    ),
    "200 000 elements": HostileCase(
        lambda p: inject(p, b"<a/>" * 200_000), "XML_TOO_MANY_ELEMENTS", "tree built, then counted"
    ),
    "1 500 unknown attributes on Subject (14 KB)": HostileCase(
        lambda p: into_subject_tag(p, b" ".join(b'a%d="1"' % n for n in range(1_500))),
        "XML_TOO_MANY_ATTRIBUTES",
        "6.7 s in the schema step (one error per attribute, each formatting all of them)",
    ),
    "100 000 namespace declarations on the root (2.6 MB)": HostileCase(
        lambda p: into_root_tag(p, _namespaces(100_000)),
        "XML_TOO_MANY_NAMESPACES",
        "16.8 s to canonicalise, then VALID (unused declarations are not signed content)",
    ),
    "2 million attributes on one element (23 MB)": HostileCase(
        lambda p: inject(p, b"<x " + b" ".join(b'a%x="1"' % n for n in range(2_000_000)) + b"/>"),
        "XML_TOO_MANY_ATTRIBUTES",
        "libxml2 parsed the tag: 1.6 s and +420 MB before any count",
    ),
    "300 namespace declarations, 3 per element": HostileCase(
        lambda p: inject(
            p,
            b"".join(
                b'<x xmlns:a="urn:%d" xmlns:b="urn:b%d" xmlns:c="urn:c%d"/>' % (n, n, n)
                for n in range(100)
            ),
        ),
        "XML_TOO_MANY_NAMESPACES",
        "accepted by the parser",
    ),
    "nesting 250 deep": HostileCase(
        lambda p: inject(p, b"<a>" * 250 + b"</a>" * 250),
        "XML_TOO_DEEP",
        "refused after the whole tree was built",
    ),
    "nesting 10 000 deep": HostileCase(
        lambda p: inject(p, b"<a>" * 10_000 + b"</a>" * 10_000),
        "XML_TOO_DEEP",
        "XML_MALFORMED (libxml2's own cap of 256)",
    ),
    "2 MiB text node in Subject": HostileCase(
        lambda p: into_subject(p, b"x" * (2 * MiB)),
        "XML_TEXT_TOO_LARGE",
        "reached the schema step",
    ),
    "2 MiB attribute value": HostileCase(
        lambda p: into_root_tag(p, b'big="' + b"x" * (2 * MiB) + b'"'),
        "XML_TEXT_TOO_LARGE",
        "reached the schema step",
    ),
    "2 MiB comment": HostileCase(
        lambda p: inject(p, b"<!--" + b"x" * (2 * MiB) + b"-->"),
        "XML_TEXT_TOO_LARGE",
        "parsed and kept in the tree",
    ),
    "2 MiB of text between elements": HostileCase(
        lambda p: inject(p, b"<a/>" + b"x" * (2 * MiB)),
        "XML_TEXT_TOO_LARGE",
        "reached the schema step",
    ),
}
