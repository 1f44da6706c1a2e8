"""The libvirt definition of a testlab guest, and defining and deleting domains through the backend
(libvirt's test driver here; tests/realvm runs the same on QEMU)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from testlab.hypervisor.base import Backend, DomainState
from testlab.hypervisor.libvirt_guest import (
    QEMU_NS,
    Forward,
    GuestDefinition,
    console_log,
    forwarded_ports,
    guest_domain_xml,
)

GUEST = GuestDefinition(
    name="deb <12>",
    domain_type="qemu",
    disk=Path("/images/deb.qcow2"),
    kernel=Path("/images/deb.vmlinuz"),
    initrd=Path("/images/deb.initrd"),
    cmdline="root=/dev/vda rw console=ttyS0",
    console_log=Path("/images/deb.console.log"),
    agent_port=18401,
    guest_agent_port=8765,
    memory_mib=512,
    vcpus=2,
)


def test_guest_boots_its_kernel_directly_and_reaches_nothing_but_its_forwarded_agent_port() -> None:
    xml = guest_domain_xml(GUEST)
    root = ET.fromstring(xml)
    assert root.get("type") == "qemu" and root.findtext("name") == "deb <12>"
    assert root.find("genid") is not None
    assert (root.findtext("memory"), root.find("memory").get("unit"), root.findtext("vcpu")) == (
        "512",
        "MiB",
        "2",
    )
    assert root.findtext("os/kernel") == "/images/deb.vmlinuz"
    assert root.findtext("os/cmdline") == "root=/dev/vda rw console=ttyS0"
    assert root.find("devices/disk/source").get("file") == "/images/deb.qcow2"
    assert root.find("devices/interface") is None  # no libvirt network at all
    args = [arg.get("value") for arg in root.iter(f"{{{QEMU_NS}}}arg")]
    assert "restrict=on" in args[1].split(",")
    assert forwarded_ports(xml) == [Forward("127.0.0.1", 18401, 8765)]
    assert console_log(xml) == Path("/images/deb.console.log")


def test_mac_address_is_stable_per_domain() -> None:
    assert GUEST.mac == GuestDefinition(**{**GUEST.__dict__}).mac
    assert (
        GUEST.mac.startswith("52:54:00:")
        and GUEST.mac != GuestDefinition(**{**GUEST.__dict__, "name": "x"}).mac
    )


def test_unknown_domain_type_is_refused() -> None:
    with pytest.raises(ValueError, match="kvm, qemu"):
        guest_domain_xml(GuestDefinition(**{**GUEST.__dict__, "domain_type": "xen"}))


def test_define_and_delete_a_domain(libvirt_backend: Backend) -> None:
    name = libvirt_backend.define_domain(
        guest_domain_xml(GuestDefinition(**{**GUEST.__dict__, "name": "g1"}))
    )  # type: ignore[attr-defined]
    assert name == "g1" and libvirt_backend.state("g1") == DomainState.OFF
    assert ET.fromstring(libvirt_backend.domain_xml("g1")).findtext("name") == "g1"  # type: ignore[attr-defined]
    libvirt_backend.power_on("g1")
    assert libvirt_backend.delete_domain("g1") is True  # type: ignore[attr-defined]
    assert libvirt_backend.state("g1") == DomainState.MISSING
    assert libvirt_backend.delete_domain("g1") is False  # type: ignore[attr-defined]
