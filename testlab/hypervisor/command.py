"""Physical test hosts driven by site commands: IPMI power, PXE reinstall, PDU power cycle.

Each operation is a shell command template from `options["commands"]`, run by the shared
`testlab.hypervisor.runner.CommandRunner` (placeholders, deadlines, process groups, exit status
conventions, the record of every run). A "revert" of a physical host is a reinstall of the named
install profile. `state` prints one of off/running/paused/missing as its last line; `list_snapshots`,
if configured, prints one name per line; `health`, if configured, may print the free disk bytes as its
last line.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from testlab.domain.commands import REQUIRED_COMMANDS
from testlab.hypervisor.base import (
    Backend,
    DomainMissing,
    DomainState,
    HostHealth,
    HostUnreachable,
    OperationFailed,
    OperationTimedOut,
)
from testlab.hypervisor.runner import OPERATIONS, CommandResult

REQUIRED = REQUIRED_COMMANDS  # shared with the lab-file parser

__all__ = ["REQUIRED", "CommandBackend", "CommandResult"]


class CommandBackend(Backend):
    """Options: `commands` (op -> template, required), `timeouts` (op -> seconds), `snapshots` (the
    install profiles to report when no `list_snapshots` command is configured)."""

    kind = "command"
    option_names = frozenset({"snapshots"})
    command_operations = OPERATIONS

    def __init__(self, host: str, uri: str, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(host, uri, options)
        if not self.runner.templates and not isinstance(self.options.get("commands"), Mapping):
            raise ValueError(
                f"command backend of host {host!r} needs options.commands (operation -> command)"
            )
        missing = [op for op in REQUIRED if op not in self.runner]
        if missing:
            raise ValueError(f"command backend of host {host!r} lacks commands for: {', '.join(missing)}")
        snapshots = self.options.get("snapshots", [])
        if not isinstance(snapshots, list | tuple) or not all(isinstance(s, str) and s for s in snapshots):
            raise ValueError(f"command backend of host {host!r}: snapshots must be a list of names")
        self.snapshots: list[str] = sorted(set(snapshots))
        self.commands = self.runner.templates
        #: the commands' deadlines (seconds), defaults included
        self.timeouts = self.runner.timeouts
        self.last_results = self.runner.last_results

    def run(self, op: str, domain: str = "", snapshot: str = "") -> CommandResult:
        """Run the command of `op`; raise the typed error its exit status means."""
        return self.runner.run(op, domain, snapshot)

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
        return list(self.snapshots)

    def create_snapshot(self, domain: str, name: str) -> None:
        self.run("create_snapshot", domain, name)

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
