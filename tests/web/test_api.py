"""The REST API against `testlab serve --engine` on a real port, on SQLite and PostgreSQL."""

from __future__ import annotations

import json

import httpx
import pytest
from click.testing import CliRunner

from testlab.cli.main import cli
from tests.web.conftest import job_upload, wait_for_job, write_job

pytestmark = pytest.mark.slow


def test_submit_run_and_read_a_job_through_the_api(serve, tmp_path):
    server = serve(engine=True)
    with server.client("alice") as http:
        answer = http.post(
            "/api/v1/jobs", files=job_upload(write_job(tmp_path / "job")), data={"priority": "7"}
        )
        assert answer.status_code == 201, answer.text
        job_id = answer.json()["id"]
        view = wait_for_job(server, job_id)
        assert view["status"] == "completed", view
        assert view["owner"] == "alice" and view["priority"] == 7
        assert [s["name"] for s in view["steps"]] == ["build", "test"]
        build = view["steps"][0]["tasks"][0]

        # the log, whole, by offset and by HTTP range
        log = http.get(f"/api/v1/tasks/{build['id']}/log")
        assert log.status_code == 200 and "building step 3" in log.text
        assert log.headers["content-type"].startswith("text/plain")
        size = int(log.headers["x-log-size"])
        part = http.get(f"/api/v1/tasks/{build['id']}/log", params={"offset": 9, "limit": 6})
        assert part.content == log.content[9:15]
        ranged = http.get(f"/api/v1/tasks/{build['id']}/log", headers={"Range": "bytes=-5"})
        assert ranged.status_code == 206 and ranged.content == log.content[-5:]
        assert ranged.headers["content-range"] == f"bytes {size - 5}-{size - 1}/{size}"

        # the live log of an ended task: everything, then the end
        with http.stream("GET", f"/api/v1/tasks/{build['id']}/log/stream") as stream:
            events = _read_events(stream, until="end")
        assert "".join(e["data"]["text"] for e in events if e["event"] == "log") == log.text
        assert events[-1]["data"]["status"] == "completed"

        # artifacts: listed, served with their type, active content only as a download
        listed = http.get(f"/api/v1/tasks/{build['id']}/artifacts").json()["artifacts"]
        assert [a["path"] for a in listed] == ["out/report.html", "out/result.txt"]
        text = http.get(f"/api/v1/tasks/{build['id']}/artifacts/out/result.txt")
        assert text.text == "result for a1\n" and text.headers["content-type"] == "text/plain; charset=utf-8"
        html = http.get(f"/api/v1/tasks/{build['id']}/artifacts/out/report.html")
        assert html.headers["content-type"].startswith("text/html")
        assert html.headers["content-disposition"].startswith("attachment")
        assert "sandbox" in html.headers["content-security-policy"]
        for bad in (
            "..%2Flog",
            "%2E%2E%2F%2E%2E%2Fjob.yaml",
            "%2Fetc%2Fpasswd",
            "out%2F..%2F..%2Flog",
            "missing",
        ):
            answer = http.get(f"/api/v1/tasks/{build['id']}/artifacts/{bad}")
            assert answer.status_code in (404, 400), (bad, answer.status_code)

        results = http.get(f"/api/v1/jobs/{job_id}/results").json()
        assert results == {"job": job_id, "cases": [], "more": False}  # its steps declare no report
        assert view["results"]["verdict"] == "no test failures"

        # the job's history, newest first, a page at a time
        first = http.get(f"/api/v1/jobs/{job_id}/events", params={"limit": 3}).json()
        second = http.get(
            f"/api/v1/jobs/{job_id}/events", params={"limit": 3, "before": first["next"]}
        ).json()
        ids = [e["id"] for e in first["events"] + second["events"]]
        assert ids == sorted(ids, reverse=True) and len(set(ids)) == 6

        # restart (own job), then cancel while it runs
        assert http.post(f"/api/v1/jobs/{job_id}/restart").json()["message"] == f"job {job_id} requeued"
        cancel = http.post(f"/api/v1/jobs/{job_id}/cancel")
        assert cancel.status_code == 200 and cancel.json()["message"].startswith(
            f"job {job_id}: cancel requested"
        )
        assert wait_for_job(server, job_id)["status"] == "canceled"
        again = http.post(f"/api/v1/jobs/{job_id}/cancel")
        assert again.status_code == 400 and again.json() == {
            "detail": f"job {job_id} has already ended (canceled)"
        }


def test_a_bad_job_file_is_a_422_with_its_line_and_nothing_changes(serve, tmp_path):
    server = serve(engine=False)
    bad = "name: broken\nsteps:\n  - name: build\n    vms: [a1]\n    run: make\n    timeout: soon\n"
    with server.client("alice") as http:
        answer = http.post("/api/v1/jobs", files=[("job", ("broken.yaml", bad.encode()))])
        assert answer.status_code == 422
        assert answer.json()["detail"].startswith("broken.yaml:6: steps[0].timeout: expected a duration")
        missing = http.post(
            "/api/v1/jobs", files=[("job", ("job.yaml", write_job(tmp_path / "j").read_bytes()))]
        )
        assert (
            missing.status_code == 422
            and "steps[0].files[0]: no such file: 'build.sh'" in missing.json()["detail"]
        )
        outside = job_upload(write_job(tmp_path / "k")) + [("file", ("../escape.sh", b"x"))]
        assert http.post("/api/v1/jobs", files=outside).status_code == 400
        binary = http.post("/api/v1/jobs", files=[("job", ("job.yaml", b"name: \xff\n"))])
        assert binary.status_code == 422 and binary.json()["detail"] == "job.yaml:1: not UTF-8 text"
        assert http.post("/api/v1/jobs", data={"priority": "x"}).status_code == 422
        assert http.get("/api/v1/jobs").json() == {"jobs": [], "next": None}


def test_job_list_filters_and_pages(serve, tmp_path):
    server = serve(engine=False)
    path = write_job(tmp_path / "job")
    ids = []
    for user, name in (("alice", "nightly"), ("bob", "nightly"), ("alice", "weekly"), ("bob", "weekly")):
        write_job(tmp_path / "job", name=name)
        with server.client(user) as http:
            ids.append(http.post("/api/v1/jobs", files=job_upload(path)).json()["id"])
    with server.client("bob") as http:
        page = http.get("/api/v1/jobs", params={"limit": 3}).json()
        assert [j["id"] for j in page["jobs"]] == ids[::-1][:3] and page["next"] == ids[1]
        rest = http.get("/api/v1/jobs", params={"limit": 3, "before": page["next"]}).json()
        assert [j["id"] for j in rest["jobs"]] == [ids[0]] and rest["next"] is None
        assert [j["id"] for j in http.get("/api/v1/jobs?owner=alice").json()["jobs"]] == [ids[2], ids[0]]
        assert [j["id"] for j in http.get("/api/v1/jobs?name=weekly").json()["jobs"]] == [ids[3], ids[2]]
        assert http.get("/api/v1/jobs?status=queued&owner=bob&name=nightly").json()["jobs"][0]["tasks"] == {
            "queued": 3
        }
        assert http.get("/api/v1/jobs?status=done").status_code == 422
        assert http.get("/api/v1/jobs/999").json() == {"detail": "job 999: no such job"}


def test_vms_hosts_histories_stats_metrics_and_health(serve, tmp_path):
    server = serve(engine=True)
    with server.client("admin") as http:
        vms = http.get("/api/v1/vms", params={"limit": 3}).json()
        assert [v["name"] for v in vms["vms"]] == ["a1", "a2", "b1"] and vms["next"] == "b1"
        assert [v["name"] for v in http.get("/api/v1/vms", params={"after": "b1"}).json()["vms"]] == ["b2"]
        assert http.get("/api/v1/vms/a2").json()["host"] == "h1"
        change = http.post("/api/v1/vms/b2/change", json={"change": "maintenance"})
        assert change.json()["message"].startswith("vm b2")  # at once, or after its current operation
        _wait(lambda: http.get("/api/v1/vms/b2").json()["status"] == "maintenance")
        assert http.post("/api/v1/vms/b2/change", json={"change": "fly"}).status_code == 422
        assert http.post("/api/v1/vms/b2/change", json={"change": "enable", "abort": True}).status_code == 400
        history = http.get("/api/v1/vms/b2/events").json()["events"]
        assert history[0]["new"] == "maintenance" and any(e["actor"] == "admin" for e in history)

        hosts = http.get("/api/v1/hosts").json()["hosts"]
        assert [h["name"] for h in hosts] == ["h1", "h2"] and hosts[0]["vms"] == 2
        assert (
            http.post("/api/v1/hosts/h2/change", json={"status": "down"}).json()["message"]
            == "host h2 is down"
        )
        assert (
            http.get("/api/v1/hosts/h2/events").json()["events"][0]["reason"]
            == "host h2 marked down by admin"
        )
        assert http.post("/api/v1/hosts/h2/change", json={"status": "up"}).status_code == 200
        cycled = http.post("/api/v1/hosts/h1/power-cycle", json={"timeout": 60}).json()["message"]
        assert cycled.startswith("host h1 power-cycled")

        answer = http.post("/api/v1/jobs", files=job_upload(write_job(tmp_path / "job")))
        job_id = answer.json()["id"]
        assert wait_for_job(server, job_id)["status"] == "completed"
        stats = http.get("/api/v1/stats", params={"hours": 1}).json()
        assert stats["tasks"] == {"completed": 3} and stats["task_duration"]["count"] == 3
        assert stats["revert"]["count"] >= 3 and {b["vm"] for b in stats["busy"]["vms"]} == {
            "a1",
            "a2",
            "b1",
            "b2",
        }
        activity = http.get("/api/v1/activity", params={"hours": 1, "host": "h1"}).json()
        lanes = {lane["vm"]: lane["segments"] for lane in activity["vms"]}
        assert set(lanes) == {"a1", "a2"}
        assert any(s["status"] == "running" and s["job"] == job_id for s in lanes["a1"])
        assert any(m["kind"] == "engine" for m in activity["marks"])

        metrics = http.get("/metrics")
        assert metrics.headers["content-type"].startswith("text/plain")
        body = metrics.text
        for line in (
            'testlab_tasks{status="queued"} 0.0',
            'testlab_vms{host="h2",status="maintenance"} 1.0',
            "testlab_engine_up 1.0",
            "testlab_scheduler_round_seconds_count",
            'testlab_operation_seconds_count{kind="revert"}',
            'testlab_operation_seconds_count{kind="task"}',
        ):
            assert line in body, line
    health = _wait_healthy(server)
    assert health["database"] == "ok" and health["engine"]["planning"] is True


def test_the_cli_prints_the_same_against_a_server(serve, web_lab, tmp_path, monkeypatch):
    server = serve(engine=False)
    runner = CliRunner()
    path = write_job(tmp_path / "job")
    monkeypatch.setenv("TESTLAB_TOKEN", server.tokens["alice"])
    submitted = runner.invoke(
        cli, ["job", "submit", str(path), "--server", server.url], catch_exceptions=False
    )
    assert submitted.exit_code == 0, submitted.output
    job_id = int(submitted.output)
    for args in (
        ["job", "show", str(job_id)],
        ["job", "show", str(job_id), "--json"],
        ["job", "list", "--json"],
    ):
        remote = runner.invoke(cli, [*args, "--server", server.url], catch_exceptions=False)
        local = runner.invoke(cli, args, catch_exceptions=False)
        assert remote.exit_code == local.exit_code == 0
        assert remote.output == local.output, args
    for args in (["vm", "list"], ["vm", "show", "b1", "--json"]):
        remote = runner.invoke(cli, [*args], env={"TESTLAB_SERVER": server.url}, catch_exceptions=False)
        assert remote.output == runner.invoke(cli, args, catch_exceptions=False).output
    assert (
        json.loads(runner.invoke(cli, ["job", "show", str(job_id), "--json", "--server", server.url]).output)[
            "owner"
        ]
        == "alice"
    )
    refused = runner.invoke(cli, ["vm", "set", "a1", "--maintenance", "--server", server.url])
    assert refused.exit_code == 1 and refused.stderr.strip() == "testlab: user alice is not an administrator"
    missing = runner.invoke(cli, ["job", "cancel", "999", "--server", server.url])
    assert missing.exit_code == 1 and missing.stderr.strip() == "testlab: job 999: no such job"
    cancel = runner.invoke(cli, ["job", "cancel", str(job_id), "--server", server.url])
    assert cancel.output.strip() == f"job {job_id}: cancel requested (canceled)"
    monkeypatch.delenv("TESTLAB_TOKEN")
    anonymous = runner.invoke(cli, ["job", "list", "--server", server.url])
    assert anonymous.exit_code == 1 and "set TESTLAB_TOKEN" in anonymous.stderr
    down = runner.invoke(cli, ["job", "list", "--server", "http://127.0.0.1:9"])
    assert down.exit_code == 1 and "cannot connect" in down.stderr


def _wait(condition, timeout: float = 20.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def _wait_healthy(server) -> dict:
    import time

    deadline = time.monotonic() + 20
    while True:
        answer = httpx.get(server.url + "/healthz", timeout=5)
        if answer.status_code == 200 or time.monotonic() > deadline:
            return answer.json()
        time.sleep(0.5)


def _read_events(stream, until: str) -> list[dict]:
    events, current = [], {}
    for line in stream.iter_lines():
        if line.startswith("event:"):
            current["event"] = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            current["data"] = json.loads(line.split(":", 1)[1])
        elif line == "" and current:
            events.append(current)
            if current.get("event") == until:
                return events
            current = {}
    return events
