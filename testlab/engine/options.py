"""Engine tunables, from the environment (TESTLAB_<NAME>, e.g. TESTLAB_MAX_TRIES=5)."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields


@dataclass(frozen=True, slots=True)
class EngineOptions:
    max_tries: int = 3  # starts of a task before it ends `boterror`
    max_vm_errors: int = 3  # consecutive infrastructure errors before a VM goes offline
    max_host_errors: int = 3  # consecutive host errors (hypervisor unreachable) before a host goes down
    host_check_interval: float = 60.0  # health (reachable, free disk) of each up host checked this often
    min_free_disk: int = 0  # bytes; a host below it gets no new reverts (0: off; the lab file may set it)
    engine_min_free_disk: int = 50 << 20  # bytes free in the data directory below which new work pauses
    max_log_bytes: int = 64 << 20  # a task's log keeps its last this many bytes; the cut is marked
    notify_retry: float = 5.0  # seconds before a failed notification's second attempt; then doubling
    revert_timeout: float = 360.0  # seconds for a revert, agent included
    poweroff_timeout: float = 120.0
    agent_boot_timeout: float = 120.0  # seconds for the agent to answer after a revert
    agent_retry_deadline: float = 60.0  # how long a lost agent is retried before it counts as an error
    task_margin: float = 120.0  # engine-side deadline beyond a task's own timeout
    transfer_timeout: float = 600.0  # all uploads of a task, and all its artifact downloads, each
    monitor_interval: float = 60.0  # first re-checks of an offline VM
    monitor_backoff: float = 1800.0  # re-checks after repeated failures
    monitor_timeout: float = 360.0
    poll_interval: float = 1.0  # how often the event history is polled: writers' wake-ups are lost at times
    tick: float = 1.0  # re-plan at least this often (deadlines, monitor)
    # With nothing queued or in flight, re-plan this often at most: a wake-up, or the next due
    # check (an operation's deadline, a monitor or host check), comes first.
    idle_tick: float = 10.0
    lease_ttl: float = 15.0  # an engine that stops renewing its lease for this long is presumed dead
    round_backoff_cap: float = 30.0  # longest wait before retrying after a planning round failed

    @staticmethod
    def from_env(environ: dict[str, str] | None = None) -> EngineOptions:
        env = os.environ if environ is None else environ
        values = {}
        for field in fields(EngineOptions):
            raw = env.get(f"TESTLAB_{field.name.upper()}")
            if raw is not None:
                values[field.name] = type(getattr(EngineOptions(), field.name))(float(raw))
        return EngineOptions(**values)
