"""The discrete-event simulation: the real scheduler driving a simulated lab in virtual time.

A plain event heap, not a process library: the engine itself is "something changed -> plan ->
start operations whose outcomes arrive later", and that is exactly an event loop around a pure
function. Each event (a job arrives, a revert or a task ends, a VM breaks) changes the simulated
lab; once every event of an instant is applied, the policy plans for the hosts where something
changed, and each action starts an operation whose end is a future event. Nothing is simulated
that the scheduler does not see: the simulator plays the engine, the hypervisors and the agents.

Speed: the scheduler is only called for hosts where something changed, and only with those hosts'
VMs and tasks. testlab's plan() decides each host on its own (limits, domains and sacrifices are
per host; queue order only compares tasks of one host) except for pool tasks, which take the best
of their candidates over several hosts. So a host is planned alone while no pool task is queued on
its group (testlab.scheduler.groups: the hosts linked by pools), and with its whole group otherwise: that
gives exactly the actions of one plan over the whole lab (tests/sim checks this on random labs).
"""

from __future__ import annotations

import heapq
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from testlab.domain.labfile import LabDef
from testlab.domain.rollup import rollup
from testlab.domain.statuses import TaskStatus, VMStatus
from testlab.scheduler.groups import host_groups
from testlab.scheduler.snapshot import Plan, PowerOff, Revert, Snapshot, StartTask, TaskView, VMView
from testlab.sim.jobs import SimJob, SimStep, SimTask, draw_outcome, first_try, generate_jobs
from testlab.sim.policies import Policy
from testlab.sim.vmstate import LabClock, SimHost, SimVM
from testlab.sim.workload import Workload

QUEUED, RUNNING, COMPLETED, SKIPPED, BOTERROR = (
    TaskStatus.QUEUED,
    TaskStatus.RUNNING,
    TaskStatus.COMPLETED,
    TaskStatus.SKIPPED,
    TaskStatus.BOTERROR,
)
FINAL = TaskStatus.FINAL
# Event kinds. Those up to PLAN move the lab forward; the fault processes recur for ever.
REVERT_DONE, SETTLE_DONE, POWEROFF_DONE, TASK_DONE, VM_CHECK, HOST_UP, PLAN, VM_BREAK, HOST_CRASH = range(9)
_PROGRESS_KINDS = PLAN
MAX_ROUNDS = 20  # plans of one host at one instant when re-planning until nothing more is decided


def _queue_order(task: TaskView) -> tuple[int, int, int, int]:
    """The engine's queue order: priority, job, step, task."""
    return task.priority, task.job_id, task.step_id, task.id


@dataclass
class Sample:
    time: float
    queued: int  # tasks waiting (arrived, not started; including those waiting for an earlier step)
    running: int
    reverting: int  # reverting or settling
    offline: int


@dataclass
class SimResult:
    """Everything a run produced; testlab.sim.metrics turns it into the report's numbers."""

    policy: str
    jobs: list[SimJob]
    end: float  # simulated time when the run stopped
    waits: list[float]  # per task: first start minus the time it could first run
    clock: LabClock
    samples: list[Sample]
    reverts: int = 0
    wasted_reverts: int = 0  # reverted, then powered off or displaced without running a task
    revert_failures: int = 0
    vm_breaks: int = 0
    host_crashes: int = 0
    requeued: int = 0
    plan_calls: int = 0
    events: int = 0
    wall: float = 0.0
    blocked: dict[str, str] = field(default_factory=dict)


class Simulation:
    """One run of one policy on one lab and workload. `per_group=False` plans the whole lab at
    once after every change, as the engine does (slower; the result is the same for policies that
    decide each group of hosts on its own)."""

    def __init__(
        self,
        lab: LabDef,
        workload: Workload,
        policy: Policy,
        *,
        per_group: bool | None = None,
        progress: Callable[[float], None] | None = None,
        until: float | None = None,
        settle: bool = False,
    ) -> None:
        self.lab = lab
        # The engine plans again after recording a plan's actions. plan() accounts for its own
        # actions, so the simulator plans again only where their consequences changed the queue
        # (see _plan_rounds); `settle=True` makes it plan again after every non-empty plan, until
        # one is empty, which tests use to check that nothing is missed.
        self.settle = settle
        self.workload = workload
        self.policy = policy
        self.plan_fn = policy.plan
        self.per_group = policy.per_group if per_group is None else per_group
        self.progress = progress
        self.until = until
        self.engine = workload.engine
        self.latency = workload.engine.latency
        self.plan_pending = False
        self.faults = workload.faults
        self.clock = LabClock()
        self.hosts: dict[str, SimHost] = {}
        for host in lab.hosts:
            self.hosts[host.name] = SimHost(host.name, host.limits)
            self.clock.host_running[host.name] = 0.0
        self.vms: dict[str, SimVM] = {}
        self.rng: dict[str, random.Random] = {}
        self.revert_time = {}
        for vm in lab.vms:
            host = self.hosts[vm.host]
            sim_vm = SimVM(vm.name, host, vm.domain, vm.role, self.clock)
            host.vms.append(sim_vm)
            self.vms[vm.name] = sim_vm
            self.clock.counts[VMStatus.OFF] += 1
            self.rng[vm.name] = random.Random(f"{workload.seed}:vm:{vm.name}")
            self.revert_time[vm.name] = workload.revert_for(vm.name)
        self.jobs = generate_jobs(workload, lab)
        self.tasks: dict[int, SimTask] = {t.id: t for j in self.jobs for s in j.steps for t in s.tasks}
        pools = {id(t.pool): t.pool.vms for t in self.tasks.values() if t.pool is not None}
        vm_hosts = {vm.name: vm.host for vm in lab.vms}
        self.group = host_groups(self.hosts, vm_hosts, pools.values())  # host -> its group
        self.members: dict[str, list[SimHost]] = {}  # group -> its hosts
        for name in sorted(self.hosts):
            self.members.setdefault(self.group[name], []).append(self.hosts[name])
        self.queue: dict[str, dict[int, TaskView]] = {name: {} for name in self.hosts}  # pinned tasks
        self.pooled: dict[str, dict[int, TaskView]] = {name: {} for name in self.members}  # pool tasks
        self.ordered: dict[str, tuple[TaskView, ...] | None] = dict.fromkeys(self.hosts)
        self.group_ordered: dict[str, tuple[TaskView, ...] | None] = dict.fromkeys(self.members)
        self.group_views: dict[str, tuple[list[dict], dict]] = {}
        self.dirty: set[str] = set()  # hosts
        self.blocked: dict[str, Mapping[str, str]] = {}  # host -> its blocked VMs at its last plan
        self.heap: list[tuple] = []
        self.seq = 0
        self.pending = 0  # events in the heap that move the lab forward
        self.now = 0.0
        self.open_jobs = 0
        self.queued = 0
        self.result = SimResult(policy.name, self.jobs, 0.0, [], self.clock, [])
        self.sample_every = max(workload.duration / 600.0, 1.0)
        self._last_sample = -self.sample_every

    # ------------------------------------------------------------------ the loop

    def run(self) -> SimResult:
        started = time.perf_counter()
        self._start_faults()
        self.dirty.update(self.hosts)  # the engine plans for the whole lab when it starts
        jobs, n_jobs, next_job = self.jobs, len(self.jobs), 0
        heap = self.heap
        events = 0
        progress, until = self.progress, self.until
        while True:
            arrival = jobs[next_job].submitted if next_job < n_jobs else None
            event = heap[0][0] if heap else None
            nxt = event if arrival is None else arrival if event is None else min(arrival, event)
            if self.dirty and (nxt is None or nxt > self.now):
                if not self.latency:
                    self._plan_dirty()
                    continue
                if not self.plan_pending:  # the engine acts on the changes a little later
                    self.plan_pending = True
                    self._push(self.latency, PLAN, None)
                    continue
            if next_job >= n_jobs and (self.open_jobs == 0 or self.pending == 0):
                break  # all done, or nothing left that could move the remaining jobs forward
            if nxt is None or (until is not None and nxt > until):
                break
            self.now = nxt
            events += 1
            if progress is not None and events % 4096 == 0:
                progress(self.now)
            if arrival is not None and arrival == nxt and (event is None or arrival <= event):
                self._arrive(jobs[next_job])
                next_job += 1
                continue
            _, _, kind, subject, token, extra = heapq.heappop(heap)
            if kind <= _PROGRESS_KINDS:
                self.pending -= 1
            self._handle(kind, subject, token, extra)
        result = self.result
        result.end = self.now
        for vm in self.vms.values():
            vm.close(self.now)
        self._sample(force=True)
        result.events = events
        result.blocked = {vm: why for part in self.blocked.values() for vm, why in part.items()}
        result.wall = time.perf_counter() - started
        return result

    def _push(self, delay: float, kind: int, subject: object, token: int = 0, extra: object = None) -> None:
        self.seq += 1
        if kind <= _PROGRESS_KINDS:
            self.pending += 1
        heapq.heappush(self.heap, (self.now + delay, self.seq, kind, subject, token, extra))

    # ------------------------------------------------------------------ planning

    def _plan_dirty(self) -> None:
        if not self.per_group:
            self._plan_rounds(None)
        else:
            for name in sorted(self.dirty):
                if name in self.dirty:  # not planned yet with its group
                    self._plan_rounds(name)
        self._sample()

    def _unit(self, host: str) -> tuple[str | None, list[SimHost]]:
        """What to plan for a change on `host`: (its group, the group's hosts) while a pool task is
        queued on the group, else (None, [the host])."""
        group = self.group[host]
        if self.pooled[group]:
            return group, self.members[group]
        return None, [self.hosts[host]]

    def _plan_rounds(self, host: str | None) -> None:
        """Plan (the whole lab, or what a change on `host` concerns) until nothing changed that the
        plan did not foresee.

        A plan accounts for its own reverts and power-offs, so those do not call for another plan.
        What it does not see is how its actions change the queue: a started task leaves it (a host
        whose queue empties starts keeping VMs ready) and makes its step run (the next step's tasks
        become ones to prepare for). The engine, seeing its own changes in the event history,
        plans again at once; here `_show`/`_hide` mark the hosts whose queue changed. Pool tasks
        are the exception: they choose among their candidates by what is being prepared and by
        each host's load before the plan, so after a plan that did something a group with pool
        tasks queued is planned again until a plan does nothing. What to plan is decided again
        each round: a pool task shown by a plan links the hosts of its group.
        """
        unit: list[SimHost] | None = None
        group: str | None = None
        for _ in range(MAX_ROUNDS):
            if host is None:
                self.dirty = set()
                snapshot = self._snapshot(None, None)
            else:
                group, unit = self._unit(host)
                for member in unit:
                    self.dirty.discard(member.name)
                snapshot = self._snapshot(group, unit)
            decided: Plan = self.plan_fn(snapshot)
            self.result.plan_calls += 1
            if not decided.actions:
                break
            self._apply(decided)
            if self.settle or group is not None or (host is None and any(self.pooled.values())):
                continue
            if not self.dirty if unit is None else not any(member.name in self.dirty for member in unit):
                break
        self._keep_blocked(unit, decided.blocked)

    def _keep_blocked(self, unit: list[SimHost] | None, blocked: Mapping[str, str]) -> None:
        """Remember each host's blocked VMs as its last plan reported them."""
        if unit is None:
            self.blocked = {"": blocked}
        elif len(unit) == 1:
            if blocked or unit[0].name in self.blocked:
                self.blocked[unit[0].name] = blocked
        elif blocked or any(member.name in self.blocked for member in unit):
            split: dict[str, dict[str, str]] = {member.name: {} for member in unit}
            for vm, why in blocked.items():
                split[self.vms[vm].host.name][vm] = why
            self.blocked.update(split)

    def _snapshot(self, group: str | None, unit: list[SimHost] | None) -> Snapshot:
        now = self.now
        if unit is not None and group is None:
            (host,) = unit
            return Snapshot(now, {host.name: host.view()}, host.vm_views(now), self._ordered(host.name))
        if unit is not None and group is not None:
            return Snapshot(
                now, {h.name: h.view() for h in unit}, self._group_vms(group, now), self._group_tasks(group)
            )
        hosts = list(self.hosts.values())
        vms = {name: view for h in hosts for name, view in h.vm_views(now).items()}
        queued = [t for h in self.hosts for t in self.queue[h].values()]
        queued += [t for pool in self.pooled.values() for t in pool.values()]
        tasks = tuple(sorted(queued, key=_queue_order))
        return Snapshot(now=now, hosts={h.name: h.view() for h in hosts}, vms=vms, tasks=tasks)

    def _ordered(self, host: str) -> tuple[TaskView, ...]:
        """The host's queued pinned tasks in the engine's queue order: priority, job, step, task."""
        ordered = self.ordered[host]
        if ordered is None:
            ordered = self.ordered[host] = tuple(sorted(self.queue[host].values(), key=_queue_order))
        return ordered

    def _group_tasks(self, group: str) -> tuple[TaskView, ...]:
        """The group's queued tasks, pinned and pool, in queue order."""
        ordered = self.group_ordered[group]
        if ordered is None:
            queued = [t for host in self.members[group] for t in self._ordered(host.name)]
            queued += self.pooled[group].values()
            ordered = self.group_ordered[group] = tuple(sorted(queued, key=_queue_order))
        return ordered

    def _group_vms(self, group: str, now: float) -> dict[str, VMView]:
        """The group's VMs as the scheduler sees them; merged again only when one of them changed."""
        parts = [host.vm_views(now) for host in self.members[group]]
        cached = self.group_views.get(group)
        if cached is not None and all(old is new for old, new in zip(cached[0], parts, strict=True)):
            return cached[1]
        merged: dict[str, VMView] = {}
        for part in parts:
            merged.update(part)
        self.group_views[group] = (parts, merged)
        return merged

    def _apply(self, decided: Plan) -> None:
        for action in decided.actions:
            if isinstance(action, StartTask):
                self._start(self.tasks[action.task_id], self.vms[action.vm])
            elif isinstance(action, Revert):
                self._revert(self.vms[action.vm], self.vms[action.displace] if action.displace else None)
            elif isinstance(action, PowerOff):
                self._power_off(self.vms[action.vm])

    # ------------------------------------------------------------------ operations

    def _start(self, task: SimTask, vm: SimVM) -> None:
        if task.status != QUEUED or vm.status != VMStatus.IDLE or vm.busy or not vm.host.up:
            return  # the engine drops actions whose VM or task moved on since the snapshot
        if task.pool is not None and vm.name not in task.pool.members:
            return
        self._hide(task)
        task.vm = vm.name  # a pool task gets its VM when it starts
        self.queued -= 1
        task.tries += 1
        if task.started is None:
            task.started = self.now
            self.result.waits.append(self.now - (task.ready if task.ready is not None else self.now))
        if task.tries == 1:
            run, outcome = first_try(task, vm.name)
        else:
            run, outcome = draw_outcome(task.step.times, vm.name, task.step.timeout, self.rng[vm.name])
        vm.start_task(task, self.now)
        self._set_task(task, RUNNING)
        self._push(run, TASK_DONE, vm, vm.token, (task, outcome))

    def _revert(self, vm: SimVM, displace: SimVM | None) -> None:
        if vm.busy or vm.status not in (VMStatus.OFF, VMStatus.DIRTY) or not vm.host.up:
            return
        if displace is not None:
            if displace.busy or displace.status not in (VMStatus.IDLE, VMStatus.SLEEPING, VMStatus.DIRTY):
                return
            self.result.wasted_reverts += displace.displaced(self.now)
        vm.begin_revert(self.now)
        self.result.reverts += 1
        rng = self.rng[vm.name]
        seconds = self.revert_time[vm.name].draw(rng)
        failed = self.faults.revert_failure > 0 and rng.random() < self.faults.revert_failure
        self._push(seconds, REVERT_DONE, vm, vm.token, failed)

    def _power_off(self, vm: SimVM) -> None:
        if vm.busy or vm.status not in (VMStatus.IDLE, VMStatus.SLEEPING, VMStatus.DIRTY) or not vm.host.up:
            return
        self.result.wasted_reverts += vm.begin_poweroff(self.now)
        self._push(self.workload.poweroff.draw(self.rng[vm.name]), POWEROFF_DONE, vm, vm.token)

    # ------------------------------------------------------------------ events

    def _handle(self, kind: int, subject, token: int, extra) -> None:
        now = self.now
        if kind == TASK_DONE:
            vm: SimVM = subject
            task, outcome = extra
            if vm.token != token or vm.task is not task:
                return
            task.ended = now
            vm.task_ended(now)
            self._set_task(task, outcome)
            self.dirty.add(vm.host.name)
        elif kind == REVERT_DONE:
            vm = subject
            if vm.token != token:
                return
            if extra:  # the revert failed: an infrastructure error of the VM
                self.result.revert_failures += 1
                if vm.error(now, self.engine.max_vm_errors):
                    self._push(self.engine.monitor_interval, VM_CHECK, vm, vm.token)
            else:
                sleep = vm.host.limits.sleep_after_revert
                if sleep > 0:
                    vm.settling(now)
                    self._push(sleep, SETTLE_DONE, vm, vm.token)
                else:
                    vm.reverted(now)
            self.dirty.add(vm.host.name)
        elif kind == SETTLE_DONE:
            vm = subject
            if vm.token == token and vm.status == VMStatus.SLEEPING:
                vm.reverted(now)
                self.dirty.add(vm.host.name)
        elif kind == POWEROFF_DONE:
            vm = subject
            if vm.token == token:
                vm.powered_off(now)
                self.dirty.add(vm.host.name)
        elif kind == VM_CHECK:
            self._monitor(subject, token)
        elif kind == HOST_UP:
            self._host_up(subject)
        elif kind == PLAN:
            self.plan_pending = False
            self._plan_dirty()
        elif kind == VM_BREAK:
            self._vm_breaks(subject)
        elif kind == HOST_CRASH:
            self._host_crashes(subject)

    def _arrive(self, job: SimJob) -> None:
        self.open_jobs += 1
        for step in job.steps:
            self.queued += len(step.tasks)
            if step.after is None:
                for task in step.tasks:
                    task.ready = self.now
                    self._show(task, 0)

    # ------------------------------------------------------------------ faults

    def _start_faults(self) -> None:
        faults, seed = self.faults, self.workload.seed
        self.fault_rng: dict[str, random.Random] = {}
        if faults.vm_offline_rate > 0:
            for vm in self.vms.values():
                rng = self.fault_rng[f"vm:{vm.name}"] = random.Random(f"{seed}:fault:vm:{vm.name}")
                self._push(rng.expovariate(faults.vm_offline_rate), VM_BREAK, vm)
        if faults.host_crash_rate > 0:
            for host in self.hosts.values():
                rng = self.fault_rng[f"host:{host.name}"] = random.Random(f"{seed}:fault:host:{host.name}")
                self._push(rng.expovariate(faults.host_crash_rate), HOST_CRASH, host)

    def _vm_breaks(self, vm: SimVM) -> None:
        rng = self.fault_rng[f"vm:{vm.name}"]
        self._push(rng.expovariate(self.faults.vm_offline_rate), VM_BREAK, vm)
        if not vm.host.up or vm.status in VMStatus.UNTOUCHABLE:
            return
        self.result.vm_breaks += 1
        task = vm.task
        vm.broke(self.now, self.now + self.faults.vm_repair.draw(rng))
        if isinstance(task, SimTask):
            self._requeue(task)
        self._push(self.engine.monitor_interval, VM_CHECK, vm, vm.token)
        self.dirty.add(vm.host.name)

    def _monitor(self, vm: SimVM, token: int) -> None:
        """The engine's monitor re-checks an offline VM; it is back once a check succeeds."""
        if vm.token != token or vm.status != VMStatus.OFFLINE:
            return
        engine = self.engine
        failure = self.faults.revert_failure
        if not vm.host.up:
            return  # re-checked when the host is back
        if self.now < vm.broken_until or (failure > 0 and self.rng[vm.name].random() < failure):
            vm.errors += 1
            backoff = vm.errors >= 2 * engine.max_vm_errors
            self._push(engine.monitor_backoff if backoff else engine.monitor_interval, VM_CHECK, vm, vm.token)
            return
        vm.working_again(self.now)
        self.dirty.add(vm.host.name)

    def _host_crashes(self, host: SimHost) -> None:
        rng = self.fault_rng[f"host:{host.name}"]
        self._push(rng.expovariate(self.faults.host_crash_rate), HOST_CRASH, host)
        if not host.up:
            return
        self.result.host_crashes += 1
        host.set_up(False)
        for vm in host.vms:
            task = vm.task
            vm.host_crashed(self.now)
            if isinstance(task, SimTask):
                self._requeue(task)
        self._push(self.faults.host_repair.draw(rng), HOST_UP, host)
        self.dirty.add(host.name)

    def _host_up(self, host: SimHost) -> None:
        host.set_up(True)
        for vm in host.vms:
            if vm.status == VMStatus.OFFLINE:
                self._push(self.engine.monitor_interval, VM_CHECK, vm, vm.token)
        self.dirty.add(host.name)

    def _requeue(self, task: SimTask) -> None:
        """Work lost to the infrastructure: the task runs again on a clean VM, up to the try limit."""
        self.result.requeued += 1
        if task.tries >= self.engine.max_tries:
            task.ended = self.now
            self._set_task(task, BOTERROR)
            return
        self.queued += 1
        if task.pool is not None:
            task.vm = None  # it tries again on whichever VM of its pool is free first
        self._set_task(task, QUEUED)
        stage = self._stage(task.step)
        if stage is not None:
            self._show(task, stage)

    # ------------------------------------------------------------------ tasks, steps and jobs

    def _show(self, task: SimTask, stage: int) -> None:
        """Queue the task (or change its stage). A pool task is queued on its group, whose hosts are
        then all to plan again: any of them may be the one it gets."""
        job = task.job
        pool = task.pool
        if pool is None:
            host = self.vms[task.vm].host.name
            self.queue[host][task.id] = TaskView(task.id, task.vm, job.id, job.priority, task.step.id, stage)
            self.ordered[host] = None
            self.group_ordered[self.group[host]] = None
            self.dirty.add(host)
            return
        group = self.group[self.vms[pool.vms[0]].host.name]
        view = TaskView(task.id, None, job.id, job.priority, task.step.id, stage, pool.vms)
        self.pooled[group][task.id] = view
        self.group_ordered[group] = None
        self.dirty.update(host.name for host in self.members[group])

    def _hide(self, task: SimTask) -> None:
        pool = task.pool
        if pool is None:
            host = self.vms[task.vm].host.name
            if self.queue[host].pop(task.id, None) is not None:
                self.ordered[host] = None
                self.group_ordered[self.group[host]] = None
                self.dirty.add(host)
            return
        group = self.group[self.vms[pool.vms[0]].host.name]
        if self.pooled[group].pop(task.id, None) is not None:
            self.group_ordered[group] = None
            self.dirty.update(host.name for host in self.members[group])

    @staticmethod
    def _stage(step: SimStep) -> int | None:
        """As the engine reads it: 0 runnable, 1 its dependency runs (prepare ahead), None: hidden."""
        after = step.after
        if after is None or after.status == COMPLETED:
            return 0
        if after.status == RUNNING:
            return 1
        return None

    def _set_task(self, task: SimTask, status: str) -> None:
        step = task.step
        counts = step.counts
        old = task.status
        counts[old] -= 1
        if not counts[old]:
            del counts[old]
        counts[status] = counts.get(status, 0) + 1
        task.status = status
        new = rollup(counts)
        if new != step.status:
            self._step_changed(step, new)

    def _step_changed(self, step: SimStep, status: str) -> None:
        old = step.status
        step.status = status
        job = step.job
        if old in FINAL and status not in FINAL:
            job.open_steps += 1
        elif status in FINAL and old not in FINAL:
            job.open_steps -= 1
        for dependent in step.dependents:
            if status in FINAL and status != COMPLETED:
                self._skip(dependent)
                continue
            stage = self._stage(dependent)
            for task in dependent.tasks:
                if task.status != QUEUED:
                    continue
                if stage is None:
                    self._hide(task)
                else:
                    if stage == 0 and task.ready is None:
                        task.ready = self.now
                    self._show(task, stage)
        if job.open_steps == 0 and job.ended is None:
            job.ended = self.now
            job.status = rollup(s.status for s in job.steps)
            self.open_jobs -= 1
        elif job.open_steps and job.ended is not None:  # regressed (a requeue): not ended any more
            job.ended = None
            self.open_jobs += 1

    def _skip(self, step: SimStep) -> None:
        for task in step.tasks:
            if task.status == QUEUED:
                self._hide(task)
                self.queued -= 1
                task.ended = self.now
                self._set_task(task, SKIPPED)

    # ------------------------------------------------------------------ samples for the plots

    def _sample(self, force: bool = False) -> None:
        if not force and self.now - self._last_sample < self.sample_every:
            return
        self._last_sample = self.now
        counts = self.clock.counts
        self.result.samples.append(
            Sample(
                self.now,
                self.queued,
                counts[VMStatus.RUNNING],
                counts[VMStatus.REVERTING] + counts[VMStatus.SLEEPING],
                counts[VMStatus.OFFLINE],
            )
        )


def simulate(
    lab: LabDef,
    workload: Workload,
    policy: Policy,
    *,
    progress: Callable[[float], None] | None = None,
    until: float | None = None,
) -> SimResult:
    """Run `policy` on `lab` under `workload` until every job ended (or nothing can move)."""
    return Simulation(lab, workload, policy, progress=progress, until=until).run()
