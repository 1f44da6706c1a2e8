"""When jobs arrive: a Poisson process (`rate: 6/h`), a clock (`every: 24h`), or given times (`at:`).

Arrival times are drawn once per simulation from their own random stream, before anything is
scheduled, so every policy compared on a workload sees exactly the same jobs at the same times.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from testlab.domain.durations import format_duration, parse_duration
from testlab.domain.errors import DefinitionError
from testlab.domain.yamlsource import MapReader, describe

_RATE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*/\s*(\S.*?)\s*")
RATE_EXPECTED = "expected a rate like 6/h, 20/d or 1/30m"


@dataclass(frozen=True, slots=True)
class Arrivals:
    """`kind` "rate": Poisson with `rate` jobs per second; "every": one job each `every` seconds
    from `offset`; "at": the listed times (seconds from the start)."""

    kind: str
    rate: float = 0.0
    every: float = 0.0
    offset: float = 0.0
    at: tuple[float, ...] = ()

    def times(self, duration: float, rng: random.Random) -> list[float]:
        """Arrival times in [0, duration), in order."""
        if self.kind == "at":
            return sorted(t for t in self.at if t < duration)
        if self.kind == "every":
            result, t = [], self.offset
            while t < duration:
                result.append(t)
                t += self.every
            return result
        result, t = [], self.offset
        while self.rate > 0:
            t += rng.expovariate(self.rate)
            if t >= duration:
                break
            result.append(t)
        return result

    def scaled(self, factor: float) -> Arrivals:
        """`factor` times as many jobs (a what-if on load); given times cannot be scaled."""
        if self.kind == "rate":
            return Arrivals("rate", rate=self.rate * factor, offset=self.offset)
        if self.kind == "every":
            return Arrivals("every", every=self.every / factor, offset=self.offset)
        return self

    def describe(self) -> str:
        if self.kind == "rate":
            return f"{self.rate * 3600:.3g}/h"
        if self.kind == "every":
            return f"every {format_duration(round(self.every))}"
        return f"{len(self.at)} given times"


def parse_rate(value: object) -> float:
    """Jobs per second from "6/h", "20/d", "1/30m", "0.5/h". ValueError with a one-line message."""
    if not isinstance(value, str):
        raise ValueError(f"{RATE_EXPECTED}, got {describe(value)}")
    match = _RATE.fullmatch(value)
    if match is None:
        raise ValueError(f"{RATE_EXPECTED}, got {value!r}")
    count, per = float(match.group(1)), match.group(2)
    try:
        seconds = parse_duration(per if per[0].isdigit() else f"1{per}")
    except ValueError:
        raise ValueError(f"{RATE_EXPECTED}, got {value!r}") from None
    if seconds <= 0:
        raise ValueError(f"{RATE_EXPECTED}, got {value!r}")
    return count / seconds


def parse_arrivals(reader: MapReader) -> Arrivals:
    """The `arrivals:` mapping of a template: exactly one of rate, every, at (plus `offset`)."""
    kinds = [k for k in ("rate", "every", "at") if reader.has(k)]
    reader.check_keys(("rate", "every", "at", "offset"))
    if len(kinds) != 1:
        what = "one of rate, every or at" if not kinds else f"only one of {', '.join(kinds)}"
        raise reader.error(None, f"give {what}")
    offset = reader.duration("offset", 0.0)
    kind = kinds[0]
    if kind == "rate":
        try:
            rate = parse_rate(reader.data["rate"])
        except ValueError as exc:
            raise reader.error("rate", str(exc)) from None
        return Arrivals("rate", rate=rate, offset=offset)
    if kind == "every":
        every = reader.duration("every", 0.0)
        if every <= 0:
            raise reader.error("every", "must be more than 0")
        return Arrivals("every", every=every, offset=offset)
    if reader.has("offset"):
        raise reader.error("offset", "not used with at: give the times themselves")
    times = []
    for item, line, field in reader.items("at", non_empty=True):
        try:
            if isinstance(item, bool) or not isinstance(item, str | int | float):
                raise ValueError(f"expected a duration from the start, got {describe(item)}")
            times.append(parse_duration(item))
        except ValueError as exc:
            raise DefinitionError(str(exc), source=reader.source, line=line, field=field) from None
    return Arrivals("at", at=tuple(times))
