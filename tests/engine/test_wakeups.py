"""Writers wake the engine at once (testlab/db/wakeup.py): a job submitted by another process starts
without waiting for the engine's poll, on SQLite and PostgreSQL alike; the engine's own writes, reads
and rolled-back transactions wake nobody; and a wake-up never comes before the files that follow the
commit are in place."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from testlab.db import wakeup
from testlab.db.models import VM, Task, User
from testlab.db.session import after_commit, session_scope, upgrade
from testlab.services.users import add_user
from tests.engine.harness import make_lab, submit, wait_for

#: The engine's poll and tick far beyond the test's bounds: only a wake-up can start the task in time.
NO_POLLING = {"TESTLAB_POLL_INTERVAL": "30", "TESTLAB_TICK": "30"}
STAMP = "name: {name}\nsteps:\n  - {{name: s, vms: [v1], run: 'date +%s.%N > {stamps}/$TESTLAB_TASK'}}\n"


def vm_is_idle(settings) -> bool:
    with session_scope(settings.database_url, readonly=True) as session:
        return session.scalar(select(VM.status).where(VM.name == "v1")) == "idle"


@pytest.mark.slow
def test_a_job_submitted_by_another_process_starts_without_the_poll(settings, tmp_path, engine_process):
    make_lab(settings, tmp_path / "vms", {"h1": ["v1"]}, limits="max_active: 1, max_ready_when_idle: 1")
    engine = engine_process(NO_POLLING)
    stamps = tmp_path / "stamps"
    stamps.mkdir()
    latencies = []
    for n in range(3):
        wait_for(lambda: vm_is_idle(settings), 60, 0.05, "v1 idle")
        assert engine.alive(), engine.log.read_text()[-3000:]
        job_id = submit(settings, tmp_path / "jobs", f"j{n}", STAMP.format(name=f"j{n}", stamps=stamps))
        committed = time.time()
        with session_scope(settings.database_url, readonly=True) as session:
            task_id = session.scalar(select(Task.id).where(Task.job_id == job_id))
        stamp = stamps / str(task_id)
        wait_for(lambda s=stamp: s.exists() and s.read_text().strip(), 10, 0.005, "the command to run")
        latencies.append(float(stamp.read_text()) - committed)
    assert max(latencies) < 1.0, f"submit -> command running took {latencies} s: the engine was not woken"


# ------------------------------------------------------------------------- the mechanism, in-process


def _run(check: Callable[[wakeup.Wakeups], Awaitable[None]], url: str, silent: str | None = None) -> None:
    async def main() -> None:
        async with wakeup.listen(url, silent_actor=silent) as wakeups:
            assert await asyncio.wait_for(wakeups.listening(), 10)
            await check(wakeups)

    asyncio.run(main())


async def _write(url: str, name: str, actor: str | None = None, **options) -> None:
    def work() -> None:
        with session_scope(url, actor=actor, **options) as session:
            add_user(session, name)

    await asyncio.to_thread(work)


def test_a_writer_wakes_the_listener_and_a_reader_does_not(lab_db):
    url = lab_db.settings.database_url
    upgrade(url)

    def read() -> None:
        with session_scope(url, readonly=True) as session:
            session.scalars(select(User)).all()

    async def check(wakeups: wakeup.Wakeups) -> None:
        await asyncio.to_thread(read)
        assert not await wakeups.wait(0.3), "a read woke the engine"
        started = time.monotonic()
        await _write(url, "alice", actor="alice")
        assert await wakeups.wait(5)
        assert time.monotonic() - started < 1.0

    _run(check, url)


def test_a_rolled_back_transaction_wakes_nobody(lab_db):
    url = lab_db.settings.database_url
    upgrade(url)

    async def check(wakeups: wakeup.Wakeups) -> None:
        def fail() -> None:
            with session_scope(url) as session:
                add_user(session, "bob")
                session.flush()
                raise RuntimeError("changed my mind")

        with pytest.raises(RuntimeError):
            await asyncio.to_thread(fail)
        assert not await wakeups.wait(0.3)

    _run(check, url)


def test_the_engines_own_writes_wake_nobody(lab_db):
    url = lab_db.settings.database_url
    upgrade(url)

    async def check(wakeups: wakeup.Wakeups) -> None:
        await _write(url, "carol", actor="engine 1")
        assert not await wakeups.wait(0.3), "the engine's own write woke it"
        await _write(url, "dave", actor="dave")
        assert await wakeups.wait(5)

    _run(check, url, silent="engine 1")


def test_the_wake_up_follows_the_files_of_the_commit(lab_db):
    """A submitted job's files are moved into place after its commit: the engine, woken, must find them."""
    url = lab_db.settings.database_url
    upgrade(url)
    moved: list[float] = []

    async def check(wakeups: wakeup.Wakeups) -> None:
        def work() -> None:
            with session_scope(url, actor="erin") as session:
                add_user(session, "erin")
                after_commit(session, lambda: (time.sleep(0.3), moved.append(time.monotonic())))

        writer = asyncio.ensure_future(asyncio.to_thread(work))
        assert await wakeups.wait(5)
        woken = time.monotonic()
        await writer
        assert moved and moved[0] <= woken, "woken before the files that follow the commit were in place"

    _run(check, url)


# ----------------------------------------------------------------------------------- SQLite's socket


def sqlite_url(directory: Path) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{directory / 'testlab.db'}"


def test_a_stale_socket_is_replaced_and_a_foreign_file_left_alone(tmp_path):
    url = sqlite_url(tmp_path / "stale")
    upgrade(url)
    path = wakeup.socket_path(url)
    assert path == tmp_path / "stale" / "testlab.db.wake"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as dead:
        dead.bind(str(path))  # an engine killed without cleaning up
    wakeup.poke(url, "nobody")  # nobody listens: ignored

    async def check(wakeups: wakeup.Wakeups) -> None:
        await _write(url, "frank")
        assert await wakeups.wait(5)

    _run(check, url)
    assert not path.exists(), "the engine left its socket behind"

    url = sqlite_url(tmp_path / "foreign")
    upgrade(url)
    foreign = wakeup.socket_path(url)
    foreign.write_text("not ours")

    async def polls() -> None:
        async with wakeup.listen(url) as wakeups:
            assert not await wakeups.listening()

    asyncio.run(polls())
    assert foreign.read_text() == "not ours"


def test_whoever_may_write_the_database_may_wake_the_engine(tmp_path):
    url = sqlite_url(tmp_path / "perms")
    upgrade(url)
    database = tmp_path / "perms" / "testlab.db"
    database.chmod(0o660)

    async def check(_wakeups: wakeup.Wakeups) -> None:
        mode = os.lstat(wakeup.socket_path(url))
        assert stat.S_ISSOCK(mode.st_mode)
        assert stat.S_IMODE(mode.st_mode) == 0o660
        assert mode.st_gid == database.stat().st_gid

    _run(check, url)


def test_a_database_deep_in_the_tree_still_gets_wake_ups(tmp_path):
    """A Unix socket's path holds 107 bytes; a longer one is reached through its directory."""
    url = sqlite_url(tmp_path / ("deep-" * 25))
    assert len(str(wakeup.socket_path(url))) > 110
    upgrade(url)

    async def check(wakeups: wakeup.Wakeups) -> None:
        await _write(url, "grace")
        assert await wakeups.wait(5)

    _run(check, url)


# ------------------------------------------------------------------------------- PostgreSQL's channel


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.parametrize("lab_db", ["postgresql"], indirect=True)
def test_the_listener_comes_back_after_a_database_outage(lab_db, postgres_server):
    url = lab_db.settings.database_url
    upgrade(url)

    async def check(wakeups: wakeup.Wakeups) -> None:
        await asyncio.to_thread(postgres_server.pause)
        try:
            assert await wakeups.wait(10), "a lost connection must wake the engine: it may have missed news"
        finally:
            await asyncio.to_thread(postgres_server.resume)
        await asyncio.wait_for(wakeups.listening(), 30)
        while await wakeups.wait(0.2):  # the wake-up saying it is back
            pass
        await _write(url, "heidi")
        assert await wakeups.wait(5)

    _run(check, url)
