"""The workload file: which jobs arrive when, and how long the lab takes to do their work.

Its templates are ordinary job files, read by the one job-file parser, so a lab owner simulates
the jobs they really submit. Everything the job files do not say (how long a step runs, how long a
revert takes, how often the infrastructure fails) is said here, as distributions. Errors follow the
definition files' one-line `FILE:LINE: FIELD: message` form. See docs/sim.md for the format.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from testlab.domain.durations import format_duration
from testlab.domain.errors import DefinitionError
from testlab.domain.jobfile import JobDef, parse_job
from testlab.domain.yamlsource import MapReader, YamlMap, describe, load_top_mapping, read_source, sub_readers
from testlab.sim.arrivals import Arrivals, parse_arrivals, parse_rate
from testlab.sim.distributions import Distribution, constant, parse_distribution, parse_distribution_with

_TOP_KEYS = ("seed", "duration", "revert", "poweroff", "vms", "faults", "engine", "templates")
_TEMPLATE_KEYS = ("job", "name", "arrivals", "priority", "steps")
_STEP_EXTRA = ("fail", "vms")
_ENGINE_INTS = ("max_tries", "max_vm_errors")
_ENGINE_DURATIONS = ("monitor_interval", "monitor_backoff", "latency")

DEFAULT_POWEROFF = constant(10.0)


@dataclass(frozen=True)
class StepTimes:
    """How long the tasks of one step run, and how often they fail (a test failure, not the
    infrastructure's). `vms`: (VM name or glob pattern, distribution) overriding `run`."""

    run: Distribution
    fail: float = 0.0
    vms: tuple[tuple[str, Distribution], ...] = ()

    def for_vm(self, vm: str) -> Distribution:
        for pattern, distribution in self.vms:
            if fnmatch.fnmatchcase(vm, pattern):
                return distribution
        return self.run


@dataclass(frozen=True)
class Template:
    name: str
    job: JobDef  # priority already overridden by the template's own, if given
    arrivals: Arrivals
    steps: Mapping[str, StepTimes]


@dataclass(frozen=True)
class Faults:
    """Infrastructure faults injected at these rates (all off by default)."""

    revert_failure: float = 0.0  # probability that a revert fails (counts against the VM)
    vm_offline_rate: float = 0.0  # per VM and second: the VM breaks and goes offline
    vm_repair: Distribution = field(default_factory=lambda: constant(3600.0))
    host_crash_rate: float = 0.0  # per host and second: the host goes down with all it runs
    host_repair: Distribution = field(default_factory=lambda: constant(3600.0))

    @property
    def any(self) -> bool:
        return bool(self.revert_failure or self.vm_offline_rate or self.host_crash_rate)


@dataclass(frozen=True)
class EngineModel:
    """The engine rules the simulated lab follows (the same defaults as the engine's options)."""

    max_tries: int = 3
    max_vm_errors: int = 3
    monitor_interval: float = 60.0
    monitor_backoff: float = 1800.0
    # How long the engine takes to act on a change (an operation ended, a job arrived): negligible
    # next to real reverts and tasks, not next to sandboxes that revert in a fraction of a second.
    latency: float = 0.0


@dataclass(frozen=True)
class Workload:
    source: str
    seed: int
    duration: float  # jobs arrive during [0, duration)
    revert: Distribution  # revert + boot of a VM, lab-wide
    templates: tuple[Template, ...]
    poweroff: Distribution = DEFAULT_POWEROFF
    vm_reverts: tuple[tuple[str, Distribution], ...] = ()  # (VM name or glob, revert time)
    faults: Faults = field(default_factory=Faults)
    engine: EngineModel = field(default_factory=EngineModel)

    def revert_for(self, vm: str) -> Distribution:
        for pattern, distribution in self.vm_reverts:
            if fnmatch.fnmatchcase(vm, pattern):
                return distribution
        return self.revert

    def with_seed(self, seed: int) -> Workload:
        return replace(self, seed=seed)

    def with_duration(self, duration: float) -> Workload:
        return replace(self, duration=duration)

    def scaled(self, factor: float) -> Workload:
        """`factor` times as many arrivals of every template."""
        return replace(
            self, templates=tuple(replace(t, arrivals=t.arrivals.scaled(factor)) for t in self.templates)
        )


def parse_workload(path: Path) -> Workload:
    """Read and check a workload file; its job files are relative to its directory."""
    path = Path(path)
    return parse_workload_text(read_source(path), source=str(path), base_dir=path.parent)


def parse_workload_text(text: str, source: str = "<workload>", base_dir: Path | None = None) -> Workload:
    top = MapReader(load_top_mapping(text, source, "duration: and templates:"), source)
    top.check_keys(_TOP_KEYS, required=("duration", "revert", "templates"))
    anchor = base_dir if base_dir is not None else Path.cwd()
    seed = top.integer("seed", 1, minimum=0)
    duration = top.duration("duration", 0.0)
    if duration <= 0:
        raise top.error("duration", "must be more than 0")
    templates = []
    names: dict[str, int] = {}
    for reader in sub_readers(top, "templates", non_empty=True):
        template = _parse_template(reader, anchor)
        if template.name in names:
            raise reader.error(
                "name",
                f"duplicate template name {template.name!r} (first on line {names[template.name]}): "
                "give each template its own name",
            )
        names[template.name] = reader.line()
        templates.append(template)
    return Workload(
        source=source,
        seed=seed,
        duration=duration,
        revert=_distribution(top, "revert"),
        poweroff=_distribution(top, "poweroff") if top.has("poweroff") else DEFAULT_POWEROFF,
        vm_reverts=_vm_reverts(top),
        faults=_parse_faults(top),
        engine=_parse_engine(top),
        templates=tuple(templates),
    )


def _distribution(reader: MapReader, key: str) -> Distribution:
    return parse_distribution(reader.data[key], reader.source, reader.line(key), reader.field(key))


def _vm_reverts(top: MapReader) -> tuple[tuple[str, Distribution], ...]:
    vms = top.mapping("vms")
    if vms is None:
        return ()
    result = []
    for pattern in vms.data:
        if not isinstance(pattern, str):
            raise vms.error(pattern, f"expected a VM name or pattern, got {describe(pattern)}")
        entry = vms.mapping(pattern)
        if entry is None:  # pragma: no cover - mapping() only returns None for absent keys
            continue
        entry.check_keys(("revert",), required=("revert",))
        result.append((pattern, _distribution(entry, "revert")))
    return tuple(result)


def _parse_template(reader: MapReader, anchor: Path) -> Template:
    reader.check_keys(_TEMPLATE_KEYS, required=("job", "arrivals", "steps"))
    job_path = Path(reader.string("job"))
    full = job_path if job_path.is_absolute() else anchor / job_path
    try:
        job = parse_job(full)
    except DefinitionError as error:
        if error.source == str(full) and error.line is None and error.message == "no such file":
            raise reader.error("job", f"no such job file: {str(job_path)!r}") from None
        raise
    if reader.has("priority"):
        job = replace(job, priority=reader.integer("priority", job.priority))
    arrivals = reader.mapping("arrivals")
    if arrivals is None:  # pragma: no cover - required above
        raise reader.error(None, "missing required key", field=reader.field("arrivals"))
    name = reader.string("name", job.name).strip()
    steps = reader.mapping("steps")
    if steps is None:  # pragma: no cover - required above
        raise reader.error(None, "missing required key", field=reader.field("steps"))
    times: dict[str, StepTimes] = {}
    known = [step.name for step in job.steps]
    for step_name in steps.data:
        if step_name not in known:
            message = f"job {job.name!r} has no step {step_name!r} (steps: {', '.join(known)})"
            raise steps.error(step_name, message)
        times[step_name] = _parse_step_times(steps, step_name)
    missing = [s for s in known if s not in times]
    if missing:
        raise reader.error("steps", f"no run time for step {missing[0]!r} of job {job.name!r}")
    return Template(name=name, job=job, arrivals=parse_arrivals(arrivals), steps=times)


def _parse_step_times(steps: MapReader, step_name: str) -> StepTimes:
    value = steps.data[step_name]
    if not isinstance(value, YamlMap):
        return StepTimes(run=_distribution(steps, step_name))
    reader = MapReader(value, steps.source, steps.field(step_name))
    run = parse_distribution_with(reader, _STEP_EXTRA)
    fail = _probability(reader, "fail")
    overrides = []
    vms = reader.mapping("vms")
    if vms is not None:
        for pattern in vms.data:
            if not isinstance(pattern, str):
                raise vms.error(pattern, f"expected a VM name or pattern, got {describe(pattern)}")
            overrides.append((pattern, _distribution(vms, pattern)))
    return StepTimes(run=run, fail=fail, vms=tuple(overrides))


def _probability(reader: MapReader, key: str) -> float:
    if not reader.has(key):
        return 0.0
    value = reader.data[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise reader.error(key, f"expected a probability between 0 and 1, got {describe(value)}")
    return float(value)


def _parse_faults(top: MapReader) -> Faults:
    reader = top.mapping("faults")
    if reader is None:
        return Faults()
    reader.check_keys(("revert_failure", "vm_offline", "host_crash"))
    vm_rate, vm_repair = _fault_process(reader, "vm_offline")
    host_rate, host_repair = _fault_process(reader, "host_crash")
    return Faults(
        revert_failure=_probability(reader, "revert_failure"),
        vm_offline_rate=vm_rate,
        vm_repair=vm_repair,
        host_crash_rate=host_rate,
        host_repair=host_repair,
    )


def _fault_process(reader: MapReader, key: str) -> tuple[float, Distribution]:
    sub = reader.mapping(key)
    if sub is None:
        return 0.0, constant(3600.0)
    sub.check_keys(("rate", "repair"), required=("rate",))
    try:
        rate = parse_rate(sub.data["rate"])
    except ValueError as exc:
        raise sub.error("rate", str(exc)) from None
    repair = _distribution(sub, "repair") if sub.has("repair") else constant(3600.0)
    return rate, repair


def _parse_engine(top: MapReader) -> EngineModel:
    reader = top.mapping("engine")
    if reader is None:
        return EngineModel()
    reader.check_keys((*_ENGINE_INTS, *_ENGINE_DURATIONS))
    default = EngineModel()
    values: dict = {key: reader.integer(key, getattr(default, key), minimum=1) for key in _ENGINE_INTS}
    for key in _ENGINE_DURATIONS:
        values[key] = reader.duration(key, getattr(default, key))
        if values[key] <= 0 and key != "latency":
            raise reader.error(key, "must be more than 0")
    return EngineModel(**values)


def describe_workload(workload: Workload) -> str:
    """One line per template, for the report header."""
    lines = []
    for template in workload.templates:
        steps = ", ".join(f"{name} {t.run.describe()}" for name, t in template.steps.items())
        arrivals = template.arrivals.describe()
        lines.append(f"{template.name}: {arrivals}, priority {template.job.priority}; {steps}")
    lines.append(f"revert {workload.revert.describe()}; arrivals during {format_duration(workload.duration)}")
    return "\n".join(lines)
