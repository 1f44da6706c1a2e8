"""What the scheduler sees and what it decides: immutable plain data, no database objects.

The engine builds a `Snapshot` from the database (one read transaction), calls
`testlab.scheduler.plan(snapshot)`, and executes the returned `Plan`. Tests and the simulator
build snapshots by hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

# Defined with the lab file they come from; re-exported here for the scheduler's users.
from testlab.domain.limits import LIMIT_FIELDS as LIMIT_FIELDS
from testlab.domain.limits import HostLimits as HostLimits


@dataclass(frozen=True, slots=True)
class HostView:
    name: str
    limits: HostLimits = field(default_factory=HostLimits)
    up: bool = True  # False: the host is marked down; none of its VMs is touched
    no_reverts: str | None = None  # why the host takes no new revert now (its disk is nearly full)


@dataclass(frozen=True, slots=True)
class VMView:
    """One VM = (host, domain, snapshot). Several VMs may share a (host, domain)."""

    name: str
    host: str
    domain: str
    status: str  # testlab.domain.statuses.VMStatus
    role: str = "base"  # testlab.domain.statuses.VMRole
    busy: bool = False  # an engine operation is in flight on it (revert, power off, monitor, task)
    maintenance_requested: bool = False  # finish the current task, then maintenance: start nothing new
    recent_demand: int = 0  # tasks run on it recently: tie-breaker for keeping VMs ready when idle
    used: bool = False  # used since its last wipe (a reused VM): not clean for a `clean` task


@dataclass(frozen=True, slots=True)
class TaskView:
    """A queued task. `stage` 0: runnable now (its step's dependency completed or it has none);
    1: its step waits for an earlier step that is still queued or running (prepare ahead)."""

    id: int
    vm: str | None  # None: a pool task, which may run on any of its `candidates`
    job_id: int
    priority: int  # the job's priority: lower runs first
    step_id: int
    stage: int = 0
    # A pool task's VMs (all those carrying its step's labels). Tasks of one pool share one tuple.
    candidates: tuple[str, ...] = ()
    clean: bool = False  # runs only on a VM unused since its last wipe (`clean: true` in the job file)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything plan() may look at. `tasks` holds the queued tasks in queue order (job priority,
    then job id, then step, then task id): the engine reads them in that order from the database;
    use `Snapshot.build` to sort them when constructing snapshots by hand.

    The engine passes only the queue heads (`testlab.scheduler.heads.queue_heads`: per VM its first
    runnable task and any next-step task ahead of it, per pool as many as it has candidates), not the
    whole queue: the plan is the same either way, and a round costs what the lab's size costs, not
    the queue's depth."""

    now: float
    hosts: Mapping[str, HostView]
    vms: Mapping[str, VMView]
    tasks: tuple[TaskView, ...] = ()

    @staticmethod
    def build(
        now: float, hosts: list[HostView], vms: list[VMView], tasks: list[TaskView] | tuple = ()
    ) -> Snapshot:
        ordered = tuple(sorted(tasks, key=lambda t: (t.priority, t.job_id, t.stage, t.step_id, t.id)))
        return Snapshot(
            now=now,
            hosts={h.name: h for h in hosts},
            vms={v.name: v for v in vms},
            tasks=ordered,
        )


@dataclass(frozen=True, slots=True)
class StartTask:
    """Run `task_id` on `vm`, which is idle and owns its domain."""

    task_id: int
    vm: str


@dataclass(frozen=True, slots=True)
class Revert:
    """Revert `vm`'s domain to the VM's snapshot (it ends idle). `displace` names the VM that
    owned the shared domain until now (idle, sleeping or dirty): it becomes `off`."""

    vm: str
    displace: str | None = None
    reason: str = "needed"  # "needed" (a runnable task), "next" (prepare ahead), "ready" (keep ready)


@dataclass(frozen=True, slots=True)
class PowerOff:
    """Power `vm` off. reason: "sacrifice" (room for a more urgent VM) or "unneeded" (dirty, unused)."""

    vm: str
    reason: str


Action = StartTask | Revert | PowerOff


@dataclass(frozen=True, slots=True)
class Plan:
    actions: tuple[Action, ...]
    # VM name -> why its queued tasks cannot run (maintenance, offline, retired, host down...).
    blocked: Mapping[str, str] = field(default_factory=dict)
