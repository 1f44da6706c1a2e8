"""Pool targeting end to end: N tasks on any of M < N VMs carrying some labels."""

from __future__ import annotations

import pytest

from tests.engine.harness import check_history, make_lab, submit, task_rows, wait_for_jobs

pytestmark = pytest.mark.slow

JOB = """\
name: pool
steps:
  - name: build
    labels: [all]
    count: 1
    run: echo built > product
    artifacts: [product]
  - name: test
    after: build
    labels: [all]
    count: 8
    run: 'echo "$TESTLAB_TASK $TESTLAB_VM" >> {marks}/$TESTLAB_TASK; test "$(cat product)" = built; sleep 0.3'
"""


def test_pool_tasks_run_once_each_on_whichever_vm_is_free(settings, tmp_path, engine_process):
    marks = tmp_path / "marks"
    marks.mkdir()
    make_lab(
        settings,
        tmp_path / "vms",
        {"h1": ["a1", "a2"], "h2": ["b1"]},
        limits="max_active: 2, max_running: 2, max_reverting: 2, max_reverts_while_running: 2",
    )
    job = submit(settings, tmp_path, "pool", JOB.format(marks=marks))
    queued = task_rows(settings, job)
    assert len(queued) == 9 and all(t["vm"] is None for t in queued), (
        "pool tasks get their VM when they start"
    )
    engine = engine_process()
    assert wait_for_jobs(settings, [job], 120, engine) == {job: "completed"}
    tasks = task_rows(settings, job)
    assert len(tasks) == 9 and all(t["status"] == "completed" and t["tries"] == 1 for t in tasks)
    assert all(t["vm"] in ("a1", "a2", "b1") for t in tasks), tasks
    ran = {}
    for path in marks.iterdir():
        lines = path.read_text().split("\n")
        assert len([line for line in lines if line]) == 1, f"task {path.name} ran more than once"
        task_id, vm = lines[0].split()
        ran[int(task_id)] = vm
    test_tasks = [t for t in tasks if t["id"] in ran]
    assert len(test_tasks) == 8
    assert all(ran[t["id"]] == t["vm"] for t in test_tasks), "each task records the VM it ran on"
    assert len(set(ran.values())) == 3, f"the work spread over the pool: {ran}"
    check_history(settings)
