"""the characters of SQL an organisation's executions keep, counted on its row

Run Execution refuses a run past DATAFERRY_MAX_EXECUTION_SQL_MB by reading this counter (kept by
the run that stores SQL and the deletion that forgets it: ``shared.organization_rows``) instead
of summing its executions' SQL. Existing executions are counted here, by the database.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-04 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

_COLUMN = "execution_sql_characters"


def upgrade() -> None:
    with op.batch_alter_table("organizations") as batch_op:
        batch_op.add_column(sa.Column(_COLUMN, sa.BigInteger(), server_default="0", nullable=False))
    organizations = sa.table("organizations", sa.column("id"), sa.column(_COLUMN, sa.BigInteger()))
    executions = sa.table(
        "executions",
        sa.column("organization_id"),
        sa.column("sql_query", sa.Text()),
        sa.column("expanded_sql", sa.Text()),
    )
    kept = (
        sa.select(
            sa.func.coalesce(
                sa.func.sum(
                    sa.func.coalesce(sa.func.length(executions.c.sql_query), 0)
                    + sa.func.coalesce(sa.func.length(executions.c.expanded_sql), 0)
                ),
                0,
            )
        )
        .where(executions.c.organization_id == organizations.c.id)
        .scalar_subquery()
    )
    op.get_bind().execute(organizations.update().values({_COLUMN: kept}))


def downgrade() -> None:
    # Not rebuilt on SQLite (see 0012): SQLite drops a column in place since 3.35.
    with op.batch_alter_table("organizations", recreate="never") as batch_op:
        batch_op.drop_column(_COLUMN)
