"""The job file: what to run (steps), where (VMs named or chosen by labels), in which order, how long.

The one parser of this format, used by the CLI and the engine (the REST API and shards will use it
too). Pure: it reads the file and checks that the files it sends to the VMs exist, but knows nothing
of the database. Which VMs a step targets depends on the lab at submission time, so that is a
separate step, `resolve_targets`.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from testlab.domain.durations import format_duration
from testlab.domain.errors import DefinitionError
from testlab.domain.inputlimits import (
    INT32_MAX,
    INT32_MIN,
    MAX_ARTIFACTS,
    MAX_ENV_TOTAL,
    MAX_FILES,
    MAX_JOB_FILE_BYTES,
    MAX_JOB_NAME,
    MAX_LABELS,
    MAX_NAME,
    MAX_STEP_TIMEOUT,
    MAX_STEPS,
    MAX_TASKS,
)
from testlab.domain.statuses import VMRole
from testlab.domain.yamlsource import (
    FrozenMap,
    MapReader,
    check_size,
    load_top_mapping,
    read_source,
    sub_readers,
)

DEFAULT_PRIORITY = 50
DEFAULT_TIMEOUT = 30 * 60.0
MAX_TIMEOUT = MAX_STEP_TIMEOUT
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

_JOB_KEYS = ("name", "priority", "description", "reference", "notify", "steps")
_STEP_KEYS = (
    "name",
    "run",
    "files",
    "vms",
    "labels",
    "count",
    "after",
    "timeout",
    "artifacts",
    "reports",
    "env",
    "prepare",
    "clean",
)
_NOTIFY_KEYS = ("email", "webhooks", "when")
NOTIFY_WHEN = ("failure", "always")
MAX_RECIPIENTS = 50
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+")


@dataclass(frozen=True)
class StepDef:
    name: str
    run: str
    files: tuple[str, ...] = ()
    vms: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    # With labels: N tasks, each on whichever VM carrying the labels is free first (a pool);
    # None: one task on every such VM.
    count: int | None = None
    after: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    artifacts: tuple[str, ...] = ()
    reports: tuple[str, ...] = ()  # JUnit XML or TAP files the command writes, parsed into test cases
    env: Mapping[str, str] = field(default_factory=FrozenMap)
    # A preparation step sets up a machine that later tasks share: its uses are marked in history
    # strings. A clean step runs only on a VM unused since its last wipe (docs/lifecycle.md).
    prepare: bool = False
    clean: bool = False
    line: int | None = None
    # Line of each key of the step, so later checks (resolve_targets) can point at `labels:` itself.
    field_lines: Mapping[str, int] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.env, FrozenMap):
            object.__setattr__(self, "env", FrozenMap(self.env))


@dataclass(frozen=True)
class NotifyDef:
    """Who hears of the job's end: addresses, webhooks (by name), and whether on failure only."""

    email: tuple[str, ...] = ()
    webhooks: tuple[str, ...] = ()
    when: str = "failure"
    webhook_lines: tuple[int, ...] = ()  # where each webhook is named, for errors found at submission

    def as_dict(self) -> dict[str, object]:
        return {"email": list(self.email), "webhooks": list(self.webhooks), "when": self.when}


@dataclass(frozen=True)
class JobDef:
    name: str
    priority: int
    description: str
    steps: tuple[StepDef, ...]
    source: Path
    base_dir: Path
    reference: bool = False  # its results become what later jobs' failures are compared with
    notify: NotifyDef | None = None

    def step(self, name: str) -> StepDef | None:
        return next((s for s in self.steps if s.name == name), None)

    def ordered_steps(self) -> tuple[StepDef, ...]:
        """Dependencies before dependents; otherwise the order of the file (the parser rejects cycles)."""
        index = {step.name: i for i, step in enumerate(self.steps)}
        dependents: dict[str, list[int]] = {}
        ready: list[int] = []
        for i, step in enumerate(self.steps):
            if step.after is None or step.after not in index:
                ready.append(i)
            else:
                dependents.setdefault(step.after, []).append(i)
        heapq.heapify(ready)
        ordered: list[StepDef] = []
        while ready:
            step = self.steps[heapq.heappop(ready)]
            ordered.append(step)
            for i in dependents.get(step.name, ()):
                heapq.heappush(ready, i)
        if len(ordered) < len(self.steps):  # a cycle in a hand-built JobDef: never drop steps
            ordered += [step for step in self.steps if step not in ordered]
        return tuple(ordered)


@dataclass(frozen=True)
class TargetVM:
    """What resolve_targets needs to know of a VM; `enabled`: role base/extra and not disabled."""

    name: str
    role: str
    labels: frozenset[str]
    enabled: bool


def parse_job(path: Path) -> JobDef:
    """Read and check a job file; its `files:` are relative to the file's directory."""
    path = Path(path)
    return parse_job_text(
        read_source(path, max_bytes=MAX_JOB_FILE_BYTES), source=str(path), base_dir=path.parent
    )


def parse_job_text(text: str, source: str = "<job>", base_dir: Path | None = None) -> JobDef:
    """Check job text whose `files:` live under `base_dir` (the current directory when None)."""
    check_size(text, MAX_JOB_FILE_BYTES, source)
    top = MapReader(load_top_mapping(text, source, "name: and steps:"), source)
    top.check_keys(_JOB_KEYS, required=("name", "steps"))
    anchor = (base_dir if base_dir is not None else Path.cwd()).absolute()
    name = top.string("name", max_length=MAX_JOB_NAME)
    priority = top.integer("priority", DEFAULT_PRIORITY, minimum=INT32_MIN, maximum=INT32_MAX)
    description = top.text("description")
    reference = top.boolean("reference", False)
    notify = _parse_notify(top)

    steps: list[StepDef] = []
    step_lines: dict[str, int] = {}
    for reader in sub_readers(top, "steps", non_empty=True, max_items=MAX_STEPS):
        step = _parse_step(reader, anchor)
        if step.name in step_lines:
            raise reader.error(
                "name", f"duplicate step name {step.name!r} (first on line {step_lines[step.name]})"
            )
        step_lines[step.name] = reader.line("name")
        steps.append(step)
    _check_dependencies(steps, source)
    return JobDef(
        name=name.strip(),
        priority=priority,
        description=description,
        steps=tuple(steps),
        source=Path(source),
        base_dir=anchor,
        reference=reference,
        notify=notify,
    )


def _parse_notify(top: MapReader) -> NotifyDef | None:
    reader = top.mapping("notify")
    if reader is None:
        return None
    reader.check_keys(_NOTIFY_KEYS)
    email = reader.string_list("email", max_items=MAX_RECIPIENTS, check=_email_problem)
    webhooks = reader.string_list("webhooks", max_items=MAX_RECIPIENTS, max_length=MAX_NAME)
    if not email and not webhooks:
        raise reader.error(None, "name at least one e-mail address or webhook")
    return NotifyDef(
        email=email,
        webhooks=webhooks,
        when=reader.string("when", "failure", choices=NOTIFY_WHEN),
        webhook_lines=tuple(line for _, line, _ in reader.items("webhooks")),
    )


def _email_problem(address: str) -> str | None:
    return (
        None
        if _EMAIL.fullmatch(address) and len(address) <= 300
        else f"expected an address like name@domain, got {address!r}"
    )


def _parse_step(reader: MapReader, anchor: Path) -> StepDef:
    reader.check_keys(_STEP_KEYS, required=("name", "run"))
    name = reader.string("name", name=True)
    run = reader.string("run", one_line=False)
    has_vms, has_labels = reader.has("vms"), reader.has("labels")
    if has_vms and has_labels:
        raise reader.error("labels", "give either vms or labels, not both")
    if not has_vms and not has_labels:
        raise reader.error(None, "missing 'vms' or 'labels' (say where the step runs)")
    vms = reader.string_list("vms", non_empty=True, max_items=MAX_TASKS, max_length=MAX_NAME)
    labels = reader.string_list("labels", non_empty=True, max_items=MAX_LABELS, max_length=MAX_NAME)
    count = reader.integer("count", None, minimum=1, maximum=MAX_TASKS) if reader.has("count") else None
    if count is not None and not labels:
        raise reader.error("count", "goes with labels: N tasks on any VMs carrying them")
    after = reader.string("after", None)
    if after == name:
        raise reader.error("after", "a step cannot run after itself")
    timeout = reader.duration("timeout", DEFAULT_TIMEOUT)
    if timeout <= 0 or timeout > MAX_TIMEOUT:
        raise reader.error(
            "timeout",
            f"must be more than 0 and at most {format_duration(MAX_TIMEOUT)}, got {format_duration(timeout)}",
        )
    return StepDef(
        name=name,
        run=run,
        files=reader.string_list("files", check=lambda p: _file_problem(p, anchor), max_items=MAX_FILES),
        vms=vms,
        labels=labels,
        count=count,
        after=after,
        timeout=timeout,
        artifacts=reader.string_list("artifacts", check=_pattern_problem, max_items=MAX_ARTIFACTS),
        reports=reader.string_list("reports", check=_pattern_problem, max_items=MAX_ARTIFACTS),
        env=_parse_env(reader),
        prepare=reader.boolean("prepare", False),
        clean=reader.boolean("clean", False),
        line=reader.line(),
        field_lines=_field_lines(reader),
    )


def _parse_env(reader: MapReader) -> FrozenMap:
    env = reader.string_map(
        "env", key_pattern=ENV_NAME, key_rule="use letters, digits and '_', not starting with a digit"
    )
    total = sum(len(name) + len(value) for name, value in env.items())
    if total > MAX_ENV_TOTAL:
        raise reader.error(
            "env", f"too large: {total:,} characters of names and values (at most {MAX_ENV_TOTAL:,})"
        )
    return env


def _field_lines(reader: MapReader) -> dict[str, int]:
    lines = {str(key): line for key, line in reader.data.key_lines.items()}
    for key in ("vms", "labels"):
        for position, (_, line, _) in enumerate(reader.items(key)):
            lines[f"{key}[{position}]"] = line
    return lines


def _file_problem(relative: str, anchor: Path) -> str | None:
    """Only files under the job's directory may be sent, so a job file cannot leak the submitter's disk."""
    path = Path(relative)
    if path.is_absolute():
        return f"must be relative to the job file's directory, got {relative!r}"
    if ".." in path.parts:
        return f"must stay inside the job file's directory (no '..'), got {relative!r}"
    full = anchor / path
    if not full.exists():
        return f"no such file: {relative!r}"
    if full.is_dir():
        return f"{relative!r} is a directory; list files only"
    if not full.is_file():
        return f"{relative!r} is not a regular file"
    try:
        full.resolve().relative_to(anchor.resolve())
    except ValueError:
        return f"{relative!r} leads outside the job file's directory (symbolic link)"
    return None


def _pattern_problem(pattern: str) -> str | None:
    path = PurePosixPath(pattern)
    if path.is_absolute() or pattern.startswith("\\") or re.match(r"[A-Za-z]:[\\/]", pattern):
        return f"must be relative to the task's work directory, got {pattern!r}"
    if ".." in path.parts or ".." in re.split(r"[\\/]", pattern):
        return f"must stay inside the task's work directory (no '..'), got {pattern!r}"
    return None


def _check_dependencies(steps: list[StepDef], source: str) -> None:
    by_name = {step.name: step for step in steps}
    position = {step.name: i for i, step in enumerate(steps)}
    for i, step in enumerate(steps):
        if step.after is not None and step.after not in by_name:
            message = f"unknown step {step.after!r} (steps: {', '.join(by_name)})"
            raise _step_error(step, source, "after", message, index=i)
    reported: set[str] = set()
    for start in steps:
        chain = [start.name]
        current = start
        while current.after is not None and current.after not in reported:
            if current.after in chain:
                cycle = chain[chain.index(current.after) :] + [current.after]
                first = by_name[cycle[0]]
                message = f"dependency cycle: {' -> '.join(cycle)}"
                raise _step_error(first, source, "after", message, index=position[first.name])
            chain.append(current.after)
            current = by_name[current.after]
        reported.update(chain)


def _step_error(step: StepDef, source: str, key: str, message: str, *, index: int) -> DefinitionError:
    line = step.field_lines.get(key, step.line)
    return DefinitionError(message, source=source, line=line, field=f"steps[{index}].{key}")


def selected_by(labels: Iterable[str], vm_labels: Iterable[str], role: str) -> bool:
    """Whether a label selection (a step's `labels:`) picks a VM: a `base` VM carrying all of them.
    The same rule chooses a step's VMs at submission and a pool task's candidates when it starts."""
    return role == VMRole.BASE and set(labels) <= set(vm_labels)


def resolve_targets(job: JobDef, vms: Iterable[TargetVM]) -> dict[str, tuple[str | None, ...]]:
    """Step name -> the VMs it gets one task each on (None for each task of a pool, whose VM is chosen
    when it starts), or a DefinitionError naming the step and line.

    Named VMs may be `extra` (asking by name is how extras are used) but not retired, deleted or
    disabled; labels pick enabled `base` VMs carrying all of them, sorted by name. A job has at most
    MAX_TASKS tasks, which only the lab can tell: one label may match thousands of VMs.
    """
    known = {vm.name: vm for vm in vms}
    source = str(job.source)
    targets: dict[str, tuple[str, ...]] = {}
    tasks = 0
    for index, step in enumerate(job.steps):
        if step.vms:
            for position, name in enumerate(step.vms):
                vm = known.get(name)
                problem = None
                if vm is None:
                    problem = f"unknown VM {name!r}"
                elif vm.role in (VMRole.RETIRED, VMRole.DELETED):
                    problem = f"VM {name!r} is {vm.role}"
                elif not vm.enabled:
                    problem = f"VM {name!r} is disabled"
                if problem:
                    raise DefinitionError(
                        problem,
                        source=source,
                        line=step.field_lines.get(f"vms[{position}]", step.field_lines.get("vms", step.line)),
                        field=f"steps[{index}].vms[{position}]",
                    )
            targets[step.name] = tuple(step.vms)
        else:
            wanted = set(step.labels)
            chosen = sorted(
                vm.name for vm in known.values() if vm.enabled and selected_by(wanted, vm.labels, vm.role)
            )
            if not chosen:
                raise _step_error(
                    step,
                    source,
                    "labels",
                    f"no enabled base VM has all of the labels [{', '.join(step.labels)}]",
                    index=index,
                )
            targets[step.name] = (None,) * step.count if step.count is not None else tuple(chosen)
        tasks += len(targets[step.name])
        if tasks > MAX_TASKS:
            key = "vms" if step.vms else "labels"
            raise _step_error(
                step,
                source,
                key,
                f"the job would have more than {MAX_TASKS:,} tasks ({tasks:,} up to this step, "
                f"{len(targets[step.name]):,} of them here)",
                index=index,
            )
    return targets
