"""The engine's own disk: when its data directory runs out of space, new work pauses.

A full engine disk is nobody else's fault: charging the VM whose task happened to be writing its log
would take every VM of the lab offline in turn. So the engine checks its free space before each round
and after a write fails with "no space left"; while it is short it starts nothing new (reverts, tasks),
tells the administrators once, and carries on when space is back.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


class EngineDisk:
    def __init__(self, path: Path, min_free: int, log_cap: int) -> None:
        self.path = path
        self.min_free = min_free
        self.log_cap = log_cap
        self.short: str | None = None  # why new work is paused, while it is
        self._needed = min_free  # free bytes to resume at; raised after a write failed
        self._announce: list[str] = []

    def free(self) -> int | None:
        probe = self.path
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        try:
            return shutil.disk_usage(probe).free
        except OSError:
            return None

    def write_failed(self, error: OSError) -> None:
        """A write of the engine's failed for lack of space: pause until there is room for a whole
        task log beyond the reserve. (Removing the failed task's partial files frees space at once;
        resuming then would only fill the disk again with the same output.)"""
        self._needed = self.min_free + self.log_cap
        if self.short is None:
            free = self.free() or 0
            self.short = self._reason(free, f"a write failed: {os.strerror(error.errno or 0)}")
            self._announce.append(f"{self.short}: new work paused")

    def check(self) -> tuple[str | None, list[str]]:
        """(why new work is paused now or None, what to tell the administrators)."""
        announce, self._announce = self._announce, []
        free = self.free()
        if free is not None and self.short is None and free < self.min_free:
            self._needed = self.min_free
            self.short = self._reason(free, f"below {_mib(self.min_free)}")
            announce.append(f"{self.short}: new work paused")
        elif free is not None and self.short is not None and free >= self._needed:
            self.short = None
            self._needed = self.min_free
            announce.append(f"the engine's disk ({self.path}) has {_mib(free)} free again: work resumed")
        return self.short, announce

    def _reason(self, free: int, why: str) -> str:
        return f"the engine's disk ({self.path}) is full: {_mib(free)} free, {why}"


def _mib(count: int) -> str:
    return f"{count / (1 << 20):.0f} MiB"
