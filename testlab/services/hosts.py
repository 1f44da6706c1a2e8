"""Host operations that need the hypervisor backend: preparing local domains, power cycles."""

from __future__ import annotations

import concurrent.futures

from sqlalchemy import select
from sqlalchemy.orm import Session

from testlab.db.models import VM, Host
from testlab.domain.labfile import LabDef
from testlab.domain.statuses import VMStatus
from testlab.hypervisor.base import Backend, OperationTimedOut
from testlab.services.transitions import record_event, set_vm_status


def backend_for(host: Host) -> Backend:
    from testlab.hypervisor import open_backend

    return open_backend(host.backend, host.name, host.uri, {"commands": dict(host.commands or {})})


def prepare_domains(lab: LabDef) -> None:
    """Create missing local sandbox domains with their initial snapshot (other backends: nothing)."""
    from testlab.hypervisor import open_backend

    backends = {
        h.name: open_backend(h.backend, h.name, h.uri, {"commands": dict(h.commands)})
        for h in lab.hosts
        if h.backend == "local"
    }
    for vm in lab.vms:
        if vm.host in backends:
            backends[vm.host].ensure_domain(vm.domain, vm.snapshot)


def _call_with_deadline(function, timeout: float, what: str):
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(function).result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        raise OperationTimedOut(f"{what} did not finish within {timeout:g}s") from None
    finally:
        pool.shutdown(wait=False)


def power_cycle(session: Session, host: Host, *, timeout: float, by: str) -> str:
    """Power-cycle the host; VMs that were active are marked dirty so they are reverted before use.
    VMs running a task are left to the engine, which sees their agent vanish and requeues the task."""
    record_event(session, "host", f"power cycle of {host.name} started by {by}", host_id=host.id)
    session.commit()
    _call_with_deadline(backend_for(host).power_cycle, timeout, f"power cycle of host {host.name}")
    vms = session.scalars(select(VM).where(VM.host_id == host.id)).all()
    marked = 0
    for vm in vms:
        if vm.status in (VMStatus.IDLE, VMStatus.SLEEPING, VMStatus.OFF) and vm.operation is None:
            marked += set_vm_status(session, vm, VMStatus.DIRTY, f"host {host.name} power-cycled")
    record_event(session, "host", f"power cycle of {host.name} done", host_id=host.id)
    return f"host {host.name} power-cycled; {marked} VM(s) marked dirty"
