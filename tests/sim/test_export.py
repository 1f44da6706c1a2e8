"""`export-workload` on a hand-made history: templates, arrivals, run, revert and power-off times."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import select

from testlab.db.models import VM, Event, Job, Task
from testlab.db.session import session_scope, upgrade
from testlab.domain.jobfile import parse_job
from testlab.domain.labfile import parse_lab_text
from testlab.services.errors import UserError
from testlab.services.jobs import submit_job
from testlab.services.lab import apply_lab, export_lab
from testlab.sim.export import export_workload
from testlab.sim.policies import POLICIES
from testlab.sim.simulator import simulate
from testlab.sim.workload import parse_workload

LAB = """hosts:
  - {name: h1, backend: libvirt, uri: 'test:///default'}
vms:
  - {name: v1, host: h1, snapshot: clean}
  - {name: v2, host: h1, snapshot: clean}
"""
JOB = "name: nightly check\nsteps:\n  - {name: test, vms: [v1, v2], files: [run.sh], run: sh run.sh}\n"
T0 = datetime(2026, 1, 5, 8, 0, 0)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture
def history(lab_db, tmp_path):
    """Three jobs an hour apart; each task ran 100s or 140s (one failed); reverts took 20s or 40s."""
    settings = lab_db.settings
    upgrade(settings.database_url)
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "run.sh").write_text("true\n")
    (tmp_path / "job" / "job.yaml").write_text(JOB)
    with session_scope(settings.database_url) as session:
        apply_lab(session, parse_lab_text(LAB, "lab.yaml"))
    with session_scope(settings.database_url) as session:
        ids = [
            submit_job(session, settings, parse_job(tmp_path / "job" / "job.yaml"), owner="t")
            for _ in range(3)
        ]
    with session_scope(settings.database_url) as session:
        vms = {vm.name: vm.id for vm in session.scalars(select(VM))}
        session.execute(Event.__table__.delete())
        for n, job_id in enumerate(ids):
            start = 3600 * n
            session.get(Job, job_id).submitted = at(start)
            for task in session.scalars(select(Task).where(Task.job_id == job_id)):
                run = 100 if task.number == 1 else 140
                task.started, task.ended = at(start + 60), at(start + 60 + run)
                task.status = "failed" if (n, task.number) == (2, 2) else "completed"
            for name, revert in (("v1", 20), ("v2", 40)):
                for offset, old, new in (
                    (0, "off", "reverting"),
                    (revert, "reverting", "idle"),
                    (revert + 0.05, "idle", "running"),
                    (300, "running", "dirty"),
                    (300.1, "dirty", "off"),
                ):
                    session.add(
                        Event(
                            time=at(start + offset),
                            kind="vm",
                            vm_id=vms[name],
                            old_status=old,
                            new_status=new,
                        )
                    )
    return settings


@pytest.mark.parametrize("lab_db", ["sqlite"], indirect=True)
def test_export_fits_the_history(history, tmp_path):
    with session_scope(history.database_url) as session:
        path = export_workload(session, history, tmp_path / "out")
        lab = export_lab(session)
    workload = parse_workload(path)
    (template,) = workload.templates
    assert template.name == "nightly check" and template.job.steps[0].files == ("run.sh",)
    assert template.arrivals.rate * 3600 == pytest.approx(1.5)  # three jobs in two hours
    times = template.steps["test"]
    assert times.run.mean == pytest.approx(120) and times.fail == pytest.approx(1 / 6, abs=1e-3)
    assert workload.revert.mean == pytest.approx(30)
    assert workload.revert_for("v1").mean == pytest.approx(20) and workload.revert_for("v2").mean == 40
    assert workload.poweroff.mean == pytest.approx(0.1)
    assert workload.engine.latency == pytest.approx(0.05)
    assert simulate(lab, workload, POLICIES["testlab"]).jobs


@pytest.mark.parametrize("lab_db", ["sqlite"], indirect=True)
def test_replay_keeps_the_submission_times(history, tmp_path):
    with session_scope(history.database_url) as session:
        path = export_workload(session, history, tmp_path / "out", replay=True)
        assert export_workload(session, history, tmp_path / "last", since=1800).exists()
    assert parse_workload(path).templates[0].arrivals.at == (0.0, 3600.0, 7200.0)
    last = parse_workload(tmp_path / "last" / "workload.yaml")
    assert last.templates[0].arrivals.at == (0.0,)  # one job in the last half hour of submissions


@pytest.mark.parametrize("lab_db", ["sqlite"], indirect=True)
def test_an_empty_history_is_a_user_error(lab_db, tmp_path):
    upgrade(lab_db.settings.database_url)
    with session_scope(lab_db.settings.database_url) as session, pytest.raises(UserError, match="no job"):
        export_workload(session, lab_db.settings, tmp_path / "out")


@pytest.mark.parametrize("lab_db", ["sqlite"], indirect=True)
def test_export_workload_command(history, tmp_path):
    from click.testing import CliRunner

    from testlab.cli.main import cli

    result = CliRunner().invoke(cli, ["sim", "export-workload", "-o", str(tmp_path / "w"), "--replay"])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"workload written: {tmp_path / 'w' / 'workload.yaml'}\n"
    assert parse_workload(tmp_path / "w" / "workload.yaml").templates[0].arrivals.kind == "at"
