"""What-if changes: the lab or the workload as it would be, to compare with how it is.

One change per string, in a small command language a lab owner can type on the command line:

    host vmhost3 max_running=2 max_active=3     limits of a host ('*' or a glob: several hosts)
    vm 'w1064-*' domain=w1064                    a VM's host, domain or role (glob: several VMs)
    add-host vmhost6 like vmhost5                a new host with the limits of another
    load 1.5                                     1.5 times as many job arrivals
    revert mean=60s sd=20s                       lab-wide revert time (or: revert 60s)
"""

from __future__ import annotations

import dataclasses
import fnmatch
import shlex

from testlab.domain.durations import parse_duration
from testlab.domain.errors import DefinitionError
from testlab.domain.labfile import LAB_VM_ROLES, HostDef, LabDef
from testlab.sim.distributions import constant, lognormal
from testlab.sim.workload import Workload

_LIMIT_INTS = (
    "max_active",
    "max_running",
    "max_reverting",
    "max_reverts_while_running",
    "max_ready_when_idle",
)
_VM_KEYS = ("host", "domain", "role")
GRAMMAR = (
    "host NAME KEY=VALUE..., vm NAME KEY=VALUE..., add-host NAME like HOST, load FACTOR, revert DURATION"
)


class WhatIfError(ValueError):
    """A what-if string that cannot be applied; the message is one line naming it."""


def apply_what_if(text: str, lab: LabDef, workload: Workload) -> tuple[LabDef, Workload]:
    """The lab and workload with the change `text` made; WhatIfError if it makes no sense."""
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise WhatIfError(f"what-if {text!r}: {exc}") from None
    if not words:
        raise WhatIfError(f"what-if {text!r}: empty (expected {GRAMMAR})")
    verb, args = words[0], words[1:]
    try:
        if verb == "host":
            return _hosts(args, lab), workload
        if verb == "vm":
            return _vms(args, lab), workload
        if verb == "add-host":
            return _add_host(args, lab), workload
        if verb == "load":
            return lab, _load(args, workload)
        if verb == "revert":
            return lab, _revert(args, workload)
    except (ValueError, DefinitionError) as exc:
        raise WhatIfError(f"what-if {text!r}: {exc}") from None
    raise WhatIfError(f"what-if {text!r}: unknown change {verb!r} (expected {GRAMMAR})")


def _pairs(args: list[str], allowed: tuple[str, ...]) -> dict[str, str]:
    if not args:
        raise ValueError(f"expected KEY=VALUE (keys: {', '.join(allowed)})")
    pairs = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or not value:
            raise ValueError(f"expected KEY=VALUE, got {arg!r}")
        if key not in allowed:
            raise ValueError(f"unknown key {key!r} (keys: {', '.join(allowed)})")
        pairs[key] = value
    return pairs


def _matching(pattern: str, names: list[str], what: str) -> list[str]:
    found = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    if not found:
        raise ValueError(f"no {what} matches {pattern!r}")
    return found


def _hosts(args: list[str], lab: LabDef) -> LabDef:
    if not args:
        raise ValueError("expected a host name and KEY=VALUE changes")
    chosen = set(_matching(args[0], [h.name for h in lab.hosts], "host"))
    changes: dict[str, object] = {}
    for key, value in _pairs(args[1:], (*_LIMIT_INTS, "sleep_after_revert")).items():
        if key == "sleep_after_revert":
            changes[key] = parse_duration(value)
        elif not value.isdigit():
            raise ValueError(f"{key}: expected a non-negative integer, got {value!r}")
        else:
            changes[key] = int(value)
    hosts = tuple(
        dataclasses.replace(h, limits=dataclasses.replace(h.limits, **changes)) if h.name in chosen else h
        for h in lab.hosts
    )
    return dataclasses.replace(lab, hosts=hosts)


def _vms(args: list[str], lab: LabDef) -> LabDef:
    if not args:
        raise ValueError("expected a VM name and KEY=VALUE changes")
    chosen = set(_matching(args[0], [v.name for v in lab.vms], "VM"))
    changes = _pairs(args[1:], _VM_KEYS)
    if "host" in changes and lab.host(changes["host"]) is None:
        raise ValueError(f"unknown host {changes['host']!r}")
    if "role" in changes and changes["role"] not in LAB_VM_ROLES:
        raise ValueError(f"role: expected one of {', '.join(LAB_VM_ROLES)}, got {changes['role']!r}")
    vms = tuple(dataclasses.replace(v, **changes) if v.name in chosen else v for v in lab.vms)
    seen: dict[tuple[str, str, str], str] = {}
    for vm in vms:
        key = (vm.host, vm.domain, vm.snapshot)
        if key in seen:
            raise ValueError(
                f"VMs {seen[key]!r} and {vm.name!r} would share domain {vm.domain!r} on host {vm.host!r} "
                f"with the same snapshot {vm.snapshot!r}"
            )
        seen[key] = vm.name
    return dataclasses.replace(lab, vms=vms)


def _add_host(args: list[str], lab: LabDef) -> LabDef:
    if len(args) != 3 or args[1] != "like":
        raise ValueError("expected: add-host NAME like HOST")
    name, model = args[0], lab.host(args[2])
    if model is None:
        raise ValueError(f"unknown host {args[2]!r}")
    if lab.host(name) is not None:
        raise ValueError(f"host {name!r} already exists")
    host = HostDef(name=name, backend=model.backend, uri=f"{model.uri}#{name}", limits=model.limits)
    return dataclasses.replace(lab, hosts=(*lab.hosts, host))


def _load(args: list[str], workload: Workload) -> Workload:
    try:
        factor = float(args[0]) if len(args) == 1 else -1.0
    except ValueError:
        factor = -1.0
    if factor <= 0:
        raise ValueError(f"expected one factor more than 0 (load 1.5), got {' '.join(args)!r}")
    return workload.scaled(factor)


def _revert(args: list[str], workload: Workload) -> Workload:
    if len(args) == 1 and "=" not in args[0]:
        return dataclasses.replace(workload, revert=constant(parse_duration(args[0])))
    pairs = _pairs(args, ("mean", "sd"))
    if "mean" not in pairs:
        raise ValueError("expected mean=DURATION [sd=DURATION]")
    distribution = lognormal(parse_duration(pairs["mean"]), parse_duration(pairs.get("sd", "0")))
    return dataclasses.replace(workload, revert=distribution)
