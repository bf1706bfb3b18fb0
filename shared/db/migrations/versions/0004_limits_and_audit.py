"""per-organisation rate limits, audit events

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import shared.db.models

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("organizations") as batch:
        batch.add_column(sa.Column("rate_limit_per_minute", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("rate_limit_per_hour", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("max_running_executions", sa.Integer(), nullable=True))
    op.create_table(
        "audit_events",
        sa.Column("id", sa.String(length=14), nullable=False),
        sa.Column("organization_id", sa.String(length=14), nullable=False),
        sa.Column("api_key_id", sa.String(length=14), nullable=True),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("method", sa.String(length=8), nullable=False),
        sa.Column("path", sa.String(length=255), nullable=False),
        sa.Column("resource_id", sa.String(length=64), nullable=True),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("remote_addr", sa.String(length=64), nullable=True),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("created_at", shared.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_audit_events_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
    )
    op.create_index(
        "ix_audit_events_organization_id_created_at",
        "audit_events",
        ["organization_id", "created_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_audit_events_organization_id_created_at", table_name="audit_events")
    op.drop_table("audit_events")
    # Not rebuilt on SQLite: dropping the old table would cascade to every row that references
    # an organisation (foreign keys are on). SQLite drops a column in place since 3.35.
    with op.batch_alter_table("organizations", recreate="never") as batch:
        batch.drop_column("max_running_executions")
        batch.drop_column("rate_limit_per_hour")
        batch.drop_column("rate_limit_per_minute")
