"""The image builder's pure parts, and its refusals: one line, exit code 1, nothing changed."""

from __future__ import annotations

import gzip
import lzma
import os
import subprocess
import sys
from pathlib import Path

import pytest

from testlab.image import kernel
from testlab.image.layout import READY_MARKER, read_image
from testlab.image.recipe import GUEST_DIR, Recipe, image_key, recipe_key
from testlab.image.tools import ImageError


def _modules(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    modules = root / "lib" / "modules" / "6.1.0-test"
    (modules / "kernel").mkdir(parents=True)
    deps = {
        "kernel/fs/ext4/ext4.ko": ["kernel/lib/crc16.ko", "kernel/fs/jbd2/jbd2.ko"],
        "kernel/fs/jbd2/jbd2.ko": [],
        "kernel/lib/crc16.ko": [],
        "kernel/drivers/block/virtio_blk.ko.xz": ["kernel/drivers/virtio/virtio_ring.ko"],
        "kernel/drivers/virtio/virtio_ring.ko": [],
        "kernel/drivers/unrelated.ko": [],
    }
    for path in deps:
        (modules / path).parent.mkdir(parents=True, exist_ok=True)
        payload = f"module {path}".encode()
        (modules / path).write_bytes(lzma.compress(payload) if path.endswith(".xz") else payload)
    (modules / "modules.dep").write_text("".join(f"{p}: {' '.join(n)}\n" for p, n in deps.items()))
    present = {kernel._module_name(path) for path in deps}
    builtin = {"virtio_pci"} | {name for name in kernel.INITRD_MODULES if name not in present}
    (modules / "modules.builtin").write_text("".join(f"kernel/x/{name}.ko\n" for name in sorted(builtin)))
    return root


def test_modules_come_after_their_dependencies_and_builtins_are_skipped(tmp_path: Path) -> None:
    modules = _modules(tmp_path) / "lib" / "modules" / "6.1.0-test"
    order = kernel.module_load_order(modules, ["virtio_pci", "virtio-blk", "ext4"])
    assert order == [
        "kernel/drivers/virtio/virtio_ring.ko",
        "kernel/drivers/block/virtio_blk.ko.xz",
        "kernel/fs/jbd2/jbd2.ko",
        "kernel/lib/crc16.ko",
        "kernel/fs/ext4/ext4.ko",
    ]
    with pytest.raises(ImageError, match="no module 'floppy'"):
        kernel.module_load_order(modules, ["floppy"])


def test_initrd_is_a_gzipped_newc_archive_with_console_busybox_init_and_modules(tmp_path: Path) -> None:
    root = _modules(tmp_path)
    (root / "bin").mkdir()
    (root / "bin" / "busybox").write_bytes(b"\x7fELF busybox")
    target = tmp_path / "initrd.img"
    names = kernel.build_initrd(root, "6.1.0-test", target)
    assert "virtio_blk.ko" in names and names.index("virtio_ring.ko") < names.index("virtio_blk.ko")
    archive = gzip.decompress(target.read_bytes())
    entries = _read_newc(archive)
    assert entries["dev/console"][0] == 0o020600 and entries["dev/console"][2] == (5, 1)
    assert entries["init"][0] == 0o100755 and entries["init"][1] == (GUEST_DIR / "initrd-init").read_bytes()
    assert entries["bin/busybox"][1] == b"\x7fELF busybox"
    assert entries["modules/virtio_blk.ko"][1] == b"module kernel/drivers/block/virtio_blk.ko.xz"  # unpacked
    assert entries["modules.load"][1].decode().split() == names
    assert list(entries)[-1] == "TRAILER!!!"


def _read_newc(data: bytes) -> dict[str, tuple[int, bytes, tuple[int, int]]]:
    entries = {}
    offset = 0
    while offset < len(data):
        assert data[offset : offset + 6] == b"070701"
        fields = [int(data[offset + 6 + 8 * i : offset + 14 + 8 * i], 16) for i in range(13)]
        mode, size, rdev, namesize = fields[1], fields[6], (fields[9], fields[10]), fields[11]
        start = offset + 110
        name = data[start : start + namesize - 1].decode()
        body = start + namesize + (-(110 + namesize) % 4)
        entries[name] = (mode, data[body : body + size], rdev)
        offset = body + size + (-size % 4)
        if name == "TRAILER!!!":
            break
    return entries


def test_the_key_follows_recipe_token_and_sources() -> None:
    recipe = Recipe()
    assert image_key(recipe, "a") == image_key(Recipe(), "a")
    assert image_key(recipe, "a") != image_key(recipe, "b")
    assert recipe_key(recipe) != recipe_key(Recipe(suite="trixie"))


def test_the_launcher_announces_what_provisioning_waits_for() -> None:
    assert READY_MARKER in (GUEST_DIR / "launch.py").read_text()


def _image_build(out: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "testlab", "image", "build", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_build_says_what_it_needs_in_one_line(tmp_path: Path) -> None:
    bare = {**os.environ, "PATH": str(tmp_path / "empty")}
    done = _image_build(tmp_path / "img", bare)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == (
        "testlab: image build needs mmdebstrap, mkfs.ext4, qemu-img: "
        "apt-get install e2fsprogs mmdebstrap qemu-utils\n"
    )
    assert not (tmp_path / "img").exists()


def test_build_never_replaces_a_directory_that_is_not_an_image(tmp_path: Path) -> None:
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    done = _image_build(out)
    assert done.returncode == 1
    assert done.stderr == f"testlab: {out} is not empty and holds no testlab image: choose another --out\n"
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and read_image(out) is None


def test_links_out_of_the_image_are_never_followed(tmp_path: Path) -> None:
    from testlab.image.rootfs import place, resolved_inside

    root = tmp_path / "rootfs"
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "bin").symlink_to("usr/bin")  # merged /usr, as Debian has it
    (root / "usr" / "bin" / "busybox").write_bytes(b"guest")
    (root / "etc").symlink_to(tmp_path / "host-etc")  # a link an image must not have
    (tmp_path / "host-etc").mkdir()
    assert resolved_inside(root, "bin/busybox").read_bytes() == b"guest"
    (root / "usr" / "bin" / "python3").symlink_to("/usr/bin/python3")
    with pytest.raises(ImageError, match="leads outside"):
        resolved_inside(root, "bin/python3")
    with pytest.raises(ImageError, match="leads outside"):
        place(root, "etc/inittab", b"x")
    assert list((tmp_path / "host-etc").iterdir()) == []
