"""Reuse policy: when a VM that is kept between tasks must be wiped before its next use.

A VM with `wipe: every-task` is reverted before each task (cheap snapshots: the default for local
and libvirt VMs). A VM with `wipe: reuse` (the default for `command` hosts, whose "revert" is a
reinstall) runs one task after another on the same machine, and is wiped only when one of the
reasons below holds; the others carry on from where the previous task left the machine, which is
what the lifecycle records and the blame ranking are for. Pure: the engine asks after each task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from testlab.domain.statuses import TaskStatus
from testlab.lifecycle.model import FAILING
from testlab.lifecycle.protection import DEFAULT_K


class Wipe:
    """The `wipe:` values of the lab file."""

    EVERY_TASK: Final = "every-task"
    REUSE: Final = "reuse"
    ALL: Final = (EVERY_TASK, REUSE)


# Physical hosts reinstall in minutes: reused by default. Snapshot reverts are cheap: every task.
DEFAULT_WIPE: Final = {"local": Wipe.EVERY_TASK, "libvirt": Wipe.EVERY_TASK, "command": Wipe.REUSE}


@dataclass(frozen=True, slots=True)
class ReusePolicy:
    """A VM's reuse policy. `max_uses`: wipe once it was used that often since its last wipe (None:
    no limit); `wipe_after_failure`: wipe after a task failed or timed out on it; `protect_after`:
    the K of the protection rule (testlab.lifecycle.protection), 0 to turn it off."""

    wipe: str = Wipe.EVERY_TASK
    max_uses: int | None = None
    wipe_after_failure: bool = True
    protect_after: int = DEFAULT_K

    @property
    def reuse(self) -> bool:
        return self.wipe == Wipe.REUSE


def wipe_reason(policy: ReusePolicy, *, uses: int, outcome: str | None, requested: bool) -> str | None:
    """Why the VM must be wiped after a task that ended `outcome` (None: it did not end with a
    verdict, e.g. requeued after an infrastructure error), its `uses` since the last wipe counting
    that task; None when it may run the next task as it is."""
    if not policy.reuse:
        return "wiped before every task"
    if requested:
        return "wipe requested"
    if outcome is None or outcome == TaskStatus.BOTERROR:
        return "infrastructure error"
    if policy.wipe_after_failure and outcome in FAILING:
        return f"task {outcome}"
    if policy.max_uses is not None and uses >= policy.max_uses:
        return f"used {uses} times since its last wipe (max_uses {policy.max_uses})"
    return None
