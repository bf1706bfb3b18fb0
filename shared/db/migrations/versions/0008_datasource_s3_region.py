"""datasources keep s3_region: the region an s3 datasource's requests are signed for

Not one of Cluvio's attributes (named after its athena_region/snowflake_region): AWS needs the
bucket's region, and S3-compatible servers (MinIO, Garage, R2, …) each expect their own.
Null means us-east-1.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 14:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("datasources") as batch:
        batch.add_column(sa.Column("s3_region", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("datasources") as batch:
        batch.drop_column("s3_region")
