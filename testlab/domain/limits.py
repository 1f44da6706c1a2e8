"""A host's scheduling limits: how many of its VMs may be on, running or reverting at once.

They live in the domain layer because the lab file defines them; the scheduler reads them (and
re-exports them from `testlab.scheduler.snapshot`), the database stores one column per field.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HostLimits:
    """Per-host scheduling limits (defaults follow the TestBot's cautious ones)."""

    max_active: int = 2  # powered-on VMs (dirty, reverting, sleeping, idle, running)
    max_running: int = 1  # VMs running a task
    max_reverting: int = 1  # VMs being reverted at once
    max_reverts_while_running: int = 0  # reverts allowed while any VM of the host runs a task
    max_ready_when_idle: int = 2  # VMs kept ready (idle) when nothing is queued for the host
    sleep_after_revert: float = 0.0  # seconds a reverted VM settles before it is idle


LIMIT_FIELDS = tuple(HostLimits.__dataclass_fields__)  # as stored in the hosts table
