"""One planning round as one unit on the engine's database thread: read the lab, plan, record.

A round is what the engine runs after every change, twice a task at least (its VM's revert, then its
start). Made of a read-only transaction, a trip to a planning thread and a writing transaction, it
cost two transactions and three trips between threads each time, more than the round's own work on
a small lab. As one transaction the plan is also recorded on the very state it was made from:
SQLite's writer holds the write lock from its first read, and on PostgreSQL the unit runs on one
snapshot (REPEATABLE READ), run again from the read if a row it read changes before its commit.
The record's own checks (testlab/engine/dispatch.py) stay: they are what guards a plan made on an
older read, as the engine's first round's or a test's.

The scheduler is still the pure `plan_round` (testlab/scheduler/rounds.py), called here with what
was read; the database thread is not the event loop.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sqlalchemy.orm import Session

from testlab.config import Settings
from testlab.engine.dispatch import Work, record_blocked, record_plan
from testlab.engine.options import EngineOptions
from testlab.engine.reading import read_round
from testlab.engine.reuse import LastViews
from testlab.engine.work import View
from testlab.scheduler import PowerOff
from testlab.scheduler.rounds import Carried, plan_round


@dataclass(frozen=True)
class RoundInputs:
    """What a round needs besides the database: the engine's own state as the round starts."""

    settings: Settings
    options: EngineOptions
    inflight: frozenset[str]  # VMs with an operation under way in this engine
    now: float
    demand: dict[int, int] | None  # the last count of recent tasks per VM, None to count again
    last: LastViews  # the last round's views (testlab/engine/reuse.py)
    carried: Carried | None  # what the last plan left to this one
    paused: str | None  # why new work waits for the engine's own disk, if it does
    blocked: dict[str, str] | None  # the blocked reasons as last stored


@dataclass(frozen=True)
class RoundDone:
    view: View
    carried: Carried
    blocked: dict[str, str]  # as stored now
    work: list[Work]  # recorded, to be run


def plan_and_record(session: Session, inputs: RoundInputs) -> RoundDone:
    """Read, plan and record in the caller's transaction (run again as a whole on a conflict: the
    inputs are not changed, and the reused views only remember more)."""
    view = read_round(session, inputs.options, inputs.inflight, inputs.now, inputs.demand, inputs.last)
    decided, carried = plan_round(view.snapshot, inputs.carried)
    blocked = {f"vm {vm}": reason for vm, reason in decided.blocked.items()}
    actions = decided.actions
    if inputs.paused is not None:  # nothing new while the engine's own disk is full; power-offs go on
        blocked["engine"] = inputs.paused
        actions = tuple(a for a in actions if isinstance(a, PowerOff))
    if blocked != inputs.blocked:
        record_blocked(session, blocked)
    work: list[Work] = []
    if actions:
        work = record_plan(
            session, dataclasses.replace(decided, actions=actions), view, inputs.settings, inputs.options
        )
    return RoundDone(view, carried, blocked, work)
