"""hosts.domain_type: how a libvirt host runs the domains testlab defines (kvm or qemu)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21 21:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("hosts") as batch:
        batch.add_column(sa.Column("domain_type", sa.String(length=20), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("hosts") as batch:
        batch.drop_column("domain_type")
