"""The pages in a real browser (Debian's chromium driven by Playwright): log in, submit a job through
the form, watch it run and end live on its page, put a VM in maintenance from the board and see it
change, and save screenshots of every page (under build/screenshots, or TESTLAB_SCREENSHOTS)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.web.conftest import PASSWORD, job_upload, write_job

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium reaches out at start-up, which a closed network refuses.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SLOW_JOB = """\
name: slow build
priority: 10
steps:
  - name: build
    vms: [b1]
    files: [build.sh]
    run: sh build.sh
    artifacts: [out/*]
    timeout: 2m
"""
# The build holds at part 2 until the test has seen it running (the file `gate` appears, at most 60 s):
# a fast engine on a loaded machine could otherwise finish it before the page first shows it.
SLOW_BUILD = """\
mkdir -p out
for i in 1 2 3 4 5 6; do
  echo "compiling part $i of 6"
  if [ $i = 2 ]; then n=0; while [ ! -e {gate} ] && [ $n -lt 600 ]; do sleep 0.1; n=$((n+1)); done; fi
  sleep 0.2
done
echo ok > out/result.txt
"""
FAILING = """\
name: unit tests
steps:
  - name: test
    vms: [a1, a2]
    run: 'echo "FAIL: test_locale ($TESTLAB_VM)"; exit 1'
"""


def screenshots_dir() -> Path:
    root = Path(os.environ.get("TESTLAB_SCREENSHOTS") or Path(__file__).parents[2] / "build" / "screenshots")
    root.mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture
def browser_page(tmp_path):
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1360, "height": 900},
        )
        context.set_default_timeout(30_000)
        page = context.new_page()
        page.console_errors = []
        page.on(
            "console", lambda message: message.type == "error" and page.console_errors.append(message.text)
        )
        try:
            yield page
        finally:
            context.close()


@pytest.mark.parametrize("lab_db", ["sqlite"], indirect=True)
def test_a_day_in_the_lab_in_a_browser(serve, browser_page, tmp_path):
    server = serve(engine=True)
    page = browser_page
    shots = screenshots_dir()
    with server.client("alice") as alice:  # some history for the pages to show
        alice.post("/api/v1/jobs", files=[("job", ("job.yaml", FAILING.encode()))])
        alice.post("/api/v1/jobs", files=job_upload(write_job(tmp_path / "job")))

    # log in (a page asked for first sends you to the login and back)
    page.goto(server.url + "/vms")
    assert "/login" in page.url
    page.fill("input[name=name]", "admin")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(server.url + "/vms")

    # submit a job through the form, with its file
    job_dir = tmp_path / "slow"
    job_dir.mkdir()
    (job_dir / "job.yaml").write_text(SLOW_JOB)
    gate = tmp_path / "gate"
    (job_dir / "build.sh").write_text(SLOW_BUILD.format(gate=gate))
    page.goto(server.url + "/submit")
    page.set_input_files("#job-file", str(job_dir / "job.yaml"))
    page.set_input_files("#job-files", [str(job_dir / "build.sh")])
    page.click("#submit-form button[type=submit]")
    page.wait_for_url(f"{server.url}/jobs/*")
    job_url = page.url
    page.evaluate("window.stayedOnThePage = true")

    # watch it live: the log grows while it runs, then the page shows the end without a reload
    page.wait_for_selector("h1 .badge.st-running", timeout=60_000)
    page.locator("pre.log.live", has_text="compiling part 2").wait_for(timeout=30_000)
    page.screenshot(path=str(shots / "job-running.png"), full_page=True)
    gate.touch()
    page.wait_for_selector("h1 .badge.st-completed", timeout=60_000)
    assert page.evaluate("window.stayedOnThePage") is True and page.url == job_url
    # the log's end comes on its own stream, with the status (tests/web/test_live.py), not a poll later
    page.locator("#job-body pre.log:not(.live)", has_text="compiling part 6 of 6").wait_for(timeout=2_000)
    page.wait_for_selector("a.artifact:has-text('out/result.txt')")
    page.screenshot(path=str(shots / "job.png"), full_page=True)

    # the board: maintenance from a VM's card, and the card changes without a reload
    page.goto(server.url + "/vms")
    page.wait_for_selector("#live-state.on")
    page.evaluate("window.stayedOnThePage = true")
    card = page.locator("article.vm[data-vm='a2']")
    card.locator("button[value=maintenance]").click()
    card.locator(".vm-status .badge.st-maintenance").wait_for(timeout=40_000)
    assert page.evaluate("window.stayedOnThePage") is True
    card.locator("button[value=no-maintenance]").wait_for(state="visible")
    with server.client("admin") as admin:
        assert admin.get("/api/v1/vms/a2").json()["status"] == "maintenance"
    _wait_for_jobs_to_end(server)
    page.wait_for_timeout(1000)  # the change's highlight fades
    page.screenshot(path=str(shots / "board.png"), full_page=True)

    for name, path in (
        ("queue", "/jobs"),
        ("activity", "/activity?hours=0.02"),
        ("stats", "/stats?hours=1"),
        ("vm", "/vms/a1"),
    ):
        page.goto(server.url + path)
        page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
    page.goto(server.url + "/activity?hours=0.02")
    assert page.locator("svg.timeline a rect.seg.st-running").count() >= 3  # tasks, linked to their jobs
    assert [e for e in page.console_errors if "favicon" not in e] == []


def _wait_for_jobs_to_end(server, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    with server.client("admin") as admin:
        while time.monotonic() < deadline:
            jobs = admin.get("/api/v1/jobs").json()["jobs"]
            if all(j["status"] not in ("queued", "running") for j in jobs):
                return
            time.sleep(0.3)
