"""Apply a lab definition to the database (idempotently) and export the database as one."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from testlab.db.models import VM, Host
from testlab.domain.labfile import HostDef, LabDef, VMDef
from testlab.domain.statuses import VMRole
from testlab.scheduler.snapshot import LIMIT_FIELDS, HostLimits
from testlab.services.transitions import record_event
from testlab.services.uses import reuse_policy


@dataclass
class ApplyReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated or self.retired)


def _host_values(definition: HostDef) -> dict:
    values = {
        "backend": definition.backend,
        "uri": definition.uri,
        "description": definition.description,
        "commands": dict(definition.commands),
        "agent_token_file": definition.agent_token_file,
        "options": dict(definition.options),
        "min_free_disk": definition.min_free_disk,
        "domain_type": definition.domain_type,
        "retired": False,
    }
    values.update({name: getattr(definition.limits, name) for name in LIMIT_FIELDS})
    return values


def _vm_values(definition: VMDef, host: Host) -> dict:
    return {
        "host_id": host.id,
        "domain": definition.domain,
        "snapshot": definition.snapshot,
        "role": definition.role,
        "labels": list(definition.labels),
        "description": definition.description,
        "agent_url": definition.agent,
        "wipe": definition.reuse.wipe,
        "max_uses": definition.reuse.max_uses,
        "wipe_after_failure": definition.reuse.wipe_after_failure,
        "protect_after": definition.reuse.protect_after,
    }


def _update(row: object, values: dict) -> list[str]:
    changed = [name for name, value in values.items() if getattr(row, name) != value]
    for name in changed:
        setattr(row, name, values[name])
    return changed


def apply_lab(session: Session, lab: LabDef) -> ApplyReport:
    """Create and update hosts and VMs; VMs missing from the file are retired, never deleted."""
    report = ApplyReport()
    hosts = {h.name: h for h in session.scalars(select(Host))}
    for definition in lab.hosts:
        values = _host_values(definition)
        host = hosts.get(definition.name)
        if host is None:
            host = hosts[definition.name] = Host(name=definition.name, **values)
            session.add(host)
            session.flush()
            record_event(session, "lab", f"host {host.name} created", host_id=host.id)
            report.created.append(f"host {host.name}")
        elif changed := _update(host, values):
            record_event(session, "lab", f"host {host.name} updated: {', '.join(changed)}", host_id=host.id)
            report.updated.append(f"host {host.name}")

    vms = {v.name: v for v in session.scalars(select(VM))}
    for definition in lab.vms:
        values = _vm_values(definition, hosts[definition.host])
        vm = vms.get(definition.name)
        if vm is None:
            vm = VM(name=definition.name, status="off", **values)
            session.add(vm)
            session.flush()
            record_event(session, "lab", f"vm {vm.name} created", vm=vm)
            report.created.append(f"vm {vm.name}")
        elif changed := _update(vm, values):
            record_event(session, "lab", f"vm {vm.name} updated: {', '.join(changed)}", vm=vm)
            report.updated.append(f"vm {vm.name}")

    named_vms = {d.name for d in lab.vms}
    for vm in vms.values():
        if vm.name not in named_vms and vm.role not in (VMRole.RETIRED, VMRole.DELETED):
            vm.role = VMRole.RETIRED
            record_event(session, "lab", f"vm {vm.name} retired: no longer in the lab file", vm=vm)
            report.retired.append(f"vm {vm.name}")
    named_hosts = {d.name for d in lab.hosts}
    for host in hosts.values():
        if host.name not in named_hosts and not host.retired:
            host.retired = True
            record_event(
                session, "lab", f"host {host.name} retired: no longer in the lab file", host_id=host.id
            )
            report.retired.append(f"host {host.name}")
    session.flush()
    return report


def export_lab(session: Session) -> LabDef:
    hosts = session.scalars(select(Host).where(Host.retired.is_(False)).order_by(Host.name)).all()
    host_names = {h.id: h.name for h in hosts}
    vms = session.scalars(
        select(VM).where(VM.role.notin_([VMRole.RETIRED, VMRole.DELETED])).order_by(VM.name)
    ).all()
    return LabDef(
        hosts=tuple(
            HostDef(
                name=h.name,
                backend=h.backend,
                uri=h.uri,
                limits=HostLimits(**{name: getattr(h, name) for name in LIMIT_FIELDS}),
                commands=dict(h.commands or {}),
                agent_token_file=h.agent_token_file,
                description=h.description,
                options=dict(h.options or {}),
                min_free_disk=h.min_free_disk,
                domain_type=h.domain_type,
            )
            for h in hosts
        ),
        vms=tuple(
            VMDef(
                name=v.name,
                host=host_names[v.host_id],
                domain=v.domain,
                snapshot=v.snapshot,
                role=v.role,
                labels=tuple(v.labels or ()),
                description=v.description,
                agent=v.agent_url,
                reuse=reuse_policy(v),
            )
            for v in vms
            if v.host_id in host_names
        ),
    )
