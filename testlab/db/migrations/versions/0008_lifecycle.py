"""lifecycle: each VM's uses since its last wipe, its reuse policy, a history string per task

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-22 09:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("vms") as batch_op:
        batch_op.add_column(
            sa.Column("wipe", sa.String(length=20), nullable=False, server_default="every-task")
        )
        batch_op.add_column(sa.Column("max_uses", sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column("wipe_after_failure", sa.Boolean(), nullable=False, server_default=sa.true())
        )
        batch_op.add_column(sa.Column("protect_after", sa.Integer(), nullable=False, server_default="2"))
        batch_op.add_column(sa.Column("uses", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(
            sa.Column("wipe_requested", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("steps", table_kwargs={"sqlite_autoincrement": True}) as batch_op:
        batch_op.add_column(sa.Column("prepare", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column("clean", sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table("tasks", table_kwargs={"sqlite_autoincrement": True}) as batch_op:
        batch_op.add_column(sa.Column("history_at_start", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("history_at_end", sa.Text(), nullable=True))
    op.create_table(
        "vm_uses",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("vm_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("step", sa.String(length=100), nullable=True),
        sa.Column("task_id", sa.Integer(), nullable=True),
        sa.Column("actor", sa.String(length=100), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False, server_default=""),
        sa.Column("started", sa.DateTime(), nullable=False),
        sa.Column("ended", sa.DateTime(), nullable=True),
        sa.Column("outcome", sa.String(length=20), nullable=True),
        sa.Column("wiped", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["vm_id"], ["vms.id"]),
        sa.PrimaryKeyConstraint("id"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_vm_uses_vm_wiped", "vm_uses", ["vm_id", "wiped", "id"])
    op.create_index("ix_vm_uses_task", "vm_uses", ["task_id"])
    op.create_index("ix_vm_uses_started", "vm_uses", ["started"])


def downgrade() -> None:
    op.drop_table("vm_uses")
    with op.batch_alter_table("tasks", table_kwargs={"sqlite_autoincrement": True}) as batch_op:
        batch_op.drop_column("history_at_end")
        batch_op.drop_column("history_at_start")
    with op.batch_alter_table("steps", table_kwargs={"sqlite_autoincrement": True}) as batch_op:
        batch_op.drop_column("clean")
        batch_op.drop_column("prepare")
    with op.batch_alter_table("vms") as batch_op:
        for column in ("wipe_requested", "uses", "protect_after", "wipe_after_failure", "max_uses", "wipe"):
            batch_op.drop_column(column)
