"""The scheduling policies a simulation can compare, by name.

- `testlab`: the real scheduler, `testlab.scheduler.plan`, exactly as the engine calls it;
- `no-prepare`: the same with preparing ahead switched off, so what preparing ahead is worth is
  measured, not assumed;
- `fifo`: a plain first-in, first-out scheduler that reverts on demand (testlab.sim.fifo).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from testlab.scheduler import Plan, Snapshot, plan
from testlab.sim.fifo import fifo_plan


@dataclass(frozen=True)
class Policy:
    name: str
    plan: Callable[[Snapshot], Plan]
    description: str
    # True when plan(lab) is the union of plan(each group's part of the lab), a group being the hosts
    # linked by the pools queued on them: the simulator then re-plans only the hosts where something
    # changed, with their group while a pool task is queued on it (see docs/sim.md, "Speed").
    per_group: bool = True


POLICIES: dict[str, Policy] = {
    "testlab": Policy("testlab", plan, "testlab's scheduler"),
    "no-prepare": Policy(
        "no-prepare", partial(plan, prepare_ahead=False), "testlab's scheduler, preparing nothing ahead"
    ),
    "fifo": Policy("fifo", fifo_plan, "first in, first out; reverts on demand; ignores priorities"),
}


def get_policy(name: str) -> Policy:
    """The policy called `name`; ValueError listing the known ones otherwise."""
    try:
        return POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r} (policies: {', '.join(POLICIES)})") from None
