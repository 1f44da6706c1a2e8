"""The engine's database side: every method is one transaction, run on the engine's database thread.

The engine records each decision before acting (a VM is `reverting` before the revert is called, a task
is `running` with its command id before the command is started) and each observation right after, so
after a crash the database plus what agents and hypervisors report is enough to continue.
"""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

from testlab.config import Settings
from testlab.db.models import VM, Event, Host, Job, Step, Task, utcnow
from testlab.db.session import session_scope
from testlab.domain.statuses import HostStatus, TaskStatus, VMRole, VMStatus
from testlab.engine.options import EngineOptions
from testlab.engine.work import KillWork, MonitorWork, PowerOffWork, RevertWork, TaskWork, View, VMRef
from testlab.scheduler.snapshot import (
    HostLimits,
    HostView,
    Plan,
    PowerOff,
    Revert,
    Snapshot,
    StartTask,
    TaskView,
    VMView,
)
from testlab.services.lab import LIMIT_FIELDS
from testlab.services.transitions import record_event, roll_up_job, set_task_status, set_vm_status

DEMAND_WINDOW = timedelta(days=1)


def vm_ref(vm: VM, host_name: str) -> VMRef:
    return VMRef(vm.id, vm.name, host_name, vm.domain, vm.snapshot, vm.agent_url, vm.boot_id)


class Store:
    def __init__(self, settings: Settings, options: EngineOptions) -> None:
        self.settings = settings
        self.options = options

    def session(self):
        return session_scope(self.settings.database_url)

    # ---------------------------------------------------------------- reading

    def last_event_id(self) -> int:
        with self.session() as session:
            return session.scalar(select(func.max(Event.id))) or 0

    def hosts(self) -> list[tuple[str, str, str, dict, str | None]]:
        with self.session() as session:
            return [
                (h.name, h.backend, h.uri, dict(h.commands or {}), h.agent_token_file)
                for h in session.scalars(select(Host).where(Host.retired.is_(False)))
            ]

    def load(self, inflight: frozenset[str], now: float) -> View:
        """Read everything one planning round needs in one transaction."""
        with self.session() as session:
            hosts = session.scalars(select(Host).where(Host.retired.is_(False))).all()
            host_names = {h.id: h.name for h in hosts}
            since = utcnow() - DEMAND_WINDOW
            demand = dict(
                session.execute(
                    select(Task.vm_id, func.count()).where(Task.ended > since).group_by(Task.vm_id)
                ).all()
            )
            vms = session.scalars(select(VM).where(VM.role != VMRole.DELETED)).all()
            vm_views = [
                VMView(
                    name=vm.name,
                    host=host_names[vm.host_id],
                    domain=vm.domain,
                    status=vm.status,
                    role=vm.role,
                    busy=vm.operation is not None or vm.name in inflight,
                    maintenance_requested=vm.maintenance_requested,
                    recent_demand=demand.get(vm.id, 0),
                )
                for vm in vms
                if vm.host_id in host_names
            ]
            vm_names = {vm.id: vm.name for vm in vms}
            snapshot = Snapshot(
                now=now,
                hosts={
                    h.name: HostView(
                        name=h.name,
                        limits=HostLimits(**{f: getattr(h, f) for f in LIMIT_FIELDS}),
                        up=h.status == HostStatus.UP,
                    )
                    for h in hosts
                },
                vms={v.name: v for v in vm_views},
                tasks=self._queued_tasks(session, vm_names),
            )
            return View(
                snapshot=snapshot,
                to_kill=self._tasks_to_kill(session, host_names),
                to_monitor=self._vms_to_monitor(session, vms, host_names, inflight),
                expired=[
                    vm_ref(vm, host_names[vm.host_id])
                    for vm in vms
                    if vm.operation_deadline is not None
                    and vm.operation_deadline < utcnow()
                    and vm.name not in inflight
                    and vm.host_id in host_names
                ],
            )

    def _queued_tasks(self, session: Session, vm_names: dict[int, str]) -> tuple[TaskView, ...]:
        dependency = aliased(Step)
        rows = session.execute(
            select(Task.id, Task.vm_id, Job.id, Job.priority, Step.id, dependency.status)
            .join(Step, Task.step_id == Step.id)
            .join(Job, Task.job_id == Job.id)
            .outerjoin(dependency, Step.depends_on_id == dependency.id)
            .where(Task.status == TaskStatus.QUEUED, Job.cancel_requested.is_(False))
            .order_by(Job.priority, Job.id, Step.number, Task.id)
        ).all()
        tasks = []
        for task_id, vm_id, job_id, priority, step_id, dependency_status in rows:
            if dependency_status is None or dependency_status == TaskStatus.COMPLETED:
                stage = 0
            elif dependency_status == TaskStatus.RUNNING:
                stage = 1
            else:
                continue
            if vm_id in vm_names:
                tasks.append(TaskView(task_id, vm_names[vm_id], job_id, priority, step_id, stage))
        return tuple(tasks)

    def _tasks_to_kill(self, session: Session, host_names: dict[int, str]) -> list[KillWork]:
        rows = session.execute(
            select(Task, VM, Job.cancel_requested)
            .join(VM, Task.vm_id == VM.id)
            .join(Job, Task.job_id == Job.id)
            .where(
                Task.status == TaskStatus.RUNNING,
                (Job.cancel_requested.is_(True)) | (VM.abort_requested.is_(True)),
            )
        ).all()
        return [
            KillWork(
                task.id,
                vm_ref(vm, host_names.get(vm.host_id, "")),
                task.command_id or "",
                task.agent_url,
                "job canceled" if canceled else "maintenance with abort",
            )
            for task, vm, canceled in rows
            if task.command_id
        ]

    def _vms_to_monitor(
        self, session: Session, vms: list[VM], host_names: dict[int, str], inflight: frozenset[str]
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
            MonitorWork(vm_ref(vm, host_names[vm.host_id]), self.options.monitor_timeout)
            for vm in vms
            if vm.status == VMStatus.OFFLINE
            and vm.role in VMRole.ENABLED
            and vm.host_id in host_names
            and vm.operation is None
            and vm.name not in inflight
            and (vm.next_check is None or vm.next_check <= now)
            and (vm.host_id, vm.domain) not in in_use
        ]

    # ---------------------------------------------------------------- acting on a plan

    def begin(self, plan: Plan) -> list[RevertWork | PowerOffWork | TaskWork]:
        """Record the plan's actions (VMs reverting, tasks running...) before they are carried out.
        Actions whose VM or task changed since the snapshot are dropped: the next round re-plans."""
        work: list[RevertWork | PowerOffWork | TaskWork] = []
        now = utcnow()
        with self.session() as session:
            vms = {vm.name: vm for vm in session.scalars(select(VM))}
            hosts = {h.id: h for h in session.scalars(select(Host))}
            for action in plan.actions:
                vm = vms.get(action.vm)
                if vm is None or vm.operation is not None:
                    continue
                host = hosts[vm.host_id]
                if isinstance(action, Revert):
                    work += self._begin_revert(session, vm, host, vms.get(action.displace or ""), action, now)
                elif isinstance(action, PowerOff):
                    work += self._begin_poweroff(session, vm, host, action, now)
                elif isinstance(action, StartTask):
                    work += self._begin_task(session, vm, host, action.task_id, now)
        return work

    def _begin_revert(self, session, vm: VM, host: Host, owner: VM | None, action: Revert, now: datetime):
        if vm.status not in (VMStatus.OFF, VMStatus.DIRTY, VMStatus.IDLE, VMStatus.SLEEPING):
            return []
        if owner is not None:
            if owner.operation is not None or owner.status not in (
                VMStatus.IDLE,
                VMStatus.SLEEPING,
                VMStatus.DIRTY,
            ):
                return []
            set_vm_status(
                session, owner, VMStatus.OFF, f"domain {owner.domain} taken over by {vm.name}", now=now
            )
        set_vm_status(session, vm, VMStatus.REVERTING, f"revert to {vm.snapshot} ({action.reason})", now=now)
        self._set_operation(vm, "revert", self.options.revert_timeout + host.sleep_after_revert, now)
        return [RevertWork(vm_ref(vm, host.name), host.sleep_after_revert, self.options.revert_timeout)]

    def _begin_poweroff(self, session, vm: VM, host: Host, action: PowerOff, now: datetime):
        if vm.status not in (VMStatus.DIRTY, VMStatus.IDLE, VMStatus.SLEEPING):
            return []
        if vm.status != VMStatus.DIRTY:
            set_vm_status(session, vm, VMStatus.DIRTY, f"powering off ({action.reason})", now=now)
        else:
            record_event(session, "vm", f"powering off ({action.reason})", vm=vm, now=now)
        self._set_operation(vm, "poweroff", self.options.poweroff_timeout, now)
        return [PowerOffWork(vm_ref(vm, host.name), self.options.poweroff_timeout)]

    def _begin_task(self, session, vm: VM, host: Host, task_id: int, now: datetime):
        task = session.get(Task, task_id)
        if task is None or task.status != TaskStatus.QUEUED or vm.status != VMStatus.IDLE:
            return []
        if vm.maintenance_requested or task.vm_id != vm.id:
            return []
        job = session.get(Job, task.job_id)
        if job.cancel_requested:
            return []
        step = session.get(Step, task.step_id)
        task.tries += 1
        task.command_id = f"task-{task.id}-try-{task.tries}"
        task.agent_url = vm.agent_url
        task.boot_id = vm.boot_id
        task.exit_code = task.failures = None
        task.detail = ""
        set_task_status(
            session, task, TaskStatus.RUNNING, f"started on {vm.name} (try {task.tries})", now=now
        )
        set_vm_status(
            session, vm, VMStatus.RUNNING, f"running task {task.id} of job {job.id}", task=task, now=now
        )
        self._set_operation(vm, "task", task.timeout + self.options.task_margin, now)
        roll_up_job(session, job, now=now)
        return [self._task_work(session, task, vm, host, job, step)]

    def _task_work(self, session, task: Task, vm: VM, host: Host, job: Job, step: Step) -> TaskWork:
        job_dir = self.settings.job_dir(job.id)
        remote_dir = f"task-{task.id}"
        uploads = [(job_dir / "files" / name, f"{remote_dir}/{name}") for name in step.files]
        if step.depends_on_id is not None:
            for dependency_id in session.scalars(select(Task.id).where(Task.step_id == step.depends_on_id)):
                root = job_dir / "tasks" / str(dependency_id) / "artifacts"
                if root.is_dir():
                    uploads += [
                        (path, f"{remote_dir}/{path.relative_to(root).as_posix()}")
                        for path in sorted(root.rglob("*"))
                        if path.is_file()
                    ]
        env = {
            **step.env,
            "TESTLAB_JOB": str(job.id),
            "TESTLAB_STEP": step.name,
            "TESTLAB_TASK": str(task.id),
            "TESTLAB_VM": vm.name,
            "TESTLAB_TRY": str(task.tries),
        }
        return TaskWork(
            task_id=task.id,
            job_id=job.id,
            vm=vm_ref(vm, host.name),
            command_id=task.command_id or "",
            agent_url=task.agent_url,
            boot_id=task.boot_id,
            command=step.command,
            env=env,
            timeout=task.timeout,
            uploads=tuple(uploads),
            artifacts=tuple(step.artifacts),
            output_dir=job_dir / "tasks" / str(task.id),
            remote_dir=remote_dir,
            deadline_seconds=task.timeout + self.options.task_margin,
        )

    def _set_operation(
        self, vm: VM, operation: str | None, seconds: float = 0, now: datetime | None = None
    ) -> None:
        vm.operation = operation
        if operation is None:
            vm.operation_started = vm.operation_deadline = None
        else:
            now = now or utcnow()
            vm.operation_started = now
            vm.operation_deadline = now + timedelta(seconds=seconds)

    # ---------------------------------------------------------------- outcomes

    def _vm(self, session: Session, vm_id: int) -> VM:
        return session.get(VM, vm_id)

    def _release(
        self, session: Session, vm: VM, status: str, reason: str, *, task: Task | None = None
    ) -> None:
        """End the VM's operation; a pending maintenance request takes effect now."""
        self._set_operation(vm, None)
        if vm.maintenance_requested:
            vm.maintenance_requested = vm.abort_requested = False
            status, reason = VMStatus.MAINTENANCE, f"{reason}; maintenance as requested"
        set_vm_status(session, vm, status, reason, task=task)

    def revert_settling(self, vm_id: int, boot_id: str, agent_url: str | None) -> None:
        with self.session() as session:
            vm = self._vm(session, vm_id)
            vm.boot_id = boot_id
            set_vm_status(session, vm, VMStatus.SLEEPING, f"reverted (agent boot {boot_id[:8]}); settling")

    def revert_done(self, vm_id: int, boot_id: str) -> None:
        with self.session() as session:
            vm = self._vm(session, vm_id)
            vm.boot_id = boot_id
            self._release(session, vm, VMStatus.IDLE, f"reverted to {vm.snapshot}, agent boot {boot_id[:8]}")

    def poweroff_done(self, vm_id: int) -> None:
        with self.session() as session:
            vm = self._vm(session, vm_id)
            vm.boot_id = None
            self._release(session, vm, VMStatus.OFF, "powered off")

    def vm_error(self, vm_id: int, reason: str, session: Session | None = None) -> None:
        """An infrastructure error counts against the VM; at the limit the VM goes offline."""
        if session is None:
            with self.session() as own:
                return self.vm_error(vm_id, reason, own)
        vm = self._vm(session, vm_id)
        vm.errors += 1
        vm.boot_id = None
        if vm.errors >= self.options.max_vm_errors:
            self._set_operation(vm, None)
            vm.maintenance_requested = vm.abort_requested = False
            vm.next_check = utcnow() + timedelta(seconds=self.options.monitor_interval)
            set_vm_status(session, vm, VMStatus.OFFLINE, f"{reason} (error {vm.errors}: offline)")
            record_event(
                session,
                "notify",
                f"vm {vm.name} is offline after {vm.errors} consecutive errors: {reason}",
                vm=vm,
            )
        else:
            self._release(session, vm, VMStatus.DIRTY, f"{reason} (error {vm.errors})")

    def task_finished(self, task_id: int, state: str, exit_code: int | None, detail: str) -> None:
        """The command ended and its results are collected: the task has a result; the VM worked."""
        with self.session() as session:
            task = session.get(Task, task_id)
            job = session.get(Job, task.job_id)
            vm = self._vm(session, task.vm_id)
            if state == "killed" and vm.abort_requested and not job.cancel_requested:
                self._requeue(session, task, "aborted for maintenance", count_try=False, vm_error=False)
                return
            if state == "exited":
                status = TaskStatus.COMPLETED if exit_code == 0 else TaskStatus.FAILED
            elif state == "timeout":
                status = TaskStatus.TIMEOUT
            elif job.cancel_requested:
                status = TaskStatus.CANCELED
            else:
                status = TaskStatus.FAILED
            task.exit_code = exit_code
            task.detail = detail
            set_task_status(session, task, status, detail or f"{state} with exit code {exit_code}")
            vm.errors = 0
            self._release(session, vm, VMStatus.DIRTY, f"task {task.id} ended {status}", task=task)
            roll_up_job(session, job)

    def task_canceled(self, task_id: int, reason: str) -> None:
        with self.session() as session:
            task = session.get(Task, task_id)
            set_task_status(session, task, TaskStatus.CANCELED, reason)
            self._release(session, self._vm(session, task.vm_id), VMStatus.DIRTY, reason, task=task)
            roll_up_job(session, session.get(Job, task.job_id))

    def task_requeue(
        self, task_id: int, reason: str, *, count_try: bool = True, vm_error: bool = True
    ) -> None:
        with self.session() as session:
            task = session.get(Task, task_id)
            self._requeue(session, task, reason, count_try=count_try, vm_error=vm_error)

    def _requeue(self, session: Session, task: Task, reason: str, *, count_try: bool, vm_error: bool) -> None:
        """Work that died: results removed, retried on a clean VM, or `boterror` past the try limit."""
        vm = self._vm(session, task.vm_id)
        job = session.get(Job, task.job_id)
        shutil.rmtree(self.settings.job_dir(job.id) / "tasks" / str(task.id), ignore_errors=True)
        if not count_try:
            task.tries = max(0, task.tries - 1)
        task.command_id = task.agent_url = task.boot_id = None
        task.exit_code = None
        if job.cancel_requested:
            set_task_status(session, task, TaskStatus.CANCELED, f"{reason}; job canceled")
        elif task.tries >= self.options.max_tries:
            task.detail = f"{reason} (after {task.tries} tries)"
            set_task_status(session, task, TaskStatus.BOTERROR, task.detail)
        else:
            task.detail = reason
            set_task_status(session, task, TaskStatus.QUEUED, f"requeued: {reason}")
        if vm.status == VMStatus.RUNNING or vm.operation == "task":
            if vm_error:
                self.vm_error(vm.id, reason, session)
            else:
                self._release(session, vm, VMStatus.DIRTY, reason, task=task)
        roll_up_job(session, job)

    def operation_expired(self, vm_id: int) -> None:
        """An operation outlived its deadline with nothing left driving it: release the VM as after
        an infrastructure error, and requeue the task it was running."""
        with self.session() as session:
            vm = self._vm(session, vm_id)
            if vm.operation is None or vm.operation_deadline is None or vm.operation_deadline >= utcnow():
                return
            reason = f"{vm.operation} operation overran its deadline"
            task = session.scalars(
                select(Task).where(Task.vm_id == vm.id, Task.status == TaskStatus.RUNNING)
            ).first()
            if task is not None:
                self._requeue(session, task, reason, count_try=True, vm_error=True)
            elif vm.operation == "monitor":
                self._set_operation(vm, None)
            else:
                self.vm_error(vm.id, reason, session)

    def monitor_begin(self, vm_id: int) -> bool:
        with self.session() as session:
            vm = self._vm(session, vm_id)
            if vm.status != VMStatus.OFFLINE or vm.operation is not None:
                return False
            self._set_operation(vm, "monitor", self.options.monitor_timeout)
            return True

    def monitor_result(self, vm_id: int, ok: bool, reason: str) -> None:
        with self.session() as session:
            vm = self._vm(session, vm_id)
            self._set_operation(vm, None)
            if vm.status != VMStatus.OFFLINE:
                return
            if ok:
                vm.errors = 0
                vm.next_check = None
                vm.boot_id = None
                set_vm_status(session, vm, VMStatus.OFF, f"working again: {reason}")
                record_event(session, "notify", f"vm {vm.name} is working again", vm=vm)
            else:
                vm.errors += 1
                backoff = vm.errors >= 2 * self.options.max_vm_errors
                interval = self.options.monitor_backoff if backoff else self.options.monitor_interval
                vm.next_check = utcnow() + timedelta(seconds=interval)
                record_event(session, "vm", f"monitor: still broken: {reason}", vm=vm)

    def engine_event(self, reason: str) -> None:
        with self.session() as session:
            record_event(session, "engine", reason)

    # ---------------------------------------------------------------- start-up reconciliation

    def reconcile_inputs(self) -> tuple[list[TaskWork], list[VMRef]]:
        """Running tasks (as work to re-attach) and idle VMs (to verify), as the database last knew them."""
        with self.session() as session:
            hosts = {h.id: h for h in session.scalars(select(Host))}
            running = []
            for task in session.scalars(select(Task).where(Task.status == TaskStatus.RUNNING)):
                vm = self._vm(session, task.vm_id)
                job = session.get(Job, task.job_id)
                step = session.get(Step, task.step_id)
                running.append(self._task_work(session, task, vm, hosts[vm.host_id], job, step))
            idle = [
                vm_ref(vm, hosts[vm.host_id].name)
                for vm in session.scalars(
                    select(VM).where(VM.status == VMStatus.IDLE, VM.role != VMRole.DELETED)
                )
            ]
            return running, idle

    def reconcile_apply(
        self, live: set[int], never_started: set[int], dead: dict[int, str], idle_ok: set[int]
    ) -> None:
        """Make the database match what the agents and hypervisors reported (see mission.md, restart)."""
        with self.session() as session:
            busy_vms = set()
            for task_id in sorted(never_started):
                task = session.get(Task, task_id)
                self._requeue(
                    session,
                    task,
                    "engine restarted before the command started",
                    count_try=False,
                    vm_error=False,
                )
            for task_id, reason in sorted(dead.items()):
                task = session.get(Task, task_id)
                self._requeue(
                    session,
                    task,
                    f"engine restarted and the work had died: {reason}",
                    count_try=True,
                    vm_error=False,
                )
            for task_id in live:
                busy_vms.add(session.get(Task, task_id).vm_id)
            for vm in session.scalars(select(VM)):
                if vm.id in busy_vms:
                    continue
                if vm.operation == "monitor":
                    self._set_operation(vm, None)
                elif vm.status in (VMStatus.REVERTING, VMStatus.SLEEPING, VMStatus.RUNNING):
                    self._set_operation(vm, None)
                    set_vm_status(session, vm, VMStatus.DIRTY, "engine restarted during its operation")
                elif vm.status == VMStatus.IDLE and vm.id not in idle_ok:
                    self._set_operation(vm, None)
                    set_vm_status(session, vm, VMStatus.DIRTY, "engine restarted: agent not as left")
                elif vm.operation is not None:
                    self._set_operation(vm, None)
                    if vm.status not in (VMStatus.OFF, VMStatus.OFFLINE, VMStatus.MAINTENANCE):
                        set_vm_status(session, vm, VMStatus.DIRTY, "engine restarted during its operation")
            record_event(
                session,
                "engine",
                f"engine started: {len(live)} task(s) re-attached, "
                f"{len(dead)} requeued, {len(never_started)} never started",
            )
