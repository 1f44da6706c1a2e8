"""End-to-end harness: a local lab in a temporary directory, the engine as a real subprocess, and
checks of the engine's promises read back from the event history."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import select

from testlab.config import Settings
from testlab.db.models import VM, Event, Host, Job, Task
from testlab.db.session import session_scope, upgrade
from testlab.domain.jobfile import parse_job
from testlab.domain.labfile import parse_lab_text
from testlab.domain.statuses import TaskStatus, VMStatus
from testlab.services.hosts import prepare_domains
from testlab.services.jobs import submit_job
from testlab.services.lab import apply_lab

FAST_ENGINE = {
    "TESTLAB_AGENT_RETRY_DEADLINE": "5",
    "TESTLAB_AGENT_BOOT_TIMEOUT": "20",
    "TESTLAB_REVERT_TIMEOUT": "30",
    "TESTLAB_MONITOR_INTERVAL": "1",
    "TESTLAB_MONITOR_BACKOFF": "2",
    "TESTLAB_TASK_MARGIN": "10",
}


def make_lab(
    settings: Settings,
    root: Path,
    hosts: dict[str, list[str]],
    limits: str = "",
    shared: dict[str, tuple[str, str]] | None = None,
    vm_options: str = "",
) -> None:
    """hosts: host name -> VM names. shared: VM name -> (domain, snapshot) for VMs sharing a domain.
    vm_options: more keys for every VM (`wipe: reuse`)."""
    shared = shared or {}
    lines = ["hosts:"]
    for host in hosts:
        lines.append(
            f"  - {{name: {host}, backend: local, uri: 'local://{root}/{host}'"
            + (f", limits: {{{limits}}}" if limits else "")
            + "}"
        )
    lines.append("vms:")
    for host, vms in hosts.items():
        for vm in vms:
            domain, snapshot = shared.get(vm, (vm, "clean"))
            lines.append(
                f"  - {{name: {vm}, host: {host}, domain: {domain}, snapshot: {snapshot}, labels: [all]"
                + (f", {vm_options}" if vm_options else "")
                + "}"
            )
    lab = parse_lab_text("\n".join(lines) + "\n", "test lab", root)
    settings.home.mkdir(parents=True, exist_ok=True)
    upgrade(settings.database_url)
    prepare_domains(lab)
    with session_scope(settings.database_url) as session:
        apply_lab(session, lab)


def submit(
    settings: Settings, directory: Path, name: str, text: str, files: dict[str, str] | None = None
) -> int:
    job_dir = directory / name
    job_dir.mkdir(parents=True, exist_ok=True)
    for relative, content in (files or {}).items():
        (job_dir / relative).parent.mkdir(parents=True, exist_ok=True)
        (job_dir / relative).write_text(content)
    (job_dir / "job.yaml").write_text(text)
    with session_scope(settings.database_url) as session:
        return submit_job(session, settings, parse_job(job_dir / "job.yaml"), owner="tester")


class EngineProcess:
    def __init__(self, settings: Settings, extra_env: dict[str, str] | None = None, log: Path | None = None):
        self.env = {
            **os.environ,
            "TESTLAB_HOME": str(settings.home),
            "TESTLAB_DB": settings.database_url,
            **FAST_ENGINE,
            **(extra_env or {}),
        }
        self.log = log or settings.home / "engine.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> EngineProcess:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "testlab", "engine", "-v"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def job_statuses(settings: Settings, job_ids: list[int] | None = None) -> dict[int, str]:
    with session_scope(settings.database_url) as session:
        query = select(Job.id, Job.status)
        if job_ids is not None:
            query = query.where(Job.id.in_(job_ids))
        return dict(session.execute(query).all())


def wait_for(condition, timeout: float, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_for_jobs(
    settings: Settings, job_ids: list[int], timeout: float, engine: EngineProcess | None = None
):
    def done():
        if engine is not None and not engine.alive():
            raise AssertionError(f"engine exited: {engine.log.read_text()[-3000:]}")
        statuses = job_statuses(settings, job_ids)
        return statuses if all(s in TaskStatus.FINAL for s in statuses.values()) else None

    try:
        return wait_for(done, timeout, what=f"jobs {job_ids} to end")
    except AssertionError as error:
        raise AssertionError(f"{error}\n{describe_lab(settings, job_ids, engine)}") from None


def describe_lab(settings: Settings, job_ids: list[int], engine: EngineProcess | None = None) -> str:
    """What a stuck run looked like: tasks, VMs, the last events and the engine's last words."""
    lines = []
    for job_id in job_ids:
        lines += [f"job {job_id} task {t}" for t in task_rows(settings, job_id)]
    with session_scope(settings.database_url) as session:
        lines += [
            f"vm {v.name}: {v.status} op={v.operation} deadline={v.operation_deadline} errors={v.errors}"
            for v in session.scalars(select(VM))
        ]
        events = session.execute(
            select(Event.id, Event.vm_id, Event.old_status, Event.new_status, Event.reason)
            .order_by(Event.id.desc())
            .limit(30)
        ).all()
    lines += [f"event {e}" for e in reversed(events)]
    if engine is not None and engine.log.exists():
        lines += engine.log.read_text(errors="replace").splitlines()[-40:]
    return "\n".join(lines)


def task_rows(settings: Settings, job_id: int) -> list[dict]:
    with session_scope(settings.database_url) as session:
        rows = session.execute(
            select(Task, VM.name)
            .outerjoin(VM, Task.vm_id == VM.id)
            .where(Task.job_id == job_id)
            .order_by(Task.id)
        ).all()
        return [
            {
                "id": t.id,
                "vm": name,
                "status": t.status,
                "tries": t.tries,
                "exit_code": t.exit_code,
                "detail": t.detail,
            }
            for t, name in rows
        ]


def vm_status(settings: Settings, name: str) -> dict:
    with session_scope(settings.database_url) as session:
        vm = session.scalars(select(VM).where(VM.name == name)).one()
        return {"status": vm.status, "errors": vm.errors, "operation": vm.operation}


def check_history(settings: Settings) -> None:
    """Replay the VM events: the engine never makes a domain used by two VMs at once, nor takes a host
    past a limit. (An administrator may: ending maintenance of a VM whose domain was left running makes
    it active again; the engine then adds nothing until the host is back within its limits.)"""
    with session_scope(settings.database_url) as session:
        hosts = {h.id: h for h in session.scalars(select(Host))}
        vms = {v.id: v for v in session.scalars(select(VM))}
        events = session.execute(
            select(Event.id, Event.vm_id, Event.old_status, Event.new_status, Event.reason, Event.actor)
            .where(Event.kind == "vm", Event.new_status.is_not(None))
            .order_by(Event.id)
        ).all()
    status = {vm_id: VMStatus.OFF for vm_id in vms}
    for event_id, vm_id, old, new, reason, actor in events:
        assert status[vm_id] == old or old is None, (
            f"event {event_id}: {vms[vm_id].name} was {status[vm_id]}, not {old}"
        )
        status[vm_id] = new
        if not (actor or "").startswith("engine"):
            continue
        vm = vms[vm_id]
        same_host = [(vms[i], s) for i, s in status.items() if vms[i].host_id == vm.host_id]
        host = hosts[vm.host_id]
        if new in VMStatus.ACTIVE and old not in VMStatus.ACTIVE:
            active = sum(s in VMStatus.ACTIVE for _, s in same_host)
            assert active <= host.max_active, f"event {event_id} ({reason}): host {host.name} active {active}"
            users = [v.name for v, s in same_host if v.domain == vm.domain and s in VMStatus.ACTIVE]
            assert len(users) <= 1, f"event {event_id} ({reason}): domain {vm.domain} used by {users}"
        for limited, limit in (
            (VMStatus.RUNNING, host.max_running),
            (VMStatus.REVERTING, host.max_reverting),
        ):
            if new == limited:
                count = sum(s == limited for _, s in same_host)
                assert count <= limit, f"event {event_id} ({reason}): host {host.name} {limited} {count}"


def power_off_lab(settings: Settings) -> None:
    """Stop every sandbox VM of the lab (their agents and commands outlive the engine by design)."""
    from testlab.hypervisor import open_backend

    try:
        with session_scope(settings.database_url) as session:
            hosts = [(h.name, h.uri) for h in session.scalars(select(Host).where(Host.backend == "local"))]
    except Exception:  # the test may have failed before the schema existed
        return
    for name, uri in hosts:
        backend = open_backend("local", name, uri)
        for domain in backend.domains():
            backend.power_off(domain)
        backend.close()
