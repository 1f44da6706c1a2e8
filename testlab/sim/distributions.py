"""Durations that vary: how long a revert, a power-off or a task takes in the simulated lab.

People know their lab as "a revert takes about 90 seconds, give or take 30", so the main form is a
mean and a standard deviation. Durations are positive and skewed to the right (a revert is never
negative but sometimes takes three times as long), so {mean, sd} means a log-normal distribution
with exactly that mean and standard deviation, not a normal one. A plain duration is a constant;
{min, max} is uniform; {samples: [...]} redraws measured values (what `export-workload` could not
summarise better).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from testlab.domain.durations import EXPECTED as DURATION_EXPECTED
from testlab.domain.durations import format_duration, parse_duration
from testlab.domain.errors import DefinitionError
from testlab.domain.yamlsource import MapReader, YamlMap, describe

FORMS = "a duration (constant), {mean, sd} (log-normal), {min, max} (uniform) or {samples: [...]}"


@dataclass(frozen=True, slots=True)
class Distribution:
    """A non-negative random duration in seconds. `kind`: constant, lognormal, uniform or samples."""

    kind: str
    mean: float
    sd: float = 0.0
    low: float = 0.0
    high: float = 0.0
    samples: tuple[float, ...] = ()
    # Parameters of the underlying normal distribution for the log-normal form.
    mu: float = 0.0
    sigma: float = 0.0

    def draw(self, rng: random.Random) -> float:
        kind = self.kind
        if kind == "constant":
            return self.mean
        if kind == "lognormal":
            return math.exp(self.mu + self.sigma * rng.gauss(0.0, 1.0))
        if kind == "uniform":
            return rng.uniform(self.low, self.high)
        return self.samples[rng.randrange(len(self.samples))]

    def describe(self) -> str:
        if self.kind == "constant":
            return format_duration(_round(self.mean))
        if self.kind == "uniform":
            return f"{format_duration(_round(self.low))}..{format_duration(_round(self.high))}"
        return f"{format_duration(_round(self.mean))}±{format_duration(_round(self.sd))}"

    def to_yaml(self) -> Any:
        """The form `parse_distribution` reads back (used by `export-workload`)."""
        if self.kind == "constant":
            return format_duration(_round(self.mean))
        if self.kind == "uniform":
            return {"min": format_duration(_round(self.low)), "max": format_duration(_round(self.high))}
        if self.kind == "samples":
            return {"samples": [format_duration(_round(s)) for s in self.samples]}
        return {"mean": format_duration(_round(self.mean)), "sd": format_duration(_round(self.sd))}


def _round(seconds: float) -> float:
    """Printed durations keep three significant digits (whole seconds from ten minutes on): enough
    for any lab, sandboxes that revert in a fraction of a second included, and short to read."""
    if seconds >= 600:
        return float(round(seconds))
    return float(f"{seconds:.3g}")


def constant(seconds: float) -> Distribution:
    return Distribution("constant", float(seconds))


def lognormal(mean: float, sd: float) -> Distribution:
    """The log-normal distribution with this mean and standard deviation (sd 0: a constant)."""
    if mean <= 0 or sd <= 0:
        return constant(mean)
    sigma2 = math.log1p((sd / mean) ** 2)
    return Distribution("lognormal", mean, sd, mu=math.log(mean) - sigma2 / 2, sigma=math.sqrt(sigma2))


def uniform(low: float, high: float) -> Distribution:
    return Distribution("uniform", (low + high) / 2, (high - low) / math.sqrt(12), low=low, high=high)


def empirical(samples: Sequence[float]) -> Distribution:
    values = tuple(float(s) for s in samples)
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    return Distribution("samples", mean, sd, samples=values)


def fit(samples: Sequence[float]) -> Distribution:
    """Summarise measured durations by their mean and standard deviation (a constant when they
    never vary). The moments are what people read and edit; the log-normal shape keeps draws
    positive and right-skewed like the measurements."""
    values = [float(s) for s in samples]
    if not values:
        raise ValueError("no samples to fit")
    mean = sum(values) / len(values)
    if len(values) == 1:
        return constant(mean)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return lognormal(mean, sd) if sd > 1e-9 * max(mean, 1.0) else constant(mean)


def parse_distribution(value: Any, source: str, line: int, field: str) -> Distribution:
    """A distribution from its YAML form; a DefinitionError pointing at `field` otherwise."""
    if isinstance(value, YamlMap):
        return _parse_mapping(MapReader(value, source, field))
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        message = f"expected {FORMS}, got {describe(value)}"
        raise DefinitionError(message, source=source, line=line, field=field)
    try:
        return constant(parse_duration(value))
    except ValueError as exc:
        raise DefinitionError(str(exc), source=source, line=line, field=field) from None


def _parse_mapping(reader: MapReader, extra: tuple[str, ...] = ()) -> Distribution:
    keys = set(reader.data) - set(extra)
    if keys <= {"mean", "sd"} and "mean" in keys:
        return lognormal(reader.duration("mean", 0.0), reader.duration("sd", 0.0))
    if keys == {"min", "max"}:
        low = reader.duration("min", 0.0)
        high = reader.duration("max", 0.0)
        if high < low:
            raise reader.error("max", f"must not be less than min ({format_duration(low)})")
        return uniform(low, high) if high > low else constant(low)
    if keys == {"samples"}:
        values = []
        for item, line, field in reader.items("samples", non_empty=True):
            if isinstance(item, bool) or not isinstance(item, str | int | float):
                raise DefinitionError(
                    f"{DURATION_EXPECTED}, got {describe(item)}", source=reader.source, line=line, field=field
                )
            try:
                values.append(parse_duration(item))
            except ValueError as exc:
                raise DefinitionError(str(exc), source=reader.source, line=line, field=field) from None
        return empirical(values)
    if "sd" in keys and "mean" not in keys:
        raise reader.error(None, "missing required key", field=reader.field("mean"))
    unknown = sorted(str(k) for k in keys - {"mean", "sd", "min", "max", "samples"})
    if unknown:
        allowed = ", ".join(sorted({"mean", "sd", "min", "max", "samples", *extra}))
        raise reader.error(unknown[0], f"unknown key (allowed: {allowed})")
    raise reader.error(None, f"expected {FORMS}")


def parse_distribution_with(reader: MapReader, extra: tuple[str, ...]) -> Distribution:
    """A distribution written in a mapping that also holds other keys (`extra`), e.g. a step's
    run time next to its `fail` rate."""
    return _parse_mapping(reader, extra)
