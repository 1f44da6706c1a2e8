"""host health: errors counted against the host, its disk space, backend options

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21 22:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("hosts") as batch_op:
        batch_op.add_column(sa.Column("status_reason", sa.Text(), nullable=False, server_default=""))
        batch_op.add_column(sa.Column("errors", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("next_check", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("free_disk_bytes", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("health_checked", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("min_free_disk", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("options", sa.JSON(), nullable=False, server_default="{}"))


def downgrade() -> None:
    with op.batch_alter_table("hosts") as batch_op:
        for column in (
            "options",
            "min_free_disk",
            "health_checked",
            "free_disk_bytes",
            "next_check",
            "errors",
            "status_reason",
        ):
            batch_op.drop_column(column)
