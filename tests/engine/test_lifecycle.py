"""Reused machines end to end: lifecycle records, history strings, blame and protection on a local
lab whose VMs are kept between tasks (`wipe: reuse`), the engine a real process.

The clean snapshot of each VM holds `needed.txt`, which every `test` step checks; a `scrub` step
removes it, leaving the machine broken for whoever comes next until the VM is wiped.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from testlab.cli.main import cli
from testlab.db.models import VM, Event, Task, VMUse, utcnow
from testlab.db.session import session_scope
from testlab.lifecycle import HistoryEntry, parse_history, render_history
from testlab.web.app import create_app
from testlab.web.options import WebOptions
from tests.engine.harness import check_history, make_lab, submit, wait_for_jobs

pytestmark = pytest.mark.slow

TEST = "test -f ../needed.txt"
SCRUB = "rm -f ../needed.txt"


def _job(name: str, vm: str, steps: list[tuple[str, str]], clean: tuple[str, ...] = ()) -> str:
    lines = [f"name: {name}", "steps:"]
    previous = None
    for step, command in steps:
        lines += [f"  - name: {step}", f"    vms: [{vm}]", f"    run: {json.dumps(command)}"]
        if step in clean:
            lines.append("    clean: true")
        if previous is not None:
            lines.append(f"    after: {previous}")
        previous = step
    return "\n".join(lines) + "\n"


def _lab(settings, root: Path, vms: list[str], options: str) -> None:
    for vm in vms:  # the clean snapshot (taken when the lab is made) holds the file tests need
        disk = root / "h1" / vm / "disk"
        disk.mkdir(parents=True)
        (disk / "needed.txt").write_text("tests need me\n")
    make_lab(
        settings,
        root,
        {"h1": vms},
        limits="max_active: 2, max_running: 2, max_reverting: 2",
        vm_options=options,
    )


def _run(settings, tmp_path, engine, name: str, vm: str, steps: list[tuple[str, str]]) -> int:
    job = submit(settings, tmp_path, name, _job(name, vm, steps))
    wait_for_jobs(settings, [job], 90, engine)
    return job


def _cli(*args: str, expect: int = 0) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == expect, (args, result.output, result.stderr)
    return result.output


def _histories(settings) -> dict[int, tuple[str | None, str | None]]:
    with session_scope(settings.database_url) as session:
        rows = session.execute(select(Task.id, Task.history_at_start, Task.history_at_end)).all()
    return {task_id: (start, end) for task_id, start, end in rows}


def _job_status(settings, job: int) -> str:
    return json.loads(_cli("job", "show", str(job), "--json"))["status"]


def test_a_damaging_job_is_listed_before_the_failure_it_caused_and_a_wipe_starts_afresh(
    settings, tmp_path, engine_process
):
    _lab(settings, tmp_path / "vms", ["r1"], "wipe: reuse")
    engine = engine_process()

    good = _run(settings, tmp_path, engine, "good", "r1", [("build", "true"), ("test", TEST)])
    assert _job_status(settings, good) == "completed"
    output = _cli("vm", "exec", "r1", "--", "echo", "hello from", "$((6*7))")
    assert output == "hello from 42\n"
    damage = _run(settings, tmp_path, engine, "damage", "r1", [("test", TEST), ("scrub", SCRUB)])
    assert _job_status(settings, damage) == "completed"
    victim = _run(settings, tmp_path, engine, "victim", "r1", [("test", TEST)])
    assert _job_status(settings, victim) == "failed", "the machine was left broken"

    shown = json.loads(_cli("job", "show", str(victim), "--json"))
    task = shown["steps"][0]["tasks"][0]
    earlier = task["used_before"]
    assert earlier[0]["job"] == damage and earlier[0]["step"] == "scrub", earlier
    assert [(u["job"], u["step"], u["kind"]) for u in earlier] == [
        (damage, "scrub", "task"),
        (damage, "test", "task"),
        (None, None, "exec"),
        (good, "test", "task"),
        (good, "build", "task"),
    ]
    exec_id = earlier[2]["id"]
    expected = f"{good}:build,test exec#{exec_id} {damage}:test,scrub :test"
    assert task["history"] == expected
    text = _cli("job", "show", str(victim))
    assert f"used before it since its last wipe:\n  job {damage} step scrub" in text
    assert f"history {expected}" in text
    entries = parse_history(task["history"])
    assert render_history(entries) == expected
    assert entries[-1] == HistoryEntry("task", step="test", own=True)
    with TestClient(create_app(settings, WebOptions(anonymous=True))) as web:
        page = web.get(f"/jobs/{victim}").text
    assert (
        "Used since its last wipe" in page and f'<a href="/jobs/{damage}">job {damage}</a> step scrub' in page
    )
    assert f"history: <code>{expected}</code>" in page

    # The failure wiped the VM (wipe_after_failure): the next job runs on a clean machine.
    before = _histories(settings)
    after_wipe = _run(settings, tmp_path, engine, "after-wipe", "r1", [("test", TEST)])
    assert _job_status(settings, after_wipe) == "completed"
    history = json.loads(_cli("vm", "history", "r1", "--json"))
    assert [(u["job"], u["step"]) for u in history] == [(after_wipe, "test")]
    assert {k: v for k, v in _histories(settings).items() if k in before} == before, (
        "history strings of earlier tasks never change"
    )
    # An administrator's wipe request: the next task starts on a fresh machine too.
    assert "will be wiped before its next use" in _cli("vm", "wipe", "r1")
    again = _run(settings, tmp_path, engine, "again", "r1", [("test", TEST)])
    shown = json.loads(_cli("job", "show", str(again), "--json"))
    assert shown["steps"][0]["tasks"][0]["history"] == ":test"
    check_history(settings)

    # The records of wiped lifecycles go with `testlab gc`; the tasks' strings stay.
    before = _histories(settings)
    with session_scope(settings.database_url) as session:
        session.execute(
            update(VMUse).where(VMUse.wiped.is_not(None)).values(wiped=utcnow() - timedelta(days=40))
        )
    assert "would remove: 0 job(s)" in _cli("gc", "--older-than", "30d", "--dry-run")
    assert "removed: 0 job(s)" in _cli("gc", "--older-than", "30d")
    with session_scope(settings.database_url) as session:
        assert session.scalar(select(func.count()).select_from(VMUse).where(VMUse.wiped.is_not(None))) == 0
    assert _histories(settings) == before
    shown = json.loads(_cli("job", "show", str(victim), "--json"))["steps"][0]["tasks"][0]
    assert shown["history"] == expected and shown["used_before"] is None
    assert [(u["job"], u["step"]) for u in json.loads(_cli("vm", "history", "r1", "--json"))] == [
        (again, "test")
    ]


def test_reuse_runs_the_next_task_without_a_revert_until_max_uses(settings, tmp_path, engine_process):
    _lab(settings, tmp_path / "vms", ["r1"], "wipe: reuse, max_uses: 3")
    engine = engine_process()
    job = _run(
        settings,
        tmp_path,
        engine,
        "five",
        "r1",
        [
            ("s1", "echo 1 >> ../count"),
            ("s2", "test $(wc -l < ../count) = 1 && echo 2 >> ../count"),
            ("s3", "test $(wc -l < ../count) = 2 && echo 3 >> ../count"),
            ("s4", "test ! -e ../count"),
            ("s5", "true"),
        ],
    )
    assert _job_status(settings, job) == "completed"
    with session_scope(settings.database_url) as session:
        vm_id = session.scalar(select(VM.id).where(VM.name == "r1"))
        reverts = session.scalars(
            select(Event.reason).where(
                Event.vm_id == vm_id, Event.new_status == "reverting", Event.kind == "vm"
            )
        ).all()
        histories = [
            h
            for h in session.scalars(select(Task.history_at_end).where(Task.job_id == job).order_by(Task.id))
        ]
    assert len(reverts) == 2, f"one revert before the first task, one after max_uses: {reverts}"
    assert histories == [":s1", ":s1,s2", ":s1,s2,s3", ":s4", ":s4,s5"]


def test_a_clean_step_gets_a_freshly_wiped_vm(settings, tmp_path, engine_process):
    _lab(settings, tmp_path / "vms", ["r1"], "wipe: reuse")
    engine = engine_process()
    steps = [("dirty", "touch ../left-over"), ("fresh", "test ! -e ../left-over")]
    text = _job("clean", "r1", steps, clean=("fresh",))
    job = submit(settings, tmp_path, "clean", text)
    wait_for_jobs(settings, [job], 90, engine)
    assert _job_status(settings, job) == "completed"
    with session_scope(settings.database_url) as session:
        histories = session.scalars(
            select(Task.history_at_end).where(Task.job_id == job).order_by(Task.id)
        ).all()
    assert histories == [":dirty", ":fresh"]


def test_protection_wipes_after_failures_of_two_jobs_and_names_the_suspect(
    settings, tmp_path, engine_process
):
    _lab(settings, tmp_path / "vms", ["r1"], "wipe: reuse, wipe_after_failure: false")
    engine = engine_process()
    damage = _run(settings, tmp_path, engine, "damage", "r1", [("scrub", SCRUB)])
    first = _run(settings, tmp_path, engine, "first", "r1", [("test", TEST)])
    second = _run(settings, tmp_path, engine, "second", "r1", [("test", TEST)])
    assert [_job_status(settings, j) for j in (damage, first, second)] == ["completed", "failed", "failed"]
    with session_scope(settings.database_url) as session:
        notices = session.scalars(select(Event.reason).where(Event.kind == "notify")).all()
    assert any(
        f"vm r1 will be wiped before its next use: tasks of 2 jobs ({first}, {second}) failed in a row "
        f"after step scrub of job {damage}" in n
        for n in notices
    ), notices
    third = _run(settings, tmp_path, engine, "third", "r1", [("test", TEST)])
    assert _job_status(settings, third) == "completed", "the VM was wiped before its next use"


def test_blame_ranks_the_damaging_step_first_over_fifty_jobs(settings, tmp_path, engine_process):
    _lab(settings, tmp_path / "vms", ["r1", "r2"], "wipe: reuse")
    damaging = {7, 23, 38}  # jobs (by position) that end with the damaging step
    jobs = []
    for number in range(50):
        steps = [("build", "true"), ("test", TEST)]
        if number in damaging:
            steps.append(("scrub", SCRUB))
        elif number % 5 == 0:
            steps.append(("lint", "true"))
        vm = "r1" if number % 2 == 0 else "r2"
        jobs.append(submit(settings, tmp_path, f"job{number}", _job(f"job{number}", vm, steps)))
    engine = engine_process()
    statuses = wait_for_jobs(settings, jobs, 240, engine)
    failed = [j for j in jobs if statuses[j] == "failed"]
    assert len(failed) == len(damaging), statuses
    ranking = json.loads(_cli("blame", "--json"))
    assert ranking[0]["step"] == "scrub", ranking
    assert ranking[0]["job"] == jobs[max(damaging)]
    assert ranking[0]["failures_after"] == len(damaging)
    assert set(ranking[0]) == {"kind", "step", "job", "failures_after", "successes_after", "score"}
    assert ranking[0]["score"] > max(s["score"] for s in ranking[1:])
    assert json.loads(_cli("blame", "--vm", "r1", "--json"))[0]["step"] == "scrub"
    text = _cli("blame")
    assert "scrub" in text.split("\n", 3)[3]
    check_history(settings)
