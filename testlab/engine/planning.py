"""One planning round in one trip to the engine's database thread: read the lab, plan, record.

A round is what the engine runs after every change, twice a task at least (its VM's revert, then its
start). Made of a read-only transaction on the database thread, a planning thread's plan and a
writing transaction back on the database thread, it cost three trips between threads, which cost
more than the round's own work on a small lab. It is now one call on the database thread
(`run_round`), in one transaction where that holds nothing up:

- PostgreSQL: one transaction at REPEATABLE READ. The plan is recorded on the very state it was made
  from, and a row another transaction changed since the read makes the round run again from the
  read (testlab/db/session.py).
- SQLite, a small lab: one transaction, whose writer holds the database's write lock from its first
  read (so nothing changes in between). While the round is short, that lock costs other writers
  less than a second transaction costs the round.
- SQLite, a lab whose read took longer than `ONE_TRANSACTION_UP_TO` last round (10,000 VMs and
  100,000 queued tasks read in about 0.4 s on one core): a read-only transaction, the plan outside
  any transaction and a writing transaction for the record, so that submissions and administrators'
  commands never wait for the round's read.

Either way the record's own checks (testlab/engine/dispatch.py) stay: they are what guards a plan
made on an older read. The scheduler is still the pure `plan_round` (testlab/scheduler/rounds.py);
the database thread is not the event loop.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

from sqlalchemy.orm import Session

from testlab.config import Settings
from testlab.engine.database import EngineDatabase
from testlab.engine.dispatch import Work, record_blocked, record_plan
from testlab.engine.options import EngineOptions
from testlab.engine.reading import read_round
from testlab.engine.reuse import LastViews
from testlab.engine.work import View
from testlab.scheduler import Plan, PowerOff
from testlab.scheduler.rounds import Carried, plan_round

ONE_TRANSACTION_UP_TO = 0.005  # seconds of a round's read that SQLite's write lock may be held for


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
    last_read: float = 0.0  # seconds the last round's read took


@dataclass(frozen=True)
class RoundDone:
    view: View
    carried: Carried
    blocked: dict[str, str]  # as stored now
    work: list[Work]  # recorded, to be run
    read_seconds: float


@dataclass(frozen=True)
class _Decided:
    plan: Plan  # what to record: nothing new while the engine's disk is full
    carried: Carried
    blocked: dict[str, str]


def run_round(db: EngineDatabase, inputs: RoundInputs) -> RoundDone:
    """A round, on the database thread (`EngineDatabase.on_thread`)."""
    if db.reads_under_write_lock and inputs.last_read > ONE_TRANSACTION_UP_TO:
        started = time.perf_counter()
        view = db.read_here(_read, inputs)
        read_seconds = time.perf_counter() - started
        decided = _decide(view, inputs)
        work = []
        if decided.plan.actions or decided.blocked != inputs.blocked:  # else no write lock at all
            work = db.write_here(_record, view, decided, inputs)
        return RoundDone(view, decided.carried, decided.blocked, work, read_seconds)
    return db.write_here(plan_and_record, inputs, snapshot=True)


def plan_and_record(session: Session, inputs: RoundInputs) -> RoundDone:
    """Read, plan and record in the caller's transaction (run again as a whole on a conflict: the
    inputs are not changed, and the reused views only remember more)."""
    started = time.perf_counter()
    view = _read(session, inputs)
    read_seconds = time.perf_counter() - started
    decided = _decide(view, inputs)
    return RoundDone(
        view, decided.carried, decided.blocked, _record(session, view, decided, inputs), read_seconds
    )


def _read(session: Session, inputs: RoundInputs) -> View:
    return read_round(session, inputs.options, inputs.inflight, inputs.now, inputs.demand, inputs.last)


def _decide(view: View, inputs: RoundInputs) -> _Decided:
    decided, carried = plan_round(view.snapshot, inputs.carried)
    blocked = {f"vm {vm}": reason for vm, reason in decided.blocked.items()}
    if inputs.paused is not None:  # nothing new while the engine's own disk is full; power-offs go on
        blocked["engine"] = inputs.paused
        decided = dataclasses.replace(
            decided, actions=tuple(a for a in decided.actions if isinstance(a, PowerOff))
        )
    return _Decided(decided, carried, blocked)


def _record(session: Session, view: View, decided: _Decided, inputs: RoundInputs) -> list[Work]:
    if decided.blocked != inputs.blocked:
        record_blocked(session, decided.blocked)
    if not decided.plan.actions:
        return []
    return record_plan(session, decided.plan, view, inputs.settings, inputs.options)
