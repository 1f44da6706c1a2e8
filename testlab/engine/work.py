"""Descriptions of the work the engine hands from its database side to its async operations.

Plain data, so operations never touch ORM objects (which belong to the database thread).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import Row

from testlab.db.models import VM
from testlab.hypervisor import HostConfig
from testlab.scheduler.snapshot import Snapshot


@dataclass(frozen=True, slots=True)
class VMRef:
    id: int
    name: str
    host: str
    domain: str
    snapshot: str
    agent_url: str | None  # configured agent (libvirt/command hosts); local hosts know their own
    boot_id: str | None


def vm_ref(vm: VM | Row, host_name: str) -> VMRef:
    return VMRef(vm.id, vm.name, host_name, vm.domain, vm.snapshot, vm.agent_url, vm.boot_id)


@dataclass(frozen=True, slots=True)
class RevertWork:
    vm: VMRef
    sleep: float
    timeout: float


@dataclass(frozen=True, slots=True)
class PowerOffWork:
    vm: VMRef
    timeout: float


@dataclass(frozen=True, slots=True)
class TaskWork:
    task_id: int
    job_id: int
    vm: VMRef
    command_id: str
    agent_url: str | None
    boot_id: str | None
    command: str
    env: dict[str, str]
    timeout: float
    files_dir: Path  # the job's own files, uploaded by their path relative to it
    files: tuple[str, ...]
    artifact_dirs: tuple[Path, ...]  # artifacts of the step this one depends on, uploaded as they lie
    artifacts: tuple[str, ...]
    reports: tuple[str, ...]  # JUnit/TAP report patterns, collected with the artifacts and parsed
    output_dir: Path  # log and artifacts of this task
    remote_dir: str  # the task's directory in the agent's work dir
    deadline: float  # epoch seconds: the task's real start + its timeout + the engine's margin


@dataclass(frozen=True, slots=True)
class MonitorWork:
    vm: VMRef
    timeout: float


@dataclass(frozen=True, slots=True)
class KillWork:
    task_id: int
    vm: VMRef
    command_id: str
    agent_url: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class HostCheck:
    """A health check of a host: reachable, free disk (and, for a host the engine took down, back?)."""

    id: int
    name: str
    timeout: float


@dataclass(slots=True)
class View:
    """What one planning round reads from the database."""

    snapshot: Snapshot
    vm_versions: dict[str, int] = field(default_factory=dict)  # the row versions the snapshot was taken at
    to_kill: list[KillWork] = field(default_factory=list)
    to_monitor: list[MonitorWork] = field(default_factory=list)
    expired: list[VMRef] = field(default_factory=list)  # operations past their deadline
    host_checks: list[HostCheck] = field(default_factory=list)
    running: dict[int, str] = field(default_factory=dict)  # running task id -> its command id
    host_configs: list[HostConfig] = field(default_factory=list)  # the lab's hosts, as of this read
    demand: dict[int, int] = field(default_factory=dict)  # VM id -> tasks it ran in the last day
    next_due: datetime | None = None  # the next deadline or check a later round must see to
