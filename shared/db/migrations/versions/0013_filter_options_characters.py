"""what a filter's options weigh, kept on its row

The organisation's budget for its filters' options (DATAFERRY_MAX_FILTER_OPTIONS_MB) and the
batches ``GET /filters`` sends read these instead of the options themselves (up to a megabyte a
filter). Existing rows are weighed here, as the model weighs what it stores
(``shared.db.models.json_characters``).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04 06:00:00
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from alembic import op

from shared.db.models import json_characters

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_COLUMNS = ("values_characters", "value_names_characters")


def upgrade() -> None:
    with op.batch_alter_table("filters") as batch_op:
        for column in _COLUMNS:
            batch_op.add_column(sa.Column(column, sa.Integer(), server_default="0", nullable=False))
    filters = sa.table(
        "filters",
        sa.column("id", sa.String()),
        sa.column("option_values", sa.JSON()),
        sa.column("option_names", sa.JSON()),
        *(sa.column(column, sa.Integer()) for column in _COLUMNS),
    )
    connection = op.get_bind()
    for filter_id in connection.scalars(sa.select(filters.c.id)).all():
        values, names = connection.execute(  # one filter's options in memory at a time
            sa.select(filters.c.option_values, filters.c.option_names).where(
                filters.c.id == filter_id
            )
        ).one()
        connection.execute(
            filters.update()
            .where(filters.c.id == filter_id)
            .values(
                values_characters=json_characters(_loaded(values)),
                value_names_characters=json_characters(_loaded(names)),
            )
        )


def _loaded(options: Any) -> Any:
    """A JSON column read through a bare table: a list, or (some drivers) its text."""
    return json.loads(options) if isinstance(options, str) else options


def downgrade() -> None:
    # Not rebuilt on SQLite (see 0012): SQLite drops a column in place since 3.35.
    with op.batch_alter_table("filters", recreate="never") as batch_op:
        for column in _COLUMNS:
            batch_op.drop_column(column)
