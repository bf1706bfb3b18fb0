"""Upgrading an empty database to head yields exactly the models' schema, however many
processes do it at once."""

from __future__ import annotations

import multiprocessing
import os
from contextlib import ExitStack
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

from shared.db.engine import create_metadata_engine
from shared.db.migrate import alembic_config, upgrade_to_head
from shared.db.models import Base
from tests.postgres import fresh_postgres_schema


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


# ------------------------------------------------------------------ concurrent start-up

RACERS = 4
ROUNDS = 4


def _migrate_each_at_once(urls: list[str], barrier: Any, failures: Any) -> None:
    """One racer (in its own process): every racer upgrades each database at the same moment."""
    for url in urls:
        engine = create_metadata_engine(url)
        try:
            barrier.wait(timeout=60)
            upgrade_to_head(engine)
        except Exception as exc:  # reported to the test, which names it
            failures.put(f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
        finally:
            engine.dispose()


def _race(urls: list[str]) -> list[str]:
    context = multiprocessing.get_context("spawn")
    barrier, failures = context.Barrier(RACERS), context.SimpleQueue()
    racers = [
        context.Process(target=_migrate_each_at_once, args=(urls, barrier, failures))
        for _ in range(RACERS)
    ]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(timeout=180)
        if racer.exitcode is None:
            racer.kill()
    assert [racer.exitcode for racer in racers] == [0] * RACERS
    found = []
    while not failures.empty():
        found.append(failures.get())
    return found


def _assert_at_head(url: str) -> None:
    engine = create_metadata_engine(url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
        assert connection.execute(text("SELECT version_num FROM alembic_version")).all() == [
            (ScriptDirectory.from_config(alembic_config(engine)).get_current_head(),)
        ]
    engine.dispose()


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_servers_starting_together_migrate_one_empty_database_once(tmp_path, backend):
    """An API server and a data server started at once on an empty database both migrate it:
    without a lock one of them died on `table organizations already exists`."""
    with ExitStack() as stack:
        if backend == "sqlite":
            urls = [f"sqlite:///{tmp_path / f'round-{n}.db'}" for n in range(ROUNDS)]
        else:
            urls = [
                stack.enter_context(fresh_postgres_schema(f"dataferry_race_{os.getpid()}_{n}"))
                for n in range(ROUNDS)
            ]
        assert _race(urls) == []
        for url in urls:
            _assert_at_head(url)
