"""What a guest image is built from, and the key that names it.

The key hashes everything that decides the image's content: the recipe, the digest of the agent
token baked into it, and the source of the builder, the guest files and the agent. A build whose key
matches the image already in the output directory does nothing, so `testlab image build` is cheap to
run again and a cache can be keyed by it. Debian's archive moves on by itself: `--rebuild` picks up
new package versions.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
GUEST_DIR = PACKAGE_DIR / "guest"
AGENT_SOURCE = PACKAGE_DIR.parent / "agent" / "server.py"


@dataclass(frozen=True)
class Recipe:
    suite: str = "bookworm"
    mirror: str = "http://deb.debian.org/debian"
    #: python3 runs the agent; busybox-static is init, shell of the initrd, acpid, ip and hwclock;
    #: the kernel is copied out of the image and booted directly.
    packages: tuple[str, ...] = ("python3", "busybox-static", "linux-image-amd64")
    disk_size: str = "2G"
    agent_port: int = 8765
    workdir: str = "/var/lib/testlab"
    hostname: str = "testlab-guest"
    cmdline: str = "root=/dev/vda rw console=ttyS0 quiet"


def source_files() -> list[Path]:
    """The files whose content shapes the image besides the recipe."""
    files = sorted(PACKAGE_DIR.glob("*.py")) + sorted(p for p in GUEST_DIR.iterdir() if p.is_file())
    return [*files, AGENT_SOURCE]


def recipe_key(recipe: Recipe) -> str:
    """What the image is built from, the token aside: a cache of images can be keyed by it."""
    digest = hashlib.sha256(json.dumps(asdict(recipe), sort_keys=True).encode())
    for path in source_files():
        digest.update(f"\0{path.name}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def image_key(recipe: Recipe, token: str) -> str:
    """The recipe's key and the token baked into the image."""
    token_digest = hashlib.sha256(token.encode()).hexdigest()
    return hashlib.sha256(f"{recipe_key(recipe)}:{token_digest}".encode()).hexdigest()
