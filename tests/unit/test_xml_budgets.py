"""The input budgets of ``gateway.envelope.xmlsafe.parse_bytes``: each class refused with its own
code.

Every budget is counted in one pass while parsing, so a refused package never becomes a whole
tree. Hostile packages are generated here (``tests/hostile.py``), never committed.

Run as a script to print what parsing and refusing cost (no test asserts a time)::

    PYTHONPATH=tests .venv/bin/python tests/unit/test_xml_budgets.py
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import factory
import pytest
from lxml import etree
from support import DOCUMENT_SAMPLES, STATUS_SAMPLES, sample

from gateway.dev.hostile import CASES, inject, into_root_tag
from gateway.envelope.model import EDXML_NS
from gateway.envelope.xmlsafe import DEFAULT_LIMITS, INTERNAL_PARSER, XMLLimits, parse_bytes
from gateway.errors import (
    MalformedXML,
    XMLError,
    XMLTextTooLarge,
    XMLTooDeep,
    XMLTooManyAttributes,
    XMLTooManyElements,
    XMLTooManyNamespaces,
)

H49 = "000.00.00.H49"
G12 = "000.00.00.G12"


@pytest.fixture(scope="module")
def package() -> bytes:
    """An unsigned 5 KB document; the budgets do not care about the signature."""
    return factory.document(H49, [G12])


def refusal(data: bytes, limits: XMLLimits = DEFAULT_LIMITS) -> XMLError:
    with pytest.raises(XMLError) as info:
        parse_bytes(data, limits)
    return info.value


# --- every class the review found ---------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_each_hostile_class_is_refused_with_its_code(package: bytes, name: str) -> None:
    case = CASES[name]
    data = case.build(package)
    assert len(data) < DEFAULT_LIMITS.max_bytes  # all of them pass the size cap

    error = refusal(data)

    assert error.code == case.code
    assert error.detail["limit"] > 0
    assert isinstance(error.detail["line"], int)
    assert {"count", "size", "depth"} & set(error.detail)
    # the message says numbers, never the package's names or text
    assert len(error.message) < 160, error.message


def test_messages_do_not_grow_with_the_input(package: bytes) -> None:
    small = refusal(inject(package, b"<!---->" * 150_000))
    large = refusal(inject(package, b"<!---->" * 3_000_000))
    assert small.message == large.message
    long_names = refusal(
        into_root_tag(package, b" ".join(b"a%d%s=''" % (n, b"x" * 40_000) for n in range(40)))
    )
    assert len(long_names.message) < 160
    malformed = refusal(b"<r><?" + b"t" * 40_000 + b"</r>")
    assert isinstance(malformed, MalformedXML)
    assert len(malformed.message) < 250


# --- each budget at its limit and one past it --------------------------------------------------


def test_comments_and_processing_instructions_count_as_nodes() -> None:
    limits = XMLLimits(max_elements=6)
    assert parse_bytes(b"<?p?><r><!--1--><?p?><a/></r><!--2-->", limits) is not None
    error = refusal(b"<?p?><r><!--1--><?p?><a/></r><!--2--><?p?>", limits)
    assert isinstance(error, XMLTooManyElements)
    assert error.detail == {"count": 7, "limit": 6, "line": 1}


def test_attributes_per_element() -> None:
    limits = XMLLimits(max_attributes=3)
    assert parse_bytes(b'<r a="1" b="2" c="3"><x a="1" b="2" c="3"/></r>', limits) is not None
    error = refusal(b'<r>\n<x a="1" b="2" c="3" d="4"/></r>', limits)
    assert isinstance(error, XMLTooManyAttributes)
    assert error.detail == {"count": 4, "limit": 3, "line": 2}


def test_namespace_declarations_do_not_count_as_attributes() -> None:
    limits = XMLLimits(max_attributes=1, max_namespaces_per_element=3)
    assert parse_bytes(b'<r xmlns="u" xmlns:a="v" xmlns:b="w" a:x="1"/>', limits) is not None


def test_namespace_declarations_per_element() -> None:
    limits = XMLLimits(max_namespaces_per_element=2)
    both = b'<r xmlns="u" xmlns:a="v"><x xmlns:b="w" xmlns:c="z"/></r>'
    assert parse_bytes(both, limits) is not None
    error = refusal(b'<r xmlns="u" xmlns:a="v" xmlns:b="w"/>', limits)
    assert isinstance(error, XMLTooManyNamespaces)
    assert error.detail == {"count": 3, "limit": 2, "scope": "element", "line": 1}


def test_namespace_declarations_in_the_package() -> None:
    limits = XMLLimits(max_namespaces=4)
    four = b'<r xmlns:a="1"><x xmlns:b="2"/><x xmlns:b="3"/><x xmlns:b="4"/></r>'
    assert parse_bytes(four, limits) is not None
    error = refusal(four.replace(b"</r>", b'<x xmlns:c="5"/></r>'), limits)
    assert isinstance(error, XMLTooManyNamespaces)
    assert error.detail == {"count": 5, "limit": 4, "scope": "package", "line": 1}


def test_depth() -> None:
    limits = XMLLimits(max_depth=10)
    assert parse_bytes(b"<a>" * 10 + b"</a>" * 10, limits) is not None
    error = refusal(b"<a>" * 11 + b"</a>" * 11, limits)
    assert isinstance(error, XMLTooDeep)
    assert error.detail == {"depth": 11, "limit": 10, "line": 1}


def test_deeper_than_libxml2_allows_is_still_too_deep_not_malformed() -> None:
    # libxml2 stops at 256 with its own error; the budget's events come first.
    error = refusal(b"<a>" * 5_000 + b"</a>" * 5_000)
    assert isinstance(error, XMLTooDeep)


TEXTS = {
    "text": lambda n: b"<r>" + b"x" * n + b"</r>",
    "tail": lambda n: b"<r><a/>" + b"x" * n + b"</r>",
    "attribute": lambda n: b'<r a="' + b"x" * n + b'"/>',
    "comment": lambda n: b"<r><!--" + b"x" * n + b"--></r>",
    "pi": lambda n: b"<r><?p " + b"x" * n + b"?></r>",
    "cdata": lambda n: b"<r><![CDATA[" + b"x" * 60 + b"]]>" + b"x" * (n - 60) + b"</r>",
}


@pytest.mark.parametrize("what", list(TEXTS))
def test_text_node_size(what: str) -> None:
    limits = XMLLimits(max_text_bytes=100)
    assert parse_bytes(TEXTS[what](100), limits) is not None
    error = refusal(TEXTS[what](101), limits)
    assert isinstance(error, XMLTextTooLarge)
    assert error.detail == {
        "size": 101,
        "limit": 100,
        "node": {"tail": "text", "cdata": "text"}.get(what, what),
        "line": 1,
    }


def test_attachment_payloads_are_exempt_from_the_text_budget() -> None:
    limits = XMLLimits(max_text_bytes=100)
    payload = f'<edXML xmlns="{EDXML_NS}"><ContentTransferEncoded>'.encode() + b"QUJD" * 1000
    assert parse_bytes(payload + b"</ContentTransferEncoded></edXML>", limits) is not None
    # by its qualified name only: the same local name in another namespace is text like any
    other = payload.replace(b"<ContentTransferEncoded>", b'<ContentTransferEncoded xmlns="x">')
    assert isinstance(
        refusal(other + b"</ContentTransferEncoded></edXML>", limits), XMLTextTooLarge
    )


def test_the_first_problem_in_document_order_is_reported() -> None:
    limits = XMLLimits(max_elements=10)
    budget_first = b"<r>" + b"<a/>" * 20 + b"<b></c></r>"
    assert isinstance(refusal(budget_first, limits), XMLTooManyElements)
    malformed_first = b"<r><b></c>" + b"<a/>" * 20 + b"</r>"
    assert isinstance(refusal(malformed_first, limits), MalformedXML)


# --- a tag too crowded to hand to libxml2 --------------------------------------------------------


def test_a_crowded_tag_is_refused_before_libxml2_parses_it(package: bytes) -> None:
    attributes = b" ".join(b'a%x="1"' % n for n in range(2_000_000))
    error = refusal(inject(package, b"<x " + attributes + b"/>"))
    assert isinstance(error, XMLTooManyAttributes)
    assert error.detail["count"] > DEFAULT_LIMITS.max_attributes
    assert error.detail["line"] == 2
    declarations = b" ".join(b'xmlns:a%x="u"' % n for n in range(2_000_000))
    error = refusal(inject(package, b"<x " + declarations + b"/>"))
    assert isinstance(error, XMLTooManyNamespaces)
    assert error.detail["scope"] == "element"


def test_long_attribute_values_within_budget_are_not_crowded_tags(package: bytes) -> None:
    value = b"x" * (DEFAULT_LIMITS.max_text_bytes - 10)
    data = into_root_tag(package, b'a="%s" b="%s" c="%s"' % (value, value, value))
    assert len(parse_bytes(data).attrib) == 3


# --- what is accepted is what lxml would build -------------------------------------------------


@pytest.mark.parametrize("name", DOCUMENT_SAMPLES + STATUS_SAMPLES)
def test_the_tree_is_the_one_lxml_builds(name: str) -> None:
    data = sample(name)
    ours = parse_bytes(data)
    theirs = etree.fromstring(data, INTERNAL_PARSER)
    assert etree.tostring(ours, method="c14n") == etree.tostring(theirs, method="c14n")
    assert [e.sourceline for e in ours.iter()] == [e.sourceline for e in theirs.iter()]


def test_a_large_package_parsed_in_chunks_is_whole(package: bytes) -> None:
    text = b"QUJD" * 3_000_000  # 12 MB: many chunks, and huge_tree
    data = package.replace(b"UEsDBBQAAAAIAA==", text)
    root = parse_bytes(data)
    encoded = next(root.iter(f"{{{EDXML_NS}}}ContentTransferEncoded"))
    assert encoded.text == text.decode()


# --- memory stays bounded --------------------------------------------------------------------

_RSS = textwrap.dedent(
    """
    import resource, sys
    sys.path[:0] = {paths!r}
    from gateway.errors import XMLError
    from gateway.envelope.xmlsafe import parse_bytes
    data = {build}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        parse_bytes(data)
    except XMLError as exc:
        print(exc.code)
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
    """
)


@pytest.mark.parametrize(
    ("build", "code"),
    [
        # 70 MB of comments: before the budgets, libxml2 built all 10 million (~1.7 GB)
        ('b"<r>" + b"<!---->" * 10_000_000 + b"</r>"', "XML_TOO_MANY_ELEMENTS"),
        # 23 MB of attributes on one element: 420 MB before the crowded-tag check
        (
            "b'<r><x ' + b' '.join(b'a%x=\"1\"' % n for n in range(2_000_000)) + b'/></r>'",
            "XML_TOO_MANY_ATTRIBUTES",
        ),
    ],
)
def test_refusing_a_huge_package_does_not_build_its_tree(build: str, code: str) -> None:
    paths = [str(Path(__file__).resolve().parents[2])]
    done = subprocess.run(
        [sys.executable, "-c", _RSS.format(paths=paths, build=build)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    refused, grown_mb = done.stdout.split()
    assert refused == code
    assert int(grown_mb) < 100, f"peak RSS grew by {grown_mb} MB while refusing"


# --- benchmark (not a test) -------------------------------------------------------------------


def _bench() -> None:  # pragma: no cover - run by hand
    import contextlib
    import timeit

    from gateway.dev.hostile import normal_of_size
    from gateway.errors import GatewayError

    plain = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=True)
    base = factory.document(H49, [G12])

    def best(work: object, number: int) -> float:
        return min(timeit.repeat(work, number=number, repeat=7)) / number  # type: ignore[arg-type]

    print("parse cost (min of 7):")
    for size in (len(base), 5_000_000, 60_000_000):
        data = normal_of_size(base, size)
        number = 2000 if size < 10_000 else 5
        fromstring = best(lambda d=data: etree.fromstring(d, plain), number)
        ours = best(lambda d=data: parse_bytes(d), number)
        print(
            f"  {len(data):>10} B  etree.fromstring {fromstring * 1e6:9.1f} us"
            f"   parse_bytes {ours * 1e6:9.1f} us   (+{(ours - fromstring) * 1e6:.1f} us)"
        )
    print("refusal cost vs etree.fromstring of a normal package of the same size:")
    for name, case in CASES.items():
        data = case.build(base)
        normal = normal_of_size(base, len(data))

        def refuse(d: bytes = data) -> None:
            with contextlib.suppress(GatewayError):
                parse_bytes(d)

        refused = best(refuse, 3)
        parsed = best(lambda n=normal: etree.fromstring(n, plain), 3)
        print(
            f"  {name:<55} {len(data) / 1e6:6.2f} MB  {case.code:<24}"
            f" {refused * 1e3:8.2f} ms  {refused / parsed:6.1f}x"
        )


if __name__ == "__main__":  # pragma: no cover
    _bench()
