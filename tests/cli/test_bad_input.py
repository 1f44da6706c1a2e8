"""Bad input is refused with a limit and a line: the real `testlab` command, on SQLite and PostgreSQL.

Each row is an input that once gave a traceback, a hang, a database-specific failure, or was
accepted. Every one must now end with exit status 1, exactly one line on stderr naming the file
(and the line, where there is one), and the database as it was.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import func, select

from testlab.db.models import Base
from testlab.db.session import session_scope

VMS = 11  # one label on 11 VMs: 910 steps make 10,010 tasks
BASE_LAB = "hosts:\n  - {name: kvm, backend: libvirt, uri: 'test:///default'}\nvms:\n" + "".join(
    f"  - {{name: vm{i}, host: kvm, snapshot: clean, labels: [x]}}\n" for i in range(VMS)
)
KVM = "hosts:\n  - name: kvm\n    backend: libvirt\n    uri: test:///default\n"  # lines 2-4
VM0 = "vms:\n  - {name: vm0, host: kvm, snapshot: clean}\n"
STEP = "  - name: s\n    run: x\n    vms: [vm0]\n"
JOB = "name: j\nsteps:\n" + STEP  # the step on lines 3-5; what is appended comes on line 6


@dataclass(frozen=True)
class Row:
    id: str
    command: str  # "lab apply" or "job submit"
    make: Callable[[Path], Path]  # writes the input into a directory, returns its path
    line: int | None  # the line the error must name; None: the file as a whole
    message: str  # part of the one-line message


def text(content: str) -> Callable[[Path], Path]:
    def make(directory: Path) -> Path:
        path = directory / "input.yaml"
        path.write_text(content)
        return path

    return make


def device(path: str) -> Callable[[Path], Path]:
    return lambda directory: Path(path)


def fifo(directory: Path) -> Path:
    path = directory / "input.yaml"
    os.mkfifo(path)
    return path


def local_lab(body: Callable[[Path], str]) -> Callable[[Path], Path]:
    """A lab text that needs the test's own directory (local hosts)."""

    def make(directory: Path) -> Path:
        return text(body(directory))(directory)

    return make


ROWS = [
    Row("lab from /dev/urandom", "lab apply", device("/dev/urandom"), None, "not a regular file"),
    Row(
        "lab limit beyond 64 bits",
        "lab apply",
        text(KVM + "    limits: {max_active: 99999999999999999999999999}\n" + VM0),
        5,
        "hosts[0].limits.max_active: expected an integer from 0 to 2147483647",
    ),
    Row(
        "lab limit beyond 32 bits",
        "lab apply",
        text(KVM + "    limits: {max_running: 4294967296}\n" + VM0),
        5,
        "hosts[0].limits.max_running: expected an integer from 0 to 2147483647",
    ),
    Row(
        "lab local domain name with a space",
        "lab apply",
        local_lab(
            lambda d: (
                f"hosts:\n  - {{name: h, backend: local, uri: 'local://{d}/vms'}}\n"
                "vms:\n  - {name: v, host: h, domain: 'a b', snapshot: clean}\n"
            )
        ),
        4,
        "vms[0].domain: invalid domain name 'a b'",
    ),
    Row(
        "lab snapshot name with a slash",
        "lab apply",
        text(KVM + "vms:\n  - {name: vm0, host: kvm, snapshot: 'a/b'}\n"),
        6,
        "vms[0].snapshot: invalid snapshot name 'a/b'",
    ),
    Row(
        "lab unknown placeholder",
        "lab apply",
        text(KVM + "    commands:\n      power_cycle: pdu cycle {nosuch}\n" + VM0),
        6,
        "hosts[0].commands.power_cycle: uses unknown placeholders: {nosuch}",
    ),
    Row(
        "lab quoted placeholder",
        "lab apply",
        text(KVM + "    commands:\n      power_cycle: ssh bmc 'cycle {host}'\n" + VM0),
        6,
        "hosts[0].commands.power_cycle: placeholder {host} is inside single quotes",
    ),
    Row(
        "lab state command on a libvirt host",
        "lab apply",
        text(KVM + "    commands:\n      state: virsh domstate {domain}\n" + VM0),
        6,
        "hosts[0].commands.state: a libvirt host runs no state command (only power_cycle)",
    ),
    Row(
        "lab NUL in a URI",
        "lab apply",
        text('hosts:\n  - {name: kvm, backend: libvirt, uri: "test:///default\\0"}\n' + VM0),
        2,
        "hosts[0].uri: must not contain NUL characters",
    ),
    Row(
        "lab two hosts in one local directory",
        "lab apply",
        local_lab(
            lambda d: (
                f"hosts:\n  - {{name: h1, backend: local, uri: 'local://{d}/vms'}}\n"
                f"  - {{name: h2, backend: local, uri: 'local://{d}/vms/'}}\nvms: []\n"
            )
        ),
        3,
        "hosts[1].uri: '{dir}/vms' is the directory of host 'h1' (line 2)",
    ),
    Row(
        "lab VM name longer than its column",
        "lab apply",
        text(KVM + f"vms:\n  - {{name: {'v' * 101}, host: kvm, snapshot: clean}}\n"),
        6,
        "vms[0].name: too long: 101 characters (at most 100)",
    ),
    Row(
        "lab description over 16 KiB",
        "lab apply",
        text(KVM + f"    description: {'d' * (16 * 1024 + 1)}\n" + VM0),
        5,
        "hosts[0].description: too long: 16,385 characters (at most 16,384)",
    ),
    Row("job from /dev/zero", "job submit", device("/dev/zero"), None, "not a regular file"),
    Row("job from a FIFO", "job submit", fifo, None, "not a regular file"),
    Row(
        "job priority beyond 64 bits",
        "job submit",
        text(JOB + "priority: 99999999999999999999999999\n"),
        6,
        "priority: expected an integer from -2147483648 to 2147483647",
    ),
    Row(
        "job priority beyond 32 bits",
        "job submit",
        text(JOB + "priority: 3000000000\n"),
        6,
        "priority: expected an integer from -2147483648 to 2147483647",
    ),
    Row(
        "job priority of 5,000 digits",
        "job submit",
        text(JOB + "priority: " + "9" * 5000 + "\n"),
        6,
        "number too long: 5,000 characters (at most 100)",
    ),
    Row(
        "job timeout of 400 digits",
        "job submit",
        text(JOB + "    timeout: " + "9" * 400 + "\n"),
        6,
        "number too long: 400 characters (at most 100)",
    ),
    Row(
        "job NUL in the name",
        "job submit",
        text('name: "a\\0b"\nsteps:\n' + STEP),
        1,
        "name: must not contain NUL characters",
    ),
    Row(
        "job name on two lines",
        "job submit",
        text('name: "build\\rtest"\nsteps:\n' + STEP),
        1,
        "name: must be a single line",
    ),
    Row(
        "job name longer than its column",
        "job submit",
        text(f"name: {'n' * 201}\nsteps:\n" + STEP),
        1,
        "name: too long: 201 characters (at most 200)",
    ),
    Row(
        "job NUL in an env value",
        "job submit",
        text(JOB + '    env: {LEVEL: "full\\0"}\n'),
        6,
        "steps[0].env.LEVEL: must not contain NUL characters",
    ),
    Row(
        "job description of 50 MB",
        "job submit",
        text(JOB + "description: " + "d" * 50_000_000 + "\n"),
        None,
        "too large: 50,000,067 bytes (at most 1,048,576)",
    ),
    Row(
        "job description over 16 KiB",
        "job submit",
        text(JOB + f"description: {'d' * (16 * 1024 + 1)}\n"),
        6,
        "description: too long: 16,385 characters (at most 16,384)",
    ),
    Row(
        "job of 1,001 steps",
        "job submit",
        text("name: j\nsteps:\n" + "".join(f"  - {{name: s{i}, run: x, vms: [vm0]}}\n" for i in range(1001))),
        2,
        "steps: too many items: 1,001 (at most 1,000)",
    ),
    Row(
        "job of 10,010 tasks",
        "job submit",
        text("name: j\nsteps:\n" + "".join(f"  - {{name: s{i}, run: x, labels: [x]}}\n" for i in range(910))),
        912,
        "steps[909].labels: the job would have more than 10,000 tasks",
    ),
    Row(
        "job nested 100,000 levels deep",
        "job submit",
        text("name: j\nsteps: " + "[" * 100_000 + "]" * 100_000 + "\n"),
        2,
        "nested too deeply (at most 32 levels of mappings and lists)",
    ),
]


def run_testlab(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "testlab", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def row_counts(url: str) -> dict[str, int]:
    with session_scope(url, readonly=True) as session:
        return {
            table.name: session.scalar(select(func.count()).select_from(table))
            for table in Base.metadata.sorted_tables
        }


@pytest.fixture
def lab_applied(testlab, subprocess_env, tmp_path: Path) -> dict[str, str]:
    """An initialised database holding a small lab and one job, so that changes would show.

    Set up in-process (quicker); the bad inputs go to a real process, which may hang or crash."""
    (tmp_path / "lab.yaml").write_text(BASE_LAB)
    (tmp_path / "job.yaml").write_text(JOB)
    testlab("lab", "apply", tmp_path / "lab.yaml")
    testlab("job", "submit", tmp_path / "job.yaml")
    return subprocess_env


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_bad_input_is_refused_with_one_line_and_changes_nothing(
    row: Row, lab_applied: dict[str, str], lab_db, tmp_path: Path
) -> None:
    work = tmp_path / "input"
    work.mkdir()
    path = row.make(work)
    before = row_counts(lab_db.settings.database_url)
    started = time.monotonic()
    result = run_testlab(lab_applied, *row.command.split(), str(path), timeout=30)
    elapsed = time.monotonic() - started

    lines = result.stderr.splitlines()
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr[-2000:]
    where = f"testlab: {path}:{row.line}: " if row.line is not None else f"testlab: {path}: "
    assert lines[0].startswith(where), lines[0][:300]
    assert row.message.replace("{dir}", str(work)) in lines[0], lines[0][:300]
    assert len(lines[0]) < 400  # the message quotes bad values shortened
    assert row_counts(lab_db.settings.database_url) == before
    if row.line is None:  # refused before reading: files of any size go as fast as small ones
        assert elapsed < 10


def test_priority_option_beyond_the_column_is_a_usage_error(lab_applied, lab_db, tmp_path: Path) -> None:
    before = row_counts(lab_db.settings.database_url)
    result = run_testlab(
        lab_applied, "job", "submit", "--priority", "99999999999", str(tmp_path / "job.yaml")
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "99999999999 is not in the range -2147483648<=x<=2147483647" in result.stderr
    assert row_counts(lab_db.settings.database_url) == before
