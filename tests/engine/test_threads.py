"""A running engine's threads carry their names into the kernel, where `top -H`, `ps -L` and
bench_throughput's split of the engine's CPU read them (docs/engine.md)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.engine.harness import make_lab, submit, wait_for_jobs

JOB = "name: j\nsteps:\n  - {name: s, vms: [v1], run: 'echo hi > out.txt', artifacts: [out.txt]}\n"


def _thread_names(pid: int) -> set[str]:
    names = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            names.add(re.sub(r"-\d+$", "", (task / "comm").read_text().strip()))
        except OSError:
            continue  # a thread that ended meanwhile
    return names


def test_an_engine_s_threads_are_named_by_what_they_do(settings, tmp_path, engine_process) -> None:
    make_lab(settings, tmp_path / "vms", {"h1": ["v1"]})
    engine = engine_process()
    job_id = submit(settings, tmp_path / "jobs", "j", JOB)
    wait_for_jobs(settings, [job_id], 60)
    assert engine.process is not None
    names = _thread_names(engine.process.pid)
    assert {"testlab-db", "testlab-lease", "testlab-io", "host-h1"} <= names, names
