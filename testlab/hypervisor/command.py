"""Physical test hosts driven by site commands: IPMI power, PXE reinstall, PDU power cycle.

Each operation is a shell command template from `options["commands"]`, with `{domain}`, `{snapshot}`
and `{host}` placeholders substituted shell-quoted. A "revert" of a physical host is a reinstall of the
named install profile. Exit status conventions: 0 success, 3 the domain does not exist, 4 the snapshot
(install profile) does not exist, 5 the host cannot be reached; anything else is a failure. `state`
prints one of off/running/paused/missing as its last line; `list_snapshots`, if configured, prints
one name per line; `health`, if configured, may print the free disk bytes as its last line.

Every run is recorded (`last_results[op]`, and the "testlab.hypervisor.command" logger) because a
failed reinstall is only debuggable from its output.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import string
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from testlab.hypervisor.base import (
    Backend,
    DomainMissing,
    DomainState,
    HostHealth,
    HostUnreachable,
    HypervisorError,
    OperationFailed,
    OperationTimedOut,
    SnapshotMissing,
)

log = logging.getLogger("testlab.hypervisor.command")

REQUIRED = ("power_on", "power_off", "state", "revert")
OPTIONAL = ("power_cycle", "health", "list_snapshots", "create_snapshot")
PLACEHOLDERS = frozenset({"domain", "snapshot", "host"})

#: Seconds; a reinstall takes long, a power query should not.
DEFAULT_TIMEOUTS: Mapping[str, float] = {
    "power_on": 120.0,
    "power_off": 120.0,
    "state": 60.0,
    "revert": 3600.0,
    "power_cycle": 600.0,
    "health": 60.0,
    "list_snapshots": 60.0,
    "create_snapshot": 3600.0,
}

EXIT_DOMAIN_MISSING = 3
EXIT_SNAPSHOT_MISSING = 4
EXIT_UNREACHABLE = 5

_OUTPUT_KEEP = 64 * 1024  # bytes of output kept per run
_TAIL_LINES = 10  # lines of output quoted in error messages


@dataclass(frozen=True, slots=True)
class CommandResult:
    op: str
    command: str
    returncode: int | None  # None: killed at its deadline
    output: str
    duration: float

    @property
    def tail(self) -> str:
        return "\n".join(self.output.rstrip().splitlines()[-_TAIL_LINES:])


class CommandBackend(Backend):
    """Options: `commands` (op -> template, required), `timeouts` (op -> seconds), `snapshots` (the
    install profiles to report when no `list_snapshots` command is configured)."""

    kind = "command"

    def __init__(self, host: str, uri: str, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(host, uri, options)
        commands = self.options.get("commands")
        if not isinstance(commands, Mapping):
            raise ValueError(
                f"command backend of host {host!r} needs options.commands (operation -> command)"
            )
        missing = [op for op in REQUIRED if not commands.get(op)]
        if missing:
            raise ValueError(f"command backend of host {host!r} lacks commands for: {', '.join(missing)}")
        unknown = sorted(set(commands) - set(REQUIRED) - set(OPTIONAL))
        if unknown:
            raise ValueError(f"command backend of host {host!r}: unknown operations {', '.join(unknown)}")
        for op, template in commands.items():
            if not isinstance(template, str):
                raise ValueError(f"command for {op!r} of host {host!r} must be a string")
            fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
            if fields - PLACEHOLDERS:
                raise ValueError(
                    f"command for {op!r} of host {host!r} uses unknown placeholders "
                    f"{', '.join(sorted(fields - PLACEHOLDERS))} (known: domain, snapshot, host)"
                )
        self.commands: dict[str, str] = dict(commands)
        self.timeouts = {**DEFAULT_TIMEOUTS, **dict(self.options.get("timeouts") or {})}
        self.last_results: dict[str, CommandResult] = {}
        self._lock = threading.Lock()

    def run(self, op: str, domain: str = "", snapshot: str = "") -> CommandResult:
        """Run the command of `op`; raise the typed error its exit status means."""
        template = self.commands.get(op)
        if not template:
            raise OperationFailed(f"no {op} command is configured for host {self.host!r}", host=self.host)
        values = {"domain": domain, "snapshot": snapshot, "host": self.host}
        command = template.format_map({k: shlex.quote(v) for k, v in values.items()})
        result = self._execute(op, command, self.timeouts[op])
        with self._lock:
            self.last_results[op] = result
        where = f"host {self.host!r}" + (f" domain {domain!r}" if domain else "")
        if result.returncode is None:
            log.warning(
                "%s on %s: killed after %.1f s: %s\n%s", op, where, result.duration, command, result.tail
            )
            raise OperationTimedOut(
                f"{op} on {where} overran {self.timeouts[op]:g} s; output ends: {result.tail}",
                host=self.host,
                domain=domain or None,
            )
        log.log(
            logging.INFO if result.returncode == 0 else logging.WARNING,
            "%s on %s: exit %s after %.1f s: %s\n%s",
            op,
            where,
            result.returncode,
            result.duration,
            command,
            result.tail,
        )
        if result.returncode != 0:
            raise self._typed(op, where, result, domain)
        return result

    def _typed(self, op: str, where: str, result: CommandResult, domain: str) -> HypervisorError:
        kind: type[HypervisorError] = {
            EXIT_DOMAIN_MISSING: DomainMissing,
            EXIT_SNAPSHOT_MISSING: SnapshotMissing,
            EXIT_UNREACHABLE: HostUnreachable,
        }.get(result.returncode or 0, OperationFailed)
        return kind(
            f"{op} on {where} failed with exit status {result.returncode}: {result.tail}",
            host=self.host,
            domain=domain or None,
        )

    @staticmethod
    def _execute(op: str, command: str, timeout: float) -> CommandResult:
        started = time.monotonic()
        proc = subprocess.Popen(
            ["/bin/sh", "-c", command],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        returncode: int | None
        try:
            out, _ = proc.communicate(timeout=timeout)
            returncode = proc.returncode
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            try:
                out, _ = proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:  # a grandchild in another group holds the pipe
                proc.kill()
                out = b""
            returncode = None
        text = out[-_OUTPUT_KEEP:].decode("utf-8", "replace")
        return CommandResult(op, command, returncode, text, time.monotonic() - started)

    # ---- Backend

    def state(self, domain: str) -> DomainState:
        try:
            result = self.run("state", domain)
        except DomainMissing:
            return DomainState.MISSING
        lines = result.output.strip().splitlines()
        word = lines[-1].strip().lower() if lines else ""
        try:
            return DomainState(word)
        except ValueError:
            raise OperationFailed(
                f"state command of host {self.host!r} printed {word!r}, not off/running/paused/missing",
                host=self.host,
                domain=domain,
            ) from None

    def power_on(self, domain: str) -> None:
        self.run("power_on", domain)

    def power_off(self, domain: str) -> None:
        self.run("power_off", domain)

    def revert(self, domain: str, snapshot: str) -> None:
        self.run("revert", domain, snapshot)

    def list_snapshots(self, domain: str) -> list[str]:
        if "list_snapshots" in self.commands:
            result = self.run("list_snapshots", domain)
            return sorted({line.strip() for line in result.output.splitlines() if line.strip()})
        if self.state(domain) == DomainState.MISSING:
            raise DomainMissing(f"domain {domain!r} does not exist", host=self.host, domain=domain)
        return sorted(str(s) for s in self.options.get("snapshots") or [])

    def create_snapshot(self, domain: str, name: str) -> None:
        self.run("create_snapshot", domain, name)

    def power_cycle(self) -> None:
        self.run("power_cycle")

    def health(self) -> HostHealth:
        if "health" not in self.commands:
            return HostHealth(reachable=True, detail="no health command configured")
        try:
            result = self.run("health")
        except (OperationFailed, HostUnreachable, OperationTimedOut) as exc:
            return HostHealth(reachable=False, detail=str(exc))
        lines = result.output.strip().splitlines()
        last = lines[-1].strip() if lines else ""
        free = int(last) if last.isdigit() else None
        return HostHealth(reachable=True, free_disk_bytes=free, detail=result.tail)
