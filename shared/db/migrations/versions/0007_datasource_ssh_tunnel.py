"""datasources keep Cluvio's ssh_tunnel_host, ssh_tunnel_port and ssh_tunnel_user

Stored as sent, so a configuration carried over from Cluvio keeps them; until tunnels exist a
datasource that sets them is refused at run time (``ssh_tunnel_not_supported``).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("datasources") as batch:
        batch.add_column(sa.Column("ssh_tunnel_host", sa.String(255), nullable=True))
        batch.add_column(sa.Column("ssh_tunnel_port", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("ssh_tunnel_user", sa.String(255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("datasources") as batch:
        batch.drop_column("ssh_tunnel_user")
        batch.drop_column("ssh_tunnel_port")
        batch.drop_column("ssh_tunnel_host")
