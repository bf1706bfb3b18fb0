"""per-organisation file areas: shared-folder grants; file datasources' paths move into the area

Before this revision a file datasource's ``database`` was relative to the whole data root; from
here on it is relative to ``<data root>/<organisation id>/``. A row whose path already lay in its
own organisation's folder (``<org id>/…``) is rewritten relative to it and keeps reading the same
file. Every other path is left as it was and so now names a place inside its own organisation's
area, where nothing exists yet: the datasource fails with ``datasource_unavailable`` until the
operator moves the files there (or grants a shared folder and the path is changed), and can never
read another organisation's area. ``python -m api_server check-file-datasources`` lists them.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 09:00:00
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from alembic import op

import shared.db.models

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

logger = logging.getLogger("alembic.runtime.migration")

# The file types as of this revision (a migration does not follow later code).
_FILE_TYPES = ("files", "duckdb", "sqlite")
_datasources = sa.table(
    "datasources",
    sa.column("id", sa.String),
    sa.column("organization_id", sa.String),
    sa.column("database_type", sa.String),
    sa.column("database", sa.String),
)


def upgrade() -> None:
    op.create_table(
        "shared_folders",
        sa.Column("id", sa.String(length=14), nullable=False),
        sa.Column("organization_id", sa.String(length=14), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("path", sa.String(length=1024), nullable=False),
        sa.Column("created_at", shared.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_shared_folders_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_shared_folders")),
    )
    op.create_index(
        "uq_shared_folders_organization_id_name",
        "shared_folders",
        ["organization_id", "name"],
        unique=True,
    )
    moved = left = 0
    for row in _file_datasources():
        prefix = f"{row.organization_id}/"
        rest = (row.database or "").removeprefix(prefix).strip("/")
        if row.database and row.database.startswith(prefix) and rest:
            _set_database(row.id, rest)
            moved += 1
        else:
            left += 1
    if moved or left:
        logger.info(
            "file areas: %d datasource path(s) rewritten into their organisation's area, "
            "%d left unreadable until their files are moved (check-file-datasources lists them)",
            moved,
            left,
        )


def downgrade() -> None:
    """Paths become relative to the data root again, naming the same files as before."""
    for row in _file_datasources():
        if row.database:
            _set_database(row.id, f"{row.organization_id}/{row.database}")
    op.drop_index("uq_shared_folders_organization_id_name", table_name="shared_folders")
    op.drop_table("shared_folders")


def _file_datasources() -> list[Any]:
    query = sa.select(_datasources.c.id, _datasources.c.organization_id, _datasources.c.database)
    rows = op.get_bind().execute(query.where(_datasources.c.database_type.in_(_FILE_TYPES)))
    return list(rows.all())


def _set_database(datasource_id: str, database: str) -> None:
    op.get_bind().execute(
        _datasources.update().where(_datasources.c.id == datasource_id).values(database=database)
    )
