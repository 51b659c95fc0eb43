"""The JSON depth scan agrees with the parser, and refuses what would make it recurse."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import JSONTooDeep
from gateway.jsonsafe import depth_exceeds, loads

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab', max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=30,
)


def depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    return 0


@settings(max_examples=300, deadline=None)
@given(value=JSON_VALUES, limit=st.integers(0, 8))
def test_the_scan_measures_what_the_parser_would_nest(value: Any, limit: int) -> None:
    data = json.dumps(value).encode("utf-8")
    assert depth_exceeds(data, limit) == (depth(value) > limit)
    if depth(value) > limit:
        with pytest.raises(JSONTooDeep):
            loads(data, max_depth=limit)
    else:
        assert loads(data, max_depth=limit) == value


@pytest.mark.parametrize(
    "data",
    [b"[" * 200_000, b"[" * 200_000 + b"]" * 200_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000],
)
def test_nesting_that_would_recurse_is_refused_not_a_recursion_error(data: bytes) -> None:
    with pytest.raises(JSONTooDeep):
        loads(data, max_depth=32)


@pytest.mark.parametrize("data", [b"\xff", b'"\xc3"', b"[1,]", b"]" * 100, b"1" * 5000, b""])
def test_anything_else_that_is_not_json_is_a_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        loads(data, max_depth=32)
