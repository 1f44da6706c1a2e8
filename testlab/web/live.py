"""Live updates: server-sent events fed by one cheap poll of the event history.

Every status change, submission or administrator action writes an event, so the highest event id is
a change counter. One `ChangeWatcher` per server process reads it (an index lookup) every
`live_poll` seconds, and only while at least one stream is open; when it moves, the watcher reads
the new events' subjects once (VM, job, task ids) and wakes every stream, which then reads only what
concerns it. However many browsers watch an idle lab, the server does one tiny query per poll and
sends a keep-alive comment now and then.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Gauge
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from testlab.db.models import Event
from testlab.db.session import run_transaction

MAX_CHANGED_EVENTS = 5000  # past this many new events at once, streams are told to reload instead

LIVE_STREAMS = Gauge("testlab_web_live_streams", "Live-update streams open on this server.")
LIVE_READS = Counter(
    "testlab_web_live_reads", "Database reads made for live updates (the shared poll and the streams)."
)


@dataclass(frozen=True)
class Change:
    """What moved between two polls: the last event id and the subjects of the new events."""

    last: int
    after: int = -1  # the last id before these events: a stream that had seen another id missed some
    vms: frozenset[int] = field(default_factory=frozenset)
    jobs: frozenset[int] = field(default_factory=frozenset)
    tasks: frozenset[int] = field(default_factory=frozenset)
    hosts: frozenset[int] = field(default_factory=frozenset)
    overflow: bool = False  # too many to list: reload everything

    def missed_by(self, seen: int) -> bool:
        """True when a stream that had seen `seen` cannot tell from this change alone what moved."""
        return self.overflow or self.after != seen


def _last_id(session: Session) -> int:
    return session.scalar(select(func.max(Event.id))) or 0


def _subjects(session: Session, after: int, upto: int) -> Change:
    rows = session.execute(
        select(Event.vm_id, Event.job_id, Event.task_id, Event.host_id)
        .where(Event.id > after, Event.id <= upto)
        .limit(MAX_CHANGED_EVENTS + 1)
    ).all()
    if len(rows) > MAX_CHANGED_EVENTS:
        return Change(upto, after, overflow=True)
    return Change(
        upto,
        after,
        vms=frozenset(r[0] for r in rows if r[0] is not None),
        jobs=frozenset(r[1] for r in rows if r[1] is not None),
        tasks=frozenset(r[2] for r in rows if r[2] is not None),
        hosts=frozenset(r[3] for r in rows if r[3] is not None),
    )


class ChangeWatcher:
    """One poller for all the streams of a server process."""

    def __init__(self, url: str, interval: float) -> None:
        self.url = url
        self.interval = interval
        self.change = Change(-1)
        self._condition: asyncio.Condition | None = None
        self._listeners = 0
        self._poller: asyncio.Task | None = None

    def _read(self, work: Callable[[Session], Any]) -> Any:
        LIVE_READS.inc()
        return run_transaction(self.url, work, readonly=True)

    async def _poll(self) -> None:
        assert self._condition is not None
        while self._listeners > 0:
            try:
                last = await asyncio.to_thread(self._read, _last_id)
                if last != self.change.last:
                    before = self.change.last
                    change = (
                        Change(last)
                        if before < 0
                        else await asyncio.to_thread(
                            self._read, functools.partial(_subjects, after=before, upto=last)
                        )
                    )
                    async with self._condition:
                        self.change = change
                        self._condition.notify_all()
            except Exception:  # noqa: BLE001 - a database hiccup: streams keep waiting, next poll retries
                pass
            await asyncio.sleep(self.interval)
        self._poller = None

    @contextlib.asynccontextmanager
    async def listening(self) -> AsyncIterator[ChangeWatcher]:
        """Count a stream in; the poll runs while at least one is open."""
        if self._condition is None:
            self._condition = asyncio.Condition()
        self._listeners += 1
        LIVE_STREAMS.inc()
        if self._poller is None or self._poller.done():
            if self.change.last < 0:  # start from now, not from the dawn of the history
                self.change = Change(await asyncio.to_thread(self._read, _last_id))
            self._poller = asyncio.create_task(self._poll())
        try:
            yield self
        finally:
            self._listeners -= 1
            LIVE_STREAMS.dec()

    async def next_change(self, seen: int, timeout: float) -> Change | None:
        """Wait until the history moves past `seen`; None after `timeout` seconds of calm."""
        assert self._condition is not None
        async with self._condition:
            try:
                await asyncio.wait_for(self._condition.wait_for(lambda: self.change.last != seen), timeout)
            except TimeoutError:
                return None
            return self.change

    def read(self, work: Callable[[Session], Any]) -> Any:
        """A stream's own read (counted, in a thread of the caller's choosing)."""
        return self._read(work)


def sse(event: str, data: Any, event_id: str | int | None = None) -> str:
    """One server-sent event; `data` is sent as JSON on one line."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


KEEPALIVE = ": keep-alive\n\n"
SSE_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
