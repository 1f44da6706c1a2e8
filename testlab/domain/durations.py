"""Durations as people write them in definition files ("90s", "30m", "1h30m") and as we print them.

Seconds as a float everywhere inside the program; this module is the only place that knows the text
form, so the CLI, the parsers and the printed listings agree on it.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from fractions import Fraction

from testlab.domain.inputlimits import preview

_NUMBER = r"\d+(?:\.\d+)?"
_PLAIN = re.compile(rf"{_NUMBER}")
# Units in decreasing order, each at most once: "1d2h", "1h30m", "90s", "1.5h", "2m 30s".
_COMPOUND = re.compile(
    rf"(?:(?P<d>{_NUMBER})d)?\s*(?:(?P<h>{_NUMBER})h)?\s*(?:(?P<m>{_NUMBER})m)?\s*(?:(?P<s>{_NUMBER})s)?"
)
_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
# Enough for the exact text of any float (format_duration(5e-324) has 326 characters); longer
# digit strings would only cost time to convert.
_MAX_CHARACTERS = 400
EXPECTED = "expected a duration like 90s, 30m, 2h or 1h30m (or a number of seconds)"


def parse_duration(value: str | int | float) -> float:
    """Seconds from "90s", "30m", "2h", "1h30m", "1d", "1.5h", "90", or a number of seconds.

    Raises ValueError with a one-line message; callers add where the value came from.
    """
    if isinstance(value, bool):
        raise ValueError(f"{EXPECTED}, got {str(value).lower()}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"must not be negative, got {value}")
        try:
            seconds = float(value)
        except OverflowError:  # an integer beyond any float
            raise ValueError(f"too large: {preview(value)}") from None
        if not math.isfinite(seconds):
            raise ValueError(f"{EXPECTED}, got {value}")
        return seconds
    if not isinstance(value, str):
        raise ValueError(f"{EXPECTED}, got {type(value).__name__}")
    text = value.strip()
    if text.startswith("-"):
        raise ValueError(f"must not be negative, got {value!r}")
    if len(text) > _MAX_CHARACTERS:
        raise ValueError(f"{EXPECTED}, got a text of {len(text):,} characters")
    if _PLAIN.fullmatch(text):
        return _seconds(Fraction(text), value)
    match = _COMPOUND.fullmatch(text)
    if not text or match is None or not any(match.groupdict().values()):
        raise ValueError(f"{EXPECTED}, got {value!r}")
    # Exact arithmetic, then one rounding: "1h30m" is exactly 5400.0 and formats back the same.
    total = sum(
        (Fraction(number) * _UNIT_SECONDS[unit] for unit, number in match.groupdict().items() if number),
        Fraction(0),
    )
    return _seconds(total, value)


def _seconds(exact: Fraction, value: str) -> float:
    try:
        seconds = float(exact)
    except OverflowError:
        raise ValueError(f"too large: {value!r}") from None
    if math.isinf(seconds):
        raise ValueError(f"too large: {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest text `parse_duration` reads back to exactly `seconds`: 5400 -> "1h30m"."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not math.isfinite(seconds):
        raise ValueError(f"cannot format {seconds!r} as a duration")
    if seconds < 0:
        raise ValueError(f"cannot format a negative duration ({seconds})")
    if seconds != int(seconds):
        # Fractions stay in plain seconds so that the text is exact (no exponent, no rounding).
        return f"{format(Decimal(repr(float(seconds))), 'f')}s"
    whole = int(seconds)
    if whole == 0:
        return "0s"
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{n}{unit}" for n, unit in ((hours, "h"), (minutes, "m"), (secs, "s")) if n]
    return "".join(parts)
