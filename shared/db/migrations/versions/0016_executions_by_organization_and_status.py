"""an index of executions by organisation and status, in the order they were created

Every claim counts the organisation's running executions (its cap, this data server's share)
and starts the pair's oldest queued one; Run Execution counts its unfinished ones. With only
(organisation) and (organisation, created_at) to go by, each of those read every execution the
organisation ever kept: with 50,000 of them a claim's slot check took 13 ms instead of 8 µs,
under SQLite's write lock. (organisation, status, created_at) reads only the few unfinished ones,
oldest first. The (organisation) index is dropped: both others begin with it. An operator may
have made the new index beforehand (deploy/README.md: CONCURRENTLY, on a large PostgreSQL table).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-05 00:30:00
"""

from __future__ import annotations

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_executions_organization_id_status_created_at",
        "executions",
        ["organization_id", "status", "created_at"],
        if_not_exists=True,
    )
    op.drop_index("ix_executions_organization_id", table_name="executions")


def downgrade() -> None:
    op.create_index("ix_executions_organization_id", "executions", ["organization_id"])
    op.drop_index("ix_executions_organization_id_status_created_at", table_name="executions")
