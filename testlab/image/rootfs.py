"""Turning a freshly bootstrapped Debian root filesystem into a testlab guest.

The guest boots busybox init, not systemd: under software emulation that is the difference between a
guest answering in about ten seconds and in half a minute. Its init runs a short start-up script, then
the agent launcher (see guest/launch.py) and acpid, so that the host's ACPI shutdown request powers
the guest off cleanly.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from testlab.image.recipe import AGENT_SOURCE, GUEST_DIR, Recipe
from testlab.image.tools import ImageError

#: Not needed in a test guest, and most of its size (the kernel modules are in the initrd).
SLIM = (
    "boot",
    "lib/modules",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "var/cache/apt",
    "var/lib/apt/lists",
)


def _within(root: Path, path: Path) -> bool:
    return path == root or root in path.parents


def inside(rootfs: Path, relative: str) -> Path:
    """The host path of `relative` in the image, to write: its directory must not lead out of the image
    through a symbolic link, so the build never writes to the build machine's own files by mistake."""
    target = rootfs / relative
    root = Path(os.path.realpath(rootfs))
    parent = Path(os.path.realpath(target.parent))
    if not _within(root, parent):
        raise ImageError(f"/{relative} in the image leads outside it")
    return parent / target.name


def resolved_inside(rootfs: Path, relative: str) -> Path:
    """Like `inside`, to read: the file itself is resolved too (an absolute link means the image's /)."""
    path = Path(os.path.realpath(inside(rootfs, relative)))
    if not _within(Path(os.path.realpath(rootfs)), path):
        raise ImageError(f"/{relative} in the image leads outside it")
    return path


def place(rootfs: Path, relative: str, data: bytes, mode: int = 0o644) -> None:
    target = inside(rootfs, relative)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.exists():
        target.unlink()
    target.write_bytes(data)
    os.chmod(target, mode)


def install_guest(rootfs: Path, recipe: Recipe, token: str) -> None:
    """The agent, its launcher, token and work dir; busybox init and its configuration."""
    guest = {
        name: (GUEST_DIR / name).read_bytes() for name in ("launch.py", "rcS", "inittab", "power-button")
    }
    inittab = (
        guest["inittab"]
        .decode()
        .replace("@AGENT_PORT@", str(recipe.agent_port))
        .replace("@WORKDIR@", recipe.workdir)
    )
    place(rootfs, "opt/testlab/agent.py", AGENT_SOURCE.read_bytes(), 0o755)
    place(rootfs, "opt/testlab/launch.py", guest["launch.py"], 0o755)
    place(rootfs, "etc/testlab/agent.token", token.encode() + b"\n", 0o600)
    place(rootfs, "etc/testlab/rcS", guest["rcS"], 0o755)
    place(rootfs, "etc/inittab", inittab.encode())
    place(rootfs, "etc/acpi/PWRF/00000080", guest["power-button"], 0o755)
    place(rootfs, "etc/hostname", f"{recipe.hostname}\n".encode())
    place(rootfs, "etc/hosts", f"127.0.0.1 localhost {recipe.hostname}\n".encode())
    init = inside(rootfs, "sbin/init")
    if init.is_symlink() or init.exists():
        init.unlink()
    init.symlink_to("/bin/busybox")
    inside(rootfs, recipe.workdir.lstrip("/")).mkdir(parents=True, exist_ok=True)


def slim(rootfs: Path) -> None:
    for relative in SLIM:
        path = inside(rootfs, relative)
        if path.is_dir() and not path.is_symlink():
            for child in path.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        elif path.exists() or path.is_symlink():
            path.unlink()
