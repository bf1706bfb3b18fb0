"""reports, dashboards and dashboard groups (Cluvio's), and the report an execution ran

Reports restrict their datasource's deletion (the API answers 409 before the database would);
a dashboard's deletion takes its reports; an execution keeps running, or stays listed, when its
report goes (its report_id turns null).

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 19:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import shared.db.models

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dashboard_groups",
        sa.Column("id", sa.String(length=14), nullable=False),
        sa.Column("organization_id", sa.String(length=14), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("created_at", shared.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", shared.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_dashboard_groups_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dashboard_groups")),
    )
    with op.batch_alter_table("dashboard_groups", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_dashboard_groups_organization_id"), ["organization_id"], unique=False
        )

    op.create_table(
        "dashboards",
        sa.Column("id", sa.String(length=14), nullable=False),
        sa.Column("organization_id", sa.String(length=14), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("time_zone_config", sa.JSON(), nullable=True),
        sa.Column("automatic_update_enabled", sa.Boolean(), nullable=False),
        sa.Column("thumbnail_enabled", sa.Boolean(), nullable=False),
        sa.Column(
            "thumbnail_created_at", shared.db.models.UTCDateTime(timezone=True), nullable=True
        ),
        sa.Column("prewarm", sa.Boolean(), nullable=False),
        sa.Column("published", sa.Boolean(), nullable=False),
        sa.Column("data_refresh_rate", sa.Integer(), nullable=True),
        sa.Column("data_refresh_anchor_time", sa.String(length=5), nullable=True),
        sa.Column("is_locked", sa.Boolean(), nullable=False),
        sa.Column("default_parameters", sa.JSON(), nullable=False),
        sa.Column("default_page_width", sa.Integer(), nullable=True),
        sa.Column("layout", sa.JSON(), nullable=False),
        sa.Column("floating_enabled", sa.Boolean(), nullable=False),
        sa.Column("color_scheme", sa.String(length=32), nullable=True),
        sa.Column("filters_configuration", sa.JSON(), nullable=True),
        sa.Column("created_at", shared.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", shared.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_dashboards_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dashboards")),
    )
    with op.batch_alter_table("dashboards", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_dashboards_organization_id"), ["organization_id"], unique=False
        )

    op.create_table(
        "dashboard_group_members",
        sa.Column("dashboard_group_id", sa.String(length=14), nullable=False),
        sa.Column("dashboard_id", sa.String(length=14), nullable=False),
        sa.ForeignKeyConstraint(
            ["dashboard_group_id"],
            ["dashboard_groups.id"],
            name=op.f("fk_dashboard_group_members_dashboard_group_id_dashboard_groups"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["dashboard_id"],
            ["dashboards.id"],
            name=op.f("fk_dashboard_group_members_dashboard_id_dashboards"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "dashboard_group_id", "dashboard_id", name=op.f("pk_dashboard_group_members")
        ),
    )
    with op.batch_alter_table("dashboard_group_members", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_dashboard_group_members_dashboard_id"), ["dashboard_id"], unique=False
        )

    op.create_table(
        "reports",
        sa.Column("id", sa.String(length=14), nullable=False),
        sa.Column("organization_id", sa.String(length=14), nullable=False),
        sa.Column("datasource_id", sa.String(length=14), nullable=False),
        sa.Column("dashboard_id", sa.String(length=14), nullable=True),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("sql_query", sa.Text(), nullable=False),
        sa.Column("visualization", sa.JSON(), nullable=True),
        sa.Column("created_at", shared.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", shared.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["dashboard_id"],
            ["dashboards.id"],
            name=op.f("fk_reports_dashboard_id_dashboards"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["datasource_id"],
            ["datasources.id"],
            name=op.f("fk_reports_datasource_id_datasources"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_reports_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reports")),
    )
    with op.batch_alter_table("reports", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_reports_dashboard_id"), ["dashboard_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_reports_datasource_id"), ["datasource_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_reports_organization_id"), ["organization_id"], unique=False
        )

    with op.batch_alter_table("executions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("report_id", sa.String(length=14), nullable=True))
        batch_op.create_index(batch_op.f("ix_executions_report_id"), ["report_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_executions_report_id_reports"),
            "reports",
            ["report_id"],
            ["id"],
            ondelete="SET NULL",
        )


def downgrade() -> None:
    with op.batch_alter_table("executions", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_executions_report_id_reports"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_executions_report_id"))
        batch_op.drop_column("report_id")

    with op.batch_alter_table("reports", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_reports_organization_id"))
        batch_op.drop_index(batch_op.f("ix_reports_datasource_id"))
        batch_op.drop_index(batch_op.f("ix_reports_dashboard_id"))

    op.drop_table("reports")
    with op.batch_alter_table("dashboard_group_members", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_dashboard_group_members_dashboard_id"))

    op.drop_table("dashboard_group_members")
    with op.batch_alter_table("dashboards", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_dashboards_organization_id"))

    op.drop_table("dashboards")
    with op.batch_alter_table("dashboard_groups", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_dashboard_groups_organization_id"))

    op.drop_table("dashboard_groups")
