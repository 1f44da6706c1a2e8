"""The libvirt definition of a testlab guest made from a testlab image, and reading it back.

The guest boots its kernel directly (no boot loader) and has one network interface on QEMU's
user-mode network with `restrict=on`: it reaches nothing outside, and the host forwards one port of
its own 127.0.0.1 to the guest's agent. libvirt 9's `<interface type='user'>` cannot forward ports,
so the interface is given to QEMU directly (`<qemu:commandline>`; libvirt then marks the domain
"custom-argv", which is only a warning). `<genid/>` gives the guest a VM generation ID that libvirt
changes at every snapshot revert, which Linux mixes into its random number generator.
"""

from __future__ import annotations

import hashlib
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from testlab.domain.labfile import DOMAIN_TYPES

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
NETDEV_ID = "testlabnet0"
# A PCI slot of its own: QEMU reads this device before the ones libvirt places from slot 2 on.
NIC_SLOT = "0x10"
_HOSTFWD = re.compile(r"hostfwd=tcp:(?P<host>[^:,]*):(?P<port>\d+)-(?P<guest_host>[^:,]*):(?P<guest>\d+)")

ET.register_namespace("qemu", QEMU_NS)


@dataclass(frozen=True)
class GuestDefinition:
    name: str
    domain_type: str
    disk: Path
    kernel: Path
    initrd: Path
    cmdline: str
    console_log: Path
    agent_port: int  # on the host's 127.0.0.1
    guest_agent_port: int
    memory_mib: int = 384
    vcpus: int = 1

    @property
    def mac(self) -> str:
        """Stable per domain name, in the range QEMU uses for its own NICs."""
        digest = hashlib.sha256(self.name.encode()).digest()
        return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


def guest_domain_xml(guest: GuestDefinition) -> str:
    if guest.domain_type not in DOMAIN_TYPES:
        raise ValueError(f"domain type must be one of {', '.join(DOMAIN_TYPES)}, not {guest.domain_type!r}")
    domain = ET.Element("domain", {"type": guest.domain_type})
    _sub(domain, "name", guest.name)
    _sub(domain, "genid")
    _sub(domain, "memory", str(guest.memory_mib), unit="MiB")
    _sub(domain, "vcpu", str(guest.vcpus))
    os_ = _sub(domain, "os")
    _sub(os_, "type", "hvm", arch="x86_64", machine="pc")
    _sub(os_, "kernel", str(guest.kernel))
    _sub(os_, "initrd", str(guest.initrd))
    _sub(os_, "cmdline", guest.cmdline)
    _sub(_sub(domain, "features"), "acpi")
    _sub(domain, "clock", offset="utc")
    _sub(domain, "on_poweroff", "destroy")
    _sub(domain, "on_reboot", "restart")
    _sub(domain, "on_crash", "destroy")
    devices = _sub(domain, "devices")
    disk = _sub(devices, "disk", type="file", device="disk")
    _sub(disk, "driver", name="qemu", type="qcow2")
    _sub(disk, "source", file=str(guest.disk))
    _sub(disk, "target", dev="vda", bus="virtio")
    serial = _sub(devices, "serial", type="pty")
    _sub(serial, "log", file=str(guest.console_log), append="off")
    _sub(serial, "target", port="0")
    _sub(_sub(devices, "console", type="pty"), "target", type="serial", port="0")
    _sub(devices, "controller", type="usb", model="none")
    _sub(devices, "memballoon", model="none")
    commandline = _sub(domain, f"{{{QEMU_NS}}}commandline")
    netdev = (
        f"user,id={NETDEV_ID},restrict=on,hostfwd=tcp:127.0.0.1:{guest.agent_port}-:{guest.guest_agent_port}"
    )
    for value in (
        "-netdev",
        netdev,
        "-device",
        f"virtio-net-pci,netdev={NETDEV_ID},mac={guest.mac},addr={NIC_SLOT}",
    ):
        _sub(commandline, f"{{{QEMU_NS}}}arg", value=value)
    ET.indent(domain)
    return ET.tostring(domain, encoding="unicode")


@dataclass(frozen=True)
class Forward:
    host: str
    port: int
    guest_port: int


def forwarded_ports(xml: str) -> list[Forward]:
    """The TCP ports a domain's `<qemu:commandline>` forwards from the host to the guest."""
    root = ET.fromstring(xml)
    forwards = []
    for arg in root.iter(f"{{{QEMU_NS}}}arg"):
        for match in _HOSTFWD.finditer(arg.get("value", "")):
            forwards.append(Forward(match["host"] or "0.0.0.0", int(match["port"]), int(match["guest"])))
    return forwards


def console_log(xml: str) -> Path | None:
    """Where the domain's serial console is logged, if it is."""
    log = ET.fromstring(xml).find("./devices/serial/log")
    return Path(log.get("file")) if log is not None and log.get("file") else None
