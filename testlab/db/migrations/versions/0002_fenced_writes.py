"""fenced writes: row versions, lease epoch, ids never reused, event actors, blocked reasons

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 21:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

VERSIONED = ("hosts", "vms", "jobs", "steps", "tasks")
# On SQLite a table only gets AUTOINCREMENT by being rebuilt; PostgreSQL sequences never reuse ids.
NEVER_REUSED = ("jobs", "steps", "tasks", "events")


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    for table in sorted(set(VERSIONED) | set(NEVER_REUSED)):
        rebuild = sqlite and table in NEVER_REUSED
        with op.batch_alter_table(
            table,
            recreate="always" if rebuild else "auto",
            table_kwargs={"sqlite_autoincrement": True} if rebuild else {},
        ) as batch_op:
            if table in VERSIONED:
                batch_op.add_column(sa.Column("version", sa.Integer(), nullable=False, server_default="1"))
            if table == "events":
                batch_op.add_column(sa.Column("actor", sa.String(length=100), nullable=True))
    with op.batch_alter_table("engine_lease") as batch_op:
        batch_op.add_column(sa.Column("epoch", sa.Integer(), nullable=False, server_default="0"))
    op.create_table(
        "blocked",
        sa.Column("subject", sa.String(length=300), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("since", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("subject"),
    )


def downgrade() -> None:
    op.drop_table("blocked")
    with op.batch_alter_table("engine_lease") as batch_op:
        batch_op.drop_column("epoch")
    with op.batch_alter_table("events") as batch_op:
        batch_op.drop_column("actor")
    for table in VERSIONED:
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_column("version")
