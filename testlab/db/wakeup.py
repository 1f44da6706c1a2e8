"""Push wake-ups: a writer's commit wakes the engine at once, instead of the engine polling for it.

Every transaction that wrote something announces itself once it is committed and the file changes
that follow its commit are done (testlab/db/session.py calls `announce`): the engine may act on the
new rows at once, and a submitted job's files must be in place by then. The engine listens:

- PostgreSQL: `LISTEN testlab` on a connection of its own; writers run `SELECT pg_notify('testlab',
  actor)` after their commit.
- SQLite: a Unix datagram socket beside the database file (`<database>.wake`) that the engine binds;
  writers send it one datagram. Nobody listening (no engine, or the stale socket file of a killed one)
  makes the send fail at once, and that is ignored; so is a full queue (the engine has wake-ups
  pending already). The socket gets the database file's permission bits and group: whoever may write
  the database may wake the engine, and nobody else.

A wake-up is a hint, never the only way a change is seen: the engine still polls the event history,
slowly (`TESTLAB_POLL_INTERVAL`), for what a lost wake-up (a dropped PostgreSQL connection, an engine
restarting) did not tell it. Transactions of a silenced actor (the engine's own: it knows what it
did) announce nothing. The payload is the writer's actor, for whoever watches the channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat
import threading
from collections.abc import AsyncIterator
from functools import cache
from pathlib import Path

from sqlalchemy import Engine, make_url

log = logging.getLogger("testlab.db")

CHANNEL = "testlab"
SUFFIX = ".wake"
MAX_PAYLOAD = 200  # bytes of the actor sent along; a wake-up carries no data the engine relies on
_SUN_PATH_MAX = 107  # bytes of a Unix socket path (108 with its terminating NUL)

_silent: set[str] = set()
_silent_lock = threading.Lock()


def silence(actor: str) -> None:
    """Transactions of `actor` in this process announce nothing (the engine's own writes)."""
    with _silent_lock:
        _silent.add(actor)


def unsilence(actor: str) -> None:
    """Undo `silence` (the engine stopped listening: its writes are news to a successor)."""
    with _silent_lock:
        _silent.discard(actor)


def announces(actor: str | None) -> bool:
    """Whether a transaction of `actor` committed in this process wakes the engine."""
    return actor is None or actor not in _silent


def _payload(actor: str | None) -> str:
    return (actor or "").encode()[:MAX_PAYLOAD].decode(errors="ignore")


# ------------------------------------------------------------------------------------------ SQLite


@cache
def socket_path(url: str) -> Path | None:
    """The wake-up socket of a SQLite database file: `<database>.wake`; None for an in-memory database
    (nobody else can write it) and for other databases."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).absolute().with_name(Path(parsed.database).name + SUFFIX)


class _Address:
    """A socket address for `path`. A path longer than a Unix socket address can hold is reached
    through a directory descriptor kept open (`/proc/self/fd/N/name`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._dir_fd = -1
        if len(os.fsencode(path)) > _SUN_PATH_MAX:
            self._dir_fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            self.address: str = f"/proc/self/fd/{self._dir_fd}/{path.name}"
        else:
            self.address = str(path)

    def close(self) -> None:
        if self._dir_fd >= 0:
            os.close(self._dir_fd)
            self._dir_fd = -1


_sender: socket.socket | None = None
_sender_lock = threading.Lock()


def poke(url: str, actor: str | None) -> None:
    """Wake the engine listening beside the SQLite database `url`, if one does. Never raises, never
    blocks: a wake-up nobody gets changes nothing."""
    path = socket_path(url)
    if path is None:
        return
    global _sender
    address = None
    try:
        address = _Address(path)
        with _sender_lock:
            if _sender is None:
                _sender = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
                )
            _sender.sendto(_payload(actor).encode(), address.address)
    except OSError as error:
        if error.errno not in (errno.ENOENT, errno.ECONNREFUSED, errno.EAGAIN, errno.EACCES):
            log.debug("wake-up of %s not sent: %s", path, error)
    finally:
        if address is not None:
            address.close()


class _SocketListener:
    """The engine's end on SQLite: binds `<database>.wake` and reads datagrams on the event loop."""

    def __init__(self, path: Path, woken: asyncio.Event) -> None:
        self.path = path
        self._woken = woken
        self._address: _Address | None = None
        self._sock: socket.socket | None = None
        self._identity: tuple[int, int] | None = None
        self.listening = asyncio.Event()

    def open(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Bind the socket; False (one line in the log) when something else holds its path."""
        try:
            existing = os.lstat(self.path)
        except FileNotFoundError:
            existing = None
        if existing is not None:
            if not stat.S_ISSOCK(existing.st_mode):
                log.warning("%s is not a socket: no push wake-ups, the engine polls", self.path)
                return False
            # A socket left by a killed engine. Only the lease holder binds it, so no live engine does.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            self._address = _Address(self.path)
            sock.bind(self._address.address)
            self._share_like_database()
        except OSError as error:
            sock.close()
            if self._address is not None:
                self._address.close()
            log.warning("cannot listen on %s (%s): no push wake-ups, the engine polls", self.path, error)
            return False
        self._sock = sock
        loop.add_reader(sock.fileno(), self._drain)
        self.listening.set()
        return True

    def _share_like_database(self) -> None:
        """Writers need write permission on the socket: give it the database file's (read and write
        bits, and group), so exactly those who may write the database may wake the engine."""
        created = os.lstat(self.path)
        self._identity = (created.st_dev, created.st_ino)
        database = self.path.with_name(self.path.name[: -len(SUFFIX)])
        try:
            mode = os.stat(database)
        except FileNotFoundError:
            return
        with contextlib.suppress(OSError):
            os.chown(self.path, -1, mode.st_gid)
        os.chmod(self.path, stat.S_IMODE(mode.st_mode) & 0o666)

    def _drain(self) -> None:
        assert self._sock is not None
        received = False
        while True:
            try:
                self._sock.recv(MAX_PAYLOAD)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as error:
                log.debug("reading wake-ups: %s", error)
                break
            received = True
        if received:
            self._woken.set()

    def close(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._sock is not None:
            loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
            with contextlib.suppress(OSError):  # only our own socket: a successor may have bound its own
                now = os.lstat(self.path)
                if (now.st_dev, now.st_ino) == self._identity:
                    os.unlink(self.path)
        if self._address is not None:
            self._address.close()


# -------------------------------------------------------------------------------------- PostgreSQL


def notify(engine: Engine, actor: str | None) -> None:
    """Wake the engine listening on the PostgreSQL database of `engine`: one NOTIFY on the channel,
    outside any transaction (the writer's own is committed). Never raises."""
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql(
                "SELECT pg_notify(%(channel)s, %(actor)s)", {"channel": CHANNEL, "actor": _payload(actor)}
            )
    except Exception as error:  # noqa: BLE001 - the commit stands; the engine's poll will see it
        log.debug("wake-up not sent: %s: %s", type(error).__name__, error)


def _libpq_conninfo(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class _ChannelListener:
    """The engine's end on PostgreSQL: a connection of its own that LISTENs on the channel. When it
    is lost it is opened again (a growing delay, 0.5 s to 5 s), and the engine woken: what was
    committed meanwhile told nobody."""

    def __init__(self, url: str, woken: asyncio.Event) -> None:
        self.conninfo = _libpq_conninfo(url)
        self._woken = woken
        self._task: asyncio.Task | None = None
        self.listening = asyncio.Event()

    def open(self, loop: asyncio.AbstractEventLoop) -> bool:
        self._task = loop.create_task(self._listen())
        return True

    async def _listen(self) -> None:
        import psycopg

        delay = 0.5
        reported = False
        while True:
            try:
                connection = await psycopg.AsyncConnection.connect(
                    self.conninfo,
                    autocommit=True,
                    connect_timeout=10,
                    keepalives=1,  # a server gone without a word must not leave us listening for ever
                    keepalives_idle=10,
                    keepalives_interval=5,
                    keepalives_count=3,
                )
                async with connection:
                    await connection.execute(f"LISTEN {CHANNEL}")
                    if reported:
                        log.warning("listening for wake-ups again")
                        self._woken.set()
                    reported, delay = False, 0.5
                    self.listening.set()
                    async for _ in connection.notifies():
                        self._woken.set()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - the database's outage is the engine's to handle
                if not reported:
                    log.warning(
                        "wake-ups lost (%s: %s): the engine polls until they are back",
                        type(error).__name__,
                        error,
                    )
                    reported = True
            self.listening.clear()
            self._woken.set()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    def close(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._task is not None:
            self._task.cancel()


# ------------------------------------------------------------------------------------------ engine


class Wakeups:
    """The engine's end: `wait` returns True as soon as another writer committed."""

    def __init__(self, url: str) -> None:
        self.woken = asyncio.Event()
        path = socket_path(url)
        self._listener: _SocketListener | _ChannelListener | None = None
        if path is not None:
            self._listener = _SocketListener(path, self.woken)
        elif make_url(url).get_backend_name() == "postgresql":
            self._listener = _ChannelListener(url, self.woken)
        self._opened = False

    def open(self) -> None:
        if self._listener is not None:
            self._opened = self._listener.open(asyncio.get_running_loop())

    def close(self) -> None:
        if self._opened and self._listener is not None:
            self._listener.close(asyncio.get_running_loop())
        self._opened = False

    async def listening(self) -> bool:
        """Once wake-ups can arrive: True, or False if this database gets none (the engine polls)."""
        if not self._opened or self._listener is None:
            return False
        await self._listener.listening.wait()
        return True

    async def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for a wake-up; True if one came (it is consumed)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.woken.wait(), timeout)
        woken = self.woken.is_set()
        self.woken.clear()
        return woken


@contextlib.asynccontextmanager
async def listen(url: str, *, silent_actor: str | None = None) -> AsyncIterator[Wakeups]:
    """Listen for other writers' commits to the database `url` while inside; meanwhile the transactions
    of `silent_actor` in this process (the engine's own) announce nothing."""
    wakeups = Wakeups(url)
    wakeups.open()
    if silent_actor is not None:
        silence(silent_actor)
    try:
        yield wakeups
    finally:
        if silent_actor is not None:
            unsilence(silent_actor)
        wakeups.close()
