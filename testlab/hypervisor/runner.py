"""Site commands a host's lab definition gives (IPMI, PDU, PXE reinstall), run the same way for every
backend.

A `command` host does everything through such commands; the other backends run only those they cannot
do themselves (a frozen hypervisor is power-cycled through its BMC). Each template has `{domain}`,
`{snapshot}` and `{host}` placeholders, substituted shell-quoted. Each run has a deadline and a process
group of its own, killed whole when the deadline passes, because a hung `ipmitool` must not hold a
thread forever nor leave children behind. Exit status conventions: 0 success, 3 the domain does not
exist, 4 the snapshot does not exist, 5 the host cannot be reached; anything else is a failure.

Every run is recorded (`last_results[op]`, and the "testlab.hypervisor.command" logger) because a
failed reinstall or power cycle is only debuggable from its output.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from testlab.domain.commands import COMMAND_OPERATIONS, COMMAND_PLACEHOLDERS, template_problem
from testlab.hypervisor.base import (
    DomainMissing,
    HostUnreachable,
    HypervisorError,
    OperationFailed,
    OperationTimedOut,
    SnapshotMissing,
)

log = logging.getLogger("testlab.hypervisor.command")

#: Every operation a command template may exist for (which ones a backend runs is its own choice).
#: Shared with the lab-file parser (testlab/domain/commands.py), which refuses what the runner would.
OPERATIONS = COMMAND_OPERATIONS
PLACEHOLDERS = frozenset(COMMAND_PLACEHOLDERS)

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
_DRAIN_SECONDS = 5.0  # after a kill, how long to wait for the output pipe to close


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


class CommandRunner:
    """The command templates of one host, checked when the backend is built so that a typo in a lab
    file is refused at once rather than discovered when a frozen hypervisor needs its power cycle.

    `allowed` is the operations the backend runs through commands; a template for any other operation
    is refused (it would be silently ignored otherwise). `timeouts` overrides DEFAULT_TIMEOUTS.
    """

    def __init__(
        self,
        host: str,
        templates: Mapping[str, str] | None,
        *,
        allowed: Collection[str],
        timeouts: Mapping[str, float] | None = None,
        kind: str = "",
    ) -> None:
        where = f"{kind} backend of host {host!r}" if kind else f"host {host!r}"
        if templates is None:
            templates = {}
        if not isinstance(templates, Mapping):
            raise ValueError(f"{where}: commands must map an operation to a command, not {templates!r}")
        unknown = sorted(set(templates) - set(allowed))
        if unknown:
            raise ValueError(
                f"{where}: unknown operations {', '.join(unknown)} "
                f"(it runs commands for: {', '.join(sorted(allowed)) or 'none'})"
            )
        for op, template in templates.items():
            if not isinstance(template, str) or not template.strip():
                raise ValueError(f"command for {op!r} of host {host!r} must be a non-empty string")
            problem = template_problem(template)
            if problem:
                raise ValueError(f"command for {op!r} of host {host!r}: {problem}")
        self.host = host
        self.templates: dict[str, str] = dict(templates)
        self.timeouts: dict[str, float] = {**DEFAULT_TIMEOUTS, **(timeouts or {})}
        self.last_results: dict[str, CommandResult] = {}
        self._lock = threading.Lock()

    def __contains__(self, op: object) -> bool:
        return op in self.templates

    def run(self, op: str, domain: str = "", snapshot: str = "") -> CommandResult:
        """Run the command of `op` under its deadline; raise the typed error its exit status means."""
        template = self.templates.get(op)
        if not template:
            raise OperationFailed(f"no {op} command is configured for host {self.host!r}", host=self.host)
        values = {"domain": domain, "snapshot": snapshot, "host": self.host}
        command = template.format_map({k: shlex.quote(v) for k, v in values.items()})
        result = execute(op, command, self.timeouts[op])
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


def execute(op: str, command: str, timeout: float) -> CommandResult:
    """Run one shell command in a process group of its own; at the deadline the whole group is killed
    and the result has no return code."""
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
            out, _ = proc.communicate(timeout=_DRAIN_SECONDS)
        except subprocess.TimeoutExpired:  # a grandchild in another group holds the pipe
            proc.kill()
            out = b""
        returncode = None
    text = out[-_OUTPUT_KEEP:].decode("utf-8", "replace")
    return CommandResult(op, command, returncode, text, time.monotonic() - started)
