"""One engine per database: a fenced lease.

The lease row names its holder, when it expires unless renewed, and an epoch that grows at every
acquisition. Every engine transaction first checks that the epoch is still its own (`check`, in the
same transaction as the writes it guards), so an engine that was paused past its expiry (SIGSTOP, a
frozen VM, a long stall) while another engine took over changes nothing when it wakes: its first
write finds the new epoch and it stops.

A holder process that is gone from this machine (its pid is dead, reused, or a zombie not yet reaped)
is taken over at once, so an engine restarted after SIGKILL does not wait for the lease to expire.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TypeVar

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from testlab.db.models import EngineLease, utcnow
from testlab.db.prepared import Prepared
from testlab.db.session import run_transaction
from testlab.threads import DaemonThreadPool

log = logging.getLogger("testlab.engine")
T = TypeVar("T")

LEASE_ID = 1


class LeaseHeld(Exception):
    """Another engine is running against this database."""


class LeaseLost(Exception):
    """Another engine took the lease over: this engine must change nothing more and stop."""


def _process_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time) of a process, None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], fields[19]


def holder_id() -> str:
    pid = os.getpid()
    stat = _process_stat(pid)
    return f"{socket.gethostname()}:{pid}:{stat[1] if stat else None}"


def holder_is_dead(holder: str) -> bool:
    """True when the holder ran on this machine and is gone: no such pid, a pid reused by another
    process (other start time), or a zombie (dead, waiting to be reaped by its parent)."""
    host, _, rest = holder.partition(":")
    pid, _, start = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine: only expiry tells
    stat = _process_stat(int(pid))
    return stat is None or stat[1] != start or stat[0] in ("Z", "X")


def live_holder(session: Session) -> str | None:
    """The engine holding the lease now, if one does (for commands that must not race it)."""
    lease = session.get(EngineLease, LEASE_ID)
    if lease is None or not lease.holder or lease.expires <= utcnow() or holder_is_dead(lease.holder):
        return None
    return lease.holder


def acquire(session: Session, holder: str, ttl: float) -> int:
    """Take the lease and return its new epoch; LeaseHeld if a live engine holds it."""
    now = utcnow()
    lease = session.scalars(select(EngineLease).where(EngineLease.id == LEASE_ID).with_for_update()).first()
    if lease is None:
        session.add(EngineLease(id=LEASE_ID, holder=holder, expires=now + timedelta(seconds=ttl), epoch=1))
        session.flush()
        return 1
    if lease.holder and lease.holder != holder and lease.expires > now and not holder_is_dead(lease.holder):
        raise LeaseHeld(
            f"another engine ({lease.holder}) is running against this database; "
            f"its lease expires at {lease.expires:%H:%M:%S} UTC unless renewed"
        )
    lease.holder = holder
    lease.expires = now + timedelta(seconds=ttl)
    lease.epoch += 1
    session.flush()
    return lease.epoch


def _lost(session: Session, epoch: int) -> LeaseLost:
    lease = session.get(EngineLease, LEASE_ID)
    if lease is None or not lease.holder:
        return LeaseLost(f"the engine lease (epoch {epoch}) was released by someone else")
    return LeaseLost(
        f"another engine ({lease.holder}) took the lease over (epoch {lease.epoch}, ours was {epoch})"
    )


# Built once and run on the connection, past the ORM: it opens every engine write.
_EPOCH = Prepared(select(EngineLease.epoch).where(EngineLease.id == LEASE_ID).with_for_update(read=True))


def check(session: Session, epoch: int) -> None:
    """Fence: raise LeaseLost unless `epoch` still holds the lease. Called first in every engine
    transaction; on PostgreSQL it also share-locks the row, so a takeover waits for this transaction."""
    current = _EPOCH.execute(session).scalar()
    if current != epoch:
        raise _lost(session, epoch)


def renew(session: Session, holder: str, epoch: int, ttl: float, last_round: datetime | None = None) -> None:
    """Extend our lease (and say when we last planned, for health checks); LeaseLost if another
    engine took it."""
    values: dict = {"expires": utcnow() + timedelta(seconds=ttl)}
    if last_round is not None:
        values["last_round"] = last_round
    result = session.execute(
        update(EngineLease)
        .where(EngineLease.id == LEASE_ID, EngineLease.holder == holder, EngineLease.epoch == epoch)
        .values(**values)
    )
    if result.rowcount != 1:
        raise _lost(session, epoch)


def release(session: Session, holder: str, epoch: int) -> None:
    """Give the lease up at a clean exit. The row stays, with its epoch: epochs are never reused."""
    session.execute(
        update(EngineLease)
        .where(EngineLease.id == LEASE_ID, EngineLease.holder == holder, EngineLease.epoch == epoch)
        .values(holder="", expires=utcnow())
    )


# ------------------------------------------------------------------------------- the engine's side

# The engine trusts its lease for this share of the TTL after a confirmation began: the rest is a
# margin for clock drift between machines and for the time a renewal takes.
TRUST = 0.8
# An engine's transactions never wait on anything but the database, so one idle inside a transaction
# for this long is an engine that stopped (SIGSTOP, a suspended VM) in the middle of a write, holding
# the lease row's lock; PostgreSQL ends such a session (its write is rolled back), and the next
# engine's takeover waits this long at most instead of until the frozen engine resumes.
ENGINE_IDLE_IN_TRANSACTION_MS = 10_000


class LeaseKeeper:
    """Takes the lease, renews it on a thread of its own, and tells the engine whether it may act.

    Renewals use their own connection with a short SQLite busy timeout, so a writer holding the
    database (or the engine's own busy database thread) cannot starve them. While the database cannot
    be reached the lease is neither confirmed nor lost: the engine acts on nothing until a renewal
    either confirms its epoch (nobody could take over meanwhile) or finds another engine's.
    """

    def __init__(self, url: str, ttl: float) -> None:
        self.url = url
        self.ttl = ttl
        self.holder = holder_id()
        self.epoch: int | None = None
        self.lost: LeaseLost | None = None
        self.last_round: datetime | None = None  # set by the engine after each round; sent with renewals
        self._trusted_until = 0.0
        self._thread = DaemonThreadPool(1, "testlab-lease")
        self._confirming: asyncio.Future[None] | None = None

    async def _call(self, work: Callable[[Session], T]) -> T:
        call = functools.partial(
            run_transaction,
            self.url,
            work,
            busy_timeout_ms=max(100, int(self.ttl * 1000 / 3)),
            idle_in_transaction_ms=ENGINE_IDLE_IN_TRANSACTION_MS,
        )
        return await asyncio.wrap_future(self._thread.submit(call))

    async def acquire(self) -> int:
        started = time.monotonic()
        self.epoch = await self._call(lambda s: acquire(s, self.holder, self.ttl))
        self._trusted_until = started + self.ttl * TRUST
        return self.epoch

    def trusted(self) -> bool:
        return self.lost is None and time.monotonic() < self._trusted_until

    async def confirm(self) -> None:
        """One renewal: extends the trust, or raises LeaseLost (or the database's error)."""
        if self.lost is not None:
            raise self.lost
        started = time.monotonic()
        try:
            last_round = self.last_round
            await self._call(lambda s: renew(s, self.holder, self.epoch, self.ttl, last_round))
        except LeaseLost as error:
            self.lost = error
            raise
        self._trusted_until = started + self.ttl * TRUST

    async def ensure(self) -> None:
        """Return once the lease is trusted; wait (retrying) while the database cannot tell."""
        while not self.trusted():
            if self.lost is not None:
                raise self.lost
            if self._confirming is None or self._confirming.done():
                self._confirming = asyncio.ensure_future(self.confirm())
            try:
                await asyncio.shield(self._confirming)
            except LeaseLost:
                raise
            except Exception:  # noqa: BLE001 - the database is away: the renewer logs it, we wait
                await asyncio.sleep(0.5)

    async def keep(self, on_lost: Callable[[LeaseLost], None]) -> None:
        """Renew every third of the TTL; after a failure, every half second until it works again."""
        failing_since: float | None = None
        first = True  # renewed soon after the start, so health checks see the first round at once
        while True:
            await asyncio.sleep(0.5 if failing_since is not None or first else self.ttl / 3)
            first = False
            try:
                await self.confirm()
            except LeaseLost as error:
                on_lost(error)
                return
            except Exception as error:  # noqa: BLE001 - one line, then retry within the TTL and beyond
                if failing_since is None:
                    failing_since = time.monotonic()
                    log.warning(
                        "cannot renew the engine lease (%s: %s); retrying", type(error).__name__, error
                    )
                continue
            if failing_since is not None:
                log.warning("engine lease renewed again after %.1f s", time.monotonic() - failing_since)
                failing_since = None

    async def release(self) -> None:
        if self.epoch is not None and self.lost is None:
            await self._call(lambda s: release(s, self.holder, self.epoch))

    def close(self) -> None:
        self._thread.shutdown(wait=False)
