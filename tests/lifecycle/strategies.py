"""Hypothesis strategies for uses, history entries and lifecycles."""

from __future__ import annotations

import string

from hypothesis import strategies as st

from testlab.lifecycle.history import Elided, HistoryEntry
from testlab.lifecycle.model import MAX_ID, Lifecycle, Use, UseKind

# Mostly a few names and small job ids, so that groups, repeats and shared suspects happen; some
# arbitrary names and ids of every length, so that every legal spelling is tried.
_ALNUM = string.ascii_letters + string.digits
step_names = st.sampled_from(["build", "test", "a", "x.y_z-1"]) | st.builds(
    str.__add__, st.sampled_from(_ALNUM), st.text(alphabet=_ALNUM + "._-", max_size=99)
)
job_ids = st.integers(1, 6) | st.integers(0, MAX_ID)
use_ids = st.integers(0, 100) | st.integers(0, MAX_ID)
outcomes = st.none() | st.sampled_from(["completed", "failed", "timeout", "boterror", "canceled", "skipped"])


@st.composite
def uses(draw: st.DrawFn, *, outcome: bool = False) -> Use:
    kind = draw(
        st.sampled_from([UseKind.TASK, UseKind.TASK, UseKind.PREPARE, UseKind.EXEC, UseKind.POWER_CYCLE])
    )
    concurrent = draw(st.booleans())
    if kind in UseKind.IN_JOB:
        return Use(
            kind,
            job=draw(job_ids),
            step=draw(step_names),
            task=draw(st.none() | st.integers(1, 1000)),
            concurrent=concurrent,
            outcome=draw(outcomes) if outcome else None,
        )
    return Use(
        kind, use_id=draw(use_ids), actor=draw(st.none() | st.just("cli alice")), concurrent=concurrent
    )


use_lists = st.lists(uses(), max_size=60)


@st.composite
def history_items(draw: st.DrawFn) -> HistoryEntry | Elided:
    choice = draw(st.sampled_from(["task", "prepare", "own", "outside", "elided"]))
    if choice == "elided":
        count = draw(st.integers(0, 50) | st.integers(0, MAX_ID))
        concurrent = draw(st.integers(0 if count else 1, 5) | st.integers(0 if count else 1, MAX_ID))
        return Elided(count, concurrent)
    if choice == "outside":
        kind = draw(st.sampled_from(sorted(UseKind.OUT_OF_JOB)))
        return HistoryEntry(kind, use_id=draw(use_ids), concurrent=draw(st.booleans()))
    kind = UseKind.PREPARE if choice == "prepare" or draw(st.booleans()) and choice == "own" else UseKind.TASK
    if choice == "own":
        return HistoryEntry(kind, step=draw(step_names), own=True)
    return HistoryEntry(kind, job=draw(job_ids), step=draw(step_names), concurrent=draw(st.booleans()))


@st.composite
def lifecycles(draw: st.DrawFn) -> Lifecycle:
    return Lifecycle("vm", tuple(draw(st.lists(uses(outcome=True), max_size=25))))
