"""The scheduler's view objects, kept from one round to the next for what did not change.

The engine reads the whole lab at every round, but between two rounds only a few VMs and queue heads
change. `plan_round` (testlab/scheduler/rounds.py) plans again only the hosts whose views differ
from the last round's, and it compares them by identity first: handing it the very same object for
an unchanged host, VM, task or pool spares it a field-by-field comparison. Each object is looked up
by the values it is made of, so it is reused only where a new one would be equal; what a round
does not use again is forgotten.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any


class Reuse:
    """Objects by what they are made of, as the last round and this one used them."""

    def __init__(self) -> None:
        self._last: dict[Hashable, Any] = {}
        self._now: dict[Hashable, Any] = {}

    def next_round(self) -> None:
        self._last, self._now = self._now, {}

    def get(self, key: Hashable) -> Any:
        """The object last round made of `key`, or None."""
        found = self._now.get(key)
        if found is None:
            found = self._last.get(key)
            if found is not None:
                self._now[key] = found
        return found

    def keep(self, key: Hashable, made: Any) -> Any:
        self._now[key] = made
        return made


@dataclass
class LastViews:
    """The engine's memory of the last round's views, one map per kind. Used by one thread at a time
    (the engine's database thread, where rounds are read)."""

    hosts: Reuse = field(default_factory=Reuse)
    vms: Reuse = field(default_factory=Reuse)
    tasks: Reuse = field(default_factory=Reuse)
    pools: Reuse = field(default_factory=Reuse)

    def next_round(self) -> None:
        for kind in (self.hosts, self.vms, self.tasks, self.pools):
            kind.next_round()
