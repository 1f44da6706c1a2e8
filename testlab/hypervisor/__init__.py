"""Hypervisor backends behind one interface, and the async driver the engine calls them through."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from testlab.hypervisor.base import (
    AgentAddress,
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
from testlab.hypervisor.driver import HostDriver, host_driver
from testlab.hypervisor.faults import FaultPlan, FaultRule, FaultyBackend

__all__ = [
    "AgentAddress",
    "HostConfig",
    "Backend",
    "BACKEND_KINDS",
    "DomainMissing",
    "DomainState",
    "FaultPlan",
    "FaultRule",
    "FaultyBackend",
    "HostDriver",
    "HostHealth",
    "HostUnreachable",
    "HypervisorError",
    "OperationFailed",
    "OperationTimedOut",
    "SnapshotMissing",
    "host_driver",
    "open_backend",
    "open_host",
]


def _local(host: str, uri: str, options: Mapping[str, Any] | None) -> Backend:
    from testlab.hypervisor.local import LocalBackend

    return LocalBackend(host, uri, options)


def _local_process(host: str, uri: str, options: Mapping[str, Any] | None) -> Backend:
    from testlab.hypervisor.local_process import LocalProcessBackend

    return LocalProcessBackend(host, uri, options)


def _libvirt(host: str, uri: str, options: Mapping[str, Any] | None) -> Backend:
    from testlab.hypervisor.libvirt import LibvirtBackend

    return LibvirtBackend(host, uri, options)


def _command(host: str, uri: str, options: Mapping[str, Any] | None) -> Backend:
    from testlab.hypervisor.command import CommandBackend

    return CommandBackend(host, uri, options)


# Imported lazily so a machine without libvirt-python can still run local and command hosts.
BACKEND_KINDS: Mapping[str, Callable[[str, str, Mapping[str, Any] | None], Backend]] = {
    "local": _local,
    "libvirt": _libvirt,
    "command": _command,
}
# The engine's: a backend whose work is done in a process of its own, where the kind has one.
_OWN_PROCESS_KINDS: Mapping[str, Callable[[str, str, Mapping[str, Any] | None], Backend]] = {
    "local": _local_process,
}


def open_backend(
    kind: str,
    host: str,
    uri: str,
    options: Mapping[str, Any] | None = None,
    *,
    own_process: bool = False,
) -> Backend:
    """Build the backend of a host from its lab definition.

    `options["faults"]`, a fault plan as plain data, wraps the backend in a FaultyBackend (tests).
    `own_process`: a local host's work is done in a child process (the engine's choice: testlab/
    hypervisor/local_process.py); libvirt's is libvirtd's and a command host's its commands' already.
    Raises ValueError, with a one-line message, for an unknown kind or a malformed URI or option.
    """
    factory = (_OWN_PROCESS_KINDS.get(kind) if own_process else None) or BACKEND_KINDS.get(kind)
    if factory is None:
        raise ValueError(
            f"unknown backend {kind!r} for host {host!r} (known: {', '.join(sorted(BACKEND_KINDS))})"
        )
    opts = dict(options or {})
    faults = opts.pop("faults", None)
    plan = FaultPlan.from_dict(faults) if faults else None
    backend = factory(host, uri, opts)
    return FaultyBackend(backend, plan) if plan is not None else backend


@dataclass(frozen=True, slots=True)
class HostConfig:
    """What it takes to reach a host, as the lab file and the database describe it."""

    name: str
    backend: str
    uri: str
    commands: Mapping[str, str] = field(default_factory=dict)
    agent_token_file: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)  # backend options from the lab file


def open_host(config: HostConfig, *, own_process: bool = False) -> Backend:
    """The one way a host's backend is built (the engine, the CLI and the demo all come here)."""
    return open_backend(
        config.backend,
        config.name,
        config.uri,
        {**config.options, "commands": dict(config.commands)},
        own_process=own_process,
    )
