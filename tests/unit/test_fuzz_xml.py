"""Fuzzing the parser and the verifier with generated XML: a result or a GatewayError, nothing else.

Three properties, each bounded (a few seconds in all):

* generated well-formed trees (elements, attributes, namespace declarations, comments,
  processing instructions, text) under random small budgets: ``parse_bytes`` refuses exactly
  when a budget is exceeded, with a code whose budget the tree really exceeds, and otherwise
  returns the tree lxml itself builds;
* the same trees, their bytes mutated (cut, spliced, XML-ish tokens inserted): a tree or an
  :class:`~gateway.errors.XMLError`, never another exception;
* a validly signed package, mutated structurally (elements removed, duplicated, renamed, text
  and attributes changed, comments added) or byte-wise: the verifier returns a report, whose
  errors are GatewayErrors, and which names at least one error whenever it is not valid.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import factory
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from lxml import etree
from support import DevPKI

from gateway.envelope.xmlsafe import DEFAULT_LIMITS, INTERNAL_PARSER, XMLLimits, parse_bytes
from gateway.errors import GatewayError, XMLError
from gateway.trust.signing import sign_package
from gateway.trust.verification import Verifier

FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --- a model of the tree, which knows its own counts -------------------------------------------

_TEXT = st.one_of(
    st.text(alphabet="ab xyz&<>\"'éệ01", max_size=12),
    st.integers(0, 250).map(lambda n: "t" * n),
)
_NAMES = st.sampled_from(["a", "b", "c", "d", "e", "f", "g", "h"])


@dataclass
class Comment:
    text: str
    tail: str = ""


@dataclass
class PI:
    text: str
    tail: str = ""


@dataclass
class Element:
    name: str
    attributes: dict[str, str]
    namespaces: dict[str, str]  # prefix ("" for the default namespace) -> URI
    text: str = ""
    children: list[Element | Comment | PI] = field(default_factory=list)
    tail: str = ""


def _escape(text: str, quote: bool = False) -> str:
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace('"', "&quot;") if quote else text


def _serialise(node: Element | Comment | PI) -> str:
    if isinstance(node, Comment):
        return f"<!--{node.text}-->{_escape(node.tail)}"
    if isinstance(node, PI):
        return f"<?p {node.text}?>{_escape(node.tail)}"
    declarations = "".join(
        f' xmlns="{_escape(uri, True)}"'
        if not prefix
        else f' xmlns:{prefix}="{_escape(uri, True)}"'
        for prefix, uri in node.namespaces.items()
    )
    attributes = "".join(f' {k}="{_escape(v, True)}"' for k, v in node.attributes.items())
    inner = "".join(_serialise(child) for child in node.children)
    return (
        f"<{node.name}{declarations}{attributes}>{_escape(node.text)}{inner}</{node.name}>"
        f"{_escape(node.tail)}"
    )


_LEAF_TEXT = st.text(alphabet="ab xyz01é", max_size=10) | st.integers(0, 250).map(lambda n: "t" * n)


def _element(
    children: st.SearchStrategy[list[Element | Comment | PI]],
) -> st.SearchStrategy[Element]:
    return st.builds(
        Element,
        name=_NAMES,
        attributes=st.dictionaries(st.sampled_from("klmnopqrs"), _TEXT, max_size=8),
        namespaces=st.dictionaries(
            st.sampled_from(["", "p", "q", "r", "s", "t"]),
            st.sampled_from(["urn:a", "urn:b", "http://www.mic.gov.vn/TBT/QCVN_102_2016"]),
            max_size=5,
        ),
        text=_TEXT,
        children=children,
        tail=_TEXT,
    )


_OTHER = st.one_of(
    st.builds(Comment, text=_LEAF_TEXT, tail=_TEXT),
    st.builds(PI, text=_LEAF_TEXT, tail=_TEXT),
)
_TREE = st.recursive(
    _element(st.just([])),
    lambda inner: _element(st.lists(st.one_of(inner, _OTHER), max_size=4)),
    max_leaves=30,
)


@dataclass
class Document:
    prolog: list[Comment | PI]
    root: Element

    def to_bytes(self) -> bytes:
        root = _serialise(Element(**{**self.root.__dict__, "tail": ""}))
        prolog = "".join(_serialise(type(n)(n.text)) for n in self.prolog)
        return f'<?xml version="1.0" encoding="UTF-8"?>\n{prolog}{root}'.encode()

    def exceeded(self, limits: XMLLimits) -> set[str]:
        """The codes of every budget this document exceeds."""
        nodes, most_namespaces, deepest = len(self.prolog), 0, 0
        texts = [
            0,
            *(len(n.text.lstrip(" ")) if isinstance(n, PI) else len(n.text) for n in self.prolog),
        ]
        crowded = attributes_over = False

        def walk(node: Element | Comment | PI, depth: int, is_root: bool) -> None:
            nonlocal nodes, most_namespaces, deepest, crowded, attributes_over
            nodes += 1
            if not is_root:
                texts.append(len(node.tail))
            if isinstance(node, Comment | PI):
                texts.append(len(node.text.lstrip(" ")) if isinstance(node, PI) else len(node.text))
                return
            deepest = max(deepest, depth)
            most_namespaces += len(node.namespaces)
            crowded |= len(node.namespaces) > limits.max_namespaces_per_element
            attributes_over |= len(node.attributes) > limits.max_attributes
            texts.extend(len(v) for v in node.attributes.values())
            texts.append(len(node.text))
            for child in node.children:
                walk(child, depth + 1, False)

        walk(self.root, 1, True)
        codes = set()
        if nodes > limits.max_elements:
            codes.add("XML_TOO_MANY_ELEMENTS")
        if deepest > limits.max_depth:
            codes.add("XML_TOO_DEEP")
        if attributes_over:
            codes.add("XML_TOO_MANY_ATTRIBUTES")
        if crowded or most_namespaces > limits.max_namespaces:
            codes.add("XML_TOO_MANY_NAMESPACES")
        if max(texts) > limits.max_text_bytes:
            codes.add("XML_TEXT_TOO_LARGE")
        return codes


_DOCUMENTS = st.builds(
    Document, prolog=st.lists(_OTHER.map(lambda n: type(n)(n.text)), max_size=3), root=_TREE
)
_LIMITS = st.builds(
    XMLLimits,
    max_elements=st.integers(1, 40),
    max_depth=st.integers(1, 8),
    max_attributes=st.integers(0, 6),
    max_namespaces_per_element=st.integers(0, 4),
    max_namespaces=st.integers(0, 12),
    max_text_bytes=st.integers(1, 300),
)


def _c14n(root: etree._Element) -> bytes:
    return etree.tostring(root, method="c14n")


@FUZZ
@given(document=_DOCUMENTS, limits=_LIMITS | st.just(DEFAULT_LIMITS))
def test_budgets_refuse_exactly_what_exceeds_them(document: Document, limits: XMLLimits) -> None:
    data = document.to_bytes()
    exceeded = document.exceeded(limits)
    try:
        root = parse_bytes(data, limits)
    except XMLError as exc:
        event(exc.code)
        assert exc.code in exceeded, (exc.code, exc.detail, exceeded)
        assert len(exc.message) < 200
        return
    event("accepted")
    assert not exceeded
    assert _c14n(root) == _c14n(etree.fromstring(data, INTERNAL_PARSER))


# --- byte mutations ------------------------------------------------------------------------------

_TOKENS = [
    b"<",
    b">",
    b"&",
    b"&amp;",
    b"&#0;",
    b"&#x110000;",
    b"<!--",
    b"-->",
    b"<![CDATA[",
    b"]]>",
    b"<?",
    b"?>",
    b"<!DOCTYPE r>",
    b'<!ENTITY e "x">',
    b"</",
    b"/>",
    b"\x00",
    b"\xff\xfe",
    b"\xc3",
    b'xmlns:p="urn:x"',
    b'xmlns=""',
    b'a="1"',
    b"=",
    b'"',
    b"'",
    b"p:x",
    b"\n",
]


@st.composite
def _mutated(draw: st.DrawFn, data: bytes) -> bytes:
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["insert", "delete", "cut", "repeat"]))
        if kind == "insert":
            data = data[:at] + draw(st.sampled_from(_TOKENS)) + data[at:]
        elif kind == "delete":
            data = data[:at] + data[at + draw(st.integers(1, 40)) :]
        elif kind == "cut":
            data = data[:at]
        else:
            end = min(len(data), at + draw(st.integers(1, 60)))
            data = data[:at] + data[at:end] * draw(st.integers(2, 50)) + data[end:]
    return data


@FUZZ
@given(data=st.data(), document=_DOCUMENTS, limits=_LIMITS | st.just(DEFAULT_LIMITS))
def test_mutated_bytes_give_a_tree_or_an_xml_error(
    data: st.DataObject, document: Document, limits: XMLLimits
) -> None:
    mutated = data.draw(_mutated(document.to_bytes()))
    try:
        parse_bytes(mutated, limits)
    except XMLError as exc:
        event(exc.code)
        assert len(exc.message) < 250
    else:
        event("accepted")


# --- the verifier on a mutated signed package ----------------------------------------------------

H49 = "000.00.00.H49"
G12 = "000.00.00.G12"


@pytest.fixture(scope="module")
def signed(pki: DevPKI) -> bytes:
    return sign_package(factory.document(H49, [G12]), pki.key(H49))


@pytest.fixture(scope="module")
def verifier(pki: DevPKI) -> Verifier:
    return pki.verifier()


@st.composite
def _restructured(draw: st.DrawFn, data: bytes) -> bytes:
    root = etree.fromstring(data, INTERNAL_PARSER)
    for _ in range(draw(st.integers(1, 3))):
        elements = list(root.iter(etree.Element))
        node = elements[draw(st.integers(0, len(elements) - 1))]
        parent = node.getparent()
        op = draw(
            st.sampled_from(["remove", "duplicate", "text", "attribute", "comment", "rename"])
        )
        if op == "remove" and parent is not None:
            parent.remove(node)
        elif op == "duplicate" and parent is not None:
            for _ in range(draw(st.integers(1, 3))):
                node.addnext(etree.fromstring(etree.tostring(node)))
        elif op == "text":
            node.text = draw(_TEXT | st.sampled_from([H49, G12, " " + H49, "2026/13/45 99:00:00"]))
        elif op == "attribute":
            node.set(draw(st.sampled_from(["Id", "URI", "Algorithm", "x"])), draw(_TEXT))
        elif op == "comment":
            node.append(etree.Comment(draw(_LEAF_TEXT)))
        elif isinstance(node.tag, str):
            node.tag = etree.QName(etree.QName(node).namespace, draw(_NAMES)).text
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def _check_report(verifier: Verifier, data: bytes) -> None:
    report = verifier.verify(data)
    first = report.first_error()
    event(first.code if first is not None else "valid")
    assert all(isinstance(e, GatewayError) for e in report.errors)
    if not report.valid:
        assert report.errors, report.render_text()
        with pytest.raises(GatewayError):
            report.accepted()
    report.to_dict()
    report.render_text()


@FUZZ
@given(data=st.data())
def test_the_verifier_answers_every_restructured_package(
    signed: bytes, verifier: Verifier, data: st.DataObject
) -> None:
    _check_report(verifier, data.draw(_restructured(signed)))


@FUZZ
@given(data=st.data())
def test_the_verifier_answers_every_mutated_package(
    signed: bytes, verifier: Verifier, data: st.DataObject
) -> None:
    _check_report(verifier, data.draw(_mutated(signed)))
