"""The engine's own disk (testlab/engine/disk.py): looked at off the event loop, a pause and a resume
each told once."""

from __future__ import annotations

import asyncio
import errno
import threading
from pathlib import Path

from sqlalchemy import select

from testlab.db.models import Job
from testlab.db.session import session_scope
from testlab.domain.statuses import TaskStatus
from testlab.engine.daemon import Engine
from testlab.engine.disk import EngineDisk
from testlab.engine.options import EngineOptions
from tests.engine.harness import make_lab, submit

MIB = 1 << 20
JOB = "name: j\nsteps:\n  - {name: s, vms: [v1], run: 'true'}\n"


def test_a_short_disk_pauses_new_work_until_there_is_room_again(tmp_path: Path) -> None:
    disk = EngineDisk(tmp_path, min_free=10 * MIB, log_cap=MIB)
    assert disk.check(20 * MIB) == (None, [])
    paused, told = disk.check(5 * MIB)
    assert paused is not None and "5 MiB free" in paused and told == [f"{paused}: new work paused"]
    assert disk.check(None) == (paused, [])  # not looked at this time: nothing changes, nothing told
    assert disk.check(6 * MIB) == (paused, [])
    resumed, told = disk.check(12 * MIB)
    assert resumed is None and len(told) == 1 and "work resumed" in told[0]


def test_a_failed_write_pauses_at_once_without_a_look_at_the_disk(tmp_path: Path, monkeypatch) -> None:
    disk = EngineDisk(tmp_path, min_free=10 * MIB, log_cap=MIB)
    disk.check(50 * MIB)

    def no_look(_self):
        raise AssertionError("looked at the disk from the write's caller")

    monkeypatch.setattr(EngineDisk, "free", no_look)
    disk.write_failed(OSError(errno.ENOSPC, "No space left on device"))
    paused, told = disk.check(None)
    assert paused is not None and "50 MiB free" in paused and "No space left" in paused
    assert told == [f"{paused}: new work paused"]
    assert disk.check(10 * MIB) == (paused, [])  # room for a whole log beyond the reserve first


def test_the_engine_looks_at_its_disk_off_its_event_loop(settings, tmp_path, monkeypatch) -> None:
    """A look at a disk is a blocking call (a hung filesystem hangs it): never on the loop's thread."""
    make_lab(settings, tmp_path / "vms", {"h1": ["v1"]})
    job_id = submit(settings, tmp_path / "jobs", "j", JOB)
    lookers: list[str] = []
    look = EngineDisk.free

    def watched(self):
        lookers.append(threading.current_thread().name)
        return look(self)

    monkeypatch.setattr(EngineDisk, "free", watched)

    def ended() -> bool:
        with session_scope(settings.database_url, readonly=True) as session:
            return session.scalar(select(Job.status).where(Job.id == job_id)) == TaskStatus.COMPLETED

    assert asyncio.run(Engine(settings, EngineOptions.from_env()).run(until=ended)) == 0
    assert lookers and threading.main_thread().name not in lookers, lookers
