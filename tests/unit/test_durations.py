"""Durations: the text forms people write, the shortest form we print, and the round trip between them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from testlab.domain.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90.0),
        ("30m", 1800.0),
        ("2h", 7200.0),
        ("1h30m", 5400.0),
        ("1h 30m", 5400.0),
        ("1d", 86400.0),
        ("1d2h3m4s", 93784.0),
        ("1.5h", 5400.0),
        ("0.25s", 0.25),
        ("90", 90.0),
        (" 45s ", 45.0),
        ("0s", 0.0),
        (90, 90.0),
        (2.5, 2.5),
    ],
)
def test_parse(text: str | int | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("abc", "expected a duration like 90s, 30m, 2h or 1h30m (or a number of seconds), got 'abc'"),
        ("", "expected a duration like 90s, 30m, 2h or 1h30m (or a number of seconds), got ''"),
        ("30M", "expected a duration like 90s, 30m, 2h or 1h30m (or a number of seconds), got '30M'"),
        ("30m1h", "expected a duration like 90s, 30m, 2h or 1h30m (or a number of seconds), got '30m1h'"),
        ("1h1h", "expected a duration like 90s, 30m, 2h or 1h30m (or a number of seconds), got '1h1h'"),
        ("-5m", "must not be negative, got '-5m'"),
        (-1, "must not be negative, got -1"),
        (True, "expected a duration like 90s, 30m, 2h or 1h30m (or a number of seconds), got true"),
        (float("inf"), "expected a duration like 90s, 30m, 2h or 1h30m (or a number of seconds), got inf"),
    ],
)
def test_parse_errors(value: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(value)  # type: ignore[arg-type]
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (45, "45s"),
        (90, "1m30s"),
        (1800, "30m"),
        (5400, "1h30m"),
        (86400, "24h"),
        (3601, "1h1s"),
        (0.5, "0.5s"),
        (1e-05, "0.00001s"),
        (90.5, "90.5s"),
    ],
)
def test_format(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), "5m", True])
def test_format_rejects_what_is_not_a_duration(bad: object) -> None:
    with pytest.raises(ValueError):
        format_duration(bad)  # type: ignore[arg-type]


@given(st.integers(min_value=0, max_value=10**12))
def test_round_trip_whole_seconds(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.floats(min_value=0, max_value=1e12, allow_nan=False, allow_infinity=False))
def test_round_trip_any_seconds(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.integers(0, 50), st.integers(0, 59), st.integers(0, 59))
def test_compound_text_is_exact(hours: int, minutes: int, secs: int) -> None:
    text = f"{hours}h{minutes}m{secs}s"
    assert parse_duration(text) == hours * 3600 + minutes * 60 + secs
