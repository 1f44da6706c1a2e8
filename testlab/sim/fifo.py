"""A plain first-in, first-out scheduler that reverts on demand: the baseline testlab is measured by.

It is what a lab gets without testlab's scheduling: jobs in submission order whatever their
priority, a VM reverted only when a task can run on it now, nothing prepared for the next step and
nothing kept ready, a full host making room by powering off whatever is not in use. It obeys the
same host limits and the same shared-domain exclusivity as the real scheduler, so the comparison
measures policy, not a lab that breaks its own rules. Pure, like `plan()`, and host-local (what it
does on one host depends only on that host's VMs and tasks).
"""

from __future__ import annotations

from testlab.domain.statuses import VMRole, VMStatus
from testlab.scheduler.snapshot import Action, Plan, PowerOff, Revert, Snapshot, StartTask, VMView

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
    """Serve runnable tasks in submission order (job id, step, task); each claims its VM."""
    vms = snapshot.vms
    status = {name: vm.status for name, vm in vms.items()}
    hosts = {name: _Host(snapshot, name) for name in snapshot.hosts}
    holders: dict[tuple[str, str], list[str]] = {}
    for name, vm in vms.items():
        host = hosts[vm.host]
        host.vms.append(name)
        s = vm.status
        host.active += s in _ACTIVE
        host.running += s == VMStatus.RUNNING
        host.reverting += s in (VMStatus.REVERTING, VMStatus.SLEEPING)
        if s != VMStatus.OFF or vm.busy:
            holders.setdefault((vm.host, vm.domain), []).append(name)

    claimed: set[str] = set()  # VMs a task has claimed (or acted on) in this round
    wanted = {t.vm for t in snapshot.tasks if t.stage == 0}
    actions: list[Action] = []
    runnable = sorted((t for t in snapshot.tasks if t.stage == 0), key=lambda t: (t.job_id, t.step_id, t.id))
    for task in runnable:
        name = task.vm
        vm = vms.get(name)
        if vm is None or name in claimed or not _usable(vm, hosts[vm.host].up):
            continue
        claimed.add(name)
        host = hosts[vm.host]
        limits = host.limits
        if vm.busy:
            continue  # reverting or otherwise in flight: its task waits for it
        if status[name] == VMStatus.IDLE:
            if host.running < limits.max_running and (
                host.reverting == 0 or host.reverting <= limits.max_reverts_while_running
            ):
                host.running += 1
                status[name] = VMStatus.RUNNING
                actions.append(StartTask(task_id=task.id, vm=name))
            continue
        if status[name] not in (VMStatus.OFF, VMStatus.DIRTY):
            continue
        key = (vm.host, vm.domain)
        others = [o for o in holders.get(key, ()) if o != name]
        displace = None
        if others:
            owner = others[0]
            owner_vm = vms[owner]
            if (
                len(others) > 1
                or owner in claimed
                or owner_vm.busy
                or status[owner] not in _GIVE_UP
                or not _usable(owner_vm, host.up)
            ):
                continue
            displace = owner
        if host.reverting + 1 > limits.max_reverting:
            continue
        if host.running and host.reverting + 1 > limits.max_reverts_while_running:
            continue
        if status[name] == VMStatus.OFF and displace is None and host.active + 1 > limits.max_active:
            victim = _victim(host, vms, status, claimed, wanted)
            if victim is not None:
                claimed.add(victim)
                status[victim] = VMStatus.OFF
                actions.append(PowerOff(vm=victim, reason="sacrifice"))
            continue
        if displace is not None:
            claimed.add(displace)
            status[displace] = VMStatus.OFF
        elif status[name] == VMStatus.OFF:
            host.active += 1
        host.reverting += 1
        status[name] = VMStatus.REVERTING
        holders[key] = [name]
        actions.append(Revert(vm=name, displace=displace, reason="needed"))
    return Plan(actions=tuple(actions))


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
