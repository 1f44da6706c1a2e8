"""A built guest image on disk: what `testlab image build` writes and `testlab vm provision` reads.

```
DIR/disk.qcow2    the root filesystem (ext4 on the whole disk, no partition table, no boot loader)
DIR/vmlinuz       the kernel, booted directly by the hypervisor
DIR/initrd.img    a small initrd that loads the disk and network drivers and mounts the disk
DIR/agent.token   the token the image's agent expects (mode 0600)
DIR/image.json    the manifest: key, recipe, kernel command line, agent port, build time
```
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testlab.image.tools import ImageError

MANIFEST = "image.json"
DISK = "disk.qcow2"
KERNEL = "vmlinuz"
INITRD = "initrd.img"
TOKEN = "agent.token"
FORMAT = 1
#: What the guest prints on its serial console once its agent launcher listens (guest/launch.py):
#: the moment to take a clean snapshot.
READY_MARKER = "testlab-launcher: ready"


@dataclass(frozen=True)
class Image:
    directory: Path
    key: str
    cmdline: str
    agent_port: int
    kernel_version: str
    manifest: dict[str, Any]

    @property
    def disk(self) -> Path:
        return self.directory / DISK

    @property
    def kernel(self) -> Path:
        return self.directory / KERNEL

    @property
    def initrd(self) -> Path:
        return self.directory / INITRD

    @property
    def token_file(self) -> Path:
        return self.directory / TOKEN

    def token(self) -> str:
        return self.token_file.read_text().strip()


def read_image(directory: Path) -> Image | None:
    """The complete image in `directory`, or None if there is none (or only part of one)."""
    directory = Path(directory).absolute()
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return None
    if not all((directory / name).is_file() for name in (DISK, KERNEL, INITRD, TOKEN)):
        return None
    try:
        return Image(
            directory=directory,
            key=str(manifest["key"]),
            cmdline=str(manifest["cmdline"]),
            agent_port=int(manifest["agent_port"]),
            kernel_version=str(manifest["kernel_version"]),
            manifest=manifest,
        )
    except (KeyError, TypeError, ValueError):
        return None


def load_image(directory: Path) -> Image:
    """Like read_image, for a directory that must hold an image."""
    image = read_image(directory)
    if image is None:
        raise ImageError(f"{directory}: no guest image here (build one with `testlab image build --out DIR`)")
    return image


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    (directory / MANIFEST).write_text(json.dumps({"format": FORMAT, **manifest}, indent=2) + "\n")
