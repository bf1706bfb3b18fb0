"""the generation of an organisation's file area, raised by every change the API makes to it

A walk of the area (the storage quota's count of its files) records the generation it saw; a
check under the organisation's lock reuses a recent walk only while the generation is unchanged
(shared.storage_quota), instead of walking again while it holds the lock.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 14:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("organizations") as batch_op:
        batch_op.add_column(
            sa.Column("area_generation", sa.BigInteger(), server_default="0", nullable=False)
        )


def downgrade() -> None:
    # Not rebuilt on SQLite: dropping the old table, with foreign keys on, would cascade to every
    # row that references an organisation. SQLite drops a column in place since 3.35.
    with op.batch_alter_table("organizations", recreate="never") as batch_op:
        batch_op.drop_column("area_generation")
