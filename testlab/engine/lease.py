"""One engine per database: a lease row the engine renews; a second engine refuses to start.

A lease held by a process that is gone (same machine, pid no longer alive with the same start time)
is taken over at once, so an engine restarted after SIGKILL does not wait for the lease to expire.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from testlab.db.models import EngineLease, utcnow


class LeaseHeld(Exception):
    """Another engine is running against this database."""


def _process_start(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def holder_id() -> str:
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_process_start(pid)}"


def _holder_is_dead(holder: str) -> bool:
    host, _, rest = holder.partition(":")
    pid, _, start = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine: only expiry tells
    return _process_start(int(pid)) != start


def acquire(session: Session, holder: str, ttl: float) -> None:
    now = utcnow()
    lease = session.scalars(select(EngineLease).where(EngineLease.id == 1).with_for_update()).first()
    if lease is None:
        session.add(EngineLease(id=1, holder=holder, expires=now + timedelta(seconds=ttl)))
        session.flush()
        return
    if lease.holder != holder and lease.expires > now and not _holder_is_dead(lease.holder):
        raise LeaseHeld(
            f"another engine ({lease.holder}) is running against this database; "
            f"its lease expires at {lease.expires:%H:%M:%S} UTC unless renewed"
        )
    lease.holder = holder
    lease.expires = now + timedelta(seconds=ttl)


def renew(session: Session, holder: str, ttl: float) -> bool:
    """Extend our lease; False if another engine took it (we must stop)."""
    lease = session.get(EngineLease, 1)
    if lease is None or lease.holder != holder:
        return False
    lease.expires = utcnow() + timedelta(seconds=ttl)
    return True


def release(session: Session, holder: str) -> None:
    lease = session.get(EngineLease, 1)
    if lease is not None and lease.holder == holder:
        session.delete(lease)
