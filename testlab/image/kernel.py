"""The guest's kernel and its initrd, taken from the image's own root filesystem.

Debian's kernel has the virtio disk and network drivers and ext4 as modules, and Debian's own initrd
(initramfs-tools) takes seconds to unpack and probe under software emulation. The initrd built here
holds only busybox, the handful of modules the guest needs (with their dependencies, in load order) and
a short script that mounts the root disk. Every module the guest uses is loaded from it, so the root
filesystem keeps no modules at all (they are most of a Debian system's size).
"""

from __future__ import annotations

import gzip
import io
import lzma
from collections.abc import Iterable
from pathlib import Path

from testlab.image.recipe import GUEST_DIR
from testlab.image.rootfs import resolved_inside
from testlab.image.tools import ImageError

#: disk (virtio_pci, virtio_blk), root filesystem (ext4; crc32c for its metadata checksums),
#: network (virtio_net) and the ACPI power button (button, seen by acpid through evdev), which lets
#: the host shut the guest down.
INITRD_MODULES = ("virtio_pci", "virtio_blk", "crc32c_generic", "ext4", "virtio_net", "button", "evdev")


def kernel_version(rootfs: Path) -> str:
    versions = sorted(p.name for p in resolved_inside(rootfs, "lib/modules").iterdir() if p.is_dir())
    if len(versions) != 1:
        raise ImageError(f"expected one kernel in the image, found {len(versions)}: {', '.join(versions)}")
    return versions[0]


def _module_name(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    return name.split(".ko", 1)[0].replace("-", "_")


def module_load_order(modules_dir: Path, wanted: Iterable[str]) -> list[str]:
    """Paths (relative to `modules_dir`) of the wanted modules and everything they depend on, each
    after its dependencies. Modules built into the kernel are skipped."""
    deps: dict[str, list[str]] = {}
    paths: dict[str, str] = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        module, _, needs = line.partition(":")
        if not module:
            continue
        name = _module_name(module)
        paths[name] = module
        deps[name] = [_module_name(need) for need in needs.split()]
    builtin = {
        _module_name(line)
        for line in (modules_dir / "modules.builtin").read_text().splitlines()
        if line.strip()
    }
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        for need in reversed(deps[name]):
            visit(need)
        order.append(paths[name])

    for name in wanted:
        name = name.replace("-", "_")
        if name in paths:
            visit(name)
        elif name not in builtin:
            raise ImageError(f"the image's kernel has no module {name!r}")
    return order


def _module_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.name.endswith(".ko"):
        return data
    raise ImageError(f"cannot unpack kernel module {path.name} (only .ko and .ko.xz are supported)")


class _Cpio:
    """An initramfs archive ("newc" cpio), written here so no device node is created on the host."""

    def __init__(self) -> None:
        self.out = io.BytesIO()
        self.inode = 0

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        self.inode += 1
        fields = (self.inode, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0)
        header = b"070701" + b"".join(b"%08X" % value for value in fields)
        self.out.write(header + name.encode() + b"\0")
        self.out.write(b"\0" * (-(len(header) + len(name) + 1) % 4))
        self.out.write(data)
        self.out.write(b"\0" * (-len(data) % 4))

    def directory(self, name: str) -> None:
        self._entry(name, 0o040755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, 0o100000 | mode, data)

    def char_device(self, name: str, major: int, minor: int) -> None:
        self._entry(name, 0o020600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self.out.getvalue()


def build_initrd(rootfs: Path, version: str, target: Path) -> list[str]:
    """Write the initrd for the kernel `version` of `rootfs`; returns the modules it loads."""
    busybox = resolved_inside(rootfs, "bin/busybox")
    if not busybox.is_file():
        raise ImageError("the image has no /bin/busybox (package busybox-static)")
    modules_dir = resolved_inside(rootfs, f"lib/modules/{version}")
    order = module_load_order(modules_dir, INITRD_MODULES)
    archive = _Cpio()
    for directory in ("bin", "dev", "proc", "sys", "newroot", "modules"):
        archive.directory(directory)
    archive.char_device("dev/console", 5, 1)
    archive.file("bin/busybox", busybox.read_bytes(), 0o755)
    archive.file("init", (GUEST_DIR / "initrd-init").read_bytes(), 0o755)
    names = []
    for relative in order:
        name = _module_name(relative) + ".ko"
        archive.file(f"modules/{name}", _module_bytes(modules_dir / relative))
        names.append(name)
    archive.file("modules.load", ("\n".join(names) + "\n").encode())
    target.write_bytes(gzip.compress(archive.finish(), compresslevel=6, mtime=0))
    return names
