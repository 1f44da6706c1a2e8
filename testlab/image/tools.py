"""What an image build needs from the machine, and running its tools under a deadline.

Every failure becomes an ImageError whose message is one line a person can act on ("needs root",
"install mmdebstrap", "mmdebstrap failed: <its last words>"), never a traceback.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

from testlab.services.errors import UserError

#: command -> Debian package that provides it
TOOLS = {"mmdebstrap": "mmdebstrap", "mkfs.ext4": "e2fsprogs", "qemu-img": "qemu-utils"}


class ImageError(UserError):
    """The image cannot be built or read; the message is one line."""


def check_build_requirements() -> None:
    """Root (mmdebstrap installs packages into the image's root filesystem as root, and the files
    keep their owners on the disk) and the tools of TOOLS."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        packages = " ".join(sorted({TOOLS[tool] for tool in missing}))
        raise ImageError(f"image build needs {', '.join(missing)}: apt-get install {packages}")
    if os.geteuid() != 0:
        raise ImageError(
            "image build needs root (it installs Debian packages into the image): run it as root"
        )


def run(
    argv: Sequence[str],
    *,
    timeout: float,
    what: str,
    log: Path | None = None,
    cwd: Path | None = None,
) -> str:
    """Run a tool in a process group of its own, killed whole at its deadline; returns its output.

    With `log`, the output goes to that file (a debootstrap is long) and the error quotes its last line.
    """
    sink = log.open("ab") if log is not None else subprocess.PIPE
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
        )
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise ImageError(f"{what} did not finish within {timeout:g} s") from None
    except OSError as exc:
        raise ImageError(f"{what}: cannot run {argv[0]}: {exc.strerror or exc}") from None
    finally:
        if log is not None:
            sink.close()
    text = (out or b"").decode(errors="replace") if log is None else log.read_text(errors="replace")
    if proc.returncode != 0:
        raise ImageError(f"{what} failed (exit status {proc.returncode}): {last_line(text)}")
    return text


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"
