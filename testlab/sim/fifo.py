"""A plain first-in, first-out scheduler that reverts on demand: the baseline testlab is measured by.

It is what a lab gets without testlab's scheduling: jobs in submission order whatever their
priority, a VM reverted only when a task can run on it now, nothing prepared for the next step and
nothing kept ready, a full host making room by powering off whatever is not in use. It obeys the
same host limits and the same shared-domain exclusivity as the real scheduler, so the comparison
measures policy, not a lab that breaks its own rules. A pool task takes the first free VM of its
pool. Pure, like `plan()`, and local like it: what it does on one host depends only on that host's
VMs and tasks, and on the other hosts of the pools queued there.
"""

from __future__ import annotations

from testlab.domain.statuses import VMRole, VMStatus
from testlab.scheduler.snapshot import Action, Plan, PowerOff, Revert, Snapshot, StartTask, TaskView, VMView

_ACTIVE = VMStatus.ACTIVE
_GIVE_UP = (VMStatus.DIRTY, VMStatus.IDLE, VMStatus.SLEEPING)  # what a full host may power off


class _Host:
    __slots__ = ("active", "limits", "reverting", "running", "up", "vms")

    def __init__(self, snapshot: Snapshot, name: str) -> None:
        view = snapshot.hosts[name]
        self.limits = view.limits
        self.up = view.up
        self.vms: list[str] = []
        self.active = self.running = self.reverting = 0


def fifo_plan(snapshot: Snapshot) -> Plan:
    """Serve runnable tasks in submission order (job id, step, task); each claims its VM, and a pool
    task the first free VM of its pool (by name): one it can start on now, else one being reverted,
    else one it can revert, else one it can make room for."""
    return _Round(snapshot).run()


class _Round:
    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.vms = vms = snapshot.vms
        self.status = {name: vm.status for name, vm in vms.items()}
        self.hosts = {name: _Host(snapshot, name) for name in snapshot.hosts}
        self.holders: dict[tuple[str, str], list[str]] = {}
        for name, vm in vms.items():
            host = self.hosts[vm.host]
            host.vms.append(name)
            s = vm.status
            host.active += s in _ACTIVE
            host.running += s == VMStatus.RUNNING
            host.reverting += s in (VMStatus.REVERTING, VMStatus.SLEEPING)
            if s != VMStatus.OFF or vm.busy:
                self.holders.setdefault((vm.host, vm.domain), []).append(name)
        self.claimed: set[str] = set()  # VMs a task has claimed (or acted on) in this round
        self.wanted = {t.vm for t in snapshot.tasks if t.stage == 0}
        self.actions: list[Action] = []
        self.pools: dict[int, list[str]] = {}  # a pool's candidates in this lab, by name

    def run(self) -> Plan:
        tasks = sorted(
            (t for t in self.snapshot.tasks if t.stage == 0), key=lambda t: (t.job_id, t.step_id, t.id)
        )
        for task in tasks:
            if task.vm is None:
                self._serve_pool_task(task)
            else:
                self._serve(task)
        return Plan(actions=tuple(self.actions))

    def _serve(self, task: TaskView) -> None:
        name = task.vm
        vm = self.vms.get(name)
        if vm is None or name in self.claimed or not _usable(vm, self.hosts[vm.host].up):
            return
        self.claimed.add(name)
        if vm.busy:
            return  # reverting or otherwise in flight: its task waits for it
        if self.status[name] == VMStatus.IDLE:
            if self._can_start(name):
                self._start(task, name)
            return
        self._revert(name, room=True)

    def _serve_pool_task(self, task: TaskView) -> None:
        key = id(task.candidates)
        order = self.pools.get(key)
        if order is None:
            order = self.pools[key] = sorted({name for name in task.candidates if name in self.vms})
        free = [
            name
            for name in order
            if name not in self.claimed and _usable(self.vms[name], self.hosts[self.vms[name].host].up)
        ]
        status = self.status
        for name in free:
            if status[name] == VMStatus.IDLE and not self.vms[name].busy and self._can_start(name):
                self.claimed.add(name)
                self._start(task, name)
                return
        for name in free:
            if status[name] in (VMStatus.REVERTING, VMStatus.SLEEPING):
                self.claimed.add(name)  # it will be idle soon: the task waits for it
                return
        for room in (False, True):
            for name in free:
                if self._revert(name, room=room):
                    self.claimed.add(name)
                    return

    def _can_start(self, name: str) -> bool:
        host = self.hosts[self.vms[name].host]
        limits = host.limits
        return host.running < limits.max_running and (
            host.reverting == 0 or host.reverting <= limits.max_reverts_while_running
        )

    def _start(self, task: TaskView, name: str) -> None:
        self.hosts[self.vms[name].host].running += 1
        self.status[name] = VMStatus.RUNNING
        self.actions.append(StartTask(task_id=task.id, vm=name))

    def _revert(self, name: str, *, room: bool) -> bool:
        """Revert the VM if its domain and its host allow it; else, with `room`, power off what its
        full host does not use. True if an action was taken; nothing changes otherwise."""
        vms, status = self.vms, self.status
        vm = vms[name]
        if vm.busy or status[name] not in (VMStatus.OFF, VMStatus.DIRTY):
            return False
        host = self.hosts[vm.host]
        limits = host.limits
        key = (vm.host, vm.domain)
        others = [o for o in self.holders.get(key, ()) if o != name]
        displace = None
        if others:
            owner = others[0]
            owner_vm = vms[owner]
            if (
                len(others) > 1
                or owner in self.claimed
                or owner_vm.busy
                or status[owner] not in _GIVE_UP
                or not _usable(owner_vm, host.up)
            ):
                return False
            displace = owner
        if host.reverting + 1 > limits.max_reverting:
            return False
        if host.running and host.reverting + 1 > limits.max_reverts_while_running:
            return False
        if status[name] == VMStatus.OFF and displace is None and host.active + 1 > limits.max_active:
            victim = _victim(host, vms, status, self.claimed, self.wanted) if room else None
            if victim is None:
                return False
            self.claimed.add(victim)
            status[victim] = VMStatus.OFF
            self.actions.append(PowerOff(vm=victim, reason="sacrifice"))
            return True
        if displace is not None:
            self.claimed.add(displace)
            status[displace] = VMStatus.OFF
        elif status[name] == VMStatus.OFF:
            host.active += 1
        host.reverting += 1
        status[name] = VMStatus.REVERTING
        self.holders[key] = [name]
        self.actions.append(Revert(vm=name, displace=displace, reason="needed"))
        return True


def _usable(vm: VMView, host_up: bool) -> bool:
    return (
        host_up
        and vm.status not in VMStatus.UNTOUCHABLE
        and vm.role in VMRole.ENABLED
        and not vm.maintenance_requested
    )


def _victim(host: _Host, vms, status: dict[str, str], claimed: set[str], wanted: set[str]) -> str | None:
    """What a full host powers off to make room: a VM not in use, dirty first, unwanted first, by name.
    Nothing while a power-off is already under way there (its room is coming)."""
    if any(status[n] == VMStatus.DIRTY and vms[n].busy for n in host.vms):
        return None
    candidates = [
        (status[n] != VMStatus.DIRTY, n in wanted, n)
        for n in host.vms
        if status[n] in _GIVE_UP and not vms[n].busy and n not in claimed and _usable(vms[n], host.up)
    ]
    return min(candidates)[2] if candidates else None
