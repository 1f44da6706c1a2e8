"""Round after round the engine hands the scheduler the same view objects for what did not change,
which is what lets `plan_round` skip the unchanged hosts cheaply (testlab/engine/reuse.py)."""

from __future__ import annotations

import time

from sqlalchemy import select

from testlab.db.models import VM
from testlab.db.session import run_transaction, session_scope
from testlab.engine import reading
from testlab.engine.options import EngineOptions
from testlab.engine.reuse import LastViews
from testlab.scheduler import plan
from testlab.scheduler.rounds import plan_round
from testlab.services import vms as vm_service
from tests.engine.harness import make_lab, submit

JOB = """\
name: j
steps:
  - {name: pinned, vms: [a, c], run: 'true'}
  - {name: pool, labels: [all], count: 2, run: 'true'}
"""


def _read(settings, last: LastViews):
    return run_transaction(
        settings.database_url,
        lambda s: reading.read_round(s, EngineOptions(), frozenset(), time.time(), {}, last),
        readonly=True,
    ).snapshot


def test_a_round_reuses_the_views_of_what_did_not_change(settings, tmp_path):
    make_lab(settings, tmp_path / "vms", {"h1": ["a", "b"], "h2": ["c"]})
    submit(settings, tmp_path / "jobs", "j", JOB)
    last = LastViews()
    first = _read(settings, last)
    second = _read(settings, last)
    assert len(first.tasks) == 4  # two pinned, two of the pool
    assert all(second.hosts[name] is view for name, view in first.hosts.items())
    assert all(second.vms[name] is view for name, view in first.vms.items())
    assert all(new is old for new, old in zip(second.tasks, first.tasks, strict=True))
    pool = [t.candidates for t in second.tasks if t.vm is None]
    assert pool[0] is pool[1] and set(pool[0]) == {"a", "b", "c"}

    with session_scope(settings.database_url) as session:
        vm_service.request_maintenance(session, session.scalar(select(VM).where(VM.name == "b")))
    third = _read(settings, last)
    assert third.vms["b"] is not second.vms["b"] and third.vms["b"].status == "maintenance"
    assert third.vms["a"] is second.vms["a"] and third.vms["c"] is second.vms["c"]
    assert third.hosts == second.hosts
    assert [t.candidates for t in third.tasks if t.vm is None] == [pool[0], pool[0]]
    assert all(t.candidates is pool[0] for t in third.tasks if t.vm is None)  # a candidate still

    decided, carried = plan_round(first)
    assert decided == plan(first)
    decided, _ = plan_round(third, carried)
    assert decided == plan(third)
