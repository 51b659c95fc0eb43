"""Unsigned edXML packages made from a real field sample: any sender, any recipients.

For the demo, the benchmarks and the tests; a DMS builds its own packages.

Usage::

    data = sign_package(document("000.01.01.H49", ["000.00.00.G12"]), key)
    answer = sign_package(status("000.00.00.G12", sender=..., document_id=..., code="01"), key)
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Sequence
from pathlib import Path

from lxml import etree

__all__ = ["DATA", "document", "status"]

#: the two field samples the demo, the benchmarks and the tests start from (package data)
DATA = Path(__file__).resolve().parent / "data"

E = "http://www.mic.gov.vn/TBT/QCVN_102_2016"
_P = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=True)


def _one(parent: etree._Element, path: str) -> etree._Element:
    found = parent.find(path)
    if found is None:
        raise ValueError(f"the field sample has no {path}")
    return found


def _q(name: str) -> str:
    return f"{{{E}}}{name}"


def document(
    sender: str,
    recipients: Sequence[str],
    *,
    document_id: str | None = None,
    subject: str = "Công văn thử nghiệm",
    small: bool = True,
) -> bytes:
    """An unsigned document package From ``sender`` To ``recipients`` (DocumentId unique)."""
    root = etree.fromstring((DATA / "edoc_update.edxml").read_bytes(), _P)
    header = _one(root, f"{_q('edXMLEnvelope')}/{_q('edXMLHeader')}")
    for old in header.findall("{*}Signature"):
        header.remove(old)
    message = _one(header, _q("MessageHeader"))
    _one(message, f"{_q('From')}/{_q('OrganId')}").text = sender
    tos = message.findall(_q("To"))
    template = tos[0]
    for to in tos:
        message.remove(to)
    anchor = _one(message, _q("From"))
    for code in reversed(list(recipients)):
        to = copy.deepcopy(template)
        _one(to, _q("OrganId")).text = code
        anchor.addnext(to)
    _one(message, _q("DocumentId")).text = (
        document_id or f"{sender},2026/11/23,{uuid.uuid4().hex[:8]}/TEST"
    )
    _one(message, _q("Subject")).text = subject
    for trace in header.iter(_q("TraceHeader")):
        _one(trace, _q("OrganId")).text = sender
    traces = header.find(_q("TraceHeaderList"))
    business = traces.find(_q("Bussiness")) if traces is not None else None
    if traces is not None and business is not None:
        traces.remove(business)
    if small:
        for encoded in root.iter(_q("ContentTransferEncoded")):
            encoded.text = "UEsDBBQAAAAIAA=="
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def status(
    reporter: str,
    *,
    sender: str,
    document_id: str,
    code: str,
    description: str = "Đã nhận",
) -> bytes:
    """An unsigned status package from ``reporter`` about ``sender``'s ``document_id``."""
    root = etree.fromstring((DATA / "status_inbox_01.edxml").read_bytes(), _P)
    message = _one(root, f"{_q('edXMLEnvelope')}/{_q('edXMLHeader')}/{_q('MessageHeader')}")
    _one(message, f"{_q('From')}/{_q('OrganId')}").text = reporter
    response = _one(message, _q("ResponseFor"))
    _one(response, _q("OrganId")).text = sender
    _one(response, _q("DocumentId")).text = document_id
    _one(message, _q("StatusCode")).text = code
    _one(message, _q("Description")).text = f"{description} ({code}) {uuid.uuid4().hex[:6]}"
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")
