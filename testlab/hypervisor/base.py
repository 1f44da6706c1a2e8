"""The one interface the engine uses to drive a host's domains, and its typed errors.

A `Backend` makes blocking calls (libvirt's API, subprocesses, file copies); the engine never calls
it directly but through `testlab.hypervisor.driver.HostDriver`, which runs each call in the host's
bounded thread pool under a deadline.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from testlab.domain.hostoptions import BACKEND_OPERATIONS

if TYPE_CHECKING:
    from testlab.hypervisor.runner import CommandRunner

#: The operations of the interface; the keys of a host's `timeouts` option (named where the lab
#: file's parser reads them).
OPERATIONS = BACKEND_OPERATIONS
#: Seconds the driver waits beyond a command's own deadline, so the command's output reaches the error.
COMMAND_DEADLINE_MARGIN = 10.0


class DomainState(enum.StrEnum):
    OFF = "off"
    RUNNING = "running"
    PAUSED = "paused"
    MISSING = "missing"


@dataclass(frozen=True, slots=True)
class HostHealth:
    reachable: bool
    free_disk_bytes: int | None = None  # None: the backend cannot tell
    detail: str = ""


@dataclass(frozen=True, slots=True)
class AgentAddress:
    """Where the guest agent of a domain listens, when the backend knows it (the local backend)."""

    url: str
    token: str


class HypervisorError(Exception):
    """Base of all backend errors. All of them are infrastructure errors, never test failures."""

    def __init__(self, message: str, *, host: str | None = None, domain: str | None = None) -> None:
        super().__init__(message)
        self.host = host
        self.domain = domain


class HostUnreachable(HypervisorError):
    """The host (or its hypervisor daemon) cannot be reached: counts against the host, not the VM."""


class DomainMissing(HypervisorError):
    """The hypervisor does not know the domain."""


class SnapshotMissing(HypervisorError):
    """The domain has no snapshot of that name."""


class OperationFailed(HypervisorError):
    """The hypervisor refused or failed the operation."""


class OperationTimedOut(HypervisorError):
    """The call overran its deadline; the engine treats the domain as being in an unknown state."""


#: The typed errors by class name, as fault plans and the local hypervisor process's answers name them.
ERRORS_BY_NAME: Mapping[str, type[HypervisorError]] = {
    cls.__name__: cls
    for cls in (HostUnreachable, DomainMissing, SnapshotMissing, OperationFailed, OperationTimedOut)
}


class Backend(abc.ABC):
    """Blocking operations on one host's domains. One instance per host; thread-safe.

    `options` are the host's backend options from the lab file, with its `commands` (operation ->
    shell command template). Every backend takes `commands` for the operations in
    `command_operations` and `timeouts` (operation -> seconds, applied by the host's driver); a
    subclass lists its own options in `option_names`. Anything else is refused with a ValueError at
    once: a misspelt option silently ignored would only show when it matters.
    """

    #: name used in lab files (`backend: local`)
    kind: str = ""
    #: options of this backend besides `commands` and `timeouts`
    option_names: frozenset[str] = frozenset()
    #: operations a lab file may give a command for: a frozen hypervisor is power-cycled by its BMC
    command_operations: tuple[str, ...] = ("power_cycle",)

    def __init__(self, host: str, uri: str, options: Mapping[str, Any] | None = None) -> None:
        from testlab.hypervisor.runner import CommandRunner  # the runner needs this module's errors

        self.host = host
        self.uri = uri
        self.options = dict(options or {})
        known = {"commands", "timeouts", *self.option_names}
        unknown = sorted(set(self.options) - known)
        if unknown:
            raise ValueError(
                f"{self.kind or 'the'} backend of host {host!r}: unknown options {', '.join(unknown)} "
                f"(known: {', '.join(sorted(known))})"
            )
        #: per-operation deadlines the lab file gives (seconds); the host's driver applies them
        self.timeouts: dict[str, float] = self._timeouts_option()
        self.runner: CommandRunner = CommandRunner(
            host,
            self.options.get("commands"),
            allowed=self.command_operations,
            timeouts=self.timeouts,
            kind=self.kind,
        )

    def _timeouts_option(self) -> dict[str, float]:
        value = self.options.get("timeouts")
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ValueError(
                f"{self.kind} backend of host {self.host!r}: timeouts must map an operation to seconds"
            )
        unknown = sorted(set(value) - set(OPERATIONS))
        if unknown:
            raise ValueError(
                f"{self.kind} backend of host {self.host!r}: timeouts for unknown operations "
                f"{', '.join(map(str, unknown))} (known: {', '.join(OPERATIONS)})"
            )
        return {op: self.seconds_option(f"timeouts.{op}", seconds) for op, seconds in value.items()}

    def seconds_option(self, name: str, value: Any) -> float:
        """A positive duration: seconds, or text like "90s", "30m", "1h30m" (a ValueError says which
        option of which host is wrong)."""
        from testlab.domain.durations import parse_duration

        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise ValueError(f"{self.kind} backend of host {self.host!r}: option {name}: {exc}") from None
        if seconds <= 0:
            raise ValueError(f"{self.kind} backend of host {self.host!r}: option {name} must be positive")
        return seconds

    def bool_option(self, name: str, default: bool) -> bool:
        value = self.options.get(name, default)
        if not isinstance(value, bool):
            raise ValueError(
                f"{self.kind} backend of host {self.host!r}: option {name} must be true or false, "
                f"not {value!r}"
            )
        return value

    def deadlines(self) -> dict[str, float]:
        """Per-operation deadlines for the host's driver: the lab file's `timeouts`, and for an operation
        run by a command, a little more than the command's own deadline (the command is killed first
        and its output reaches the error)."""
        own = {op: self.runner.timeouts[op] + COMMAND_DEADLINE_MARGIN for op in self.runner.templates}
        return {**self.timeouts, **own}

    @abc.abstractmethod
    def state(self, domain: str) -> DomainState: ...

    @abc.abstractmethod
    def power_on(self, domain: str) -> None: ...

    @abc.abstractmethod
    def power_off(self, domain: str) -> None:
        """Hard power off; powering off an off domain is not an error."""

    @abc.abstractmethod
    def revert(self, domain: str, snapshot: str) -> None:
        """Restore the domain to `snapshot` and leave it running, ready for its agent."""

    @abc.abstractmethod
    def list_snapshots(self, domain: str) -> list[str]: ...

    @abc.abstractmethod
    def create_snapshot(self, domain: str, name: str) -> None: ...

    @abc.abstractmethod
    def health(self) -> HostHealth: ...

    def power_cycle(self) -> None:
        """Power-cycle the whole host with the lab file's `power_cycle` command (IPMI, a switched PDU):
        the way back from a frozen hypervisor, which cannot power-cycle itself."""
        if "power_cycle" not in self.runner:
            raise OperationFailed(
                f"no power-cycle command is configured for host {self.host!r} (commands: power_cycle)",
                host=self.host,
            )
        self.runner.run("power_cycle")

    def agent_address(self, domain: str) -> AgentAddress | None:
        """Where the domain's agent listens, if the backend knows; else the VM's configured agent."""
        return None

    def revert_and_locate(self, domain: str, snapshot: str) -> AgentAddress | None:
        """`revert`, then `agent_address`: the engine asks both after every revert, and a backend in
        another process (testlab/hypervisor/local_process.py) answers them in one round trip."""
        self.revert(domain, snapshot)
        return self.agent_address(domain)

    def ensure_domain(self, domain: str, snapshot: str) -> None:
        """Make sure the domain exists with the snapshot (`lab apply`); backends that cannot create
        domains only check, raising DomainMissing or SnapshotMissing."""
        if self.state(domain) == DomainState.MISSING:
            raise DomainMissing(f"domain {domain!r} does not exist", host=self.host, domain=domain)
        if snapshot not in self.list_snapshots(domain):
            raise SnapshotMissing(
                f"domain {domain!r} has no snapshot {snapshot!r}", host=self.host, domain=domain
            )

    def close(self) -> None:
        """Release connections; the backend may be used again afterwards (it reconnects)."""
        return None
