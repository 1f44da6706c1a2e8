"""web: API tokens with expiry and revocation, passwords, browser sessions, login failures, the engine's
last round, and the indexes behind the web pages' lists

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22 10:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(length=200), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False, server_default=""),
        sa.Column("created", sa.DateTime(), nullable=False),
        sa.Column("expires", sa.DateTime(), nullable=True),
        sa.Column("revoked", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_index("ix_api_tokens_user", "api_tokens", ["user_id"])
    # Each user's one token so far becomes their first API token.
    op.execute(
        "INSERT INTO api_tokens (user_id, token_hash, name, created) "
        "SELECT id, token_hash, 'first', created FROM users"
    )
    with op.batch_alter_table("users") as batch_op:
        batch_op.drop_column("token_hash")
        batch_op.add_column(sa.Column("password_hash", sa.String(length=300), nullable=True))

    op.create_table(
        "web_sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("secret_hash", sa.String(length=100), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("csrf", sa.String(length=100), nullable=False),
        sa.Column("created", sa.DateTime(), nullable=False),
        sa.Column("expires", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("secret_hash"),
    )
    op.create_index("ix_web_sessions_expires", "web_sessions", ["expires"])
    op.create_table(
        "login_failures",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("time", sa.DateTime(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("address", sa.String(length=100), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_login_failures_name", "login_failures", ["name", "time"])
    op.create_index("ix_login_failures_address", "login_failures", ["address", "time"])
    op.create_index("ix_login_failures_time", "login_failures", ["time"])

    with op.batch_alter_table("engine_lease") as batch_op:
        batch_op.add_column(sa.Column("last_round", sa.DateTime(), nullable=True))

    op.create_index("ix_jobs_status_id", "jobs", ["status", "id"])
    op.create_index("ix_jobs_owner_id", "jobs", ["owner", "id"])
    op.create_index("ix_jobs_name_id", "jobs", ["name", "id"])
    op.create_index("ix_tasks_ended", "tasks", ["ended"])
    op.create_index("ix_events_host_time", "events", ["host_id", "time"])
    op.create_index("ix_events_job_time", "events", ["job_id", "time"])


def downgrade() -> None:
    for name, table in (
        ("ix_events_job_time", "events"),
        ("ix_events_host_time", "events"),
        ("ix_tasks_ended", "tasks"),
        ("ix_jobs_name_id", "jobs"),
        ("ix_jobs_owner_id", "jobs"),
        ("ix_jobs_status_id", "jobs"),
    ):
        op.drop_index(name, table_name=table)
    with op.batch_alter_table("engine_lease") as batch_op:
        batch_op.drop_column("last_round")
    op.drop_table("login_failures")
    op.drop_table("web_sessions")
    with op.batch_alter_table("users") as batch_op:
        batch_op.drop_column("password_hash")
        batch_op.add_column(sa.Column("token_hash", sa.String(length=200), nullable=False, server_default=""))
    op.execute(
        "UPDATE users SET token_hash = (SELECT t.token_hash FROM api_tokens t WHERE t.user_id = users.id "
        "ORDER BY t.id LIMIT 1) WHERE EXISTS (SELECT 1 FROM api_tokens t WHERE t.user_id = users.id)"
    )
    op.drop_table("api_tokens")
