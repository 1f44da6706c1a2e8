"""Run the real `testlab` command in-process (click's runner) against the test database."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from testlab.cli.main import cli


class Testlab:
    def __init__(self) -> None:
        self.runner = CliRunner()

    def __call__(self, *args: str, expect: int | None = 0):
        result = self.runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)
        if expect is not None:
            assert result.exit_code == expect, (args, result.output, result.stderr)
        return result


@pytest.fixture
def testlab(lab_db) -> Testlab:
    run = Testlab()
    run("init")
    return run


LAB = """\
hosts:
  - name: h1
    backend: local
    uri: local://{root}/h1
    limits: {{max_active: 2, max_running: 2}}
  - name: h2
    backend: local
    uri: local://{root}/h2
vms:
  - {{name: win10, host: h1, domain: win10, snapshot: clean, labels: [windows]}}
  - {{name: win10-fr, host: h1, domain: win10, snapshot: clean-fr, labels: [windows, fr]}}
  - {{name: linux, host: h2, snapshot: clean, labels: [linux]}}
  - {{name: extra1, host: h2, snapshot: clean, role: extra, labels: [linux]}}
"""

JOB = """\
name: build and test
priority: 20
steps:
  - name: build
    vms: [linux]
    files: [build.sh]
    run: sh build.sh
    artifacts: [out/*]
  - name: test
    after: build
    labels: [windows]
    run: echo test
    timeout: 90s
"""


@pytest.fixture
def lab_file(tmp_path: Path) -> Path:
    path = tmp_path / "lab.yaml"
    path.write_text(LAB.format(root=tmp_path / "vms"))
    return path


@pytest.fixture
def job_file(tmp_path: Path) -> Path:
    directory = tmp_path / "job"
    directory.mkdir()
    (directory / "build.sh").write_text("mkdir -p out && echo built > out/result\n")
    path = directory / "job.yaml"
    path.write_text(JOB)
    return path
