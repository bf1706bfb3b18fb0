"""the snippets and filter variables a report's SQL names, kept on its row

A dashboard's answer lists the snippets and filters of its reports' SQL from these instead of
reading and scanning every report's SQL (up to DATAFERRY_MAX_SQL_LENGTH characters each, and a
dashboard may hold thousands). Existing rows are scanned here, one at a time, as the model scans
what it stores (``shared.db.models.names_in_sql``).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04 06:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from shared.db.models import names_in_sql

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

_COLUMNS = ("sql_snippet_names", "sql_variables")


def upgrade() -> None:
    with op.batch_alter_table("reports") as batch_op:
        for column in _COLUMNS:
            batch_op.add_column(sa.Column(column, sa.JSON(), nullable=True))
    reports = sa.table(
        "reports",
        sa.column("id", sa.String()),
        sa.column("sql_query", sa.Text()),
        *(sa.column(column, sa.JSON()) for column in _COLUMNS),
    )
    connection = op.get_bind()
    for report_id in connection.scalars(sa.select(reports.c.id)).all():
        sql = connection.scalar(sa.select(reports.c.sql_query).where(reports.c.id == report_id))
        snippets, variables = names_in_sql(sql or "")
        connection.execute(
            reports.update()
            .where(reports.c.id == report_id)
            .values(sql_snippet_names=snippets, sql_variables=variables)
        )


def downgrade() -> None:
    # Not rebuilt on SQLite (see 0012): SQLite drops a column in place since 3.35.
    with op.batch_alter_table("reports", recreate="never") as batch_op:
        for column in _COLUMNS:
            batch_op.drop_column(column)
