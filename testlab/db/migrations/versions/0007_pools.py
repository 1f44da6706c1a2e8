"""pools: a step may target any VM carrying its labels; its tasks get their VM when they start

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-22 01:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("steps", table_kwargs={"sqlite_autoincrement": True}) as batch_op:
        batch_op.add_column(sa.Column("pool_labels", sa.JSON(), nullable=False, server_default="[]"))
    # Rebuilding tasks on SQLite must keep AUTOINCREMENT (ids never reused).
    with op.batch_alter_table("tasks", table_kwargs={"sqlite_autoincrement": True}) as batch_op:
        batch_op.alter_column("vm_id", existing_type=sa.Integer(), nullable=True)


def downgrade() -> None:
    with op.batch_alter_table("tasks", table_kwargs={"sqlite_autoincrement": True}) as batch_op:
        batch_op.alter_column("vm_id", existing_type=sa.Integer(), nullable=False)
    with op.batch_alter_table("steps", table_kwargs={"sqlite_autoincrement": True}) as batch_op:
        batch_op.drop_column("pool_labels")
