"""The lease's fence, on both databases: after a takeover, the old holder's transactions change nothing."""

from __future__ import annotations

import asyncio
import os
import subprocess

import pytest
from sqlalchemy import func, select

from testlab.db.models import Event
from testlab.db.session import run_transaction, session_scope, upgrade
from testlab.engine import lease
from testlab.engine.database import EngineDatabase
from testlab.services.transitions import record_event


def count_events(url: str) -> int:
    with session_scope(url, readonly=True) as session:
        return session.scalar(select(func.count()).select_from(Event))


def test_a_write_after_a_takeover_raises_and_changes_nothing(lab_db):
    url = lab_db.settings.database_url
    upgrade(url)
    old = run_transaction(url, lambda s: lease.acquire(s, "gone:1:1", 0.0))  # expires at once
    database = EngineDatabase(url)
    database.epoch = old

    async def write() -> None:
        await database.write(lambda s: record_event(s, "engine", "still here"))

    asyncio.run(write())
    assert count_events(url) == 1
    new = run_transaction(url, lambda s: lease.acquire(s, "other:2:2", 15.0))
    assert new == old + 1
    with pytest.raises(lease.LeaseLost, match="took the lease over"):
        asyncio.run(write())
    assert count_events(url) == 1
    with pytest.raises(lease.LeaseLost):
        run_transaction(url, lambda s: lease.renew(s, "gone:1:1", old, 15.0))
    database.close()


def test_epochs_are_never_reused_after_a_release(lab_db):
    url = lab_db.settings.database_url
    upgrade(url)
    first = run_transaction(url, lambda s: lease.acquire(s, "a:1:1", 15.0))
    run_transaction(url, lambda s: lease.release(s, "a:1:1", first))
    assert run_transaction(url, lambda s: lease.acquire(s, "b:2:2", 15.0)) == first + 1


def test_a_live_holder_is_respected_and_a_zombie_is_not(lab_db):
    url = lab_db.settings.database_url
    upgrade(url)
    run_transaction(url, lambda s: lease.acquire(s, lease.holder_id(), 15.0))
    with pytest.raises(lease.LeaseHeld):
        run_transaction(url, lambda s: lease.acquire(s, "someone:9:9", 15.0))
    child = subprocess.Popen(["sleep", "60"])
    pid = child.pid
    with open(f"/proc/{pid}/stat") as stat:
        start = stat.read().rsplit(")", 1)[1].split()[19]
    holder = f"{os.uname().nodename}:{pid}:{start}"
    assert not lease.holder_is_dead(holder)
    child.kill()
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # dead but not reaped: a zombie
    assert lease.holder_is_dead(holder)
    child.wait()
    assert lease.holder_is_dead(holder)
