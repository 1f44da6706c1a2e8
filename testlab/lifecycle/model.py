"""The plain data of a VM's lifecycle: each use of the VM since it was last wiped, in order.

A VM that is reused between tasks without a revert or reinstall (a physical host, a build VM kept
warm, a VM that runs several tasks of one job) carries whatever its earlier users left on it. To say
who may be to blame for a failure there, testlab keeps one `Use` per use of the VM since its last
wipe, outside the machine, and a wipe closes the VM's current `Lifecycle`. These types are only
data: the history string (`history`), the ranking of suspects (`blame`) and the automatic wipe
(`protection`) are computed from them, whatever stores them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Final

from testlab.domain.inputlimits import MAX_NAME, preview
from testlab.domain.statuses import TaskStatus
from testlab.domain.yamlsource import NAME_PATTERN

# Job ids and use ids are written in decimal in history strings; this many digits at most keeps
# them inside a signed 64-bit column and keeps the parser away from huge numbers.
MAX_ID_DIGITS: Final = 18
MAX_ID: Final = 10**MAX_ID_DIGITS - 1


class UseKind:
    """What a use of a VM was.

    `task` and `prepare` are tasks of a job's step (`prepare` for a step marked `prepare: true`,
    which sets up a machine that later tasks share); `exec` (an administrator's command) and
    `power-cycle` happen outside any job and are known by their own id.
    """

    TASK: Final = "task"
    PREPARE: Final = "prepare"
    EXEC: Final = "exec"
    POWER_CYCLE: Final = "power-cycle"

    ALL: Final = frozenset({TASK, PREPARE, EXEC, POWER_CYCLE})
    IN_JOB: Final = frozenset({TASK, PREPARE})
    OUT_OF_JOB: Final = frozenset({EXEC, POWER_CYCLE})


# How a task's outcome counts after an earlier use: a failure, a success, or nothing (a task that
# did not run to a verdict says nothing about the machine). A boterror counts as a failure: a
# machine left broken often shows as an agent that no longer answers.
FAILING: Final = frozenset({TaskStatus.FAILED, TaskStatus.TIMEOUT, TaskStatus.BOTERROR})
SUCCEEDING: Final = frozenset({TaskStatus.COMPLETED})


def check_step_name(step: str) -> None:
    """Refuse a step name that the history string could not carry unambiguously."""
    if len(step) > MAX_NAME or NAME_PATTERN.fullmatch(step) is None:
        raise ValueError(
            f"bad step name {preview(step)}: letters, digits, '.', '_' and '-', "
            f"starting with a letter or digit, at most {MAX_NAME} characters"
        )


def check_id(value: int, what: str) -> None:
    """Refuse an id the history string could not carry (negative, or more than 18 digits)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ID:
        raise ValueError(f"bad {what} {preview(value)}: expected an integer from 0 to {MAX_ID}")


@dataclass(frozen=True, slots=True)
class Use:
    """One use of a VM.

    An in-job use (`task`, `prepare`) names its `job`, `step` and `task`; an out-of-job use
    (`exec`, `power-cycle`) has none of them and is known by `use_id`, the use's own id (every use
    may carry one; out-of-job uses must). `actor` says who ran an out-of-job use. `outcome` is the
    task's final status once it ended (None while it runs, and for out-of-job uses).

    `concurrent` belongs to the moment a history string is made: the use had not ended then. It is
    set by whoever takes that snapshot (see `at_moment`), not stored with the use.
    """

    kind: str
    job: int | None = None
    step: str | None = None
    task: int | None = None
    use_id: int | None = None
    started: datetime | None = None
    ended: datetime | None = None
    actor: str | None = None
    outcome: str | None = None
    concurrent: bool = False

    def __post_init__(self) -> None:
        if self.kind not in UseKind.ALL:
            raise ValueError(f"unknown use kind {self.kind!r}")
        if self.kind in UseKind.IN_JOB:
            if self.job is None or self.step is None:
                raise ValueError(f"a {self.kind} use needs a job and a step")
            check_id(self.job, "job id")
            check_step_name(self.step)
        else:
            if self.job is not None or self.step is not None or self.task is not None:
                raise ValueError(f"an out-of-job use ({self.kind}) belongs to no job, step or task")
            if self.use_id is None:
                raise ValueError(f"an out-of-job use ({self.kind}) needs its own id")
            if self.outcome is not None:
                raise ValueError(f"an out-of-job use ({self.kind}) has no task outcome")
        if self.use_id is not None:
            check_id(self.use_id, "use id")
        if self.outcome is not None and self.outcome not in TaskStatus.ALL:
            raise ValueError(f"unknown task outcome {self.outcome!r}")

    @property
    def in_job(self) -> bool:
        return self.kind in UseKind.IN_JOB

    @property
    def failed(self) -> bool:
        """The use was a task that ended in a failure (failed, timeout or boterror)."""
        return self.outcome in FAILING

    @property
    def succeeded(self) -> bool:
        return self.outcome in SUCCEEDING


@dataclass(frozen=True, slots=True)
class Lifecycle:
    """A VM's uses between two wipes, in the order they began.

    `closed` is when the wipe that ended it happened, None for the VM's current lifecycle. A use
    still running when the VM is wiped stays in the lifecycle it began in.
    """

    vm: str
    uses: tuple[Use, ...]
    opened: datetime | None = None
    closed: datetime | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "uses", tuple(self.uses))


def at_moment(uses: Iterable[Use], moment: datetime) -> list[Use]:
    """The uses as a history string made at `moment` sees them.

    Uses that began after `moment` are left out; the others are marked `concurrent` when they had
    not ended by then. Replaying a lifecycle at a task's start or end gives the list its history
    string was made from. A use without a start time is taken to have begun before `moment`.
    """
    seen = []
    for use in uses:
        if use.started is not None and use.started > moment:
            continue
        running = use.ended is None or use.ended > moment
        seen.append(replace(use, concurrent=running))
    return seen
