"""A small filesystem of a test's own (tmpfs), so filling it fills nothing else. Needs root."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_filesystem(path: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of `size` at `path` for the block; unmounted afterwards whatever happened."""
    if os.geteuid() != 0:
        pytest.fail("this test mounts a small filesystem: run it as root")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True, timeout=30)
    try:
        yield path
    finally:
        for _ in range(50):  # processes started on it (agents) may take a moment to let go
            if subprocess.run(["umount", str(path)], capture_output=True, timeout=30).returncode == 0:
                break
            time.sleep(0.1)
        else:
            subprocess.run(["umount", "--lazy", str(path)], check=True, timeout=30)
