"""`testlab image build`: a minimal Debian guest with the testlab agent, built from packages.

Steps: mmdebstrap a `minbase` Debian with python3, busybox and a kernel into a directory; install the
agent and busybox init; take the kernel out and build a small initrd; make an ext4 filesystem of the
directory straight into a disk file (`mkfs.ext4 -d`: no loop device, no mount) and convert it to qcow2.
Everything happens in a scratch directory next to the output, which replaces the output in one rename
at the end, so an interrupted build leaves the previous image intact.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from testlab.image import kernel, rootfs
from testlab.image.layout import DISK, INITRD, KERNEL, TOKEN, Image, read_image, write_manifest
from testlab.image.recipe import Recipe, image_key
from testlab.image.tools import ImageError, check_build_requirements, run

BOOTSTRAP_TIMEOUT = 1800.0  # a slow mirror; about a minute on a good one
DISK_TIMEOUT = 600.0

Progress = Callable[[str], None]


def _quiet(_message: str) -> None:
    return None


@contextmanager
def _build_lock(out: Path):
    """One build per output directory at a time; a second one waits, then finds the image built."""
    lock = out.parent / f".{out.name}.lock"
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _token(out: Path, token_file: Path | None) -> str:
    """--token-file, else the token of the image already there (a lab file may point at it), else new."""
    source = token_file if token_file is not None else out / TOKEN
    if token_file is not None or source.is_file():
        try:
            token = source.read_text().strip()
        except OSError as exc:
            raise ImageError(f"cannot read the token file {source}: {exc.strerror}") from None
        if not token:
            raise ImageError(f"the token file {source} is empty")
        return token
    return secrets.token_hex(32)


def build_image(
    out: Path,
    *,
    recipe: Recipe | None = None,
    token_file: Path | None = None,
    rebuild: bool = False,
    progress: Progress = _quiet,
) -> tuple[Image, bool]:
    """Build the image into `out` unless the image there was built the same way.

    Returns the image and whether it was built now (False: it was up to date).
    """
    recipe = recipe or Recipe()
    out = Path(out).absolute()
    check_build_requirements()
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and read_image(out) is None)):
        raise ImageError(f"{out} is not empty and holds no testlab image: choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(out):
        token = _token(out, token_file)
        key = image_key(recipe, token)
        existing = read_image(out)
        if existing is not None and existing.key == key and not rebuild:
            return existing, False
        scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.build-", dir=out.parent))
        try:
            _build(scratch, recipe, token, key, progress)
            _publish(scratch / "image", out)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    image = read_image(out)
    if image is None:  # pragma: no cover - _publish just wrote it
        raise ImageError(f"{out}: the image vanished right after its build")
    return image, True


def _build(scratch: Path, recipe: Recipe, token: str, key: str, progress: Progress) -> None:
    started = time.monotonic()
    root = scratch / "rootfs"
    image = scratch / "image"
    image.mkdir()
    progress(f"bootstrapping Debian {recipe.suite} with {', '.join(recipe.packages)} (about a minute)")
    run(
        [
            "mmdebstrap",
            "--mode=root",
            "--variant=minbase",
            f"--include={','.join(recipe.packages)}",
            recipe.suite,
            str(root),
            recipe.mirror,
        ],
        timeout=BOOTSTRAP_TIMEOUT,
        what="mmdebstrap",
        log=scratch / "mmdebstrap.log",
    )
    version = kernel.kernel_version(root)
    progress(f"kernel {version}: building the initrd")
    shutil.copyfile(rootfs.resolved_inside(root, f"boot/vmlinuz-{version}"), image / KERNEL)
    modules = kernel.build_initrd(root, version, image / INITRD)
    progress("installing the agent and busybox init")
    rootfs.install_guest(root, recipe, token)
    rootfs.slim(root)
    progress(f"making the {recipe.disk_size} disk")
    raw = scratch / "disk.raw"
    run(
        ["mkfs.ext4", "-q", "-F", "-L", "testlab-root", "-d", str(root), str(raw), recipe.disk_size],
        timeout=DISK_TIMEOUT,
        what="mkfs.ext4",
    )
    run(
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(image / DISK)],
        timeout=DISK_TIMEOUT,
        what="qemu-img convert",
    )
    token_path = image / TOKEN
    token_path.write_text(token + "\n")
    os.chmod(token_path, 0o600)
    write_manifest(
        image,
        {
            "key": key,
            "recipe": asdict(recipe),
            "kernel_version": version,
            "initrd_modules": modules,
            "cmdline": recipe.cmdline,
            "agent_port": recipe.agent_port,
            "built": datetime.now(UTC).isoformat(timespec="seconds"),
            "build_seconds": round(time.monotonic() - started, 1),
        },
    )
    # The hypervisor's own user (libvirt-qemu) reads the image through this directory.
    os.chmod(image, 0o755)


def _publish(built: Path, out: Path) -> None:
    """Swap the new image in; the old one (if any) is removed only once the new one is in place."""
    if not out.exists():
        built.rename(out)
        return
    old = built.parent / "old"
    out.rename(old)
    built.rename(out)
