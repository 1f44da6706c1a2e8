"""Who hears of a job's end (testlab/services/notifications.py): the owner when their settings ask
for it, the webhooks registered for jobs; nobody else. Both databases, no engine needed."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from testlab.db.models import Delivery, Job
from testlab.db.session import run_transaction, session_scope
from testlab.domain.statuses import TaskStatus
from testlab.services.notifications import add_webhook, enqueue_job_end
from testlab.services.users import add_user, set_notifications
from tests.engine.harness import make_lab, submit

JOB = "name: j\nsteps:\n  - name: s\n    vms: [v1]\n    run: 'true'\n"


@pytest.fixture
def lab(settings, tmp_path):
    make_lab(settings, tmp_path / "vms", {"h1": ["v1"]})
    run_transaction(settings.database_url, lambda s: add_user(s, "tester"))
    return settings


def told(settings, tmp_path, status: str) -> list[tuple[str, str]]:
    """(channel, target) of the deliveries a new job of the lab, ended with `status`, makes."""
    job_id = submit(settings, tmp_path / "jobs", "j", JOB)

    def end(session):
        job = session.get(Job, job_id)
        job.status = status
        enqueue_job_end(session, job)

    run_transaction(settings.database_url, end)
    with session_scope(settings.database_url, readonly=True) as session:
        deliveries = select(Delivery.channel, Delivery.target).where(Delivery.job_id == job_id)
        return sorted(session.execute(deliveries))


def notify_owner(settings, email: str | None, notify_on: str) -> None:
    run_transaction(
        settings.database_url, lambda s: set_notifications(s, "tester", email=email, notify_on=notify_on)
    )


def test_the_owner_hears_of_a_job_end_as_their_settings_ask(lab, tmp_path):
    assert told(lab, tmp_path, TaskStatus.FAILED) == []  # no address
    notify_owner(lab, "tester@lab.test", "never")
    assert told(lab, tmp_path, TaskStatus.FAILED) == []
    notify_owner(lab, None, "failure")
    assert told(lab, tmp_path, TaskStatus.FAILED) == [("email", "tester@lab.test")]
    assert told(lab, tmp_path, TaskStatus.COMPLETED) == []
    notify_owner(lab, None, "always")
    assert told(lab, tmp_path, TaskStatus.COMPLETED) == [("email", "tester@lab.test")]


def test_webhooks_registered_for_jobs_hear_of_every_job_end(lab, tmp_path):
    for name, events in (("jobs-hook", "jobs"), ("all-hook", "all"), ("notices-hook", "notices")):
        run_transaction(
            lab.database_url, lambda s, n=name, e=events: add_webhook(s, n, f"http://127.0.0.1:9/{n}", e)
        )
    expected = [("webhook", "all-hook"), ("webhook", "jobs-hook")]
    assert told(lab, tmp_path, TaskStatus.COMPLETED) == expected
    notify_owner(lab, "tester@lab.test", "always")
    assert told(lab, tmp_path, TaskStatus.FAILED) == [("email", "tester@lab.test"), *expected]
