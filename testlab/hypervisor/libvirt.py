"""libvirt hosts: qemu:///system, qemu+ssh://vmhost1/system, test:///default, test:///abs/lab.xml.

One connection per URI is cached at module level and shared by every Backend of that URI: opening
an SSH-tunnelled connection is slow, and libvirt's test driver keeps its state per connection, so two
connections to the same test URI would see two different labs. A connection that died (libvirtd
restarted, SSH link dropped) is dropped and reopened, and the call retried once.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar
from xml.sax.saxutils import escape

from testlab.hypervisor.base import (
    Backend,
    DomainMissing,
    DomainState,
    HostHealth,
    HostUnreachable,
    HypervisorError,
    OperationFailed,
    SnapshotMissing,
)

try:
    import libvirt as _libvirt
except ImportError:  # pragma: no cover - the optional dependency is missing
    _libvirt = None

log = logging.getLogger("testlab.hypervisor.libvirt")

T = TypeVar("T")

KEEPALIVE_INTERVAL = 5  # seconds between keepalive probes
KEEPALIVE_COUNT = 3  # unanswered probes before the connection is declared dead
#: Seconds a guest is given to power itself off after an ACPI shutdown request before it is destroyed
#: (option `shutdown_grace`; 0 destroys at once). Many test guests ignore ACPI altogether.
DEFAULT_SHUTDOWN_GRACE = 10.0
SHUTDOWN_POLL = 0.2

_connections: dict[str, Any] = {}
_users: dict[str, int] = {}  # open Backends per URI: the last one to close drops the connection
_connections_lock = threading.Lock()
_event_loop_started = False


def _require_libvirt() -> Any:
    if _libvirt is None:
        raise OperationFailed("the libvirt backend needs libvirt-python (pip install 'testlab[libvirt]')")
    return _libvirt


def _start_event_loop(lv: Any) -> None:
    """Keepalives and close callbacks only fire while libvirt's event loop runs somewhere."""
    global _event_loop_started
    if _event_loop_started:
        return
    _event_loop_started = True
    lv.virEventRegisterDefaultImpl()

    def run() -> None:
        while True:
            lv.virEventRunDefaultImpl()

    threading.Thread(target=run, name="libvirt-events", daemon=True).start()


def _ignore_errors(_ctx: object, _err: object) -> None:
    """libvirt prints every error on stderr by default; ours become typed exceptions instead."""


def _open(uri: str) -> Any:
    lv = _require_libvirt()
    lv.registerErrorHandler(_ignore_errors, None)
    _start_event_loop(lv)
    try:
        conn = lv.open(uri)
    except lv.libvirtError as exc:
        raise HostUnreachable(f"cannot connect to {uri}: {exc.get_error_message() or exc}") from exc
    # Local drivers (test://, qemu:/// without a daemon link) have no keepalive.
    with contextlib.suppress(lv.libvirtError):
        conn.setKeepAlive(KEEPALIVE_INTERVAL, KEEPALIVE_COUNT)

    def closed(dead: Any, reason: int, _opaque: object) -> None:
        log.warning("connection to %s closed (reason %s)", uri, reason)
        forget_connection(uri, dead)

    with contextlib.suppress(lv.libvirtError):
        conn.registerCloseCallback(closed, None)
    return conn


def connection(uri: str) -> Any:
    """The shared connection of `uri`, opened on first use."""
    with _connections_lock:
        conn = _connections.get(uri)
        if conn is None:
            conn = _connections[uri] = _open(uri)
        return conn


def forget_connection(uri: str, conn: Any | None = None) -> None:
    """Drop the cached connection (only if it is still `conn`), so the next call reopens one."""
    with _connections_lock:
        cached = _connections.get(uri)
        if cached is None or (conn is not None and cached is not conn):
            return
        del _connections[uri]
    with contextlib.suppress(Exception):  # it is dead already; closing is a courtesy
        cached.close()


def _is_connection_error(exc: Any) -> bool:
    lv = _libvirt
    code = exc.get_error_code()
    if code in (lv.VIR_ERR_INVALID_CONN, lv.VIR_ERR_NO_CONNECT, lv.VIR_ERR_RPC):
        return True
    if code == lv.VIR_ERR_SYSTEM_ERROR and exc.get_error_domain() in (lv.VIR_FROM_RPC, lv.VIR_FROM_REMOTE):
        return True
    message = (exc.get_error_message() or str(exc)).lower()
    return any(
        s in message for s in ("connection closed", "socket is closed", "end of file", "not connected")
    )


_STATES: dict[int, DomainState] = {}


def _state_of(code: int) -> DomainState:
    lv = _libvirt
    if not _STATES:
        _STATES.update(
            {
                lv.VIR_DOMAIN_RUNNING: DomainState.RUNNING,
                lv.VIR_DOMAIN_BLOCKED: DomainState.RUNNING,
                lv.VIR_DOMAIN_SHUTDOWN: DomainState.RUNNING,  # still running while it shuts down
                lv.VIR_DOMAIN_PAUSED: DomainState.PAUSED,
                lv.VIR_DOMAIN_PMSUSPENDED: DomainState.PAUSED,
            }
        )
    return _STATES.get(code, DomainState.OFF)


class LibvirtBackend(Backend):
    kind = "libvirt"
    option_names = frozenset({"shutdown_grace"})

    def __init__(self, host: str, uri: str, options: Any = None) -> None:
        super().__init__(host, uri, options)
        _require_libvirt()
        if "://" not in uri:
            raise ValueError(f"libvirt URI must look like qemu:///system or test:///default, not {uri!r}")
        with _connections_lock:
            _users[uri] = _users.get(uri, 0) + 1
        self._closed = False
        self.shutdown_grace = float(self.options.get("shutdown_grace", DEFAULT_SHUTDOWN_GRACE))

    def _call(self, fn: Callable[[Any], T], domain: str | None = None, snapshot: str | None = None) -> T:
        """Run fn(connection), reconnecting once if the cached connection turns out to be dead."""
        lv = _libvirt
        if self._closed:  # used again after close(): count as a user again
            self._closed = False
            with _connections_lock:
                _users[self.uri] = _users.get(self.uri, 0) + 1
        for attempt in (1, 2):
            conn = connection(self.uri)
            try:
                return fn(conn)
            except lv.libvirtError as exc:
                if _is_connection_error(exc):
                    forget_connection(self.uri, conn)
                    if attempt == 1:
                        log.info("connection to %s is dead; reconnecting", self.uri)
                        continue
                raise self._typed(exc, domain, snapshot) from exc
        raise AssertionError("unreachable")

    def _typed(self, exc: Any, domain: str | None, snapshot: str | None) -> HypervisorError:
        lv = _libvirt
        code = exc.get_error_code()
        message = exc.get_error_message() or str(exc)
        if code == lv.VIR_ERR_NO_DOMAIN:
            return DomainMissing(
                f"domain {domain!r} does not exist on {self.uri}", host=self.host, domain=domain
            )
        if code == lv.VIR_ERR_NO_DOMAIN_SNAPSHOT:
            return SnapshotMissing(
                f"domain {domain!r} has no snapshot {snapshot!r}", host=self.host, domain=domain
            )
        if _is_connection_error(exc):
            return HostUnreachable(f"{self.uri}: {message}", host=self.host, domain=domain)
        return OperationFailed(f"{self.uri}: {message}", host=self.host, domain=domain)

    # ---- domains

    def state(self, domain: str) -> DomainState:
        lv = _libvirt

        def run(conn: Any) -> DomainState:
            try:
                dom = conn.lookupByName(domain)
            except lv.libvirtError as exc:
                if exc.get_error_code() == lv.VIR_ERR_NO_DOMAIN:
                    return DomainState.MISSING
                raise
            return _state_of(dom.state()[0])

        return self._call(run, domain)

    def power_on(self, domain: str) -> None:
        def run(conn: Any) -> None:
            self._ensure_running(conn.lookupByName(domain))

        self._call(run, domain)

    @staticmethod
    def _ensure_running(dom: Any) -> None:
        state = _state_of(dom.state()[0])
        if state == DomainState.PAUSED:
            dom.resume()
        elif state == DomainState.OFF:
            dom.create()

    def power_off(self, domain: str) -> None:
        """Ask the guest to shut down (ACPI power button), wait `shutdown_grace` seconds for it, then
        destroy it: a guest that ignores ACPI, or hangs on its way down, is still off in bounded time."""
        lv = _libvirt

        def ask(conn: Any) -> float | None:
            """Seconds to wait for the guest before destroying it; None: it is off already."""
            dom = conn.lookupByName(domain)
            if not dom.isActive():
                return None
            if self.shutdown_grace <= 0 or _state_of(dom.state()[0]) != DomainState.RUNNING:
                return 0.0
            try:
                dom.shutdownFlags(lv.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
            except lv.libvirtError as exc:  # e.g. a guest without ACPI: destroy it at once
                if _is_connection_error(exc):
                    raise
                log.info("%s: ACPI shutdown of %s refused (%s); destroying it", self.uri, domain, exc)
                return 0.0
            return self.shutdown_grace

        grace = self._call(ask, domain)
        if grace is None:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            time.sleep(SHUTDOWN_POLL)
            if not self._call(lambda conn: conn.lookupByName(domain).isActive(), domain):
                return
        if grace > 0:
            log.info("%s: %s ignored the ACPI shutdown for %g s; destroying it", self.uri, domain, grace)

        def destroy(conn: Any) -> None:
            dom = conn.lookupByName(domain)
            if dom.isActive():
                try:
                    dom.destroy()
                except lv.libvirtError as exc:
                    if exc.get_error_code() != lv.VIR_ERR_OPERATION_INVALID or dom.isActive():
                        raise

        self._call(destroy, domain)

    def revert(self, domain: str, snapshot: str) -> None:
        def run(conn: Any) -> None:
            dom = conn.lookupByName(domain)
            snap = dom.snapshotLookupByName(snapshot)
            dom.revertToSnapshot(snap, _libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING)
            # Look it up again: a snapshot's definition may carry another uuid than the handle.
            self._ensure_running(
                conn.lookupByName(domain)
            )  # a snapshot of a shut-off domain reverts to off despite the flag

        self._call(run, domain, snapshot)

    def list_snapshots(self, domain: str) -> list[str]:
        return self._call(lambda conn: sorted(conn.lookupByName(domain).snapshotListNames()), domain)

    def create_snapshot(self, domain: str, name: str) -> None:
        if not name or any(c in name for c in "/\0"):
            raise OperationFailed(f"invalid snapshot name {name!r}", host=self.host, domain=domain)

        def run(conn: Any) -> None:
            dom = conn.lookupByName(domain)
            if name in dom.snapshotListNames():
                raise OperationFailed(f"domain {domain!r} already has a snapshot {name!r}", host=self.host)
            dom.snapshotCreateXML(f"<domainsnapshot><name>{escape(name)}</name></domainsnapshot>")

        self._call(run, domain, name)

    # ---- definitions (provisioning)

    def define_domain(self, xml: str) -> str:
        """Define a new (persistent, shut off) domain from its XML; returns its name."""
        return self._call(lambda conn: conn.defineXML(xml).name())

    def domain_xml(self, domain: str) -> str:
        return self._call(lambda conn: conn.lookupByName(domain).XMLDesc(0), domain)

    def delete_domain(self, domain: str) -> bool:
        """Destroy and undefine the domain with its snapshots' metadata (the disk files are the
        caller's). False if there was no such domain."""
        lv = _libvirt

        def run(conn: Any) -> bool:
            try:
                dom = conn.lookupByName(domain)
            except lv.libvirtError as exc:
                if exc.get_error_code() == lv.VIR_ERR_NO_DOMAIN:
                    return False
                raise
            if dom.isActive():
                dom.destroy()
            dom.undefineFlags(lv.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA | lv.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
            return True

        return self._call(run, domain)

    # ---- host

    def health(self) -> HostHealth:
        def run(conn: Any) -> HostHealth:
            info = conn.getInfo()
            return HostHealth(
                reachable=True,
                free_disk_bytes=self._free_disk(conn),
                detail=f"{info[0]}, {info[2]} CPUs, {info[1]} MiB",
            )

        try:
            return self._call(run)
        except HostUnreachable as exc:
            return HostHealth(reachable=False, detail=str(exc))

    @staticmethod
    def _free_disk(conn: Any) -> int | None:
        """Free space of the storage pool VMs live in: 'default' if defined, else the roomiest."""
        try:
            pools = [p for p in conn.listAllStoragePools() if p.isActive()]
        except _libvirt.libvirtError:
            return None
        if not pools:
            return None
        for pool in pools:
            if pool.name() == "default":
                return int(pool.info()[3])
        return max(int(p.info()[3]) for p in pools)

    def close(self) -> None:
        """The connection is shared by every Backend of the URI: only the last one closes it."""
        if self._closed:
            return
        self._closed = True
        with _connections_lock:
            _users[self.uri] = remaining = _users.get(self.uri, 1) - 1
        if remaining <= 0:
            forget_connection(self.uri)
