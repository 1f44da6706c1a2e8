"""`testlab vm provision`: from a guest image to a VM the engine can use, in one command.

For a VM of the lab on a libvirt host, provisioning gives its domain its own copy of the image's disk,
kernel and initrd (so the image can be rebuilt or removed later), defines the domain (its type from the
lab file, its agent reached through the port of 127.0.0.1 named by the VM's `agent:` URL), boots it,
and takes the VM's clean snapshot (running, with memory) as soon as the guest says it is ready, before
any agent has started: every revert then starts a fresh agent. It checks the result the way the engine
will use it (revert, then the agent answers with the lab's token) and powers the domain off.

A VM sharing an existing domain gets its snapshot from an existing one (`--from`, needed when the
domain has several): revert to it, snapshot. Provisioning a VM whose snapshot exists changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy import select

from testlab.config import Settings
from testlab.db.models import VM
from testlab.db.session import check_schema, session_scope
from testlab.domain.statuses import VMStatus
from testlab.hypervisor import HostDriver, open_backend
from testlab.hypervisor.base import DomainState, HypervisorError
from testlab.hypervisor.libvirt_guest import GuestDefinition, console_log, forwarded_ports, guest_domain_xml
from testlab.image.layout import READY_MARKER, Image, load_image
from testlab.services.errors import UserError
from testlab.services.transitions import record_event
from testlab.services.vms import get_vm

DEFAULT_DISK_DIR = Path("/var/lib/libvirt/images")
LOCAL_URIS = ("qemu:///system", "qemu:///session")
#: Statuses in which the engine leaves a VM's domain alone.
QUIET = (VMStatus.OFF, VMStatus.MAINTENANCE, VMStatus.OFFLINE)
COPY_TIMEOUT = 600.0
DEFINE_TIMEOUT = 60.0
AGENT_TIMEOUT = 120.0

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ProvisionRequest:
    vm: str
    image_dir: Path
    disk_dir: Path = DEFAULT_DISK_DIR
    memory_mib: int = 384
    vcpus: int = 1
    from_snapshot: str | None = None
    boot_timeout: float = 300.0
    by: str = "admin"


@dataclass(frozen=True)
class Target:
    """What the lab says about the VM to provision, checked."""

    vm: str
    host: str
    uri: str
    domain: str
    snapshot: str
    domain_type: str
    agent_url: str
    agent_port: int
    token: str


def _quiet(_message: str) -> None:
    return None


def provision_vm(settings: Settings, request: ProvisionRequest, progress: Progress = _quiet) -> str:
    """Provision the VM named in `request`; returns what was done, for the user."""
    image = load_image(request.image_dir)
    check_schema(settings.database_url)
    with session_scope(settings.database_url) as session:
        target = _target(session, request.vm, image)
    message = asyncio.run(_provision(target, image, request, progress))
    with session_scope(settings.database_url) as session:
        vm = get_vm(session, request.vm)
        record_event(session, "lab", f"vm {vm.name}: {message} (by {request.by})", vm=vm)
    return message


def _target(session, name: str, image: Image) -> Target:
    vm = get_vm(session, name)
    host = vm.host
    where = f"vm {name}"
    if host.backend != "libvirt":
        raise UserError(
            f"{where}: provisioning makes libvirt domains; host {host.name} is a {host.backend} host"
        )
    if host.uri not in LOCAL_URIS:
        raise UserError(
            f"{where}: provisioning writes the domain's disk on this machine, so host {host.name} must be "
            f"{' or '.join(LOCAL_URIS)}, not {host.uri}"
        )
    port = _forwarded_port(vm.agent_url)
    if port is None:
        raise UserError(
            f"{where}: its agent is reached through a port of 127.0.0.1 forwarded to the guest: "
            f"give it `agent: http://127.0.0.1:PORT` in the lab file (it has {vm.agent_url or 'none'})"
        )
    if not host.agent_token_file:
        raise UserError(f"{where}: host {host.name} has no agent_token_file (use {image.token_file})")
    try:
        token = Path(host.agent_token_file).read_text().strip()
    except OSError as exc:
        raise UserError(f"{where}: cannot read {host.agent_token_file}: {exc.strerror}") from None
    if token != image.token():
        raise UserError(
            f"{where}: the image expects the token of {image.token_file}, host {host.name} sends the one "
            f"of {host.agent_token_file}: build the image with --token-file {host.agent_token_file}"
        )
    sharing = session.scalars(select(VM).where(VM.host_id == host.id, VM.domain == vm.domain)).all()
    for other in sharing:
        if other.status not in QUIET or other.operation is not None:
            busy = other.operation or other.status
            raise UserError(
                f"{where}: vm {other.name} (domain {vm.domain}) is in use ({busy}): "
                "put it in maintenance first"
            )
    return Target(
        vm=name,
        host=host.name,
        uri=host.uri,
        domain=vm.domain,
        snapshot=vm.snapshot,
        domain_type=host.domain_type or "kvm",
        agent_url=vm.agent_url,
        agent_port=port,
        token=token,
    )


def _forwarded_port(url: str | None) -> int | None:
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname not in ("127.0.0.1", "localhost"):
        return None
    return parts.port


async def _provision(target: Target, image: Image, request: ProvisionRequest, progress: Progress) -> str:
    backend = open_backend("libvirt", target.host, target.uri)
    async with HostDriver(backend, max_workers=2) as driver:
        state = await driver.state(target.domain)
        snapshots: list[str] = []
        if state != DomainState.MISSING:
            await _check_forward(driver, target)
            snapshots = await driver.list_snapshots(target.domain)
            if target.snapshot in snapshots:
                return f"already provisioned: domain {target.domain} has snapshot {target.snapshot}"
        try:
            if state == DomainState.MISSING:
                await _create_domain(driver, target, image, request, progress)
            await _take_snapshot(driver, target, snapshots, request, progress)
            progress(f"checking: revert to {target.snapshot}, then the agent answers at {target.agent_url}")
            started = time.monotonic()
            await driver.revert(target.domain, target.snapshot)
            await _wait_for_agent(target)
            ready = time.monotonic() - started
        except BaseException:
            # Never leave the guest running; the error that brought us here is the one to report.
            with contextlib.suppress(HypervisorError):
                await driver.power_off(target.domain)
            raise
        await driver.power_off(target.domain)  # the engine starts from powered-off (or reverted) domains
    created = "created domain" if state == DomainState.MISSING else "domain"
    return (
        f"{created} {target.domain} ({target.domain_type}) with snapshot {target.snapshot}; "
        f"agent at {target.agent_url} ready {ready:.1f} s after a revert"
    )


async def _create_domain(
    driver: HostDriver, target: Target, image: Image, request: ProvisionRequest, progress: Progress
) -> None:
    disk_dir = request.disk_dir.absolute()
    files = {
        "disk": (image.disk, disk_dir / f"{target.domain}.qcow2"),
        "kernel": (image.kernel, disk_dir / f"{target.domain}.vmlinuz"),
        "initrd": (image.initrd, disk_dir / f"{target.domain}.initrd"),
    }
    for _source, copy in files.values():
        if copy.exists():
            raise UserError(
                f"vm {target.vm}: {copy} exists but domain {target.domain} does not: remove the file or "
                "choose another --disk-dir"
            )
    progress(f"copying the image {image.key[:12]} to {disk_dir}")
    made: list[Path] = []
    try:
        for source, copy in files.values():
            try:
                await asyncio.wait_for(asyncio.to_thread(_copy, source, copy), COPY_TIMEOUT)
            except TimeoutError:
                raise UserError(
                    f"vm {target.vm}: copying {source} took more than {COPY_TIMEOUT:g} s"
                ) from None
            made.append(copy)
        guest = GuestDefinition(
            name=target.domain,
            domain_type=target.domain_type,
            disk=files["disk"][1],
            kernel=files["kernel"][1],
            initrd=files["initrd"][1],
            cmdline=image.cmdline,
            console_log=disk_dir / f"{target.domain}.console.log",
            agent_port=target.agent_port,
            guest_agent_port=image.agent_port,
            memory_mib=request.memory_mib,
            vcpus=request.vcpus,
        )
        await driver.call(
            "define_domain",
            driver.backend.define_domain,  # type: ignore[attr-defined]
            guest_domain_xml(guest),
            timeout=DEFINE_TIMEOUT,
            domain=target.domain,
        )
    except BaseException:
        for path in made:  # nothing is left behind until the domain exists
            path.unlink(missing_ok=True)
        raise


def _copy(source: Path, target: Path) -> None:
    """Copy under a temporary name, then rename: a half-copied disk never carries the final name."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    shutil.copyfile(source, partial)
    os.chmod(partial, 0o644)
    partial.replace(target)


async def _check_forward(driver: HostDriver, target: Target) -> None:
    xml = await driver.call(
        "domain_xml",
        driver.backend.domain_xml,  # type: ignore[attr-defined]
        target.domain,
        timeout=DEFINE_TIMEOUT,
        domain=target.domain,
    )
    ports = [f.port for f in forwarded_ports(xml) if f.host == "127.0.0.1"]
    if target.agent_port not in ports:
        have = ", ".join(f"127.0.0.1:{p}" for p in ports) or "no port"
        raise UserError(
            f"vm {target.vm}: domain {target.domain} forwards {have} to its guest, but the lab file "
            f"reaches its agent at {target.agent_url}"
        )


async def _take_snapshot(
    driver: HostDriver, target: Target, snapshots: list[str], request: ProvisionRequest, progress: Progress
) -> None:
    """A fresh boot when the domain has no snapshot yet; else a copy of an existing snapshot."""
    if not snapshots:
        await driver.power_off(target.domain)
        log = await _console_log(driver, target)
        progress(f"booting {target.domain} (a minute at most under software emulation)")
        await driver.power_on(target.domain)
        await _wait_for_console(log, request.boot_timeout, target)
    else:
        source = request.from_snapshot
        if source is None:
            if len(snapshots) > 1:
                raise UserError(
                    f"vm {target.vm}: domain {target.domain} has snapshots {', '.join(snapshots)}: "
                    "say which one the new snapshot starts from with --from"
                )
            source = snapshots[0]
        if source not in snapshots:
            raise UserError(f"vm {target.vm}: domain {target.domain} has no snapshot {source!r} (--from)")
        progress(f"reverting {target.domain} to {source}")
        await driver.revert(target.domain, source)
    progress(f"taking snapshot {target.snapshot} (running, with memory)")
    await driver.create_snapshot(target.domain, target.snapshot)


async def _console_log(driver: HostDriver, target: Target) -> Path:
    xml = await driver.call(
        "domain_xml",
        driver.backend.domain_xml,  # type: ignore[attr-defined]
        target.domain,
        timeout=DEFINE_TIMEOUT,
        domain=target.domain,
    )
    log = console_log(xml)
    if log is None:
        raise UserError(
            f"vm {target.vm}: domain {target.domain} logs no serial console: cannot tell when it is up"
        )
    return log


async def _wait_for_console(log: Path, timeout: float, target: Target) -> None:
    """The guest prints READY_MARKER on its console when its agent launcher listens."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = await asyncio.to_thread(_read, log)
        if READY_MARKER in text:
            return
        await asyncio.sleep(0.5)
    last = [line.strip() for line in _read(log).splitlines() if line.strip()]
    raise UserError(
        f"vm {target.vm}: the guest did not come up within {timeout:g} s; last console line "
        f"({log}): {last[-1] if last else 'none'}"
    )


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


async def _wait_for_agent(target: Target) -> None:
    from testlab.agent.client import AgentClient, AgentError

    client = AgentClient(
        target.agent_url, target.token, connect_timeout=5.0, request_timeout=30.0, retry_deadline=30.0
    )
    try:
        await client.wait_until_up(timeout=AGENT_TIMEOUT)
    except AgentError as exc:
        raise UserError(f"vm {target.vm}: the agent did not answer after a revert: {exc}") from None
    finally:
        await client.aclose()
