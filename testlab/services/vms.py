"""Administrative changes to VMs and hosts. The engine notices them through the event history."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from testlab.db.models import VM, Host, utcnow
from testlab.domain.statuses import HostStatus, VMStatus
from testlab.services.errors import NotFound, UserError
from testlab.services.transitions import record_event, set_vm_status
from testlab.services.transitions import set_host_status as change_host_status


def get_vm(session: Session, name: str) -> VM:
    vm = session.scalars(select(VM).where(VM.name == name)).one_or_none()
    if vm is None:
        raise NotFound(f"vm {name}: no such VM")
    return vm


def get_host(session: Session, name: str) -> Host:
    host = session.scalars(select(Host).where(Host.name == name)).one_or_none()
    if host is None:
        raise NotFound(f"host {name}: no such host")
    return host


def request_maintenance(session: Session, vm: VM, *, abort: bool = False, by: str = "admin") -> str:
    """Take a VM out of service. A VM with an operation in flight (a task, a revert) is only flagged:
    the engine lets the task finish (or aborts it and requeues it with `abort`) and then puts the VM
    in maintenance. Returns what happened, for the user."""
    if vm.status == VMStatus.MAINTENANCE:
        return f"vm {vm.name} is already in maintenance"
    if vm.operation is None and vm.status != VMStatus.RUNNING:
        set_vm_status(session, vm, VMStatus.MAINTENANCE, f"maintenance set by {by}")
        vm.maintenance_requested = vm.abort_requested = False
        return f"vm {vm.name} is in maintenance"
    vm.maintenance_requested = True
    vm.abort_requested = abort
    action = "its task is aborted and requeued" if abort else "its current operation finishes"
    record_event(session, "vm", f"maintenance requested by {by}: {action} first", vm=vm)
    return f"vm {vm.name}: maintenance requested; {action} first"


def end_maintenance(session: Session, vm: VM, *, by: str = "admin") -> str:
    if vm.maintenance_requested and vm.status != VMStatus.MAINTENANCE:
        vm.maintenance_requested = vm.abort_requested = False
        record_event(session, "vm", f"maintenance request withdrawn by {by}", vm=vm)
        return f"vm {vm.name}: maintenance request withdrawn"
    if vm.status != VMStatus.MAINTENANCE:
        raise UserError(f"vm {vm.name} is not in maintenance (it is {vm.status})")
    # An administrator may have changed the domain: its state is unknown until powered off or reverted.
    set_vm_status(session, vm, VMStatus.DIRTY, f"maintenance ended by {by}")
    return f"vm {vm.name} is back in service"


def set_offline(session: Session, vm: VM, *, by: str = "admin") -> str:
    if vm.status == VMStatus.RUNNING or vm.operation is not None:
        raise UserError(f"vm {vm.name} is busy ({vm.operation or vm.status}): use --maintenance, which waits")
    set_vm_status(session, vm, VMStatus.OFFLINE, f"set offline by {by}")
    vm.next_check = utcnow()
    return f"vm {vm.name} is offline; the monitor will check it"


def enable(session: Session, vm: VM, *, by: str = "admin") -> str:
    """Return an offline or maintenance VM to service with a clean error count."""
    if vm.status not in (VMStatus.OFFLINE, VMStatus.MAINTENANCE):
        raise UserError(f"vm {vm.name} is not offline or in maintenance (it is {vm.status})")
    vm.errors = 0
    vm.maintenance_requested = vm.abort_requested = False
    vm.next_check = None
    set_vm_status(session, vm, VMStatus.DIRTY, f"enabled by {by}")
    return f"vm {vm.name} is enabled"


def request_wipe(session: Session, vm: VM, *, by: str = "admin") -> str:
    """Have the VM wiped (reverted, reinstalled) before its next use. An idle VM becomes dirty at once;
    a VM running a task is wiped after it; one already due for a revert only keeps the request."""
    if vm.status in (VMStatus.IDLE, VMStatus.SLEEPING) and vm.operation is None:
        set_vm_status(session, vm, VMStatus.DIRTY, f"wipe requested by {by}")
        return f"vm {vm.name} will be wiped before its next use"
    vm.wipe_requested = True
    record_event(session, "vm", f"wipe requested by {by}", vm=vm)
    if vm.status == VMStatus.RUNNING or vm.operation is not None:
        return f"vm {vm.name} will be wiped once its current {vm.operation or 'task'} is over"
    return f"vm {vm.name} will be wiped before its next use"


def set_host_status(session: Session, host: Host, status: str, *, by: str = "admin") -> str:
    """An administrator marks a host down (nothing on it is touched until it is up again) or up (its
    error count starts afresh, whoever took it down)."""
    if status not in HostStatus.ALL:
        raise UserError(f"host status must be one of {sorted(HostStatus.ALL)}")
    host.next_check = None
    if status == HostStatus.UP:
        host.errors = 0
        host.status_reason = ""
    else:
        host.status_reason = f"marked down by {by}"
    change_host_status(session, host, status, f"host {host.name} marked {status} by {by}")
    return f"host {host.name} is {status}"
