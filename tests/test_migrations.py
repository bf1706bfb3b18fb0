"""Upgrading an empty database to head yields exactly the models' schema."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from shared.db.engine import create_metadata_engine
from shared.db.migrate import upgrade_to_head
from shared.db.models import Base


def test_migrations_match_models(database_url):
    engine = create_metadata_engine(database_url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
    engine.dispose()


def test_upgrade_is_idempotent(database_url):
    engine = create_metadata_engine(database_url)
    upgrade_to_head(engine)
    upgrade_to_head(engine)
    engine.dispose()
