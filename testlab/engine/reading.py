"""What one planning round reads from the database, in one read-only transaction: the scheduler's
snapshot (hosts, VMs, queued tasks), the row versions it was taken at, and the other work the round
starts (kills, monitor checks, operations past their deadline)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from sqlalchemy import Integer, Row, Select, String, bindparam, case, cast, func, select
from sqlalchemy.orm import Session, aliased

from testlab.db.models import VM, Event, Host, Job, Step, Task, utcnow
from testlab.db.prepared import Prepared
from testlab.domain.jobfile import selected_by
from testlab.domain.statuses import HostStatus, TaskStatus, VMRole, VMStatus
from testlab.engine.options import EngineOptions
from testlab.engine.reuse import LastViews
from testlab.engine.work import HostCheck, KillWork, MonitorWork, View, vm_ref
from testlab.hypervisor import HostConfig
from testlab.scheduler.heads import queue_heads
from testlab.scheduler.snapshot import LIMIT_FIELDS, HostLimits, HostView, Snapshot, TaskView, VMView
from testlab.services.hosts import host_config

DEMAND_WINDOW = timedelta(days=1)

# Built once: a round runs these every time, and building a statement costs more than running it.
# Hosts and VMs are read as plain rows: the round only reads them, and ORM objects cost twice as much;
# run on the driver (testlab/db/prepared.py): SQLAlchemy's execution cost more than the statements.
# In a stable order, so that the views of what did not change come out the same (engine/reuse.py).
_HOSTS = Prepared(
    select(*Host.__table__.c).where(Host.__table__.c.retired.is_(False)).order_by(Host.__table__.c.id)
)
_VMS = Prepared(
    select(*VM.__table__.c).where(VM.__table__.c.role != VMRole.DELETED).order_by(VM.__table__.c.id)
)
# Every running task with what killing it needs: the followers' check (`View.running`) and the kills
# a round starts (a canceled job's tasks, a VM's under maintenance with abort) in one statement.
_RUNNING = Prepared(
    select(
        Task.id.label("task_id"),
        Task.command_id,
        Task.agent_url.label("task_agent_url"),
        Job.cancel_requested,
        VM.abort_requested,
        VM.id,
        VM.name,
        VM.host_id,
        VM.domain,
        VM.snapshot,
        VM.agent_url,
        VM.boot_id,
    )
    .join(VM, Task.vm_id == VM.id)
    .join(Job, Task.job_id == Job.id)
    .where(Task.status == TaskStatus.RUNNING)
)


def last_event_id(session: Session) -> int:
    return session.scalar(select(func.max(Event.id))) or 0


def host_configs(session: Session) -> list[HostConfig]:
    return [host_config(h) for h in session.scalars(select(Host).where(Host.retired.is_(False)))]


def read_round(
    session: Session,
    options: EngineOptions,
    inflight: frozenset[str],
    now: float,
    demand: dict[int, int] | None = None,
    last: LastViews | None = None,
) -> View:
    """The round's view. `demand` (tasks per VM over the last day, only a tie-breaker for keeping VMs
    ready) is counted when not given: the engine passes the last count while it is recent, sparing
    a scan of the day's tasks at every round. `last` holds the engine's views of the last round: the
    snapshot reuses those that did not change (testlab/engine/reuse.py)."""
    if last is None:
        last = LastViews()
    last.next_round()
    hosts = _HOSTS.execute(session).all()
    host_names = {h.id: h.name for h in hosts}
    if demand is None:
        demand = recent_demand(session)
    vms = [vm for vm in _VMS.execute(session) if vm.host_id in host_names]
    snapshot = Snapshot(
        now=now,
        hosts={h.name: _host_view(h, options, last) for h in hosts},
        # keyed by the views' own names: the same strings as last round's where the view is reused
        vms={view.name: view for view in (_vm_view(vm, host_names, inflight, demand, last) for vm in vms)},
        tasks=_queued_tasks(session, vms, last),
    )
    current = utcnow()
    running = _RUNNING.execute(session).all()
    return View(
        snapshot=snapshot,
        vm_versions={vm.name: vm.version for vm in vms},
        to_kill=_tasks_to_kill(running, host_names),
        to_monitor=_vms_to_monitor(vms, host_names, inflight, options),
        expired=[
            vm_ref(vm, host_names[vm.host_id])
            for vm in vms
            if vm.operation_deadline is not None
            and vm.operation_deadline < current
            and vm.name not in inflight
        ],
        host_checks=_host_checks(hosts, options, current),
        running={row.task_id: row.command_id for row in running},
        host_configs=[host_config(h) for h in hosts],
        demand=demand,
        next_due=_next_due(hosts, vms, options),
    )


def _host_view(host: Row, options: EngineOptions, last: LastViews) -> HostView:
    limits = tuple(getattr(host, f) for f in LIMIT_FIELDS)
    up = host.status == HostStatus.UP
    no_reverts = _short_of_disk(host, options)
    key = (host.name, limits, up, no_reverts)
    return last.hosts.get(key) or last.hosts.keep(
        key, HostView(host.name, HostLimits(**dict(zip(LIMIT_FIELDS, limits, strict=True))), up, no_reverts)
    )


def _vm_view(
    vm: Row, host_names: dict[int, str], inflight: frozenset[str], demand: dict[int, int], last: LastViews
) -> VMView:
    key = (  # VMView's fields, in its order
        vm.name,
        host_names[vm.host_id],
        vm.domain,
        vm.status,
        vm.role,
        vm.operation is not None or vm.name in inflight,  # busy
        vm.maintenance_requested,
        demand.get(vm.id, 0),  # recent_demand
        bool(vm.uses),  # used
    )
    return last.vms.get(key) or last.vms.keep(key, VMView(*key))


def _next_due(hosts: list[Row], vms: list[Row], options: EngineOptions) -> datetime | None:
    """The earliest moment something becomes due without any write to tell the engine: an
    operation's deadline, an offline VM's or a down host's next check, an up host's health check."""
    due = [vm.operation_deadline for vm in vms if vm.operation_deadline is not None]
    due += [vm.next_check for vm in vms if vm.status == VMStatus.OFFLINE and vm.next_check is not None]
    for host in hosts:
        if host.status == HostStatus.DOWN:
            if host.next_check is not None:
                due.append(host.next_check)
        elif host.health_checked is not None:
            due.append(host.health_checked + timedelta(seconds=options.host_check_interval))
    return min(due, default=None)


def recent_demand(session: Session) -> dict[int, int]:
    since = utcnow() - DEMAND_WINDOW
    return dict(
        session.execute(select(Task.vm_id, func.count()).where(Task.ended > since).group_by(Task.vm_id)).all()
    )


def _short_of_disk(host: Row, options: EngineOptions) -> str | None:
    threshold = host.min_free_disk or options.min_free_disk
    free = host.free_disk_bytes
    if not threshold or free is None or free >= threshold:
        return None
    return f"{free / (1 << 30):.1f} GiB of free disk, below its {threshold / (1 << 30):.1f} GiB"


def _host_checks(hosts: list[Row], options: EngineOptions, now: datetime) -> list[HostCheck]:
    """Hosts the engine took down whose next check is due, and up hosts not checked for a while."""
    due = []
    for host in hosts:
        if host.status == HostStatus.DOWN:
            if host.next_check is not None and host.next_check <= now:
                due.append(host)
        elif host.health_checked is None or host.health_checked <= now - timedelta(
            seconds=options.host_check_interval
        ):
            due.append(host)
    return [HostCheck(h.id, h.name, options.monitor_timeout) for h in due]


def _queue_heads_statement() -> Select:
    """Each queued task ranked within its VM's (or pool's) stage; only the first of each, and a
    pool's first `deepest_pool`, come back. Built once: building it costs more than running it."""
    dependency = aliased(Step)
    stage = case(
        (dependency.status.is_(None) | (dependency.status == TaskStatus.COMPLETED), 0),
        (dependency.status == TaskStatus.RUNNING, 1),
    )
    # Equal label lists in another order rank apart here (a few more rows), and as one pool below.
    pool = case((Task.vm_id.is_(None), cast(Step.pool_labels, String)))
    place = func.row_number().over(
        partition_by=(Task.vm_id, pool, stage), order_by=(Job.priority, Job.id, Step.number, Task.id)
    )
    ranked = (
        select(
            Task.id.label("task_id"),
            Task.vm_id,
            Job.id.label("job_id"),
            Job.priority,
            Step.id.label("step_id"),
            Step.number,
            stage.label("stage"),
            pool.label("pool_labels"),
            Step.clean,
            place.label("place"),
        )
        .join(Step, Task.step_id == Step.id)
        .join(Job, Task.job_id == Job.id)
        .outerjoin(dependency, Step.depends_on_id == dependency.id)
        .where(Task.status == TaskStatus.QUEUED, Job.cancel_requested.is_(False), stage.is_not(None))
        .subquery()
    )
    deepest_pool = bindparam("deepest_pool", type_=Integer)
    return (
        select(
            ranked.c.task_id,
            ranked.c.vm_id,
            ranked.c.job_id,
            ranked.c.priority,
            ranked.c.step_id,
            ranked.c.stage,
            ranked.c.pool_labels,
            ranked.c.clean,
        )
        .where((ranked.c.place == 1) | (ranked.c.vm_id.is_(None) & (ranked.c.place <= deepest_pool)))
        .order_by(ranked.c.priority, ranked.c.job_id, ranked.c.number, ranked.c.task_id)
    )


_QUEUE_HEADS = Prepared(_queue_heads_statement())


def _queued_tasks(session: Session, vms: list[Row], last: LastViews) -> tuple[TaskView, ...]:
    """The queue heads (see `testlab.scheduler.heads`), in queue order: the database ranks each task
    within its VM's or its pool's stage, so a deep queue is never read; what only shows across stages
    (a next-step task behind its VM's runnable one) or needs the lab (a pool's number of candidates)
    is left to `queue_heads`, the one place that knows what a round can act on."""
    vm_names = {vm.id: vm.name for vm in vms}
    pools: dict[tuple[str, ...], tuple[str, ...]] = {}  # labels -> candidates, one tuple per pool
    pools_by_text: dict[str | None, tuple[str, ...] | None] = {}  # labels as the database spells them
    selectable: list[tuple[str, list[str], str]] = []

    def pool_of(labels_text: str | None) -> tuple[str, ...] | None:
        """The candidates of the pool a step's labels select; None for a step without labels."""
        if labels_text in pools_by_text:
            return pools_by_text[labels_text]
        labels = json.loads(labels_text) if labels_text else None
        found = None
        if labels:
            key = tuple(sorted(labels))
            found = pools.get(key)
            if found is None:
                if not selectable:
                    selectable.extend((vm.name, vm.labels or [], vm.role) for vm in vms)
                found = tuple(
                    name for name, vm_labels, role in selectable if selected_by(key, vm_labels, role)
                )
                found = pools[key] = last.pools.get(found) or last.pools.keep(found, found)
        pools_by_text[labels_text] = found
        return found

    rows = _QUEUE_HEADS.execute(session, {"deepest_pool": max(1, len(vms))}).all()
    tasks = []
    reuse = last.tasks
    for task_id, vm_id, job_id, priority, step_id, stage_number, pool_labels, clean in rows:
        if vm_id is None:
            pool = pool_of(pool_labels)
            if pool is None:
                continue
            key = (task_id, None, job_id, priority, step_id, stage_number, id(pool), clean)
            view = reuse.get(key) or reuse.keep(
                key, TaskView(task_id, None, job_id, priority, step_id, stage_number, pool, clean)
            )
        elif vm_id in vm_names:
            key = (task_id, vm_names[vm_id], job_id, priority, step_id, stage_number, (), clean)
            view = reuse.get(key) or reuse.keep(key, TaskView(*key))
        else:
            continue
        tasks.append(view)
    return queue_heads(tasks)


def _tasks_to_kill(running: list[Row], host_names: dict[int, str]) -> list[KillWork]:
    return [
        KillWork(
            row.task_id,
            vm_ref(row, host_names.get(row.host_id, "")),
            row.command_id,
            row.task_agent_url,
            "job canceled" if row.cancel_requested else "maintenance with abort",
        )
        for row in running
        if (row.cancel_requested or row.abort_requested) and row.command_id
    ]


def _vms_to_monitor(
    vms: list[Row], host_names: dict[int, str], inflight: frozenset[str], options: EngineOptions
) -> list[MonitorWork]:
    now = utcnow()
    in_use = {
        (vm.host_id, vm.domain)
        for vm in vms
        if vm.status not in (VMStatus.OFF, VMStatus.OFFLINE)
        or vm.operation is not None
        or vm.name in inflight
    }
    return [
        MonitorWork(vm_ref(vm, host_names[vm.host_id]), options.monitor_timeout)
        for vm in vms
        if vm.status == VMStatus.OFFLINE
        and vm.role in VMRole.ENABLED
        and vm.operation is None
        and vm.name not in inflight
        and (vm.next_check is None or vm.next_check <= now)
        and (vm.host_id, vm.domain) not in in_use
    ]
