"""Upgrading an empty database to head yields exactly the models' schema, however many
processes do it at once."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, text

from shared.datapaths import resolve_datasource_path
from shared.db.engine import create_metadata_engine
from shared.db.migrate import alembic_config, upgrade_to_head
from shared.db.models import Base
from shared.errors import AppError
from tests.support.postgres import fresh_postgres_schema

BACKENDS = pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)


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


@BACKENDS
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


# ------------------------------------------------------------------ 0006: per-organisation file areas

ORG_A, ORG_B = "aaaa-aaaa-aaaa", "bbbb-bbbb-bbbb"


# id → (organisation, database_type, database before 0006, database after 0006)
@contextmanager
def empty_database(tmp_path: Path, backend: str) -> Iterator[Engine]:
    """An engine on an empty database of ``backend``, for a migration test to upgrade step by
    step; disposed (and a PostgreSQL schema dropped) afterwards."""
    with ExitStack() as stack:
        if backend == "sqlite":
            url = f"sqlite:///{tmp_path / 'migrated.db'}"
        else:
            url = stack.enter_context(fresh_postgres_schema(f"dataferry_steps_{os.getpid()}"))
        engine = create_metadata_engine(url)
        stack.callback(engine.dispose)
        yield engine


FILE_AREA_ROWS = {
    "own-duck": (ORG_A, "duckdb", f"{ORG_A}/shop.duckdb", "shop.duckdb"),
    "own-folder": (ORG_A, "files", f"{ORG_A}/exports/daily", "exports/daily"),
    "whole-area": (ORG_A, "files", ORG_A, ORG_A),  # nothing left to name: stays, finds nothing
    "into-b": (ORG_A, "duckdb", f"{ORG_B}/secret.duckdb", f"{ORG_B}/secret.duckdb"),
    "root-file": (ORG_A, "duckdb", "common.duckdb", "common.duckdb"),
    "b-own": (ORG_B, "duckdb", f"{ORG_B}/secret.duckdb", "secret.duckdb"),
    "sample": (ORG_A, "sample", None, None),
}


def _insert_pre_area_rows(engine: Any) -> None:
    now = datetime.now(UTC)
    with engine.begin() as connection:
        for org in (ORG_A, ORG_B):
            connection.execute(
                text(
                    "INSERT INTO organizations (id, name, created_at, updated_at) "
                    "VALUES (:id, :id, :now, :now)"
                ),
                {"id": org, "now": now},
            )
        for ds_id, (org, database_type, before, _) in FILE_AREA_ROWS.items():
            connection.execute(
                text(
                    "INSERT INTO datasources (id, organization_id, name, database_type, "
                    "connection_mode, database, data_time_zone, require_ssl, verify_ssl, enabled, "
                    "max_concurrent_executions, update_schema_nightly, update_schema_row_counts, "
                    "created_at, updated_at) VALUES (:id, :org, :id, :type, 'direct', :db, 'UTC', "
                    "false, false, true, 20, false, false, :now, :now)"
                ),
                {"id": ds_id, "org": org, "type": database_type, "db": before, "now": now},
            )


def _databases(engine: Any) -> dict[str, str | None]:
    with engine.connect() as connection:
        return dict(connection.execute(text("SELECT id, database FROM datasources")).all())


@BACKENDS
def test_file_area_migration_moves_own_paths_and_leaves_no_path_into_another_area(
    tmp_path, backend
):
    with empty_database(tmp_path, backend) as engine:
        config = alembic_config(engine)
        command.upgrade(config, "0005")
        _insert_pre_area_rows(engine)

        command.upgrade(config, "0006")
        after = {ds_id: row[3] for ds_id, row in FILE_AREA_ROWS.items()}
        assert _databases(engine) == after

        # The data root as it was: B's secret in B's folder, A's shop in A's folder.
        root = tmp_path / "data"
        (root / ORG_A).mkdir(parents=True)
        (root / ORG_B).mkdir()
        (root / ORG_A / "shop.duckdb").write_bytes(b"a")
        (root / ORG_B / "secret.duckdb").write_bytes(b"b")
        (root / "common.duckdb").write_bytes(b"c")

        def resolve(ds_id: str) -> str:
            org, database_type, _, database = FILE_AREA_ROWS[ds_id]
            try:
                found = resolve_datasource_path(
                    root,
                    org,
                    database,
                    want_dir=database_type == "files",
                    granted_folder=lambda name: None,
                )
            except AppError as exc:
                return exc.code
            return found.path.read_bytes().decode()

        assert resolve("own-duck") == "a"
        assert resolve("b-own") == "b"
        # Every other old path now resolves inside its own organisation's area, where it finds
        # nothing: not B's secret, not the file at the root of the data root.
        assert {resolve(ds_id) for ds_id in ("into-b", "root-file", "whole-area")} == {
            "path_not_found"
        }

        # Downgrading names the same files relative to the data root again; upgrading is stable.
        command.downgrade(config, "0005")
        downgraded = _databases(engine)
        assert downgraded["own-duck"] == f"{ORG_A}/shop.duckdb"
        assert downgraded["into-b"] == f"{ORG_A}/{ORG_B}/secret.duckdb"
        assert downgraded["sample"] is None
        command.upgrade(config, "0006")
        assert _databases(engine) == after


# (organisation, data key, purged, result size, representations' size) at revision 0010.
STORED_RESULT_ROWS = [
    (ORG_A, "r_a1", False, 1000, 300),
    (ORG_A, "r_a2", False, None, 0),  # a result whose size was never recorded counts 0
    (ORG_A, "r_a3", True, 5000, 700),  # purged: no longer counted
    (ORG_A, None, False, 67, 0),  # a schema refresh: its payload is not a stored result
    (ORG_B, "r_b1", False, 20, 0),
]


@BACKENDS
def test_stored_bytes_migration_counts_each_organisations_stored_results(tmp_path, backend):
    with empty_database(tmp_path, backend) as engine:
        config = alembic_config(engine)
        command.upgrade(config, "0010")
        _insert_pre_area_rows(engine)
        now = datetime.now(UTC)
        with engine.begin() as connection:
            for n, (org, data_key, purged, size, variants) in enumerate(STORED_RESULT_ROWS):
                connection.execute(
                    text(
                        "INSERT INTO executions (id, organization_id, datasource_id, "
                        "execution_type, status, sql_query, parameters, created_at, updated_at, "
                        "result_size, result_truncated, data_key, data_purged_at, attempt, "
                        "cancel_requested, variants_size) VALUES (:id, :org, :ds, 'sql_query', "
                        "'completed', 'SELECT 1', '{}', :now, :now, :size, false, :key, :purged, "
                        "1, false, :variants)"
                    ),
                    {
                        "id": f"e{n}",
                        "org": org,
                        "ds": "own-duck" if org == ORG_A else "b-own",
                        "now": now,
                        "size": size,
                        "key": data_key,
                        "purged": now if purged else None,
                        "variants": variants,
                    },
                )

        command.upgrade(config, "0011")

        with engine.connect() as connection:
            counters = dict(
                connection.execute(text("SELECT id, stored_results_bytes FROM organizations")).all()
            )
        assert counters == {ORG_A: 1300, ORG_B: 20}

        # Down and up again loses no row: on SQLite, rebuilding the organisations table would
        # have cascaded to everything that references an organisation.
        rows_before = _row_counts(engine)
        command.downgrade(config, "0010")
        assert _row_counts(engine) == rows_before
        command.upgrade(config, "0011")
        assert _row_counts(engine) == rows_before


def _row_counts(engine: Any) -> dict[str, int]:
    with engine.connect() as connection:
        return {
            table: connection.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar_one()
            for table in ("organizations", "datasources", "executions")
        }


@BACKENDS
def test_execution_text_migration_weighs_each_execution_and_sums_each_organisation(
    tmp_path, backend
):
    with empty_database(tmp_path, backend) as engine:
        config = alembic_config(engine)
        command.upgrade(config, "0010")
        _insert_pre_area_rows(engine)
        command.upgrade(config, "0014")
        now = datetime.now(UTC)
        executions = [  # organisation, SQL as sent, as run, parameters' and bound values' JSON
            (ORG_A, "SELECT 1", "SELECT 1", "{}", "[]"),
            (ORG_A, "SELECT [snippet]", "SELECT 'expanded snippet'", '{"a": 1}', "[1]"),
            (ORG_A, "SELECT 'é'", None, "{}", None),
            (ORG_B, "", None, "{}", None),
        ]
        with engine.begin() as connection:
            for n, (org, sent, run, parameters, bound) in enumerate(executions):
                connection.execute(
                    text(
                        "INSERT INTO executions (id, organization_id, datasource_id, "
                        "execution_type, status, sql_query, expanded_sql, parameters, "
                        "bound_parameters, created_at, updated_at, result_truncated, attempt, "
                        "cancel_requested, variants_size) VALUES (:id, :org, :ds, 'sql_query', "
                        "'completed', :sent, :run, :parameters, :bound, :now, :now, false, 1, "
                        "false, 0)"
                    ),
                    {
                        "id": f"e{n}",
                        "org": org,
                        "ds": "own-duck" if org == ORG_A else "b-own",
                        "sent": sent,
                        "run": run,
                        "parameters": parameters,
                        "bound": bound,
                        "now": now,
                    },
                )

        command.upgrade(config, "0015")

        with engine.connect() as connection:
            weights = dict(connection.execute(text("SELECT id, kept_bytes FROM executions")).all())
            counters = dict(
                connection.execute(text("SELECT id, execution_text_bytes FROM organizations")).all()
            )
        # UTF-8 bytes ('é' is two).
        assert weights == {"e0": 8 + 8 + 2 + 2, "e1": 16 + 25 + 8 + 3, "e2": 11 + 2, "e3": 2}
        assert counters == {ORG_A: 20 + 52 + 13, ORG_B: 2}
        rows_before = _row_counts(engine)
        command.downgrade(config, "0014")
        assert _row_counts(engine) == rows_before
        command.upgrade(config, "0015")
        assert _row_counts(engine) == rows_before


UNFINISHED_INDEX = "ix_executions_organization_id_status_created_at"


def _unfinished_index(engine: Any) -> tuple[list[str] | None, bool]:
    """The columns of the unfinished-executions index (None: none) and whether PostgreSQL may use
    it (always, on SQLite)."""
    with engine.connect() as connection:
        indexes = inspect(connection).get_indexes("executions")
        columns = next((i["column_names"] for i in indexes if i["name"] == UNFINISHED_INDEX), None)
        if engine.dialect.name != "postgresql" or columns is None:
            return columns, True
        valid = "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(:name)"
        return columns, bool(connection.execute(text(valid), {"name": UNFINISHED_INDEX}).scalar())


@BACKENDS
@pytest.mark.parametrize("beforehand", ["as_wanted", "other_columns", "invalid"])
def test_the_unfinished_executions_index_made_beforehand_is_kept_only_if_it_is_whole(
    tmp_path, backend, beforehand
):
    """deploy/README.md tells an operator with a large table to make it CONCURRENTLY first; one
    that failed half-way (PostgreSQL marks it invalid, and no plan uses it) or one of the same
    name on other columns is made again, not kept."""
    if beforehand == "invalid" and backend == "sqlite":
        pytest.skip("SQLite builds an index whole or not at all")
    with empty_database(tmp_path, backend) as engine:
        config = alembic_config(engine)
        command.upgrade(config, "0015")
        columns = "organization_id, status" if beforehand == "other_columns" else ""
        columns = columns or "organization_id, status, created_at"
        with engine.begin() as connection:
            connection.execute(text(f"CREATE INDEX {UNFINISHED_INDEX} ON executions ({columns})"))
            if beforehand == "invalid":  # as a CREATE INDEX CONCURRENTLY that failed leaves it
                connection.execute(
                    text(
                        "UPDATE pg_index SET indisvalid = false WHERE indexrelid = to_regclass(:n)"
                    ),
                    {"n": UNFINISHED_INDEX},
                )
        assert _unfinished_index(engine)[1] is (beforehand != "invalid")
        command.upgrade(config, "head")  # 0016, and any after it
        assert _unfinished_index(engine) == (["organization_id", "status", "created_at"], True)
        with engine.connect() as connection:
            assert not compare_metadata(MigrationContext.configure(connection), Base.metadata)
