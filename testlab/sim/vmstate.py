"""The simulated VMs and hosts: the one place where a simulated VM changes status.

Each transition mirrors what the engine records for a real VM (docs/engine.md): a revert makes it
`reverting` and busy, then `sleeping` for the host's settle time, then `idle`; a task makes it
`running`, and a finished task leaves it `dirty`; a power-off goes through a busy `dirty` to `off`;
an infrastructure error counts against it and sends it `offline` at the limit. The simulator decides
*when* these happen; this module keeps the status, the busy flag, the error count and the time spent
in each status (for the report) consistent, and hands the scheduler a `VMView` of it.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from testlab.domain.statuses import VMStatus
from testlab.scheduler.snapshot import HostLimits, HostView, VMView

DEMAND_WINDOW = 86400.0  # recent_demand counts the tasks that ended in the last day, as the engine does
OFF, DIRTY, REVERTING, SLEEPING, IDLE, RUNNING, OFFLINE = (
    VMStatus.OFF,
    VMStatus.DIRTY,
    VMStatus.REVERTING,
    VMStatus.SLEEPING,
    VMStatus.IDLE,
    VMStatus.RUNNING,
    VMStatus.OFFLINE,
)


@dataclass(slots=True)
class LabClock:
    """Lab-wide time accounting: VM-seconds spent in each status, and running seconds per host."""

    status_time: dict[str, float] = field(default_factory=lambda: dict.fromkeys(VMStatus.ALL, 0.0))
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(VMStatus.ALL, 0))
    host_running: dict[str, float] = field(default_factory=dict)


@dataclass(slots=True, eq=False)
class SimHost:
    name: str
    limits: HostLimits
    vms: list[SimVM] = field(default_factory=list)
    up: bool = True
    _view: HostView | None = None
    _vm_views: dict[str, VMView] | None = None
    _views_expire: float = math.inf  # when a VM's recent demand next drops (its views change)

    def view(self) -> HostView:
        if self._view is None:
            self._view = HostView(name=self.name, limits=self.limits, up=self.up)
        return self._view

    def vm_views(self, now: float) -> dict[str, VMView]:
        """Its VMs as the scheduler sees them; rebuilt only when one of them changed."""
        if self._vm_views is None or now >= self._views_expire:
            self._vm_views = {vm.name: vm.view(now) for vm in self.vms}
            self._views_expire = min(
                (vm.ended[0] + DEMAND_WINDOW for vm in self.vms if vm.ended), default=math.inf
            )
        return self._vm_views

    def set_up(self, up: bool) -> None:
        self.up = up
        self._view = None


@dataclass(slots=True, eq=False)
class SimVM:
    name: str
    host: SimHost
    domain: str
    role: str
    clock: LabClock
    status: str = OFF
    busy: bool = False
    errors: int = 0  # consecutive infrastructure errors
    token: int = 0  # bumped whenever its operation ends or is abandoned: stale outcomes are ignored
    since: float = 0.0  # when it entered its status
    prepared: bool = False  # reverted and not yet used by a task (a revert that may be wasted)
    task: object | None = None  # the simulated task it runs
    broken_until: float = 0.0  # a broken VM stays offline at least until then
    ended: deque = field(default_factory=deque)  # end times of its recent tasks
    _view: VMView | None = None
    _demand: int = 0

    def view(self, now: float) -> VMView:
        """What the scheduler sees of it; rebuilt only when something it shows changed."""
        ended = self.ended
        while ended and ended[0] <= now - DEMAND_WINDOW:
            ended.popleft()
        if self._view is None or self._demand != len(ended):
            self._demand = len(ended)
            self._view = VMView(
                name=self.name,
                host=self.host.name,
                domain=self.domain,
                status=self.status,
                role=self.role,
                busy=self.busy,
                recent_demand=self._demand,
            )
        return self._view

    # ------------------------------------------------------------------ the one status change

    def _set(self, status: str, busy: bool, now: float) -> None:
        clock = self.clock
        old = self.status
        spent = now - self.since
        clock.status_time[old] += spent
        if old == RUNNING:
            clock.host_running[self.host.name] = clock.host_running.get(self.host.name, 0.0) + spent
        clock.counts[old] -= 1
        clock.counts[status] += 1
        self.status = status
        self.busy = busy
        self.since = now
        self._view = None
        self.host._vm_views = None

    def close(self, now: float) -> None:
        """Account the time of the current status up to the end of the simulation."""
        self._set(self.status, self.busy, now)

    # ------------------------------------------------------------------ transitions

    def begin_revert(self, now: float) -> None:
        self._set(REVERTING, True, now)

    def settling(self, now: float) -> None:
        self._set(SLEEPING, True, now)

    def reverted(self, now: float) -> None:
        self.prepared = True
        self.token += 1
        self._set(IDLE, False, now)

    def displaced(self, now: float) -> bool:
        """Its domain was taken over by another VM: it is off. True if a revert was wasted."""
        wasted = self.prepared
        self.prepared = False
        self._set(OFF, False, now)
        return wasted

    def begin_poweroff(self, now: float) -> bool:
        """True if the VM was reverted for nothing (a wasted revert)."""
        wasted = self.prepared
        self.prepared = False
        self._set(DIRTY, True, now)
        return wasted

    def powered_off(self, now: float) -> None:
        self.token += 1
        self._set(OFF, False, now)

    def start_task(self, task: object, now: float) -> None:
        self.prepared = False
        self.task = task
        self._set(RUNNING, True, now)

    def task_ended(self, now: float) -> None:
        """The task ended with a result: the VM worked (its error count resets) and is dirty."""
        self.task = None
        self.errors = 0
        self.token += 1
        self.ended.append(now)
        self.host._vm_views = None
        self._set(DIRTY, False, now)

    def error(self, now: float, max_errors: int) -> bool:
        """An infrastructure error counts against the VM. True if it went offline."""
        self.task = None
        self.prepared = False
        self.errors += 1
        self.token += 1
        if self.errors >= max_errors:
            self._set(OFFLINE, False, now)
            return True
        self._set(DIRTY, False, now)
        return False

    def broke(self, now: float, until: float) -> None:
        """The VM broke (disk, hypervisor domain): offline at once, whatever it was doing."""
        self.task = None
        self.prepared = False
        self.errors += 1
        self.token += 1
        self.broken_until = until
        self._set(OFFLINE, False, now)

    def working_again(self, now: float) -> None:
        """The monitor found it working: powered off, errors forgotten."""
        self.errors = 0
        self._set(OFF, False, now)

    def host_crashed(self, now: float) -> None:
        """Its host went down: whatever ran is lost and the domain is off (an offline VM stays so)."""
        self.task = None
        self.prepared = False
        self.token += 1
        if self.status != OFFLINE:
            self._set(OFF, False, now)
