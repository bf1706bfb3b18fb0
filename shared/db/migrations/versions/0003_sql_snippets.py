"""sql snippets

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 05:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import shared.db.models

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sql_snippets",
        sa.Column("id", sa.String(length=14), nullable=False),
        sa.Column("organization_id", sa.String(length=14), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("sql", sa.Text(), nullable=False),
        sa.Column("created_at", shared.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", shared.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_sql_snippets_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sql_snippets")),
    )
    op.create_index(
        op.f("ix_sql_snippets_organization_id"), "sql_snippets", ["organization_id"], unique=False
    )
    op.create_index(
        "uq_sql_snippets_organization_id_name",
        "sql_snippets",
        ["organization_id", "name"],
        unique=True,
    )


def downgrade() -> None:
    op.drop_index("uq_sql_snippets_organization_id_name", table_name="sql_snippets")
    op.drop_index(op.f("ix_sql_snippets_organization_id"), table_name="sql_snippets")
    op.drop_table("sql_snippets")
