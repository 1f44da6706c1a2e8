"""The status vocabularies of VMs, tasks, steps and jobs.

They are plain strings (stored as such in the database and shown as such by the CLI),
gathered here so every layer spells them the same way.
"""

from __future__ import annotations

from typing import Final


class VMStatus:
    OFF: Final = "off"
    DIRTY: Final = "dirty"
    REVERTING: Final = "reverting"
    SLEEPING: Final = "sleeping"
    IDLE: Final = "idle"
    RUNNING: Final = "running"
    OFFLINE: Final = "offline"
    MAINTENANCE: Final = "maintenance"

    ALL: Final = frozenset({OFF, DIRTY, REVERTING, SLEEPING, IDLE, RUNNING, OFFLINE, MAINTENANCE})
    # Statuses in which the hypervisor domain is (or may be) powered on.
    ACTIVE: Final = frozenset({DIRTY, REVERTING, SLEEPING, IDLE, RUNNING})
    # Statuses the scheduler never touches.
    UNTOUCHABLE: Final = frozenset({OFFLINE, MAINTENANCE})


class VMRole:
    BASE: Final = "base"
    EXTRA: Final = "extra"
    RETIRED: Final = "retired"
    DELETED: Final = "deleted"

    ALL: Final = frozenset({BASE, EXTRA, RETIRED, DELETED})
    # Roles that may be scheduled at all.
    ENABLED: Final = frozenset({BASE, EXTRA})


class TaskStatus:
    QUEUED: Final = "queued"
    RUNNING: Final = "running"
    COMPLETED: Final = "completed"
    FAILED: Final = "failed"
    BOTERROR: Final = "boterror"
    TIMEOUT: Final = "timeout"
    CANCELED: Final = "canceled"
    SKIPPED: Final = "skipped"

    ALL: Final = frozenset({QUEUED, RUNNING, COMPLETED, FAILED, BOTERROR, TIMEOUT, CANCELED, SKIPPED})
    FINAL: Final = frozenset({COMPLETED, FAILED, BOTERROR, TIMEOUT, CANCELED, SKIPPED})
    # A dependent step only runs when its dependency ended in one of these.
    SUCCESS: Final = frozenset({COMPLETED})


# Steps and jobs use the task vocabulary: their status is the roll-up of their children.
StepStatus = TaskStatus
JobStatus = TaskStatus


class HostStatus:
    UP: Final = "up"
    DOWN: Final = "down"

    ALL: Final = frozenset({UP, DOWN})
