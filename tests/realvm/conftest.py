"""A real libvirt lab for the realvm tests: libvirtd on qemu:///system, the guest image, and one
domain with three VMs (snapshots clean, clean-a, clean-b) provisioned by the real commands.

Nothing here is skipped: a machine that cannot run the tests (no libvirt, not root, no network for the
image build) fails them with the reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from testlab.config import Settings
from testlab.db.session import session_scope, upgrade
from testlab.domain.labfile import parse_lab
from testlab.services.lab import apply_lab
from tests.realvm.host import Daemons, HostProblem, build_image, free_port, remove_domains

HOST = "qemu-local"
VMS = {"build": "clean", "t1": "clean-a", "t2": "clean-b"}
_report: list[str] = []


def pytest_terminal_summary(terminalreporter) -> None:  # noqa: ANN001 - pytest hook
    for line in _report:
        terminalreporter.write_line(f"realvm: {line}")


@pytest.fixture(scope="session")
def libvirt_host():
    try:
        daemons = Daemons.ensure()
    except HostProblem as problem:
        pytest.fail(str(problem), pytrace=False)
    if daemons.started:
        _report.append(f"started {', '.join(daemons.started)} (no service manager runs them)")
    yield
    daemons.stop()


@pytest.fixture(scope="session")
def guest_image(libvirt_host) -> Path:
    try:
        directory, seconds, line = build_image()
    except HostProblem as problem:
        pytest.fail(str(problem), pytrace=False)
    _report.append(f"{line} [{seconds:.0f} s]")
    return directory


def cli(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """The real command line, as an administrator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "testlab", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass
class RealLab:
    lab_file: Path
    image: Path
    domain: str
    port: int
    disk_dir: Path
    env: dict[str, str]  # TESTLAB_HOME/TESTLAB_DB of the database the VMs were provisioned with
    provisioned: dict[str, str]  # vm -> what `testlab vm provision` printed
    seconds: dict[str, float]

    @property
    def agent_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fresh_database(self, home: Path) -> Settings:
        """Another database with this lab applied: every VM off, as a new engine finds them."""
        settings = Settings(home=home, database_url=f"sqlite:///{home / 'testlab.db'}")
        home.mkdir(parents=True, exist_ok=True)
        upgrade(settings.database_url)
        with session_scope(settings.database_url) as session:
            apply_lab(session, parse_lab(self.lab_file))
        return settings


LAB = """\
hosts:
  - name: {host}
    backend: libvirt
    uri: qemu:///system
    domain_type: qemu
    agent_token_file: {token}
    limits: {{max_active: 1, max_running: 1}}
vms:
"""


@pytest.fixture(scope="session")
def real_lab(guest_image: Path, tmp_path_factory: pytest.TempPathFactory):
    domain = f"testlab-rv{os.getpid()}"
    port = free_port()
    # The hypervisor's own user must reach the disk: not under pytest's private temporary directory.
    disk_dir = Path(tempfile.mkdtemp(prefix="testlab-realvm-", dir="/var/tmp"))
    disk_dir.chmod(0o755)
    root = tmp_path_factory.mktemp("realvm")
    lab_file = root / "lab.yaml"
    text = LAB.format(host=HOST, token=guest_image / "agent.token")
    for vm, snapshot in VMS.items():
        text += (
            f"  - {{name: {vm}, host: {HOST}, domain: {domain}, snapshot: {snapshot}, "
            f"agent: 'http://127.0.0.1:{port}', labels: [debian]}}\n"
        )
    lab_file.write_text(text)
    home = root / "home"
    env = {**os.environ, "TESTLAB_HOME": str(home), "TESTLAB_DB": f"sqlite:///{home / 'testlab.db'}"}
    lab = RealLab(lab_file, guest_image, domain, port, disk_dir, env, {}, {})
    try:
        for args in (["init"], ["lab", "apply", str(lab_file)]):
            done = cli(*args, env=env)
            assert done.returncode == 0, done.stderr
        for vm in VMS:
            extra = ["--from", VMS["build"]] if vm == "t2" else []
            started = time.monotonic()
            done = cli(
                "vm",
                "provision",
                vm,
                "--image",
                str(guest_image),
                "--disk-dir",
                str(disk_dir),
                *extra,
                env=env,
            )
            lab.seconds[vm] = time.monotonic() - started
            assert done.returncode == 0, f"vm provision {vm}: {done.stderr}"
            lab.provisioned[vm] = done.stdout.strip()
        _report.append(
            "provisioned "
            + ", ".join(f"{vm} in {seconds:.1f} s" for vm, seconds in lab.seconds.items())
            + f" (domain {domain})"
        )
        yield lab
    finally:
        remove_domains([domain], disk_dir)
