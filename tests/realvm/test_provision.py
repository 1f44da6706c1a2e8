"""`testlab vm provision` on qemu:///system: the domain, its three snapshots, idempotence, refusals."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from testlab.hypervisor import open_backend
from testlab.hypervisor.base import DomainState
from testlab.hypervisor.libvirt_guest import Forward, forwarded_ports
from tests.realvm.conftest import HOST, VMS, RealLab, cli
from tests.realvm.host import URI

pytestmark = [pytest.mark.realvm, pytest.mark.slow]


def test_provisioning_made_the_domain_the_lab_file_describes(real_lab: RealLab) -> None:
    domain = real_lab.domain
    assert real_lab.provisioned["build"].startswith(
        f"vm build: created domain {domain} (qemu) with snapshot clean; agent at {real_lab.agent_url}"
    )
    assert real_lab.provisioned["t1"].startswith(
        f"vm t1: domain {real_lab.domain} (qemu) with snapshot clean-a;"
    )
    assert "with snapshot clean-b;" in real_lab.provisioned["t2"]
    backend = open_backend("libvirt", HOST, URI)
    try:
        assert backend.state(real_lab.domain) == DomainState.OFF
        assert backend.list_snapshots(real_lab.domain) == sorted(VMS.values())
        xml = backend.domain_xml(real_lab.domain)  # type: ignore[attr-defined]
    finally:
        backend.close()
    assert ET.fromstring(xml).get("type") == "qemu"
    assert forwarded_ports(xml) == [Forward("127.0.0.1", real_lab.port, 8765)]
    assert "restrict=on" in xml
    for name in ("qcow2", "vmlinuz", "initrd"):
        assert (real_lab.disk_dir / f"{real_lab.domain}.{name}").is_file()


def test_provisioning_again_changes_nothing(real_lab: RealLab) -> None:
    done = cli("vm", "provision", "t1", "--image", str(real_lab.image), env=real_lab.env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"vm t1: already provisioned: domain {real_lab.domain} has snapshot clean-a\n"


def test_provisioning_refuses_bad_input_in_one_line(real_lab: RealLab, tmp_path: Path) -> None:
    other_token = tmp_path / "other.token"
    other_token.write_text("not the image's token\n")
    lab = tmp_path / "lab.yaml"
    lab.write_text(
        f"hosts:\n"
        f"  - {{name: q, backend: libvirt, uri: 'qemu:///system', domain_type: qemu, "
        f"agent_token_file: {real_lab.image / 'agent.token'}}}\n"
        f"  - {{name: q2, backend: libvirt, uri: 'qemu:///system', agent_token_file: {other_token}}}\n"
        f"  - {{name: far, backend: libvirt, uri: 'qemu+ssh://far/system'}}\n"
        f"vms:\n"
        f"  - {{name: bridged, host: q, domain: x-{real_lab.domain}, snapshot: s, agent: 'http://10.0.0.9:8765'}}\n"
        f"  - {{name: mistoken, host: q2, domain: y-{real_lab.domain}, snapshot: s, agent: 'http://127.0.0.1:1'}}\n"
        f"  - {{name: remote, host: far, domain: z-{real_lab.domain}, snapshot: s, agent: 'http://127.0.0.1:1'}}\n"
        f"  - {{name: shared, host: q, domain: {real_lab.domain}, snapshot: s, agent: 'http://127.0.0.1:1'}}\n"
    )
    home = tmp_path / "home"
    env = {**real_lab.env, "TESTLAB_HOME": str(home), "TESTLAB_DB": f"sqlite:///{home / 'testlab.db'}"}
    assert cli("init", env=env).returncode == 0
    assert cli("lab", "apply", str(lab), env=env).returncode == 0

    def refusal(vm: str, image: Path = real_lab.image) -> str:
        done = cli("vm", "provision", vm, "--image", str(image), env=env)
        assert done.returncode == 1 and done.stdout == "", done.stdout
        assert done.stderr.startswith("testlab: ") and done.stderr.count("\n") == 1, done.stderr
        return done.stderr.strip()

    assert "give it `agent: http://127.0.0.1:PORT`" in refusal("bridged")
    assert f"build the image with --token-file {other_token}" in refusal("mistoken")
    assert "must be qemu:///system or qemu:///session, not qemu+ssh://far/system" in refusal("remote")
    assert f"domain {real_lab.domain} forwards 127.0.0.1:{real_lab.port}" in refusal("shared")
    assert refusal("nosuch") == "testlab: vm nosuch: no such VM"
    assert (
        refusal("bridged", tmp_path)
        == f"testlab: {tmp_path}: no guest image here (build one with `testlab image build --out DIR`)"
    )
    backend = open_backend("libvirt", HOST, URI)
    try:
        for prefix in ("x", "y", "z"):
            assert backend.state(f"{prefix}-{real_lab.domain}") == DomainState.MISSING
        assert backend.list_snapshots(real_lab.domain) == sorted(VMS.values())
    finally:
        backend.close()
