"""api keys remember an operator's disable

A key disabled before this revision counts as the operator's when the audit log holds a CLI
``api_key.disable`` of it: failing closed, so an operator's earlier disable also holds against the
API. (A key disabled over the API is enabled again over the API, as before.)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(
            sa.Column(
                "disabled_by_operator", sa.Boolean(), server_default=sa.false(), nullable=False
            )
        )
    op.execute(
        "UPDATE api_keys SET disabled_by_operator = true WHERE enabled = false AND EXISTS ("
        "SELECT 1 FROM audit_events WHERE audit_events.resource_id = api_keys.id "
        "AND audit_events.action = 'api_key.disable' AND audit_events.method = 'CLI')"
    )


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("disabled_by_operator")
