"""`testlab sim` on the shipped examples, reduced to a few simulated hours so CI runs them quickly."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from testlab.cli.main import cli
from tests.sim import EXAMPLES

WTB = (EXAMPLES / "wtb-lab.yaml", EXAMPLES / "wtb-workload.yaml")
CI = (EXAMPLES / "ci-lab.yaml", EXAMPLES / "ci-workload.yaml")


def run_testlab(*args, expect: int = 0):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == expect, (args, result.output, result.stderr)
    return result


@pytest.mark.parametrize(("files", "duration"), [(WTB, "12h"), (CI, "2h")])
def test_shipped_examples_compare_the_three_policies(files, duration):
    result = run_testlab(
        "sim", *files, "--compare", "no-prepare", "--compare", "fifo", "--duration", duration, "--no-html"
    )
    report = json.loads(
        run_testlab("sim", *files, "--duration", duration, "--compare", "fifo", "--json", "--no-html").stdout
    )
    assert list(report) == ["testlab", "fifo"]
    for numbers in report.values():
        assert numbers["jobs_done"] == numbers["jobs_submitted"] > 0
        assert numbers["lower_bound"] <= numbers["makespan"]
        for key in ("turnaround_p50", "turnaround_p90", "makespan", "lower_bound"):
            assert isinstance(numbers[key], float)
    assert "turnaround p90" in result.stdout and "no-prepare" in result.stdout


def test_what_if_and_html_report(tmp_path):
    html = tmp_path / "report.html"
    result = run_testlab(
        "sim", *WTB, "--duration", "6h", "--what-if", "host vmhost1 max_running=2", "--html", html, "--json"
    )
    report = json.loads(result.stdout)
    assert list(report) == ["testlab", "testlab (what-if)"]
    text = html.read_text()
    assert text.count("<img") == 4 and "testlab (what-if)" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--policy", "lifo"), "testlab: unknown policy 'lifo' (policies: testlab, no-prepare, fifo)\n"),
        (
            ("--what-if", "host nowhere max_running=2"),
            "testlab: what-if 'host nowhere max_running=2': no host",
        ),
        (("--duration", "soon"), "testlab: --duration: expected a duration like"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(args, message):
    result = run_testlab("sim", *WTB, "--no-html", *args, expect=1)
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1
    assert result.stdout == ""


def test_bad_workload_file_is_one_located_line(tmp_path):
    bad = tmp_path / "w.yaml"
    bad.write_text(
        "duration: 1d\nrevert: 90s\ntemplates:\n  - {job: nope.yaml, arrivals: {rate: 1/h}, steps: {}}\n"
    )
    result = run_testlab("sim", WTB[0], bad, "--no-html", expect=1)
    assert result.stderr == f"testlab: {bad}:4: templates[0].job: no such job file: 'nope.yaml'\n"
