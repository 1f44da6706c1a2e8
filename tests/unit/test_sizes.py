"""Sizes: the text forms of lab files (`min_free_disk: 5G`), the shortest form we print, the round trip."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from testlab.domain.sizes import format_size, parse_size


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("5G", 5 * 1024**3),
        ("500M", 500 * 1024**2),
        ("1.5T", 1649267441664),
        ("64K", 65536),
        ("1048576", 1048576),
        (" 2 G ", 2 * 1024**3),
        ("0", 0),
        ("1.3G", 1395864371),  # fractions of a byte are dropped
        (4096, 4096),
    ],
)
def test_parse(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("5GB", "got '5GB'"),
        ("5g", "got '5g'"),
        ("5 GiB", "got '5 GiB'"),
        ("", "got ''"),
        ("1e9", "got '1e9'"),
        (1.5, "got 1.5"),
        (True, "got true"),
        ("9" * 101, "got '" + "9" * 58 + "… (101 characters)"),
    ],
)
def test_parse_errors(value: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_size(value)  # type: ignore[arg-type]
    assert str(info.value) == (
        f"expected a size like 5G, 500M, 1.5T or 64K (powers of 1024), or a number of bytes, {message}"
    )


@pytest.mark.parametrize("value", [-1, "-5G"])
def test_negative_sizes_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        parse_size(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0"),
        (1023, "1023"),
        (1536, "1.5K"),
        (5 * 1024**3, "5G"),
        (1649267441664, "1.5T"),
        (1395864371, "1395864371"),
    ],
)
def test_format(size: int, text: str) -> None:
    assert format_size(size) == text


@given(st.integers(min_value=0, max_value=2**63 - 1))
def test_round_trip_any_size(size: int) -> None:
    assert parse_size(format_size(size)) == size


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["K", "M", "G", "T"]))
def test_round_trip_unit_multiples(number: int, unit: str) -> None:
    size = parse_size(f"{number}{unit}")
    assert parse_size(format_size(size)) == size
