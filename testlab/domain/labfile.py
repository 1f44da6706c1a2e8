"""The lab file: which hosts exist, how to reach them, and which VMs (host, domain, snapshot) they carry.

The one parser of this format, used by the CLI and the engine (the REST API and shards will use it
too). It is pure: it reads the file and checks it, nothing else; applying a lab to the database is
the services' job. `dump_lab` writes the same format back (e.g. `testlab lab export`), leaving
defaults out so the output reads like a hand-written file.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import yaml

from testlab.domain.commands import (
    BACKEND_COMMANDS,
    COMMAND_OPERATIONS,
    REQUIRED_COMMANDS,
    template_problem,
)
from testlab.domain.durations import format_duration
from testlab.domain.errors import DefinitionError
from testlab.domain.hostoptions import dump_host_options, parse_host_options
from testlab.domain.inputlimits import (
    INT32_MAX,
    INT64_MAX,
    MAX_DOMAIN_NAME,
    MAX_HOSTS,
    MAX_LAB_DURATION,
    MAX_LAB_FILE_BYTES,
    MAX_LABELS,
    MAX_NAME,
    MAX_VMS,
)
from testlab.domain.limits import HostLimits, host_limits
from testlab.domain.sizes import format_size
from testlab.domain.statuses import VMRole
from testlab.domain.yamlsource import (
    DOMAIN_NAME_PATTERN,
    DOMAIN_NAME_RULE,
    FrozenMap,
    MapReader,
    check_size,
    load_top_mapping,
    read_source,
    sub_readers,
)
from testlab.lifecycle.reuse import DEFAULT_K, DEFAULT_WIPE, ReusePolicy, Wipe

BACKENDS = ("local", "libvirt", "command")
# How libvirt runs a host's domains: `kvm` (hardware virtualisation, the default) or `qemu` (software
# emulation, for hosts without usable virtualisation extensions). Used when testlab defines a domain.
DOMAIN_TYPES = ("kvm", "qemu")
LAB_VM_ROLES = (VMRole.BASE, VMRole.EXTRA, VMRole.RETIRED)  # `deleted` is a database state only

_HOST_KEYS = (
    "name",
    "backend",
    "uri",
    "limits",
    "min_free_disk",
    "options",
    "commands",
    "agent_token_file",
    "domain_type",
    "description",
)
_VM_KEYS = (
    "name",
    "host",
    "domain",
    "snapshot",
    "role",
    "labels",
    "description",
    "agent",
    "wipe",
    "max_uses",
    "wipe_after_failure",
    "protect_after",
)
_REUSE_KEYS = ("max_uses", "wipe_after_failure", "protect_after")  # meaningful with `wipe: reuse` only
_LIMIT_INTS = (
    "max_active",
    "max_running",
    "max_reverting",
    "max_reverts_while_running",
    "max_ready_when_idle",
)
_DEFAULT_LIMITS = HostLimits()


@dataclass(frozen=True)
class HostDef:
    name: str
    backend: str
    uri: str
    limits: HostLimits = field(default_factory=HostLimits)
    commands: Mapping[str, str] = field(default_factory=FrozenMap)
    agent_token_file: str | None = None
    description: str = ""
    options: Mapping[str, Any] = field(default_factory=FrozenMap)  # backend options
    min_free_disk: int | None = None  # bytes; a host with less free disk gets no new reverts
    domain_type: str | None = None  # libvirt hosts only; None: kvm

    def __post_init__(self) -> None:
        # Callers building definitions from the database pass plain dicts; keep the value immutable.
        if not isinstance(self.commands, FrozenMap):
            object.__setattr__(self, "commands", FrozenMap(self.commands))
        if not isinstance(self.options, FrozenMap):
            object.__setattr__(self, "options", FrozenMap(self.options))


@dataclass(frozen=True)
class VMDef:
    name: str
    host: str
    domain: str
    snapshot: str
    role: str = VMRole.BASE
    labels: tuple[str, ...] = ()
    description: str = ""
    agent: str | None = None
    # When the VM is wiped (docs/lifecycle.md); the parser fills in its host backend's default.
    reuse: ReusePolicy = field(default_factory=ReusePolicy)

    def __post_init__(self) -> None:
        if not isinstance(self.labels, tuple):
            object.__setattr__(self, "labels", tuple(self.labels))


@dataclass(frozen=True)
class LabDef:
    hosts: tuple[HostDef, ...]
    vms: tuple[VMDef, ...]

    def host(self, name: str) -> HostDef | None:
        return next((h for h in self.hosts if h.name == name), None)

    def vm(self, name: str) -> VMDef | None:
        return next((v for v in self.vms if v.name == name), None)


def parse_lab(path: Path) -> LabDef:
    """Read and check a lab file; relative paths in it are relative to the file's directory."""
    path = Path(path)
    return parse_lab_text(
        read_source(path, max_bytes=MAX_LAB_FILE_BYTES), source=str(path), base_dir=path.parent
    )


def parse_lab_text(text: str, source: str = "<lab>", base_dir: Path | None = None) -> LabDef:
    """Check lab text. `base_dir` anchors relative paths (the current directory when None)."""
    check_size(text, MAX_LAB_FILE_BYTES, source)
    top = MapReader(load_top_mapping(text, source, "hosts: and vms:"), source)
    top.check_keys(("hosts", "vms"), required=("hosts", "vms"))
    anchor = (base_dir if base_dir is not None else Path.cwd()).absolute()

    hosts: list[HostDef] = []
    host_lines: dict[str, int] = {}
    local_dirs: dict[PurePosixPath, tuple[str, int]] = {}
    for reader in sub_readers(top, "hosts", max_items=MAX_HOSTS):
        host = _parse_host(reader, anchor)
        if host.name in host_lines:
            raise reader.error(
                "name", f"duplicate host name {host.name!r} (first on line {host_lines[host.name]})"
            )
        host_lines[host.name] = reader.line("name")
        if host.backend == "local":
            _check_own_directory(reader, host, local_dirs)
        hosts.append(host)

    vms: list[VMDef] = []
    vm_lines: dict[str, int] = {}
    config_lines: dict[tuple[str, str, str], tuple[str, int]] = {}
    for reader in sub_readers(top, "vms", max_items=MAX_VMS):
        vm = _parse_vm(reader, host_lines, {h.name: h.backend for h in hosts})
        if vm.name in vm_lines:
            raise reader.error("name", f"duplicate VM name {vm.name!r} (first on line {vm_lines[vm.name]})")
        key = (vm.host, vm.domain, vm.snapshot)
        if key in config_lines:
            other, line = config_lines[key]
            raise reader.error(
                "snapshot",
                f"VM {other!r} (line {line}) already uses domain {vm.domain!r} with snapshot "
                f"{vm.snapshot!r} on host {vm.host!r}",
            )
        vm_lines[vm.name] = reader.line("name")
        config_lines[key] = (vm.name, reader.line())
        vms.append(vm)
    return LabDef(hosts=tuple(hosts), vms=tuple(vms))


def _parse_host(reader: MapReader, anchor: Path) -> HostDef:
    reader.check_keys(_HOST_KEYS, required=("name", "backend", "uri"))
    name = reader.string("name", name=True)
    backend = reader.string("backend", choices=BACKENDS)
    uri = reader.string("uri")
    if backend == "local":
        _check_local_uri(reader, uri)
    commands = reader.string_map("commands")
    for operation, command in commands.items():
        if operation not in COMMAND_OPERATIONS:
            problem = f"unknown operation (allowed: {', '.join(COMMAND_OPERATIONS)})"
        elif operation not in BACKEND_COMMANDS[backend]:
            problem = (
                f"a {backend} host runs no {operation} command (only {', '.join(BACKEND_COMMANDS[backend])})"
            )
        elif not command.strip():
            problem = "must not be empty"
        else:
            problem = template_problem(command)
        if problem:
            raise reader.error(
                None,
                problem,
                line=reader.data["commands"].key_line(operation),
                field=f"{reader.field('commands')}.{operation}",
            )
    if backend == "command":
        missing = [op for op in REQUIRED_COMMANDS if op not in commands]
        if missing:
            where = "commands" if reader.has("commands") else None
            raise reader.error(
                where,
                f"missing {', '.join(missing)} (required by backend 'command')",
                field=reader.field("commands"),
            )
    domain_type = None
    if reader.has("domain_type"):
        if backend != "libvirt":
            raise reader.error("domain_type", f"only libvirt hosts have a domain type, not {backend} hosts")
        domain_type = reader.string("domain_type", choices=DOMAIN_TYPES)
    token_file = reader.existing_file("agent_token_file", anchor) if reader.has("agent_token_file") else None
    return HostDef(
        name=name,
        backend=backend,
        uri=uri,
        limits=_parse_limits(reader),
        commands=commands,
        agent_token_file=token_file,
        description=reader.text("description"),
        domain_type=domain_type,
        options=parse_host_options(reader, backend, anchor),
        min_free_disk=reader.size("min_free_disk", None, maximum=INT64_MAX),
    )


def _check_local_uri(reader: MapReader, uri: str) -> None:
    # The sandbox root must not depend on the directory the engine happens to start in.
    prefix = "local://"
    if not uri.startswith(prefix) or not uri[len(prefix) :].startswith("/"):
        raise reader.error("uri", f"expected local:///absolute/path for a local host, got {uri!r}")
    if Path(uri[len(prefix) :]) == Path("/"):
        raise reader.error("uri", "a local host needs its own directory, not '/'")
    if ".." in Path(uri[len(prefix) :]).parts:
        raise reader.error("uri", f"the path of a local URI must not contain '..', got {uri!r}")


def _local_dir(uri: str) -> PurePosixPath:
    # normpath keeps a leading '//' (POSIX leaves its meaning open); Linux reads it as '/'.
    return PurePosixPath(os.path.normpath("/" + uri[len("local://") :].lstrip("/")))


def _check_own_directory(
    reader: MapReader, host: HostDef, seen: dict[PurePosixPath, tuple[str, int]]
) -> None:
    """Two local hosts in one directory (or one inside the other) would share, and break, domains."""
    directory = _local_dir(host.uri)
    for other_dir, (other, line) in seen.items():
        if other_dir == directory:
            where = f"is the directory of host {other!r} (line {line})"
        elif directory.is_relative_to(other_dir):
            where = f"lies inside the directory of host {other!r} (line {line})"
        elif other_dir.is_relative_to(directory):
            where = f"holds the directory of host {other!r} (line {line})"
        else:
            continue
        raise reader.error("uri", f"{str(directory)!r} {where}: each local host needs a directory of its own")
    seen[directory] = (host.name, reader.line("name"))


def _parse_limits(host: MapReader) -> HostLimits:
    reader = host.mapping("limits")
    if reader is None:
        return host_limits({})
    reader.check_keys((*_LIMIT_INTS, "sleep_after_revert"))
    values: dict[str, Any] = {
        key: reader.integer(key, 0, minimum=0, maximum=INT32_MAX) for key in _LIMIT_INTS if reader.has(key)
    }
    values["sleep_after_revert"] = reader.duration(
        "sleep_after_revert", _DEFAULT_LIMITS.sleep_after_revert, maximum=MAX_LAB_DURATION
    )
    return host_limits(values)


def _parse_vm(reader: MapReader, host_lines: Mapping[str, int], backends: Mapping[str, str]) -> VMDef:
    reader.check_keys(_VM_KEYS, required=("name", "host", "snapshot"))
    name = reader.string("name", name=True)
    host = reader.string("host")
    if host not in host_lines:
        known = ", ".join(host_lines) or "none"
        raise reader.error("host", f"unknown host {host!r} (hosts: {known})")
    reuse = _parse_reuse(reader, backends[host])
    agent = reader.string("agent", None)
    if agent is not None:
        problem = _agent_url_problem(agent)
        if problem:
            raise reader.error("agent", problem)
    return VMDef(
        name=name,
        host=host,
        domain=_domain_name(reader, "domain", name),
        snapshot=_domain_name(reader, "snapshot"),
        role=reader.string("role", VMRole.BASE, choices=LAB_VM_ROLES),
        labels=reader.string_list("labels", check=_label_problem, max_items=MAX_LABELS, max_length=MAX_NAME),
        description=reader.text("description"),
        agent=agent,
        reuse=reuse,
    )


def _parse_reuse(reader: MapReader, backend: str) -> ReusePolicy:
    wipe = reader.string("wipe", DEFAULT_WIPE[backend], choices=Wipe.ALL)
    if wipe != Wipe.REUSE:
        for key in _REUSE_KEYS:
            if reader.has(key):
                raise reader.error(key, "goes with 'wipe: reuse' (this VM is wiped before every task)")
    max_uses = (
        reader.integer("max_uses", None, minimum=1, maximum=INT32_MAX) if reader.has("max_uses") else None
    )
    return ReusePolicy(
        wipe=wipe,
        max_uses=max_uses,
        wipe_after_failure=reader.boolean("wipe_after_failure", True),
        protect_after=reader.integer("protect_after", DEFAULT_K, minimum=0, maximum=1000),
    )


def _domain_name(reader: MapReader, key: str, *default: str) -> str:
    """A domain or snapshot name every backend accepts, checked here so the error has its line."""
    value = reader.string(key, *default, max_length=MAX_DOMAIN_NAME)
    if not DOMAIN_NAME_PATTERN.fullmatch(value):
        raise reader.error(key, f"invalid {key} name {value!r}: use {DOMAIN_NAME_RULE}")
    return value


def _label_problem(label: str) -> str | None:
    if any(ch.isspace() or ch == "," for ch in label):
        return f"invalid label {label!r}: no spaces or commas"
    return None


def _agent_url_problem(url: str) -> str | None:
    expected = f"expected an agent URL like http://HOST:PORT, got {url!r}"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return expected
    if parts.scheme not in ("http", "https") or not parts.hostname or port is None:
        return expected
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        return expected
    return None


def dump_lab(lab: LabDef) -> str:
    """YAML that `parse_lab_text` reads back to an equal LabDef; fields at their defaults are left out."""
    hosts = []
    for host in lab.hosts:
        item: dict[str, Any] = {"name": host.name, "backend": host.backend, "uri": host.uri}
        limits = {
            f.name: getattr(host.limits, f.name)
            for f in dataclasses.fields(HostLimits)
            if getattr(host.limits, f.name) != getattr(_DEFAULT_LIMITS, f.name)
        }
        if host_limits(limits) != host.limits:  # revert limits that do not follow the others
            limits["max_reverting"] = host.limits.max_reverting
            limits["max_reverts_while_running"] = host.limits.max_reverts_while_running
        if "sleep_after_revert" in limits:
            limits["sleep_after_revert"] = format_duration(limits["sleep_after_revert"])
        if limits:
            item["limits"] = limits
        if host.min_free_disk is not None:
            size = format_size(host.min_free_disk)
            item["min_free_disk"] = int(size) if size.isdigit() else size
        if host.options:
            item["options"] = dump_host_options(host.options)
        if host.commands:
            item["commands"] = dict(host.commands)
        if host.agent_token_file is not None:
            item["agent_token_file"] = host.agent_token_file
        if host.domain_type is not None:
            item["domain_type"] = host.domain_type
        if host.description:
            item["description"] = host.description
        hosts.append(item)
    vms = []
    for vm in lab.vms:
        item = {"name": vm.name, "host": vm.host}
        if vm.domain != vm.name:
            item["domain"] = vm.domain
        item["snapshot"] = vm.snapshot
        if vm.role != VMRole.BASE:
            item["role"] = vm.role
        if vm.labels:
            item["labels"] = list(vm.labels)
        if vm.description:
            item["description"] = vm.description
        if vm.agent is not None:
            item["agent"] = vm.agent
        host = lab.host(vm.host)
        if host is None or vm.reuse.wipe != DEFAULT_WIPE[host.backend]:
            item["wipe"] = vm.reuse.wipe
        if vm.reuse.reuse:
            if vm.reuse.max_uses is not None:
                item["max_uses"] = vm.reuse.max_uses
            if not vm.reuse.wipe_after_failure:
                item["wipe_after_failure"] = False
            if vm.reuse.protect_after != DEFAULT_K:
                item["protect_after"] = vm.reuse.protect_after
        vms.append(item)
    return yaml.dump(
        {"hosts": hosts, "vms": vms},
        Dumper=_Dumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=100,
    )


class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]
    """Writes label lists inline (`labels: [win10, fr]`) like people do; everything else in block style."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    inline = all(isinstance(item, str) for item in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=inline)


_Dumper.add_representer(list, _represent_list)


__all__ = [
    "BACKENDS",
    "COMMAND_OPERATIONS",
    "DOMAIN_TYPES",
    "DefinitionError",
    "HostDef",
    "LabDef",
    "VMDef",
    "dump_lab",
    "parse_lab",
    "parse_lab_text",
]
