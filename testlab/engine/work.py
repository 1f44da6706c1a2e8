"""Descriptions of the work the engine hands from its database side to its async operations.

Plain data, so operations never touch ORM objects (which belong to the database thread).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

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
    # (local file, path in the agent's work dir): the job's files and the artifacts of the step it depends on
    uploads: tuple[tuple[Path, str], ...]
    artifacts: tuple[str, ...]
    output_dir: Path  # log and artifacts of this task
    remote_dir: str  # the task's directory in the agent's work dir
    deadline_seconds: float  # seconds from start the engine waits before it kills the command


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


@dataclass(slots=True)
class View:
    """What one planning round reads from the database."""

    snapshot: Snapshot
    to_kill: list[KillWork] = field(default_factory=list)
    to_monitor: list[MonitorWork] = field(default_factory=list)
    expired: list[VMRef] = field(default_factory=list)  # operations past their deadline
