"""filters (Cluvio's), result reuse's key on executions, the bytes of a result's stored
representations (counted in the storage quota), and the claims of dashboard refreshes

A filter restricts its datasource's deletion as a report does; the refresh claims go with their
dashboard.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30 22:11:49
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import shared.db.models

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dashboard_refreshes",
        sa.Column("dashboard_id", sa.String(length=14), nullable=False),
        sa.Column("due_at", shared.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("claimed_by", sa.String(length=128), nullable=False),
        sa.Column("claimed_at", shared.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("executions", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["dashboard_id"],
            ["dashboards.id"],
            name=op.f("fk_dashboard_refreshes_dashboard_id_dashboards"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("dashboard_id", "due_at", name=op.f("pk_dashboard_refreshes")),
    )
    op.create_table(
        "filters",
        sa.Column("id", sa.String(length=14), nullable=False),
        sa.Column("organization_id", sa.String(length=14), nullable=False),
        sa.Column("datasource_id", sa.String(length=14), nullable=True),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("variable_name", sa.String(length=64), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("control_type", sa.String(length=32), nullable=False),
        sa.Column("value_type", sa.String(length=32), nullable=False),
        sa.Column("multiple", sa.Boolean(), nullable=False),
        sa.Column("default_values", sa.JSON(), nullable=False),
        sa.Column("options_source", sa.String(length=16), nullable=False),
        sa.Column("options_sql_query", sa.Text(), nullable=True),
        sa.Column("option_values", sa.JSON(), nullable=True),
        sa.Column("option_names", sa.JSON(), nullable=True),
        sa.Column("allow_all_time", sa.Boolean(), nullable=False),
        sa.Column("aggregation_options", sa.JSON(), nullable=True),
        sa.Column("restrict_to_options", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=True),
        sa.Column("status_message", sa.Text(), nullable=True),
        sa.Column("options_execution_id", sa.String(length=36), nullable=True),
        sa.Column("options_updated_at", shared.db.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", shared.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", shared.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["datasource_id"],
            ["datasources.id"],
            name=op.f("fk_filters_datasource_id_datasources"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_filters_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_filters")),
    )
    with op.batch_alter_table("filters", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_filters_datasource_id"), ["datasource_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_filters_organization_id"), ["organization_id"], unique=False
        )
        batch_op.create_index(
            "uq_filters_organization_id_variable_name",
            ["organization_id", "variable_name"],
            unique=True,
        )

    with op.batch_alter_table("executions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reuse_key", sa.String(length=64), nullable=True))
        batch_op.add_column(
            sa.Column("variants_size", sa.BigInteger(), server_default="0", nullable=False)
        )
        batch_op.create_index(
            "ix_executions_organization_id_reuse_key",
            ["organization_id", "reuse_key"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("executions", schema=None) as batch_op:
        batch_op.drop_index("ix_executions_organization_id_reuse_key")
        batch_op.drop_column("variants_size")
        batch_op.drop_column("reuse_key")

    with op.batch_alter_table("filters", schema=None) as batch_op:
        batch_op.drop_index("uq_filters_organization_id_variable_name")
        batch_op.drop_index(batch_op.f("ix_filters_organization_id"))
        batch_op.drop_index(batch_op.f("ix_filters_datasource_id"))

    op.drop_table("filters")
    op.drop_table("dashboard_refreshes")
