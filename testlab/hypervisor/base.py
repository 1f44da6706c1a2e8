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
from typing import Any


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


class Backend(abc.ABC):
    """Blocking operations on one host's domains. One instance per host; thread-safe."""

    #: name used in lab files (`backend: local`)
    kind: str = ""

    def __init__(self, host: str, uri: str, options: Mapping[str, Any] | None = None) -> None:
        self.host = host
        self.uri = uri
        self.options = dict(options or {})

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
        """Power-cycle the whole host (IPMI, PDU...). Only backends with a configured command can."""
        raise OperationFailed("no power-cycle command is configured for this host", host=self.host)

    def agent_address(self, domain: str) -> AgentAddress | None:
        """Where the domain's agent listens, if the backend knows; else the VM's configured agent."""
        return None

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
