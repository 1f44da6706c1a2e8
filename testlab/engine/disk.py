"""The engine's own disk: when its data directory runs out of space, new work pauses.

A full engine disk is nobody else's fault: charging the VM whose task happened to be writing its log
would take every VM of the lab offline in turn. So the engine checks its free space before its rounds
(once a second at most, in a file thread: a look at a disk is a blocking call, and rounds can come many
times a second) and after a write fails with "no space left" (at once); while it is short it starts
nothing new (reverts, tasks), tells the administrators once, and carries on when space is back.
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
        self.last_free: int | None = None  # as last looked at

    def free(self) -> int | None:
        """The free bytes of the engine's disk (None if it cannot be looked at). Blocking: call it
        off the event loop."""
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
            self.short = self._reason(self.last_free or 0, f"a write failed: {os.strerror(error.errno or 0)}")
            self._announce.append(f"{self.short}: new work paused")

    def check(self, free: int | None) -> tuple[str | None, list[str]]:
        """(why new work is paused now or None, what to tell the administrators), given the free bytes
        just looked at (`free()`), or None when the disk was not looked at this time."""
        announce, self._announce = self._announce, []
        if free is not None:
            self.last_free = free
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
