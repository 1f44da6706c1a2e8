"""Recording what the engine's operations observed: a revert done, a task's result, an error.

Each method is the body of one engine transaction (`EngineDatabase.write` runs it fenced by the
lease and retries it on fresh rows after a conflict), so it reads what it changes in the same
transaction and is correct whatever an administrator did in between (e.g. a maintenance request
that arrived while the task ran takes effect here).
"""

from __future__ import annotations

import shutil
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from testlab.config import Settings
from testlab.db.models import VM, Job, Task, utcnow
from testlab.db.session import after_commit
from testlab.domain.statuses import TaskStatus, VMStatus
from testlab.engine.options import EngineOptions
from testlab.services.transitions import record_event, roll_up_job, set_task_status, set_vm_status


def clear_operation(vm: VM) -> None:
    vm.operation = vm.operation_started = vm.operation_deadline = None


def release(session: Session, vm: VM, status: str, reason: str, *, task: Task | None = None) -> None:
    """End the VM's operation; a pending maintenance request takes effect now."""
    clear_operation(vm)
    if vm.maintenance_requested:
        vm.maintenance_requested = vm.abort_requested = False
        status, reason = VMStatus.MAINTENANCE, f"{reason}; maintenance as requested"
    set_vm_status(session, vm, status, reason, task=task)


class Outcomes:
    def __init__(self, settings: Settings, options: EngineOptions) -> None:
        self.settings = settings
        self.options = options

    # ---------------------------------------------------------------- VMs

    def revert_settling(self, session: Session, vm_id: int, boot_id: str) -> None:
        vm = session.get(VM, vm_id)
        vm.boot_id = boot_id
        set_vm_status(session, vm, VMStatus.SLEEPING, f"reverted (agent boot {boot_id[:8]}); settling")

    def revert_done(self, session: Session, vm_id: int, boot_id: str) -> None:
        vm = session.get(VM, vm_id)
        vm.boot_id = boot_id
        release(session, vm, VMStatus.IDLE, f"reverted to {vm.snapshot}, agent boot {boot_id[:8]}")

    def poweroff_done(self, session: Session, vm_id: int) -> None:
        vm = session.get(VM, vm_id)
        vm.boot_id = None
        release(session, vm, VMStatus.OFF, "powered off")

    def vm_error(self, session: Session, vm_id: int, reason: str) -> None:
        """An infrastructure error counts against the VM; at the limit the VM goes offline."""
        vm = session.get(VM, vm_id)
        vm.errors += 1
        vm.boot_id = None
        if vm.errors < self.options.max_vm_errors:
            release(session, vm, VMStatus.DIRTY, f"{reason} (error {vm.errors})")
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

    # ---------------------------------------------------------------- tasks

    def task_finished(
        self, session: Session, task_id: int, state: str, exit_code: int | None, detail: str
    ) -> None:
        """The command ended and its results are collected: the task has a result; the VM worked."""
        task = session.get(Task, task_id)
        if task.status != TaskStatus.RUNNING:
            return  # already recorded (a re-run of this transaction, or a watchdog got there first)
        job = session.get(Job, task.job_id)
        vm = session.get(VM, task.vm_id)
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
        release(session, vm, VMStatus.DIRTY, f"task {task.id} ended {status}", task=task)
        roll_up_job(session, job)

    def task_requeue(
        self, session: Session, task_id: int, reason: str, *, count_try: bool = True, vm_error: bool = True
    ) -> None:
        task = session.get(Task, task_id)
        if task.status != TaskStatus.RUNNING:
            return
        self._requeue(session, task, reason, count_try=count_try, vm_error=vm_error)

    def _requeue(self, session: Session, task: Task, reason: str, *, count_try: bool, vm_error: bool) -> None:
        """Work that died: results removed, retried on a clean VM, or `boterror` past the try limit."""
        vm = session.get(VM, task.vm_id)
        job = session.get(Job, task.job_id)
        output = self.settings.job_dir(job.id) / "tasks" / str(task.id)
        after_commit(session, lambda: shutil.rmtree(output, ignore_errors=True))
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
                self.vm_error(session, vm.id, reason)
            else:
                release(session, vm, VMStatus.DIRTY, reason, task=task)
        roll_up_job(session, job)

    # ---------------------------------------------------------------- watchdog and monitor

    def operation_expired(self, session: Session, vm_id: int) -> None:
        """An operation outlived its deadline with nothing left driving it: release the VM as after
        an infrastructure error, and requeue the task it was running."""
        vm = session.get(VM, vm_id)
        if vm.operation is None or vm.operation_deadline is None or vm.operation_deadline >= utcnow():
            return
        reason = f"{vm.operation} operation overran its deadline"
        task = session.scalars(
            select(Task).where(Task.vm_id == vm.id, Task.status == TaskStatus.RUNNING)
        ).first()
        if task is not None:
            self._requeue(session, task, reason, count_try=True, vm_error=True)
        elif vm.operation == "monitor":
            clear_operation(vm)
        else:
            self.vm_error(session, vm.id, reason)

    def monitor_begin(self, session: Session, vm_id: int) -> bool:
        vm = session.get(VM, vm_id)
        if vm.status != VMStatus.OFFLINE or vm.operation is not None:
            return False
        now = utcnow()
        vm.operation, vm.operation_started = "monitor", now
        vm.operation_deadline = now + timedelta(seconds=self.options.monitor_timeout)
        return True

    def monitor_result(self, session: Session, vm_id: int, ok: bool, reason: str) -> None:
        vm = session.get(VM, vm_id)
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
