"""Revert time of a local sandbox VM whose disk holds 10,000 small files.

Run: python bench/bench_local_revert.py [--files N] [--runs N] [--spare-only]. Prints min/median
times with the backend's defaults (a spare copy of the snapshot and a spare boot, the next sandbox with
its agent loaded, both prepared in the background), without the spare boot (a new sandbox starts
Python at each revert), and without the spare copy (the copy is on the critical path; skipped with
--spare-only), and the copy method used:

- revert: the backend's call (power off the old sandbox, swap in the snapshot, boot the new sandbox
  until its agent answers);
- revert -> agent ready: from the start of the revert until the engine's agent client
  (`wait_until_up`, as the engine calls it) has an answer with the new boot id.

Every revert is checked to restore the disk exactly and to give the agent a new boot id.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from testlab.agent.client import AgentClient
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


async def _boot_id(backend: LocalBackend, domain: str, not_boot_id: str | None = None) -> str:
    """The agent's boot id once it answers with one other than `not_boot_id`, as the engine waits."""
    address = backend.agent_address(domain)
    assert address is not None
    async with AgentClient(address.url, address.token) as client:
        info = await client.wait_until_up(timeout=30, not_boot_id=not_boot_id)
    return info.boot_id


def measure(
    root: Path, files: int, runs: int, spare: bool, spare_boots: bool = True
) -> tuple[list[float], list[float], str]:
    """(revert call times, revert -> agent ready times, copy method)."""
    backend = LocalBackend("bench", f"local://{root}", {"spare_copies": spare, "spare_boots": spare_boots})
    domain = f"copy{int(spare)}-boot{int(spare_boots)}"
    backend.ensure_domain(domain, "empty")
    disk = root / domain / "disk"
    populate(disk, files)
    backend.create_snapshot(domain, "clean")
    expected = fingerprint(disk)
    reverts, ready = [], []
    try:
        backend.revert(domain, "clean")  # warm-up: the first revert has no spare yet
        backend.wait_idle()
        boot_id = asyncio.run(_boot_id(backend, domain))
        for round_no in range(runs):
            dirty(disk, round_no)
            started = time.perf_counter()
            backend.revert(domain, "clean")
            reverts.append(time.perf_counter() - started)
            new_boot = asyncio.run(_boot_id(backend, domain, not_boot_id=boot_id))
            ready.append(time.perf_counter() - started)
            if new_boot == boot_id:
                sys.exit(f"revert {round_no} kept the boot id")
            boot_id = new_boot
            if fingerprint(disk) != expected:
                sys.exit(f"revert {round_no} did not restore the disk exactly")
            backend.wait_idle()  # steady state: the engine reverts a VM once per task, not back to back
            time.sleep(0.2)  # a task's worth of time: the spare boot loads meanwhile
    finally:
        backend.power_off(domain)
        backend.close()
    return reverts, ready, backend.copy_method


def _times(values: list[float]) -> str:
    return f"min {min(values) * 1000:7.1f} ms  median {statistics.median(values) * 1000:7.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--spare-only", action="store_true", help="skip the copy on the critical path")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-local-revert-") as tmp:
        root = Path(tmp)
        print(f"disk: {args.files} files; revert = power off agent + swap in the snapshot + agent answers")
        variants = [
            ("spare copy and spare boot ready (default)", True, True),
            ("spare copy ready, a new sandbox per boot", True, False),
        ]
        if not args.spare_only:
            variants.append(("copy on the critical path", False, True))
        for label, spare, spare_boots in variants:
            reverts, ready, method = measure(root, args.files, args.runs, spare, spare_boots)
            print(f"{label}  ({len(reverts)} runs, copy: {method}, exact: yes, new boot id: yes)")
            print(f"  revert:                  {_times(reverts)}")
            print(f"  revert -> agent ready:   {_times(ready)}")


if __name__ == "__main__":
    main()
