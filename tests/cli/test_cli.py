"""Every CLI command on both databases (the `lab_db` fixture runs each test on SQLite and PostgreSQL)."""

from __future__ import annotations

import json

from sqlalchemy import func, select

from testlab.db.models import Event, Job, Task
from testlab.db.session import session_scope


def count(lab_db, model) -> int:
    with session_scope(lab_db.settings.database_url) as session:
        return session.scalar(select(func.count()).select_from(model))


def test_commands_refuse_an_uninitialised_database(lab_db):
    from tests.cli.conftest import Testlab

    result = Testlab()("vm", "list", expect=1)
    assert "run `testlab init`" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_init_twice_is_harmless(testlab):
    testlab("init")


def test_lab_apply_is_idempotent(testlab, lab_file, lab_db):
    first = testlab("lab", "apply", lab_file)
    assert "created" in first.output
    events = count(lab_db, Event)
    second = testlab("lab", "apply", lab_file)
    assert second.output.strip() == "lab unchanged"
    assert count(lab_db, Event) == events


def test_lab_export_round_trips(testlab, lab_file, tmp_path, lab_db):
    testlab("lab", "apply", lab_file)
    exported = tmp_path / "exported.yaml"
    exported.write_text(testlab("lab", "export").output)
    events = count(lab_db, Event)
    assert testlab("lab", "apply", exported).output.strip() == "lab unchanged"
    assert count(lab_db, Event) == events


def test_vm_missing_from_the_file_is_retired_not_deleted(testlab, lab_file, lab_db):
    testlab("lab", "apply", lab_file)
    lab_file.write_text("\n".join(line for line in lab_file.read_text().splitlines() if "extra1" not in line))
    assert "retired: vm extra1" in testlab("lab", "apply", lab_file).output
    vms = {v["name"]: v for v in json.loads(testlab("vm", "list", "--json").output)}
    assert vms["extra1"]["role"] == "retired"


def test_listings_have_stable_json_keys(testlab, lab_file):
    testlab("lab", "apply", lab_file)
    hosts = json.loads(testlab("host", "list", "--json").output)
    assert {h["name"] for h in hosts} == {"h1", "h2"}
    vms = json.loads(testlab("vm", "list", "--json").output)
    assert {(v["name"], v["host"], v["status"]) for v in vms} >= {
        ("win10", "h1", "off"),
        ("linux", "h2", "off"),
    }
    shown = json.loads(testlab("vm", "show", "win10-fr", "--json").output)
    assert shown["domain"] == "win10" and shown["snapshot"] == "clean-fr"
    assert "win10" in testlab("vm", "list").output


def test_job_submit_show_list(testlab, lab_file, job_file, lab_db):
    testlab("lab", "apply", lab_file)
    job_id = int(testlab("job", "submit", job_file).output.strip())
    shown = json.loads(testlab("job", "show", job_id, "--json").output)
    assert shown["id"] == job_id and shown["status"] == "queued"
    steps = {s["name"]: s for s in shown["steps"]}
    assert [t["vm"] for t in steps["build"]["tasks"]] == ["linux"]
    assert sorted(t["vm"] for t in steps["test"]["tasks"]) == ["win10", "win10-fr"]
    assert all(t["status"] == "queued" for s in shown["steps"] for t in s["tasks"])
    assert steps["test"]["after"] == "build"
    listed = json.loads(testlab("job", "list", "--json").output)
    assert [(j["id"], j["status"]) for j in listed] == [(job_id, "queued")]
    assert json.loads(testlab("job", "list", "--status", "completed", "--json").output) == []
    copied = lab_db.settings.job_dir(job_id)
    assert (copied / "job.yaml").is_file() and (copied / "files" / "build.sh").is_file()
    assert "build and test" in testlab("job", "show", job_id).output


def test_priority_override(testlab, lab_file, job_file):
    testlab("lab", "apply", lab_file)
    job_id = testlab("job", "submit", job_file, "--priority", "3").output.strip()
    assert json.loads(testlab("job", "show", job_id, "--json").output)["priority"] == 3


def test_bad_job_file_changes_nothing(testlab, lab_file, job_file, lab_db):
    testlab("lab", "apply", lab_file)
    job_file.write_text(job_file.read_text().replace("after: build", "after: nosuchstep"))
    before = (count(lab_db, Job), count(lab_db, Event))
    result = testlab("job", "submit", job_file, expect=1)
    assert len(result.stderr.strip().splitlines()) == 1
    assert "job.yaml" in result.stderr and "nosuchstep" in result.stderr
    assert (count(lab_db, Job), count(lab_db, Event)) == before
    assert not list(lab_db.settings.jobs_dir.glob("*")) if lab_db.settings.jobs_dir.exists() else True


def test_job_with_no_matching_vm_changes_nothing(testlab, lab_file, job_file, lab_db):
    testlab("lab", "apply", lab_file)
    job_file.write_text(job_file.read_text().replace("labels: [windows]", "labels: [macos]"))
    result = testlab("job", "submit", job_file, expect=1)
    assert "macos" in result.stderr
    assert count(lab_db, Job) == 0 and count(lab_db, Task) == 0


def test_bad_lab_file_changes_nothing(testlab, lab_file, lab_db):
    testlab("lab", "apply", lab_file)
    events = count(lab_db, Event)
    lab_file.write_text(lab_file.read_text().replace("host: h2, snapshot", "host: h9, snapshot"))
    result = testlab("lab", "apply", lab_file, expect=1)
    assert "h9" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert count(lab_db, Event) == events


def test_missing_file_is_a_one_line_error(testlab, tmp_path):
    result = testlab("job", "submit", tmp_path / "nope.yaml", expect=1)
    assert "nope.yaml" in result.stderr and "Traceback" not in result.stderr


def test_usage_error_exits_2(testlab):
    assert testlab("vm", "set", "x", expect=2).exit_code == 2
    assert testlab("job", "show", "notanumber", expect=2).exit_code == 2


def test_cancel_and_restart(testlab, lab_file, job_file):
    testlab("lab", "apply", lab_file)
    job_id = testlab("job", "submit", job_file).output.strip()
    testlab("job", "cancel", job_id)
    shown = json.loads(testlab("job", "show", job_id, "--json").output)
    assert shown["status"] == "canceled"
    assert {t["status"] for s in shown["steps"] for t in s["tasks"]} == {"skipped"}
    assert "already ended" in testlab("job", "cancel", job_id, expect=1).stderr
    testlab("job", "restart", job_id)
    shown = json.loads(testlab("job", "show", job_id, "--json").output)
    assert shown["status"] == "queued"
    assert {t["status"] for s in shown["steps"] for t in s["tasks"]} == {"queued"}
    assert "still queued" in testlab("job", "restart", job_id, expect=1).stderr
    assert "no such job" in testlab("job", "show", "999", expect=1).stderr


def test_vm_set(testlab, lab_file):
    testlab("lab", "apply", lab_file)

    def status(name):
        return json.loads(testlab("vm", "show", name, "--json").output)["status"]

    testlab("vm", "set", "win10", "--maintenance")
    assert status("win10") == "maintenance"
    testlab("vm", "set", "win10", "--no-maintenance")
    assert status("win10") == "dirty"
    testlab("vm", "set", "linux", "--offline")
    assert status("linux") == "offline"
    testlab("vm", "set", "linux", "--enable")
    assert status("linux") == "dirty"
    assert "not offline" in testlab("vm", "set", "linux", "--enable", expect=1).stderr
    assert "no such VM" in testlab("vm", "set", "nosuch", "--offline", expect=1).stderr
    testlab("vm", "set", "linux", "--abort", expect=2)


def test_host_up_down(testlab, lab_file):
    testlab("lab", "apply", lab_file)
    testlab("host", "set", "h1", "--down")
    assert {h["name"]: h["status"] for h in json.loads(testlab("host", "list", "--json").output)}[
        "h1"
    ] == "down"
    testlab("host", "set", "h1", "--up")


def test_user_add_prints_a_token_once(testlab, lab_db):
    token = testlab("user", "add", "alice", "--admin").output.strip()
    assert len(token) >= 32
    from testlab.services.users import authenticate

    with session_scope(lab_db.settings.database_url) as session:
        assert authenticate(session, token).name == "alice"
        assert authenticate(session, token + "x") is None
    assert "already exists" in testlab("user", "add", "alice", expect=1).stderr
