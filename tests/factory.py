"""Build signed edXML test packages from the real field samples: any sender, any recipients."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Sequence

from lxml import etree
from support import INTEROP

from gateway.signing import SigningKey, sign_package

E = "http://www.mic.gov.vn/TBT/QCVN_102_2016"
_P = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=True)


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
    root = etree.fromstring((INTEROP / "edoc_update.edxml").read_bytes(), _P)
    header = root.find(f"{_q('edXMLEnvelope')}/{_q('edXMLHeader')}")
    for old in header.findall("{*}Signature"):
        header.remove(old)
    message = header.find(_q("MessageHeader"))
    message.find(f"{_q('From')}/{_q('OrganId')}").text = sender
    tos = message.findall(_q("To"))
    template = tos[0]
    for to in tos:
        message.remove(to)
    anchor = message.find(_q("From"))
    for code in reversed(list(recipients)):
        to = copy.deepcopy(template)
        to.find(_q("OrganId")).text = code
        anchor.addnext(to)
    message.find(_q("DocumentId")).text = (
        document_id or f"{sender},2026/11/23,{uuid.uuid4().hex[:8]}/TEST"
    )
    message.find(_q("Subject")).text = subject
    for trace in header.iter(_q("TraceHeader")):
        trace.find(_q("OrganId")).text = sender
    business = header.find(f"{_q('TraceHeaderList')}/{_q('Bussiness')}")
    if business is not None:
        business.getparent().remove(business)
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
    root = etree.fromstring((INTEROP / "status_inbox_01.edxml").read_bytes(), _P)
    message = root.find(f"{_q('edXMLEnvelope')}/{_q('edXMLHeader')}/{_q('MessageHeader')}")
    message.find(f"{_q('From')}/{_q('OrganId')}").text = reporter
    response = message.find(_q("ResponseFor"))
    response.find(_q("OrganId")).text = sender
    response.find(_q("DocumentId")).text = document_id
    message.find(_q("StatusCode")).text = code
    message.find(_q("Description")).text = f"{description} ({code}) {uuid.uuid4().hex[:6]}"
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def signed(data: bytes, key: SigningKey) -> bytes:
    return sign_package(data, key)
