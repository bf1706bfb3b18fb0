"""the bytes of an organisation's stored results, kept as a counter on its row

Counted once here from the executions whose result is still stored; from then on every transition
that stores or forgets a result adjusts it (shared.organization_rows).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 10:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("organizations") as batch_op:
        batch_op.add_column(
            sa.Column("stored_results_bytes", sa.BigInteger(), server_default="0", nullable=False)
        )
    op.execute(
        """
        UPDATE organizations SET stored_results_bytes = (
            SELECT COALESCE(SUM(COALESCE(result_size, 0) + variants_size), 0)
            FROM executions
            WHERE executions.organization_id = organizations.id
              AND executions.data_key IS NOT NULL
              AND executions.data_purged_at IS NULL
        )
        """
    )


def downgrade() -> None:
    # Not rebuilt on SQLite: dropping the old table, with foreign keys on, would cascade to every
    # row that references an organisation. SQLite drops a column in place since 3.35.
    with op.batch_alter_table("organizations", recreate="never") as batch_op:
        batch_op.drop_column("stored_results_bytes")
