"""which of a result's other representations its variants_size counts

Two data servers fetching a result's new format at once each encoded it, each counted it, and the
second store overwrote the first: the organisation's stored bytes counted it twice, until the
result went (found by an outside probe). A representation is now counted once, by name, under the
organisation's lock (``shared.storage_quota.charge_representation``). Existing rows count none by
name: a representation already stored is served from the store, never counted again, so only the
first fetch of a new one counts.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-05 17:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("executions", sa.Column("counted_variants", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("executions") as batch_op:
        batch_op.drop_column("counted_variants")
