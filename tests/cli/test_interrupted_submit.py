"""A `job submit` killed at any point leaves the next one working, and never a job without its files."""

from __future__ import annotations

import subprocess
import sys

import pytest

from testlab.db.session import session_scope
from testlab.services.views import list_jobs

# Runs `testlab job submit FILE` with SIGKILL wired to a moment of the submission.
KILLED_SUBMIT = """
import os, signal, sys
{patch}
from testlab.cli.main import main
sys.argv = ["testlab", "job", "submit", sys.argv[1]]
main()
"""
BEFORE_COMMIT = """
from sqlalchemy.orm import Session
Session.commit = lambda self: os.kill(os.getpid(), signal.SIGKILL)
"""
BEFORE_THE_FILES_MOVE = """
os.rename = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize(
    "moment", [BEFORE_COMMIT, BEFORE_THE_FILES_MOVE], ids=["before-commit", "after-commit"]
)
def test_a_killed_submit_leaves_the_next_one_working(
    testlab, lab_file, job_file, lab_db, subprocess_env, moment
):
    testlab("lab", "apply", lab_file)
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_SUBMIT.format(patch=moment), str(job_file)],
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert killed.returncode == -9, killed.stderr
    result = testlab("job", "submit", job_file)
    new_id = int(result.output)
    settings = lab_db.settings
    with session_scope(settings.database_url, readonly=True) as session:
        jobs = [job["id"] for job in list_jobs(session)]
    assert new_id in jobs
    for job_id in jobs:  # every committed job, the interrupted one included, has its files
        assert (settings.job_dir(job_id) / "files" / "build.sh").is_file(), job_id
    assert [p.name for p in (settings.jobs_dir / ".staging").iterdir()] == []
    assert sorted(p.name for p in settings.jobs_dir.iterdir() if not p.name.startswith(".")) == sorted(
        str(j) for j in jobs
    )
