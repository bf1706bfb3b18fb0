"""the bytes of text an execution keeps, on its row and summed on its organisation's

Run Execution refuses a run past DATAFERRY_MAX_EXECUTION_TEXT_MB by reading the organisation's
counter (kept by the run that stores an execution and the deletion that forgets it, each by the
execution's own ``kept_bytes``: ``shared.organization_rows``) instead of summing its executions,
and tells when room may come from its oldest executions (a new index). Existing executions are
weighed here by the database, in UTF-8 bytes: their SQL, and their parameters' JSON as the
database holds it (which may space it differently from what a run measures; each row is taken
off by what it holds, so the counter stays the sum of its rows).

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


def upgrade() -> None:
    with op.batch_alter_table("executions") as batch_op:
        batch_op.add_column(
            sa.Column("kept_bytes", sa.BigInteger(), server_default="0", nullable=False)
        )
    with op.batch_alter_table("organizations") as batch_op:
        batch_op.add_column(
            sa.Column("execution_text_bytes", sa.BigInteger(), server_default="0", nullable=False)
        )
    executions = sa.table(
        "executions",
        sa.column("organization_id"),
        sa.column("sql_query", sa.Text()),
        sa.column("expanded_sql", sa.Text()),
        sa.column("parameters", sa.JSON()),
        sa.column("bound_parameters", sa.JSON()),
        sa.column("kept_bytes", sa.BigInteger()),
    )
    organizations = sa.table(
        "organizations", sa.column("id"), sa.column("execution_text_bytes", sa.BigInteger())
    )
    op.create_index(
        "ix_executions_organization_id_created_at", "executions", ["organization_id", "created_at"]
    )
    connection = op.get_bind()
    weight = sum(
        (
            sa.func.coalesce(_utf8_bytes(connection.dialect.name, column), 0)
            for column in (
                executions.c.sql_query,
                executions.c.expanded_sql,
                executions.c.parameters,
                executions.c.bound_parameters,
            )
        ),
        sa.literal(0),
    )
    connection.execute(executions.update().values(kept_bytes=weight))
    kept = (
        sa.select(sa.func.coalesce(sa.func.sum(executions.c.kept_bytes), 0))
        .where(executions.c.organization_id == organizations.c.id)
        .scalar_subquery()
    )
    connection.execute(organizations.update().values(execution_text_bytes=kept))


def _utf8_bytes(dialect: str, column: sa.ColumnClause[object]) -> sa.ColumnElement[int]:
    text = sa.cast(column, sa.Text())
    if dialect == "postgresql":
        return sa.func.octet_length(text)
    return sa.func.length(sa.cast(text, sa.LargeBinary()))  # SQLite: a BLOB's length is bytes


def downgrade() -> None:
    op.drop_index("ix_executions_organization_id_created_at", table_name="executions")
    # Not rebuilt on SQLite (see 0012): SQLite drops a column in place since 3.35.
    with op.batch_alter_table("organizations", recreate="never") as batch_op:
        batch_op.drop_column("execution_text_bytes")
    with op.batch_alter_table("executions", recreate="never") as batch_op:
        batch_op.drop_column("kept_bytes")
