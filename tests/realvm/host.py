"""The real hypervisor under the realvm tests: libvirtd and virtlogd (started here when no service
manager runs them), the guest image (built once, cached outside the clone), and cleaning up every
domain and QEMU process a test made."""

from __future__ import annotations

import contextlib
import grp
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from testlab.image.recipe import Recipe, recipe_key

URI = "qemu:///system"
IMAGE_CACHE = Path(os.environ.get("TESTLAB_IMAGE_CACHE", "/var/cache/testlab/images"))
IMAGE_BUILD_TIMEOUT = 1800.0
DAEMON_START_TIMEOUT = 30.0


class HostProblem(Exception):
    """The machine cannot run the realvm tests; the message says why, in one line."""


def _virsh(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["virsh", "-c", URI, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def _answers() -> bool:
    try:
        return _virsh("version").returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


@dataclass
class Daemons:
    """libvirtd and virtlogd as this test session found or started them."""

    started: dict[str, int] = field(default_factory=dict)  # daemon -> pid, only those started here
    kvm_mode: tuple[int, int] | None = None  # (gid, mode) of /dev/kvm before it was changed here

    @classmethod
    def ensure(cls) -> Daemons:
        daemons = cls()
        if _answers():
            return daemons
        missing = [
            tool for tool in ("virsh", "libvirtd", "virtlogd", "qemu-system-x86_64") if not shutil.which(tool)
        ]
        if missing:
            raise HostProblem(
                f"missing {', '.join(missing)}: run `make setup` (installs the libvirt packages)"
            )
        if os.geteuid() != 0:
            raise HostProblem(f"{URI} does not answer and only root can start libvirtd")
        if Path("/run/systemd/system").is_dir():
            raise HostProblem(f"{URI} does not answer: start it with `systemctl start libvirtd`")
        daemons._fix_kvm_device()
        for name in ("virtlogd", "libvirtd"):
            pid_file = Path(f"/run/{name}.pid")
            subprocess.run([name, "-d"], check=True, timeout=30)
            deadline = time.monotonic() + DAEMON_START_TIMEOUT
            while (pid := _read_pid(pid_file)) is None and time.monotonic() < deadline:
                time.sleep(0.1)
            if pid is None:
                daemons.stop()
                raise HostProblem(f"{name} -d wrote no {pid_file}")
            daemons.started[name] = pid
        deadline = time.monotonic() + DAEMON_START_TIMEOUT
        while not _answers():
            if time.monotonic() > deadline:
                daemons.stop()
                raise HostProblem(f"libvirtd started but {URI} does not answer")
            time.sleep(0.2)
        return daemons

    def _fix_kvm_device(self) -> None:
        """What Debian's udev rule does (group kvm, mode 0660). Without it libvirt finds KVM "no longer
        usable" by its QEMU user and probes QEMU again at every domain start: 3 s more per revert."""
        kvm = Path("/dev/kvm")
        try:
            info = kvm.stat()
            gid = grp.getgrnam("kvm").gr_gid
        except (OSError, KeyError):
            return
        mode = stat.S_IMODE(info.st_mode)
        if info.st_gid == gid and mode & 0o060 == 0o060:
            return
        self.kvm_mode = (info.st_gid, mode)
        os.chown(kvm, -1, gid)
        os.chmod(kvm, mode | 0o060)

    def stop(self) -> None:
        for name in ("libvirtd", "virtlogd"):
            pid = self.started.pop(name, None)
            if pid is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 20
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.kvm_mode is not None:
            gid, mode = self.kvm_mode
            with contextlib.suppress(OSError):
                os.chown("/dev/kvm", -1, gid)
                os.chmod("/dev/kvm", mode)
            self.kvm_mode = None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in _proc_state(pid)


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:", 1)[1].split("\n", 1)[0].lower()
    except (OSError, IndexError):
        return "zombie"


def image_dir(recipe: Recipe | None = None) -> Path:
    """The cache entry of the image built from `recipe` with this version of testlab."""
    recipe = recipe or Recipe()
    return IMAGE_CACHE / f"debian-{recipe.suite}-{recipe_key(recipe)[:16]}"


def build_image() -> tuple[Path, float, str]:
    """Build the image (or find it cached) with the real command; (dir, seconds, its last line)."""
    out = image_dir()
    started = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "testlab", "image", "build", "--out", str(out)],
            capture_output=True,
            text=True,
            timeout=IMAGE_BUILD_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise HostProblem(f"testlab image build took more than {IMAGE_BUILD_TIMEOUT:g} s") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise HostProblem(f"the guest image cannot be built: {last}")
    for stale in IMAGE_CACHE.glob("debian-*"):  # images of earlier versions: 200 MB each
        if stale != out and stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    return out, time.monotonic() - started, proc.stdout.strip().splitlines()[0]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def qemu_processes(domain: str) -> list[int]:
    """Pids of QEMU processes running `domain` (libvirt names it with -name guest=DOMAIN)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            argv
            and argv[0].endswith(b"qemu-system-x86_64")
            and any(
                arg.startswith(f"guest={domain},".encode()) or arg == f"guest={domain}".encode()
                for arg in argv
            )
        ):
            pids.append(int(entry.name))
    return pids


def remove_domains(domains: list[str], disk_dir: Path) -> None:
    """Destroy and undefine the domains, kill any QEMU process of theirs that outlived that, and
    remove their files: a test leaves nothing running."""
    from testlab.hypervisor import open_backend

    backend = open_backend("libvirt", "cleanup", URI)
    try:
        for domain in domains:
            with contextlib.suppress(Exception):  # best effort: the test may have failed half-way
                backend.delete_domain(domain)  # type: ignore[attr-defined]
    finally:
        backend.close()
    for domain in domains:
        for pid in qemu_processes(domain):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    shutil.rmtree(disk_dir, ignore_errors=True)
