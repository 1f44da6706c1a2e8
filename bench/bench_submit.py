"""How long `testlab job submit` takes for a job of 1,000 tasks (one step on 1,000 VMs), on SQLite.

Measures the service call (parse, validate, resolve targets, copy files, insert) and the whole CLI
process, so the printed numbers say where the time goes. Not a test: prints numbers.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from testlab.config import Settings
from testlab.db.session import session_scope, upgrade
from testlab.domain.jobfile import parse_job
from testlab.domain.labfile import parse_lab_text
from testlab.services.jobs import submit_job
from testlab.services.lab import apply_lab

VMS = 1000
RUNS = 7


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-submit-"))
    settings = Settings(home=root / "home", database_url=f"sqlite:///{root / 'home' / 'testlab.db'}")
    settings.home.mkdir(parents=True)
    upgrade(settings.database_url)
    hosts = "\n".join(
        f"  - {{name: h{h}, backend: libvirt, uri: 'test:///default'}}" for h in range(VMS // 10)
    )
    vms = "\n".join(
        f"  - {{name: vm{i}, host: h{i // 10}, snapshot: clean, labels: [all]}}" for i in range(VMS)
    )
    with session_scope(settings.database_url) as session:
        apply_lab(session, parse_lab_text(f"hosts:\n{hosts}\nvms:\n{vms}\n", "bench lab", root))
    job_dir = root / "job"
    job_dir.mkdir()
    (job_dir / "run.sh").write_text("echo hello\n")
    (job_dir / "job.yaml").write_text(
        "name: wide\nsteps:\n  - {name: build, vms: [vm0], files: [run.sh], run: sh run.sh}\n"
        "  - {name: test, after: build, labels: [all], files: [run.sh], run: sh run.sh}\n"
    )
    service = []
    for _ in range(RUNS):
        started = time.perf_counter()
        definition = parse_job(job_dir / "job.yaml")
        with session_scope(settings.database_url) as session:
            submit_job(session, settings, definition, owner="bench")
        service.append(time.perf_counter() - started)
    env = {**os.environ, "TESTLAB_HOME": str(settings.home), "TESTLAB_DB": settings.database_url}
    process = []
    for _ in range(RUNS):
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "testlab", "job", "submit", str(job_dir / "job.yaml")],
            env=env,
            check=True,
            capture_output=True,
        )
        process.append(time.perf_counter() - started)
    startup = []
    for _ in range(RUNS):
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "testlab", "--version"], env=env, check=True, capture_output=True
        )
        startup.append(time.perf_counter() - started)
    print(f"job submit, {VMS + 1} tasks, SQLite ({RUNS} runs)")
    print(
        f"  service call (parse, validate, copy, insert): median {statistics.median(service) * 1000:7.1f} ms"
        f"  min {min(service) * 1000:7.1f} ms"
    )
    print(
        f"  whole `testlab job submit` process:           median {statistics.median(process) * 1000:7.1f} ms"
        f"  min {min(process) * 1000:7.1f} ms"
    )
    print(
        f"  of which interpreter and imports (--version): median {statistics.median(startup) * 1000:7.1f} ms"
    )


if __name__ == "__main__":
    main()
