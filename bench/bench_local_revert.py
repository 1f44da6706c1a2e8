"""Revert time of a local sandbox VM whose disk holds 10,000 small files.

Run: python bench/bench_local_revert.py [--files N] [--runs N]. Prints min/median revert times, with
the spare copy prepared in the background (the default) and without it (the copy is on the critical
path), and the copy method used. Every revert is checked to restore the disk exactly.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from testlab.hypervisor.local import LocalBackend


def populate(disk: Path, files: int) -> None:
    for i in range(files):
        sub = disk / f"dir{i % 10}" / f"sub{i % 7}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"file{i}.txt").write_bytes(f"file {i}\n".encode() * (1 + i % 20))


def fingerprint(disk: Path) -> str:
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(disk):
        dirnames[:] = sorted(d for d in dirnames if d != ".agent")
        for name in sorted(filenames):
            path = Path(dirpath) / name
            digest.update(str(path.relative_to(disk)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def dirty(disk: Path, round_no: int) -> None:
    files = sorted(disk.rglob("file*.txt"))
    for path in files[round_no::97]:
        path.unlink()
    for path in files[round_no + 1 :: 89]:
        if path.exists():
            with open(path, "r+b") as f:
                f.write(b"CHANGED")
    for i in range(50):
        (disk / f"dir{i % 10}" / f"added{round_no}-{i}.bin").write_bytes(os.urandom(64))


def measure(root: Path, files: int, runs: int, spare: bool) -> tuple[list[float], str]:
    backend = LocalBackend("bench", f"local://{root}", {"spare_copies": spare})
    domain = "spare" if spare else "plain"
    backend.ensure_domain(domain, "empty")
    disk = root / domain / "disk"
    populate(disk, files)
    backend.create_snapshot(domain, "clean")
    expected = fingerprint(disk)
    times = []
    try:
        backend.revert(domain, "clean")  # warm-up: the first revert has no spare yet
        backend.wait_idle()
        for round_no in range(runs):
            dirty(disk, round_no)
            started = time.perf_counter()
            backend.revert(domain, "clean")
            times.append(time.perf_counter() - started)
            if fingerprint(disk) != expected:
                sys.exit(f"revert {round_no} did not restore the disk exactly")
            backend.wait_idle()  # steady state: the engine reverts a VM once per task, not back to back
    finally:
        backend.power_off(domain)
        backend.close()
    return times, backend.copy_method


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-local-revert-") as tmp:
        root = Path(tmp)
        print(f"disk: {args.files} files; revert = power off agent + swap in the snapshot + agent answers")
        for spare in (True, False):
            times, method = measure(root, args.files, args.runs, spare)
            label = "spare copy ready (default)" if spare else "copy on the critical path"
            low, mid = min(times) * 1000, statistics.median(times) * 1000
            print(
                f"{label:28s} min {low:7.1f} ms  median {mid:7.1f} ms"
                f"  ({len(times)} runs, copy: {method}, exact: yes)"
            )


if __name__ == "__main__":
    main()
