"""Sizes as people write them in lab files ("5G", "500M", "1.5T") and as we print them back.

Bytes as an int everywhere inside the program; like durations.py for time, this module is the only
place that knows the text form. Units are powers of 1024 (K, M, G, T), as `df -h` prints them.
"""

from __future__ import annotations

import re
from fractions import Fraction

from testlab.domain.inputlimits import preview

_UNITS = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_SIZE = re.compile(r"(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>[KMGT]?)")
_MAX_CHARACTERS = 100
EXPECTED = "expected a size like 5G, 500M, 1.5T or 64K (powers of 1024), or a number of bytes"


def parse_size(value: str | int) -> int:
    """Bytes from "5G", "500M", "1.5T", "64K", "1048576" or an int; fractions of a byte are dropped.

    Raises ValueError with a one-line message; callers add where the value came from.
    """
    if isinstance(value, bool) or not isinstance(value, str | int):
        shown = str(value).lower() if isinstance(value, bool) else preview(value)
        raise ValueError(f"{EXPECTED}, got {shown}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"must not be negative, got {value}")
        return value
    text = value.strip()
    if text.startswith("-"):
        raise ValueError(f"must not be negative, got {value!r}")
    match = _SIZE.fullmatch(text) if len(text) <= _MAX_CHARACTERS else None
    if match is None:
        raise ValueError(f"{EXPECTED}, got {preview(value)}")
    return int(Fraction(match["number"]) * _UNITS.get(match["unit"], 1))


def format_size(size: int) -> str:
    """The shortest text `parse_size` reads back to exactly `size`: 5368709120 -> "5G"."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"cannot format {size!r} as a size")
    for unit, factor in reversed(_UNITS.items()):
        for decimals in range(3):
            scaled = size * 10**decimals
            if size >= factor and scaled % factor == 0:
                whole, fraction = divmod(scaled // factor, 10**decimals)
                text = f"{whole}.{fraction:0{decimals}d}{unit}" if decimals else f"{whole}{unit}"
                return text
    return str(size)
