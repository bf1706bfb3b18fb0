"""Alembic, driven from code: ``upgrade_to_head`` is what ``migrate`` and ``serve`` call.

Processes started together (an API server and a data server on an empty database, say) each
upgrade the schema; a lock per database makes them take turns, so the first migrates and the
others find the schema at head. Alembic's DDL on SQLite runs outside any transaction, so a
transaction cannot serialise it: a file lock beside the database file does. PostgreSQL has
transactional DDL, but two transactions creating one table still collide: an advisory lock,
keyed by the schema, does.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, text

from shared.errors import ConfigurationError

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# PostgreSQL's two-key advisory lock of migrations: "dfmg", then the schema they run in.
_ADVISORY_LOCK_KEY = f"{0x64666D67}, hashtext(coalesce(current_schema(), ''))"


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = engine
    return config


def upgrade_to_head(engine: Engine) -> None:
    with migration_lock(engine):
        command.upgrade(alembic_config(engine), "head")


def require_head(engine: Engine, *, may_create: bool = False) -> None:
    """For an operator's command other than ``migrate``: the schema must be this release's.
    Upgrading it in passing would take a release's migration (one may lock a large table) at a
    moment the operator did not choose, under servers of the release before. An empty database
    (a new deployment) is made only where ``may_create``."""
    with engine.connect() as connection:
        current = (
            connection.scalar(text("SELECT version_num FROM alembic_version"))
            if inspect(connection).has_table("alembic_version")
            else None
        )
    script = ScriptDirectory.from_config(alembic_config(engine))
    head = script.get_current_head()
    if current == head:
        return
    if current is None and may_create:
        upgrade_to_head(engine)
        return
    migrate = "run `python -m api_server migrate` with this release first (deploy/README.md)"
    if current is None:
        problem = f"the metadata database has no dataferry schema: {migrate}"
    elif current in {revision.revision for revision in script.walk_revisions()}:
        problem = (
            f"the metadata database's schema is at revision {current}, this release's is "
            f"{head}: {migrate}"
        )
    else:
        problem = (
            f"the metadata database's schema is at revision {current}, of a release newer than "
            f"this one ({head}): use that release's commands"
        )
    raise ConfigurationError(problem)


@contextmanager
def migration_lock(engine: Engine) -> Iterator[None]:
    """Held by one process at a time per database (per schema on PostgreSQL); waits for it."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            connection.execute(text(f"SELECT pg_advisory_lock({_ADVISORY_LOCK_KEY})"))
            connection.commit()  # no transaction stays open while the migration runs
            try:
                yield
            finally:
                connection.execute(text(f"SELECT pg_advisory_unlock({_ADVISORY_LOCK_KEY})"))
                connection.commit()
        return
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:":
        yield  # a private in-memory database has no second process to race
        return
    with open(f"{database}.migrate-lock", "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
