"""Recording what the engine's operations observed: a revert done, a task's result, an error.

Each method is the body of one engine transaction (`EngineDatabase.write` runs it fenced by the
lease and retries it on fresh rows after a conflict), so it reads what it changes in the same
transaction and is correct whatever an administrator did in between (e.g. a maintenance request
that arrived while the task ran takes effect here).

Every error is charged to exactly one party (docs/engine.md, "Who is charged"): the test (a failed
task), the VM (its error count, then offline), the host (its error count, then down), or the engine's
own machine (nobody's count; new work pauses).
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from testlab.config import Settings
from testlab.db.models import VM, Host, Task, utcnow
from testlab.db.prepared import Prepared
from testlab.db.rows import EditableRow, load_row
from testlab.domain.statuses import HostStatus, TaskStatus, VMStatus
from testlab.engine.options import EngineOptions
from testlab.lifecycle import FAILING, wipe_advice, wipe_reason
from testlab.results import ReportSummary, status_after_exit
from testlab.services.hosts import power_cycled_since
from testlab.services.results import record_reference
from testlab.services.tasks import load_task_rows, requeue_task
from testlab.services.transitions import (
    batched_events,
    clear_operation,
    end_operation,
    record_event,
    roll_up_job,
    set_host_status,
    set_task_status,
    set_vm_status,
)
from testlab.services.uses import end_task_use, reuse_policy, wipe_lifecycle

DISK_SHORT = "short of disk"


def _locked_vm(session: Session, vm_id: int) -> VM:
    """The VM row, locked until the commit on PostgreSQL (SQLite's writers already hold the write
    lock): an administrator's change of the VM waits for this outcome instead of invalidating it.
    Without the lock, a command changing the VM in a tight loop (maintenance on, off, on...) made
    every retry of a task's end conflict, and the task stayed `running` until its deadline. FOR NO KEY
    UPDATE, not FOR UPDATE: rows that merely refer to the VM (events, tasks) are written meanwhile."""
    return session.get(VM, vm_id, with_for_update={"key_share": True})


def _locked_vm_row(session: Session, vm_id: int) -> EditableRow:
    """`_locked_vm` as an editable row (testlab/db/rows.py): the outcomes every task has (a revert's
    end, a task's end) are written without ORM objects."""
    vm = load_row(session, _LOCKED_VM_ROW, {"vm": vm_id})
    if vm is None:
        raise LookupError(f"vm {vm_id} is gone")
    return vm


_LOCKED_VM_ROW = Prepared(
    select(VM.__table__).where(VM.id == bindparam("vm")).with_for_update(key_share=True)
)
# A VM's host worked: its count of consecutive errors starts again. Written only when there is one
# (nearly never), and as a versioned change: a writer that read the old count conflicts and re-reads.
_HOST_WORKS = Prepared(
    update(Host)
    .where(Host.id == bindparam("host"), Host.errors != 0)
    .values(errors=0, version=Host.version + 1)
)


def _size(count: int | None) -> str:
    return "unknown" if count is None else f"{count / (1 << 30):.1f} GiB"


class Outcomes:
    def __init__(self, settings: Settings, options: EngineOptions) -> None:
        self.settings = settings
        self.options = options

    # ---------------------------------------------------------------- VMs

    def revert_settling(self, session: Session, vm_id: int, boot_id: str) -> None:
        vm = _locked_vm(session, vm_id)
        vm.boot_id = boot_id
        set_vm_status(session, vm, VMStatus.SLEEPING, f"reverted (agent boot {boot_id[:8]}); settling")

    def revert_done(self, session: Session, vm_id: int, boot_id: str) -> None:
        vm = _locked_vm_row(session, vm_id)
        self._host_works(session, vm)
        vm.boot_id = boot_id
        end_operation(session, vm, VMStatus.IDLE, f"reverted to {vm.snapshot}, agent boot {boot_id[:8]}")
        vm.save(session)

    def poweroff_done(self, session: Session, vm_id: int) -> None:
        vm = _locked_vm_row(session, vm_id)
        self._host_works(session, vm)
        vm.boot_id = None
        wipe_lifecycle(session, vm, utcnow())  # an off VM is always reverted before its next use
        end_operation(session, vm, VMStatus.OFF, "powered off")
        vm.save(session)

    def vm_error(self, session: Session, vm_id: int, reason: str) -> None:
        """An infrastructure error of the VM counts against it; at the limit it goes offline."""
        vm = _locked_vm(session, vm_id)
        vm.errors += 1
        vm.boot_id = None
        if vm.errors < self.options.max_vm_errors:
            end_operation(session, vm, VMStatus.DIRTY, f"{reason} (error {vm.errors})")
            return
        clear_operation(vm)
        vm.maintenance_requested = vm.abort_requested = False
        vm.next_check = utcnow() + timedelta(seconds=self.options.monitor_interval)
        set_vm_status(session, vm, VMStatus.OFFLINE, f"{reason} (error {vm.errors}: offline)")
        record_event(
            session,
            "notify",
            f"vm {vm.name} is offline after {vm.errors} consecutive errors: {reason}",
            vm=vm,
        )

    # ---------------------------------------------------------------- hosts

    def host_error(self, session: Session, vm_id: int, reason: str) -> None:
        """The VM's host could not be reached: the host is charged, not the VM, whose state is now
        unknown (dirty); a task it ran is requeued without using a try."""
        vm = _locked_vm(session, vm_id)
        task = self._running_task(session, vm)
        if task is not None:
            self._requeue(session, task, reason, count_try=False)
        vm.boot_id = None
        end_operation(session, vm, VMStatus.DIRTY, reason, task=task)
        self._charge_host(session, session.get(Host, vm.host_id), reason)

    def _charge_host(self, session: Session, host: Host, reason: str) -> None:
        host.errors += 1
        if host.status != HostStatus.UP or host.errors < self.options.max_host_errors:
            record_event(session, "host", f"host error {host.errors}: {reason}", host_id=host.id)
            return
        host.status_reason = f"{host.errors} consecutive errors, the last: {reason}"
        host.next_check = utcnow() + timedelta(seconds=self.options.monitor_interval)
        set_host_status(session, host, HostStatus.DOWN, f"host {host.name} down: {host.status_reason}")
        record_event(
            session,
            "notify",
            f"host {host.name} is down after {host.errors} consecutive errors: {reason}",
            host_id=host.id,
        )

    def _host_works(self, session: Session, vm: VM | EditableRow) -> None:
        _HOST_WORKS.execute(session, {"host": vm.host_id})

    def host_checked(
        self, session: Session, host_id: int, reachable: bool, free_disk: int | None, detail: str
    ) -> None:
        """A health check's result: a host the engine took down comes back when it answers; an up host
        that does not answer is charged; its free disk is recorded, and crossing its threshold notified."""
        host = session.get(Host, host_id)
        now = utcnow()
        host.health_checked = now
        if host.status == HostStatus.DOWN:
            if host.next_check is None:
                return  # an administrator took it down: only an administrator brings it back
            if reachable:
                host.status_reason, host.errors, host.next_check = "", 0, None
                set_host_status(session, host, HostStatus.UP, f"host {host.name} up: {detail}")
                record_event(session, "notify", f"host {host.name} is working again", host_id=host.id)
            else:
                backoff = host.errors >= 2 * self.options.max_host_errors
                host.errors += 1
                interval = self.options.monitor_backoff if backoff else self.options.monitor_interval
                host.next_check = now + timedelta(seconds=interval)
                record_event(session, "host", f"host check: still unreachable: {detail}", host_id=host.id)
            self._record_disk(session, host, free_disk if reachable else host.free_disk_bytes)
            return
        if not reachable:
            self._charge_host(session, host, f"health check: {detail}")
            return
        if host.errors:
            host.errors = 0
        self._record_disk(session, host, free_disk)

    def _record_disk(self, session: Session, host: Host, free: int | None) -> None:
        """Record the free disk; crossing the threshold either way is notified once (an up host
        short of disk says so in its `status_reason`)."""
        threshold = host.min_free_disk or self.options.min_free_disk
        host.free_disk_bytes = free
        was_low = host.status_reason.startswith(DISK_SHORT)
        low = bool(threshold and free is not None and free < threshold)
        if low and not was_low and host.status == HostStatus.UP:
            host.status_reason = f"{DISK_SHORT}: {_size(free)} free, below {_size(threshold)}: no new reverts"
            record_event(session, "notify", f"host {host.name} {host.status_reason}", host_id=host.id)
        elif was_low and not low:
            host.status_reason = ""
            record_event(
                session, "notify", f"host {host.name} has {_size(free)} of free disk again", host_id=host.id
            )

    # ---------------------------------------------------------------- tasks

    def task_finished(
        self,
        session: Session,
        task_id: int,
        state: str,
        exit_code: int | None,
        detail: str,
        *,
        lost: bool = False,
        failure: str | None = None,
        report: ReportSummary | None = None,
    ) -> None:
        """The command ended and its results are collected: the task has a result, the VM worked.

        A command the agent reports `lost` (its supervisor vanished: the machine rebooted or power-
        cycled under it, its disk surviving) is no result: the task is requeued with a try used and
        the VM charged. `failure` is a reason the task failed whatever its exit code (a bad artifact
        set). `report` sums the task's test reports: a failing case or a report problem fails it."""
        loaded = load_task_rows(session, task_id)
        if loaded is None or loaded[0].status != TaskStatus.RUNNING:
            return  # already recorded (a re-run of this transaction, or a watchdog got there first)
        task, _, job = loaded
        vm = _locked_vm_row(session, task.vm_id)
        if not job.cancel_requested and ((state == "killed" and vm.abort_requested) or lost):
            # No result: the rows read so far are dropped unchanged, and the requeue, which the
            # CLI's commands share, works on ORM objects.
            self._no_result(session, task_id, state)
            return
        if failure is not None:
            status, detail = TaskStatus.FAILED, f"{detail}; {failure}"
        elif state == "exited":
            status = status_after_exit(exit_code, report)
        elif state == "timeout":
            status = TaskStatus.TIMEOUT
        elif job.cancel_requested:
            status = TaskStatus.CANCELED
        else:
            status = TaskStatus.FAILED
        task.exit_code = exit_code
        task.failures = report.failures if report is not None else None
        if report is not None and report.total:
            detail = f"{detail}; {report.failures} of {report.total} test cases failing"
        if report is not None and report.problems:
            detail = f"{detail}; report problems: {'; '.join(str(p) for p in report.problems[:3])}"
        task.detail = detail
        with batched_events(session):  # the task's, its VM's and maybe its step's and job's
            set_task_status(session, task, status, detail or f"{state} with exit code {exit_code}", vm=vm)
            vm.errors = 0
            self._release_after_task(session, vm, task, status)
            task.save(session)
            vm.save(session)
            if job.reference:
                record_reference(session, job, task_ids=[task.id])
            roll_up_job(session, job)

    def _no_result(self, session: Session, task_id: int, state: str) -> None:
        """The command ended without a result: killed for a maintenance request, or lost."""
        task = session.get(Task, task_id)
        vm = _locked_vm(session, task.vm_id)
        if state == "killed" and vm.abort_requested:
            self._requeue(session, task, "aborted for maintenance", count_try=False)
            end_operation(session, vm, VMStatus.DIRTY, "aborted for maintenance", task=task)
            return
        host = session.get(Host, vm.host_id)
        since = vm.operation_started or task.started
        if since is not None and power_cycled_since(session, host, since):
            reason = f"host {host.name} power-cycled under the command"
            self._requeue(session, task, reason, count_try=True)
            end_operation(session, vm, VMStatus.DIRTY, reason, task=task)
            return
        reason = "the VM rebooted under the command: its agent came back without it"
        self._requeue(session, task, reason, count_try=True)
        self.vm_error(session, vm.id, reason)

    def _release_after_task(self, session: Session, vm: EditableRow, task: EditableRow, status: str) -> None:
        """Close the task's use of the VM and say whether the VM runs the next task as it is (a
        reused VM with no reason to wipe it: idle) or is wiped first (dirty)."""
        task.history_at_end, uses = end_task_use(
            session, vm.id, task_id=task.id, job_id=task.job_id, outcome=status, now=utcnow()
        )
        policy = reuse_policy(vm)
        wipe = wipe_reason(policy, uses=vm.uses, outcome=status, requested=vm.wipe_requested)
        if wipe is None and policy.protect_after and status in FAILING:
            advice = wipe_advice(uses, k=policy.protect_after)
            if advice is not None:
                wipe = f"protection: {advice.reason}"
                record_event(
                    session,
                    "notify",
                    f"vm {vm.name} will be wiped before its next use: {advice.reason}",
                    vm=vm,
                )
        ended = f"task {task.id} ended {status}"
        if not policy.reuse:
            end_operation(session, vm, VMStatus.DIRTY, ended, task=task)
        elif wipe is None:
            end_operation(
                session, vm, VMStatus.IDLE, f"{ended}; reused ({vm.uses} uses since its wipe)", task=task
            )
        else:
            end_operation(session, vm, VMStatus.DIRTY, f"{ended}; to be wiped: {wipe}", task=task)

    def task_requeue(
        self, session: Session, task_id: int, reason: str, *, count_try: bool = True, vm_error: bool = True
    ) -> None:
        """Infrastructure trouble under a running task: another try on a clean VM; the VM is charged
        unless `vm_error` is False (the trouble was not the VM's)."""
        task = session.get(Task, task_id)
        if task.status != TaskStatus.RUNNING:
            return
        vm = _locked_vm(session, task.vm_id)
        self._requeue(session, task, reason, count_try=count_try)
        if vm.status == VMStatus.RUNNING or vm.operation == "task":
            if vm_error:
                self.vm_error(session, vm.id, reason)
            else:
                end_operation(session, vm, VMStatus.DIRTY, reason, task=task)

    def engine_problem(self, session: Session, task_id: int, reason: str, *, count_try: bool) -> None:
        """The engine's own machine failed the task (its disk full, its data directory unusable): the
        task is requeued and no VM or host is charged."""
        self.task_requeue(session, task_id, f"engine problem: {reason}", count_try=count_try, vm_error=False)

    def _requeue(self, session: Session, task: Task, reason: str, *, count_try: bool) -> None:
        output = self.settings.job_dir(task.job_id) / "tasks" / str(task.id)
        requeue_task(
            session, task, reason, count_try=count_try, max_tries=self.options.max_tries, output_dir=output
        )

    @staticmethod
    def _running_task(session: Session, vm: VM) -> Task | None:
        return session.scalars(
            select(Task).where(Task.vm_id == vm.id, Task.status == TaskStatus.RUNNING)
        ).first()

    # ---------------------------------------------------------------- watchdog and monitor

    def operation_expired(self, session: Session, vm_id: int) -> None:
        """An operation outlived its deadline with nothing left driving it: release the VM as after
        an infrastructure error, and requeue the task it was running."""
        vm = _locked_vm(session, vm_id)
        if vm.operation is None or vm.operation_deadline is None or vm.operation_deadline >= utcnow():
            return
        reason = f"{vm.operation} operation overran its deadline"
        task = self._running_task(session, vm)
        if task is not None:
            self._requeue(session, task, reason, count_try=True)
            self.vm_error(session, vm.id, reason)
        elif vm.operation == "monitor":
            clear_operation(vm)
        else:
            self.vm_error(session, vm.id, reason)

    def monitor_begin(self, session: Session, vm_id: int) -> bool:
        vm = _locked_vm(session, vm_id)
        if vm.status != VMStatus.OFFLINE or vm.operation is not None:
            return False
        now = utcnow()
        vm.operation, vm.operation_started = "monitor", now
        vm.operation_deadline = now + timedelta(seconds=self.options.monitor_timeout)
        return True

    def monitor_result(self, session: Session, vm_id: int, ok: bool, reason: str) -> None:
        vm = _locked_vm(session, vm_id)
        clear_operation(vm)
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
