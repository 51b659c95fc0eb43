"""The package model: frozen keyword-only values, UTC times, strict base64, manifest pairing."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt

import pytest

from gateway.agency import AgencyCode
from gateway.envelope.model import (
    VIETNAM_TZ,
    Attachment,
    BusinessDocType,
    DocumentPackage,
    ManifestReference,
    Organization,
    OtherInfo,
    PackageKind,
    Priority,
    StatusCode,
    StatusPackage,
    TraceHeader,
    check_manifest,
)
from gateway.errors import AgencyCodeError, AttachmentEncodingError, ManifestMismatch

UTC = dt.UTC
G22 = Organization(organ_id="000.00.00.G22", organ_name="Văn phòng Chính phủ")
H41 = Organization(organ_id="000.00.00.H41", organ_name="UBND Tỉnh Nghệ An")
H14 = Organization(organ_id="000.00.00.H14", organ_name="UBND Tỉnh Cao Bằng")
NOON = dt.datetime(2018, 9, 28, 5, 0, 0, tzinfo=UTC)
HOP = TraceHeader(organ_id="000.00.00.G22", timestamp=NOON)


def _attachment(cid: str, data: bytes = b"PK\x03\x04") -> Attachment:
    return Attachment(content_id=cid, encoded=base64.b64encode(data).decode())


def _document(**changes: object) -> DocumentPackage:
    fields: dict[str, object] = {"from_": G22, "to": (H41, H14), "trace_headers": (HOP,)}
    fields.update(changes)
    return DocumentPackage(**fields)  # type: ignore[arg-type]


def test_values_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        G22.organ_id = "000.00.00.H49"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        _document().subject = "x"  # type: ignore[misc]


def test_values_are_keyword_only_and_slotted() -> None:
    with pytest.raises(TypeError):
        Organization("000.00.00.G22")  # type: ignore[misc]
    assert not hasattr(G22, "__dict__")


def test_values_compare_and_hash_by_content() -> None:
    again = Organization(organ_id="000.00.00.G22", organ_name="Văn phòng Chính phủ")
    assert again == G22
    assert hash(again) == hash(G22)
    assert _document() == _document()
    assert _document() != _document(subject="khác")


def test_organization_agency_code() -> None:
    assert G22.agency_code == AgencyCode.parse("000.00.00.G22")
    with pytest.raises(AgencyCodeError):
        _ = Organization(organ_id="01.02.G22").agency_code


def test_document_kind_sender_and_recipients() -> None:
    doc = _document()
    assert doc.kind is PackageKind.DOCUMENT
    assert doc.sender == AgencyCode.parse("000.00.00.G22")
    assert doc.recipients == (
        AgencyCode.parse("000.00.00.H41"),
        AgencyCode.parse("000.00.00.H14"),
    )


def test_document_needs_a_recipient_and_a_trace_header() -> None:
    with pytest.raises(ValueError, match="recipient"):
        _document(to=())
    with pytest.raises(ValueError, match="TraceHeader"):
        _document(trace_headers=())


def test_status_kind_and_sender() -> None:
    status = StatusPackage(from_=H41, status_code=StatusCode.RECEIVED, timestamp=NOON)
    assert status.kind is PackageKind.STATUS
    assert status.sender == AgencyCode.parse("000.00.00.H41")


def test_times_are_stored_in_utc_whole_seconds() -> None:
    local = dt.datetime(2018, 9, 28, 17, 25, 11, 999_999, tzinfo=VIETNAM_TZ)
    status = StatusPackage(from_=H41, status_code=StatusCode.ACCEPTED, timestamp=local)
    assert status.timestamp == dt.datetime(2018, 9, 28, 10, 25, 11, tzinfo=UTC)
    assert status.timestamp.tzinfo is UTC
    hop = TraceHeader(organ_id="x", timestamp=local)
    assert hop.timestamp == dt.datetime(2018, 9, 28, 10, 25, 11, tzinfo=UTC)
    assert hop.timestamp.utcoffset() == dt.timedelta(0)


def test_naive_times_are_refused() -> None:
    naive = dt.datetime(2018, 9, 28, 17, 25, 11)  # naive: the point of the test
    with pytest.raises(ValueError, match="aware"):
        TraceHeader(organ_id="000.00.00.G22", timestamp=naive)
    with pytest.raises(ValueError, match="aware"):
        StatusPackage(from_=H41, status_code=StatusCode.RECEIVED, timestamp=naive)


def test_other_info_defaults_to_normal_priority() -> None:
    assert OtherInfo().priority is Priority.NORMAL


def test_enums_carry_wire_values() -> None:
    assert StatusCode("13") is StatusCode.TAKE_BACK_REQUESTED
    assert StatusCode.TAKE_BACK_REQUESTED.from_sender
    assert not any(c.from_sender for c in StatusCode if c is not StatusCode.TAKE_BACK_REQUESTED)
    assert [t.value for t in BusinessDocType] == ["0", "1", "2", "3"]
    assert [p.value for p in Priority] == ["0", "1", "2", "3", "4"]
    assert f"{StatusCode.FINISHED}" == "06"


# --- attachments -----------------------------------------------------------------------------


def test_decode_returns_the_bytes() -> None:
    assert _attachment("cid:1", b"PK\x03\x04zip").decode() == b"PK\x03\x04zip"


def test_decode_accepts_line_breaks() -> None:
    data = bytes(range(256)) * 3
    text = base64.encodebytes(data).decode()  # 76-column MIME lines
    assert "\n" in text
    assert Attachment(content_id="cid:1", encoded=f"\r\n{text}  ").decode() == data


def test_decode_of_nothing_is_empty() -> None:
    assert Attachment(content_id="cid:1").decode() == b""


@pytest.mark.parametrize(
    "encoded",
    [
        "UEsDBBQACAgIABCSsU4AAAAAAAAAAAAAAAAoAAAA...[TRUNC 288]",  # the relayed sample's
        "UEsDBA",  # missing padding
        "UEsD BA==x",
        "UEs*BA==",
        "UEsDBA==" + "ĐĐ",  # not ASCII
    ],
)
def test_decode_is_strict_and_names_the_content_id(encoded: str) -> None:
    attachment = Attachment(content_id="cid:36b8", encoded=encoded)
    with pytest.raises(AttachmentEncodingError, match="cid:36b8") as info:
        attachment.decode()
    assert info.value.detail["content_id"] == "cid:36b8"
    assert info.value.code == "ENVELOPE_ATTACHMENT_ENCODING"


# --- manifest --------------------------------------------------------------------------------


def test_manifest_matching_one_to_one_in_any_order() -> None:
    doc = _document(
        references=(ManifestReference(content_id="cid:2"), ManifestReference(content_id="cid:1")),
        attachments=(_attachment("cid:1"), _attachment("cid:2")),
    )
    assert [a.content_id for a in doc.attachments] == ["cid:1", "cid:2"]


def test_reference_without_attachment() -> None:
    with pytest.raises(ManifestMismatch, match="cid:209") as info:
        _document(references=(ManifestReference(content_id="cid:209"),))
    assert info.value.detail["missing_attachments"] == ["cid:209"]
    assert info.value.detail["unreferenced_attachments"] == []


def test_attachment_without_reference() -> None:
    with pytest.raises(ManifestMismatch, match="cid:7") as info:
        _document(attachments=(_attachment("cid:7"),))
    assert info.value.detail["unreferenced_attachments"] == ["cid:7"]


def test_content_ids_must_be_unique_on_each_side() -> None:
    refs = (ManifestReference(content_id="cid:1"),)
    with pytest.raises(ManifestMismatch, match="more than once") as info:
        check_manifest(refs * 2, (_attachment("cid:1"),))
    assert info.value.detail["duplicate_references"] == ["cid:1"]
    with pytest.raises(ManifestMismatch) as info:
        check_manifest(refs, (_attachment("cid:1"), _attachment("cid:1")))
    assert info.value.detail["duplicate_attachments"] == ["cid:1"]


def test_content_ids_match_exactly() -> None:
    with pytest.raises(ManifestMismatch):
        check_manifest((ManifestReference(content_id="cid:209"),), (_attachment("209"),))
    with pytest.raises(ManifestMismatch):
        check_manifest((ManifestReference(content_id="cid:ABC"),), (_attachment("cid:abc"),))
