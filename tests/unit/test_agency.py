"""Agency codes (mã định danh, QCVN 102:2016): ``VVV.ZZ.YY.Lnn``, most significant part last."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.agency import AgencyCode
from gateway.errors import AgencyCodeError

QUANG_NINH = "000.00.00.H49"


def test_parse_splits_the_four_levels() -> None:
    code = AgencyCode.parse("002.01.20.H13")
    assert (code.l4, code.l3, code.l2, code.l1) == ("002", "01", "20", "H13")
    assert str(code) == "002.01.20.H13"
    assert repr(code) == "AgencyCode('002.01.20.H13')"


@pytest.mark.parametrize(
    "text",
    [
        "  000.00.00.H49\n",
        " 000.00.00.H49",
        "000.00.00.H49 ",
        "000.00.00.H49\t",
        "\r\n000.00.00.H49",
        "000.00.00.H49\u00a0",  # no-break space: the review's case
        "\u00a0000.00.00.H49",
        "000.00.00.H49\u3000",  # ideographic space
        "000.00.00.H49\u2028",  # line separator
        "\u2003000.00.00.H49",  # em space
    ],
)
def test_surrounding_whitespace_of_any_kind_is_refused(text: str) -> None:
    with pytest.raises(AgencyCodeError) as info:
        AgencyCode.parse(text)
    assert info.value.code == "AGENCY_CODE_INVALID"
    assert info.value.detail == {"value": text, "reason": "leading or trailing whitespace"}
    assert not AgencyCode.is_valid(text)
    assert AgencyCode.is_near_miss(text)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("000.00.00.h49", "a character outside [0-9A-Z.]"),
        ("000.00.00.H4\u200b9", "a character outside [0-9A-Z.]"),  # zero-width space inside
        ("\ufeff000.00.00.H49", "a character outside [0-9A-Z.]"),  # BOM: not isspace
        ("000.00.0.0H49", "not of the form VVV.ZZ.YY.Lnn"),
    ],
)
def test_the_fault_is_named(text: str, reason: str) -> None:
    with pytest.raises(AgencyCodeError) as info:
        AgencyCode.parse(text)
    assert info.value.detail["reason"] == reason


def test_near_misses_are_codes_only_after_folding() -> None:
    assert AgencyCode.is_near_miss("000.00.00.h49")
    assert AgencyCode.is_near_miss("000.00.00.H４９")  # full-width digits
    assert not AgencyCode.is_near_miss(QUANG_NINH)  # a code is not a miss
    assert not AgencyCode.is_near_miss("MST:0101234567")
    assert not AgencyCode.is_near_miss("01.02.G22")


def test_a_long_value_is_clipped_in_the_error() -> None:
    with pytest.raises(AgencyCodeError) as info:
        AgencyCode.parse("9" * 100_000)
    assert len(info.value.message) < 200
    assert len(info.value.detail["value"]) < 50


@pytest.mark.parametrize(
    ("text", "level"),
    [
        ("000.00.00.H49", 1),  # UBND tỉnh Quảng Ninh
        ("000.00.00.G22", 1),  # Văn phòng Chính phủ
        ("000.00.15.H51", 2),
        ("000.03.15.H51", 3),
        ("001.03.15.H51", 4),
        ("002.00.20.H13", 4),  # a level-4 unit directly under a level-2 one (field data)
    ],
)
def test_level(text: str, level: int) -> None:
    assert AgencyCode.parse(text).level == level


def test_parent_zeroes_the_most_specific_part() -> None:
    code = AgencyCode.parse("001.03.15.H51")
    assert code.parent == AgencyCode.parse("000.03.15.H51")
    assert AgencyCode.parse("000.03.15.H51").parent == AgencyCode.parse("000.00.15.H51")
    assert AgencyCode.parse("000.00.15.H51").parent == AgencyCode.parse("000.00.00.H51")
    assert AgencyCode.parse("000.00.00.H51").parent is None


def test_parent_skips_unused_levels() -> None:
    assert AgencyCode.parse("002.00.20.H13").parent == AgencyCode.parse("000.00.20.H13")


def test_ancestors_nearest_first() -> None:
    assert AgencyCode.parse("001.03.15.H51").ancestors() == [
        AgencyCode.parse("000.03.15.H51"),
        AgencyCode.parse("000.00.15.H51"),
        AgencyCode.parse("000.00.00.H51"),
    ]
    assert AgencyCode.parse(QUANG_NINH).ancestors() == []


def test_root_and_ancestry() -> None:
    commune = AgencyCode.parse("000.03.15.H49")
    province = AgencyCode.parse(QUANG_NINH)
    assert commune.root == province
    assert province.is_ancestor_of(commune)
    assert not commune.is_ancestor_of(province)
    assert not province.is_ancestor_of(province)  # strictly below
    assert not AgencyCode.parse("000.00.00.H41").is_ancestor_of(commune)
    assert not AgencyCode.parse("000.00.16.H49").is_ancestor_of(commune)  # a sibling district


def test_central_and_provincial() -> None:
    assert AgencyCode.parse("000.00.00.G22").is_central
    assert not AgencyCode.parse("000.00.00.G22").is_provincial
    assert AgencyCode.parse("000.00.15.H49").is_provincial
    assert not AgencyCode.parse("000.00.15.H49").is_central


def test_ordering_groups_by_unit_with_parents_first() -> None:
    texts = [
        "000.00.16.H49",
        "000.01.15.H49",
        "000.00.00.H49",
        "000.00.00.G22",
        "001.01.15.H49",
        "000.00.15.H49",
    ]
    ordered = [str(c) for c in sorted(AgencyCode.parse(t) for t in texts)]
    assert ordered == [
        "000.00.00.G22",
        "000.00.00.H49",
        "000.00.15.H49",
        "000.01.15.H49",
        "001.01.15.H49",
        "000.00.16.H49",
    ]
    assert AgencyCode.parse("000.00.00.H49") < AgencyCode.parse("000.00.15.H49")
    assert AgencyCode.parse("000.00.15.H49") >= AgencyCode.parse("000.00.00.H49")


def test_ordering_against_other_types_is_refused() -> None:
    with pytest.raises(TypeError):
        _ = AgencyCode.parse(QUANG_NINH) < QUANG_NINH  # type: ignore[operator]


def test_equal_codes_hash_alike() -> None:
    assert len({AgencyCode.parse(QUANG_NINH), AgencyCode.parse("000.00.00.H49")}) == 1


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "H49",
        "000.00.00.h49",  # lower-case unit letter
        "00.00.00.H49",
        "0000.00.00.H49",
        "000.00.00.H4",
        "000.00.00.H499",
        "000-00-00-H49",
        "000.00.00.49",
        "000.00.00.H49.1",
        "000.00.00.H49\n000.00.00.H49",
        "01.02.G22",  # field data: TraceHeader of the relayed sample
        "001.00.20.TT2",  # field data: the hub's TraceHeader
        "28.22.H17",  # field data: To of edoc_new.edxml
        "٠٠٠.٠٠.٠٠.H٤٩",  # Arabic-Indic digits: \\d would accept them
        "000.00.00.H４９",  # full-width digits
    ],
)
def test_malformed_codes_raise(text: str) -> None:
    with pytest.raises(AgencyCodeError) as info:
        AgencyCode.parse(text)
    assert info.value.code == "AGENCY_CODE_INVALID"
    assert info.value.detail["value"] == text
    assert not AgencyCode.is_valid(text)


def test_error_message_names_the_value() -> None:
    with pytest.raises(AgencyCodeError, match=r"'01\.02\.G22'"):
        AgencyCode.parse("01.02.G22")


@pytest.mark.parametrize("value", [None, 49, b"000.00.00.H49"])
def test_non_strings_raise_agency_code_error(value: object) -> None:
    with pytest.raises(AgencyCodeError):
        AgencyCode.parse(value)  # type: ignore[arg-type]
    assert not AgencyCode.is_valid(value)  # type: ignore[arg-type]


_codes = st.from_regex(r"[0-9]{3}\.[0-9]{2}\.[0-9]{2}\.[A-Z][0-9]{2}", fullmatch=True)


@given(_codes)
def test_str_round_trips(text: str) -> None:
    code = AgencyCode.parse(text)
    assert str(code) == text
    assert AgencyCode.parse(str(code)) == code
    assert AgencyCode.is_valid(text)


@given(_codes)
def test_every_ancestor_is_higher_sorts_first_and_shares_the_root(text: str) -> None:
    code = AgencyCode.parse(text)
    levels = [a.level for a in code.ancestors()]
    assert levels == sorted(levels, reverse=True)
    assert all(level < code.level for level in levels)
    for ancestor in code.ancestors():
        assert ancestor < code
        assert ancestor.is_ancestor_of(code)
        assert ancestor.root == code.root
    assert (code.ancestors() or [code])[-1] == code.root
