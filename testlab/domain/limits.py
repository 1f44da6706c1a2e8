"""A host's scheduling limits: how many of its VMs may be on, running or reverting at once.

They live in the domain layer because the lab file defines them; the scheduler reads them (and
re-exports them from `testlab.scheduler.snapshot`), the database stores one column per field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class HostLimits:
    """Per-host scheduling limits. A lab file's limits go through `host_limits`, where the revert
    limits follow the others."""

    max_active: int = 2  # powered-on VMs (dirty, reverting, sleeping, idle, running)
    max_running: int = 1  # VMs running a task
    max_reverting: int = 1  # VMs being reverted at once
    max_reverts_while_running: int = 1  # reverts allowed while any VM of the host runs a task
    max_ready_when_idle: int = 2  # VMs kept ready (idle) when nothing is queued for the host
    sleep_after_revert: float = 0.0  # seconds a reverted VM settles before it is idle


LIMIT_FIELDS = tuple(HostLimits.__dataclass_fields__)  # as stored in the hosts table
_DEFAULTS = HostLimits()


def host_limits(given: Mapping[str, Any]) -> HostLimits:
    """The limits of a host whose lab file sets `given`. The revert limits follow the others when
    unset, so that a lab raising only `max_active`/`max_running` also reverts in parallel and while
    tasks run (prepare-ahead) instead of one revert at a time behind its running tasks:
    `max_reverting` = max(1, max_active - max_running), `max_reverts_while_running` = max_reverting.
    A lab on slow disks, where a revert disturbs the tests running beside it, sets them lower."""
    values = dict(given)
    active = values.get("max_active", _DEFAULTS.max_active)
    running = values.get("max_running", _DEFAULTS.max_running)
    values.setdefault("max_reverting", max(1, active - running))
    values.setdefault("max_reverts_while_running", values["max_reverting"])
    return HostLimits(**values)
