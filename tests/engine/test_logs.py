"""A command that writes without end cannot fill the engine's disk: its log keeps the last part."""

from __future__ import annotations

import pytest

from tests.engine.harness import make_lab, submit, task_rows, wait_for_jobs

pytestmark = pytest.mark.slow


def test_a_huge_output_is_cut_to_its_end(settings, tmp_path, engine_process):
    make_lab(settings, tmp_path / "vms", {"h1": ["v1"]})
    run = "head -c 3000000 /dev/zero | tr \\\\0 y; echo; echo the end"
    job = submit(settings, tmp_path, "j", f"name: j\nsteps:\n  - {{name: s, vms: [v1], run: '{run}'}}\n")
    engine = engine_process({"TESTLAB_MAX_LOG_BYTES": "1000000"})
    assert wait_for_jobs(settings, [job], 60, engine) == {job: "completed"}
    log = (settings.job_dir(job) / "tasks" / str(task_rows(settings, job)[0]["id"]) / "log").read_bytes()
    assert len(log) < 1_100_000
    first, _, rest = log.partition(b"\n")
    assert first.startswith(b"[testlab: the first ") and first.endswith(b" bytes of this log were cut]")
    assert rest.endswith(b"yyy\nthe end\n")
    assert int(first.split()[3]) + len(rest) == 3_000_000 + len("\nthe end\n")
