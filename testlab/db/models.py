"""The schema: the database is the single source of truth of the lab.

Only Alembic migrations create or change it (testlab/db/migrations); these models describe it for the ORM.
Times are stored as timezone-naive UTC datetimes so SQLite and PostgreSQL compare them the same way.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy import false as sa_false
from sqlalchemy import true as sa_true
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


def _version_column() -> Mapped[int]:
    """Every row several processes change carries a version: SQLAlchemy adds `AND version = :read`
    to each UPDATE and bumps it, so a write based on a stale read changes nothing (docs/engine.md)."""
    return mapped_column(Integer, nullable=False, default=1, server_default="1")


class Host(Base):
    __tablename__ = "hosts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    backend: Mapped[str] = mapped_column(String(20))
    uri: Mapped[str] = mapped_column(String(500))
    status: Mapped[str] = mapped_column(String(20), default="up")  # up | down
    # Why it is down; with `next_check` set, the engine took it down after errors and the monitor
    # watches it; without, an administrator did and only an administrator brings it back.
    status_reason: Mapped[str] = mapped_column(Text, default="", server_default="")
    errors: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # consecutive host errors
    next_check: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    free_disk_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # at the last check
    health_checked: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    min_free_disk: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # below: no new reverts
    options: Mapped[dict] = mapped_column(JSON, default=dict)  # backend options from the lab file
    description: Mapped[str] = mapped_column(Text, default="")
    max_active: Mapped[int] = mapped_column(Integer)
    max_running: Mapped[int] = mapped_column(Integer)
    max_reverting: Mapped[int] = mapped_column(Integer)
    max_reverts_while_running: Mapped[int] = mapped_column(Integer)
    max_ready_when_idle: Mapped[int] = mapped_column(Integer)
    sleep_after_revert: Mapped[float] = mapped_column(Float)
    commands: Mapped[dict] = mapped_column(JSON, default=dict)
    agent_token_file: Mapped[str | None] = mapped_column(String(500), nullable=True)
    domain_type: Mapped[str | None] = mapped_column(String(20), nullable=True)  # libvirt: kvm (None) or qemu
    retired: Mapped[bool] = mapped_column(Boolean, default=False)  # gone from the lab file; history kept
    version: Mapped[int] = _version_column()

    vms: Mapped[list[VM]] = relationship(back_populates="host")

    __mapper_args__ = {"version_id_col": version}


class VM(Base):
    __tablename__ = "vms"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id"))
    domain: Mapped[str] = mapped_column(String(200))
    snapshot: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(20), default="base")
    labels: Mapped[list] = mapped_column(JSON, default=list)
    description: Mapped[str] = mapped_column(Text, default="")
    agent_url: Mapped[str | None] = mapped_column(String(500), nullable=True)
    status: Mapped[str] = mapped_column(String(20), default="off")
    status_changed: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    maintenance_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    abort_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    errors: Mapped[int] = mapped_column(Integer, default=0)  # consecutive infrastructure errors
    # The engine operation in flight (revert, poweroff, monitor, task) and when it must be over.
    operation: Mapped[str | None] = mapped_column(String(20), nullable=True)
    operation_started: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    operation_deadline: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    boot_id: Mapped[str | None] = mapped_column(String(100), nullable=True)  # agent boot id after the revert
    next_check: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)  # monitor of offline VMs
    # Reuse policy (docs/lifecycle.md): `every-task` reverts before each task; `reuse` keeps the VM
    # between tasks until one of the reasons to wipe it holds.
    wipe: Mapped[str] = mapped_column(String(20), default="every-task", server_default="every-task")
    max_uses: Mapped[int | None] = mapped_column(Integer, nullable=True)
    wipe_after_failure: Mapped[bool] = mapped_column(Boolean, default=True, server_default=sa_true())
    protect_after: Mapped[int] = mapped_column(Integer, default=2, server_default="2")  # 0: off
    uses: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # since its last wipe
    wipe_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=sa_false())
    version: Mapped[int] = _version_column()

    host: Mapped[Host] = relationship(back_populates="vms")

    __table_args__ = (Index("ix_vms_host_domain", "host_id", "domain"),)
    __mapper_args__ = {"version_id_col": version}


class User(Base):
    """Someone who uses the lab through the web UI or the API: role `user` or, with `is_admin`, `admin`."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created: Mapped[datetime] = mapped_column(DateTime)
    email: Mapped[str | None] = mapped_column(String(300), nullable=True)
    # When the user hears of their own jobs' ends: never | failure | always. Administrators also get
    # the lab's notices (VMs offline, hosts down) when they have an address.
    notify_on: Mapped[str] = mapped_column(String(10), default="never", server_default="never")
    # For the login page; None: this user signs in with API tokens only. scrypt, salted.
    password_hash: Mapped[str | None] = mapped_column(String(300), nullable=True)


class ApiToken(Base):
    """A user's API token. Only its hash is stored; the token itself is shown once, at creation."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    token_hash: Mapped[str] = mapped_column(String(200), unique=True)
    name: Mapped[str] = mapped_column(String(100), default="", server_default="")
    created: Mapped[datetime] = mapped_column(DateTime)
    expires: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)  # None: never
    revoked: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)

    __table_args__ = (Index("ix_api_tokens_user", "user_id"),)


class WebSession(Base):
    """A browser's login: the cookie holds a random secret, the row only its hash (a leaked database
    holds no usable session), with the session's CSRF token and its end."""

    __tablename__ = "web_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    secret_hash: Mapped[str] = mapped_column(String(100), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    csrf: Mapped[str] = mapped_column(String(100))
    created: Mapped[datetime] = mapped_column(DateTime)
    expires: Mapped[datetime] = mapped_column(DateTime)

    __table_args__ = (Index("ix_web_sessions_expires", "expires"),)


class LoginFailure(Base):
    """A failed login, kept for the rate limit's window: shared by every web server process."""

    __tablename__ = "login_failures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    time: Mapped[datetime] = mapped_column(DateTime)
    name: Mapped[str] = mapped_column(String(100))
    address: Mapped[str] = mapped_column(String(100))

    __table_args__ = (
        Index("ix_login_failures_name", "name", "time"),
        Index("ix_login_failures_address", "address", "time"),
        Index("ix_login_failures_time", "time"),
    )


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    priority: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), default="queued")
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # A reference job's test results are what later jobs' failures are compared with.
    reference: Mapped[bool] = mapped_column(Boolean, default=False, server_default=sa_false())
    notify: Mapped[dict] = mapped_column(
        JSON, default=dict
    )  # the job file's `notify:` (who hears of its end)
    submitted: Mapped[datetime] = mapped_column(DateTime)
    started: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    ended: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    version: Mapped[int] = _version_column()

    steps: Mapped[list[Step]] = relationship(back_populates="job", order_by="Step.number")

    # Ids are never reused (AUTOINCREMENT on SQLite): a job's files live under its id.
    __table_args__ = (
        Index("ix_jobs_status_priority", "status", "priority", "id"),
        # The job list's filters, newest first (keyset pagination on the id).
        Index("ix_jobs_status_id", "status", "id"),
        Index("ix_jobs_owner_id", "owner", "id"),
        Index("ix_jobs_name_id", "name", "id"),
        {"sqlite_autoincrement": True},
    )
    __mapper_args__ = {"version_id_col": version}


class Step(Base):
    __tablename__ = "steps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"))
    number: Mapped[int] = mapped_column(Integer)  # 1-based, in dependency order
    name: Mapped[str] = mapped_column(String(100))
    depends_on_id: Mapped[int | None] = mapped_column(ForeignKey("steps.id"), nullable=True)
    command: Mapped[str] = mapped_column(Text)
    files: Mapped[list] = mapped_column(JSON, default=list)
    artifacts: Mapped[list] = mapped_column(JSON, default=list)
    reports: Mapped[list] = mapped_column(JSON, default=list)  # JUnit/TAP report patterns
    # A pool step's labels: its tasks run on any enabled base VM carrying them all (empty: pinned tasks).
    pool_labels: Mapped[list] = mapped_column(JSON, default=list)
    env: Mapped[dict] = mapped_column(JSON, default=dict)
    timeout: Mapped[float] = mapped_column(Float)
    prepare: Mapped[bool] = mapped_column(Boolean, default=False, server_default=sa_false())  # sets up a VM
    clean: Mapped[bool] = mapped_column(Boolean, default=False, server_default=sa_false())  # needs a fresh VM
    status: Mapped[str] = mapped_column(String(20), default="queued")
    started: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    ended: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    version: Mapped[int] = _version_column()

    job: Mapped[Job] = relationship(back_populates="steps")
    tasks: Mapped[list[Task]] = relationship(back_populates="step", order_by="Task.number")

    __table_args__ = (
        UniqueConstraint("job_id", "number"),
        UniqueConstraint("job_id", "name"),
        {"sqlite_autoincrement": True},
    )
    __mapper_args__ = {"version_id_col": version}


class Task(Base):
    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"))
    step_id: Mapped[int] = mapped_column(ForeignKey("steps.id"))
    number: Mapped[int] = mapped_column(Integer)
    vm_id: Mapped[int | None] = mapped_column(
        ForeignKey("vms.id"), nullable=True
    )  # None: a pool task not yet started
    status: Mapped[str] = mapped_column(String(20), default="queued")
    timeout: Mapped[float] = mapped_column(Float)
    tries: Mapped[int] = mapped_column(Integer, default=0)  # starts so far; past the limit -> boterror
    started: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    ended: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    failures: Mapped[int | None] = mapped_column(Integer, nullable=True)  # test failures it reported
    detail: Mapped[str] = mapped_column(Text, default="")  # why it ended as it did
    # Where the work lives while it runs, so a restarted engine can re-attach to it.
    agent_url: Mapped[str | None] = mapped_column(String(500), nullable=True)
    boot_id: Mapped[str | None] = mapped_column(String(100), nullable=True)
    command_id: Mapped[str | None] = mapped_column(String(100), nullable=True)
    # The VM's uses since its last wipe, as a history string (docs/lifecycle.md), when the task last
    # started and when it ended: kept with the task, whatever becomes of the use rows.
    history_at_start: Mapped[str | None] = mapped_column(Text, nullable=True)
    history_at_end: Mapped[str | None] = mapped_column(Text, nullable=True)
    version: Mapped[int] = _version_column()

    step: Mapped[Step] = relationship(back_populates="tasks")
    vm: Mapped[VM] = relationship()

    __table_args__ = (
        Index("ix_tasks_status_job", "status", "job_id"),
        Index("ix_tasks_job", "job_id", "step_id", "number"),
        Index("ix_tasks_vm", "vm_id", "ended"),
        Index("ix_tasks_ended", "ended"),  # statistics over a time window
        {"sqlite_autoincrement": True},
    )
    __mapper_args__ = {"version_id_col": version}


class VMUse(Base):
    """One use of a VM: a task (`task`, or `prepare` for a preparation step), an administrator's
    command (`exec`) or a power cycle (`power-cycle`). The rows with `wiped` unset are the VM's
    current lifecycle, in id order; a wipe sets `wiped` on all of them at once, so each earlier
    lifecycle is the rows of one VM sharing one `wiped` time. Written by the engine (tasks) and by
    administrators' commands; never updated by anyone else, so it carries no version."""

    __tablename__ = "vm_uses"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    vm_id: Mapped[int] = mapped_column(ForeignKey("vms.id"))
    kind: Mapped[str] = mapped_column(String(20))  # task | prepare | exec | power-cycle
    job_id: Mapped[int | None] = mapped_column(Integer, nullable=True)  # no foreign key: outlives gc
    step: Mapped[str | None] = mapped_column(String(100), nullable=True)
    task_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    actor: Mapped[str | None] = mapped_column(String(100), nullable=True)  # who ran an exec / power cycle
    detail: Mapped[str] = mapped_column(Text, default="", server_default="")  # an exec's command line
    started: Mapped[datetime] = mapped_column(DateTime)
    ended: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    outcome: Mapped[str | None] = mapped_column(String(20), nullable=True)  # a task's final status
    wiped: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)

    __table_args__ = (
        Index("ix_vm_uses_vm_wiped", "vm_id", "wiped", "id"),
        Index("ix_vm_uses_task", "task_id"),
        Index("ix_vm_uses_started", "started"),
        {"sqlite_autoincrement": True},
    )


class Event(Base):
    """Every VM and task status change (and engine events): feeds the activity page and statistics."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    time: Mapped[datetime] = mapped_column(DateTime)
    kind: Mapped[str] = mapped_column(String(20))  # vm | task | step | job | host | engine | lab
    vm_id: Mapped[int | None] = mapped_column(ForeignKey("vms.id"), nullable=True)
    host_id: Mapped[int | None] = mapped_column(ForeignKey("hosts.id"), nullable=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"), nullable=True)
    task_id: Mapped[int | None] = mapped_column(ForeignKey("tasks.id"), nullable=True)
    old_status: Mapped[str | None] = mapped_column(String(20), nullable=True)
    new_status: Mapped[str | None] = mapped_column(String(20), nullable=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    # Who wrote it: "engine 7" (the engine holding lease epoch 7), "cli alice", ...
    actor: Mapped[str | None] = mapped_column(String(100), nullable=True)

    # Ids only grow (AUTOINCREMENT on SQLite): the engine follows the history by its highest id.
    __table_args__ = (
        Index("ix_events_vm_time", "vm_id", "time"),
        Index("ix_events_task", "task_id"),
        Index("ix_events_time", "time"),
        # The history of a host or a job, newest first (web pages and API).
        Index("ix_events_host_time", "host_id", "time"),
        Index("ix_events_job_time", "job_id", "time"),
        {"sqlite_autoincrement": True},
    )


class TestCaseResult(Base):
    """One test case of one task's reports. `case_key` (a hash of suite and name) finds the same case
    in the reference results without indexing long names."""

    __tablename__ = "test_cases"
    __test__ = False

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"))
    suite: Mapped[str] = mapped_column(String(500))
    name: Mapped[str] = mapped_column(String(1000))
    case_key: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(10))  # passed | failed | skipped | error
    message: Mapped[str] = mapped_column(Text, default="")
    duration: Mapped[float | None] = mapped_column(Float, nullable=True)

    __table_args__ = (Index("ix_test_cases_task_status", "task_id", "status"),)


class ReportProblemRow(Base):
    """A declared report that was missing or could not be read: a failure of its own kind."""

    __tablename__ = "report_problems"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    file: Mapped[str] = mapped_column(String(500))
    kind: Mapped[str] = mapped_column(String(20))
    message: Mapped[str] = mapped_column(Text, default="")


class ReferenceResult(Base):
    """The latest reference results of one test case on one VM in one step, with the few before it
    (`history`: [[job id, status], ...], oldest first, at most five) to tell a flaky case."""

    __tablename__ = "reference_results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    vm_id: Mapped[int] = mapped_column(ForeignKey("vms.id"))
    step_name: Mapped[str] = mapped_column(String(100))
    case_key: Mapped[str] = mapped_column(String(40))
    history: Mapped[list] = mapped_column(JSON, default=list)

    __table_args__ = (UniqueConstraint("vm_id", "step_name", "case_key"),)


class Webhook(Base):
    """A receiver of JSON notifications, each body signed with HMAC-SHA256 under its own secret."""

    __tablename__ = "webhooks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    url: Mapped[str] = mapped_column(String(1000))
    secret: Mapped[str] = mapped_column(String(200))
    events: Mapped[str] = mapped_column(String(20), default="named")  # named | jobs | notices | all
    created: Mapped[datetime] = mapped_column(DateTime)


class Delivery(Base):
    """One notification to send: written in the same transaction as what it tells (never lost), sent
    by the engine from this queue with retries (never blocking it), carrying its own id so a receiver
    can drop a repeat (an engine killed between sending and recording it sends it again)."""

    __tablename__ = "deliveries"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    channel: Mapped[str] = mapped_column(String(10))  # email | webhook
    target: Mapped[str] = mapped_column(String(300))  # an address or a webhook's name
    subject: Mapped[str] = mapped_column(Text, default="")
    payload: Mapped[dict] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(10), default="pending")  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt: Mapped[datetime] = mapped_column(DateTime)
    last_error: Mapped[str] = mapped_column(Text, default="")
    created: Mapped[datetime] = mapped_column(DateTime)
    delivered: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"), nullable=True, index=True)

    __table_args__ = (Index("ix_deliveries_due", "status", "next_attempt"),)


class EngineLease(Base):
    """At most one engine per database: the holder renews its lease; another engine refuses to start.

    `epoch` grows at every acquisition; every engine transaction checks it first, so an engine that
    lost its lease (paused past its expiry while another took over) can change nothing."""

    __tablename__ = "engine_lease"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    expires: Mapped[datetime] = mapped_column(DateTime)
    epoch: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    # When the holder last finished a planning round, written with each renewal (health checks).
    last_round: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class Blocked(Base):
    """Why queued work cannot run as things stand, as the engine's scheduler last saw it.

    `subject` names what the work waits for ("vm win10"); `job show` prints the reason next to each
    queued task. Kept apart from the VM rows so that the engine's bookkeeping never conflicts with an
    administrator's change of the VM."""

    __tablename__ = "blocked"

    subject: Mapped[str] = mapped_column(String(300), primary_key=True)
    reason: Mapped[str] = mapped_column(Text)
    since: Mapped[datetime] = mapped_column(DateTime)


def utcnow() -> datetime:
    """The database's clock: naive UTC, the same on SQLite and PostgreSQL."""
    from datetime import UTC

    return datetime.now(UTC).replace(tzinfo=None)
