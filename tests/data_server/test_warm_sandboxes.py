"""Warm instances: reused only by the next execution of the same organisation's same, unchanged
datasource, and nothing one execution leaves in its session reaches the next."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import replace
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from data_server import engine, warm_sandboxes
from data_server import sandbox as sandbox_module
from data_server.datasource_specs import DatasourceSpecs
from data_server.engine import DatasourceSpec, QueryFailed, QueryJob
from data_server.remote_databases import RemoteDatabaseSpec
from data_server.warm_sandboxes import WarmSandboxes, affinity_of
from shared import lifecycle
from tests.support.factories import SANDBOX_LIMITS

OWNER = "org-a/ds-1"


@pytest.fixture
def sandboxes():
    sandboxes = WarmSandboxes()
    yield sandboxes
    sandboxes.close()


def _duckdb_file(path: Path, value: int) -> Path:
    """A DuckDB file whose one row is ``value``, written beside ``path`` and renamed over it,
    as an upload replaces a datasource's file."""
    staging = path.with_name(f"staging-{value}.duckdb")
    with duckdb.connect(str(staging)) as connection:
        connection.execute(f"CREATE TABLE t AS SELECT {value} AS v")
    os.replace(staging, path)
    return path


def _run(sandboxes: WarmSandboxes, spec: DatasourceSpec, sql: str, tmp_path: Path):
    """The outcome and the rows of one execution, tidied afterwards as the child does."""
    result = tmp_path / "out.arrow"
    job = QueryJob(spec, sql, None, SANDBOX_LIMITS, str(result), str(tmp_path / "scratch" / "job"))
    try:
        outcome = engine.run_query(job, sandboxes)
    finally:
        sandboxes.tidy()
    return outcome, pa.ipc.open_file(str(result)).read_all().to_pylist()


@pytest.fixture
def shop(tmp_path) -> DatasourceSpec:
    return DatasourceSpec("duckdb", str(_duckdb_file(tmp_path / "shop.duckdb", 1)), owner=OWNER)


def test_the_next_execution_of_the_same_datasource_reuses_the_instance(sandboxes, shop, tmp_path):
    first, _ = _run(sandboxes, shop, "SELECT v FROM t", tmp_path)
    second, rows = _run(sandboxes, shop, "SELECT v FROM t", tmp_path)
    assert (first.reused_instance, second.reused_instance) == (False, True)
    assert rows == [{"v": 1}]


@pytest.mark.parametrize("other_owner", ["org-b/ds-1", "org-a/ds-2", ""])
def test_reuse_never_crosses_organisations_or_datasources(sandboxes, shop, tmp_path, other_owner):
    """Same file, same everything, but another organisation, another datasource, or no owner:
    a fresh instance, and the first one is not kept for later either."""
    _run(sandboxes, shop, "SELECT v FROM t", tmp_path)
    other, _ = _run(sandboxes, replace(shop, owner=other_owner), "SELECT v FROM t", tmp_path)
    again, _ = _run(sandboxes, shop, "SELECT v FROM t", tmp_path)
    assert not other.reused_instance
    assert not again.reused_instance


def test_a_replaced_file_is_not_served_by_the_stale_instance(sandboxes, shop, tmp_path):
    _run(sandboxes, shop, "SELECT v FROM t", tmp_path)
    _duckdb_file(Path(shop.path), 2)
    outcome, rows = _run(sandboxes, shop, "SELECT v FROM t", tmp_path)
    assert not outcome.reused_instance
    assert rows == [{"v": 2}]


def test_a_changed_path_or_time_zone_is_not_served_by_the_stale_instance(sandboxes, shop, tmp_path):
    _run(sandboxes, shop, "SELECT v FROM t", tmp_path)
    elsewhere = replace(shop, path=str(_duckdb_file(tmp_path / "other.duckdb", 3)))
    moved, rows = _run(sandboxes, elsewhere, "SELECT v FROM t", tmp_path)
    assert (moved.reused_instance, rows) == (False, [{"v": 3}])
    tokyo = replace(elsewhere, data_time_zone="Asia/Tokyo")
    zoned, rows = _run(sandboxes, tokyo, "SELECT current_setting('TimeZone') AS tz", tmp_path)
    assert (zoned.reused_instance, rows) == (False, [{"tz": "Asia/Tokyo"}])


def test_a_sqlite_write_is_not_hidden_by_the_warm_instance(sandboxes, tmp_path):
    path = tmp_path / "shop.sqlite"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE t (v INTEGER)")
    spec = DatasourceSpec("sqlite", str(path), owner=OWNER)
    _run(sandboxes, spec, "SELECT count(*) AS n FROM t", tmp_path)
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE added (v INTEGER)")
    outcome, rows = _run(sandboxes, spec, "SELECT count(*) AS n FROM added", tmp_path)
    assert (outcome.reused_instance, rows) == (False, [{"n": 0}])


def test_a_file_added_to_a_files_datasource_becomes_a_view_at_once(sandboxes, tmp_path):
    folder = tmp_path / "files"
    folder.mkdir()
    (folder / "orders.csv").write_text("id\n1\n")
    spec = DatasourceSpec("files", str(folder), owner=OWNER)
    _run(sandboxes, spec, "SELECT count(*) AS n FROM orders", tmp_path)
    warm, rows = _run(sandboxes, spec, "SELECT count(*) AS n FROM orders", tmp_path)
    assert (warm.reused_instance, rows) == (True, [{"n": 1}])
    (folder / "refunds.csv").write_text("id\n7\n8\n")
    fresh, rows = _run(sandboxes, spec, "SELECT count(*) AS n FROM refunds", tmp_path)
    assert (fresh.reused_instance, rows) == (False, [{"n": 2}])


def test_a_failed_execution_discards_the_instance(sandboxes, shop, tmp_path):
    _run(sandboxes, shop, "SELECT v FROM t", tmp_path)
    with pytest.raises(QueryFailed):
        _run(sandboxes, shop, "SELECT * FROM missing", tmp_path)
    outcome, _ = _run(sandboxes, shop, "SELECT v FROM t", tmp_path)
    assert not outcome.reused_instance


def test_an_idle_instance_is_closed(sandboxes, shop, tmp_path, monkeypatch):
    _run(sandboxes, shop, "SELECT v FROM t", tmp_path)
    assert sandboxes.seconds_until_idle() is not None
    monkeypatch.setattr(warm_sandboxes, "IDLE_SECONDS", 0.0)
    sandboxes.tidy()
    assert sandboxes.seconds_until_idle() is None
    outcome, _ = _run(sandboxes, shop, "SELECT v FROM t", tmp_path)
    assert not outcome.reused_instance


def test_a_closed_instance_takes_its_scratch_directory_with_it(sandboxes, shop, tmp_path):
    _run(sandboxes, shop, "SELECT v FROM t", tmp_path)
    scratch = tmp_path / "scratch"
    assert [p.name.startswith("warm-") for p in scratch.iterdir()] == [True]
    sandboxes.close()
    assert list(scratch.iterdir()) == []


def test_a_random_seed_set_by_one_execution_does_not_reach_the_next(sandboxes, shop, tmp_path):
    with duckdb.connect() as connection:
        connection.execute("SELECT setseed(0.42)")
        (seeded,) = connection.execute("SELECT random()").fetchone()
    _run(sandboxes, shop, "SELECT setseed(0.42) AS s", tmp_path)
    outcome, rows = _run(sandboxes, shop, "SELECT random() AS r", tmp_path)
    assert outcome.reused_instance
    assert rows != [{"r": seeded}]


@pytest.mark.parametrize("kind", ["duckdb", "files"])
def test_the_next_session_is_opened_between_executions_and_used_once(sandboxes, tmp_path, kind):
    """Setting a session's default database (or the files variable) is a statement of its own:
    tidying after a reply runs it, not the next execution, on a session nothing has used."""
    if kind == "files":
        folder = tmp_path / "files"
        folder.mkdir()
        (folder / "t.csv").write_text("v\n1\n")
        spec = DatasourceSpec("files", str(folder), owner=OWNER)
    else:
        spec = DatasourceSpec("duckdb", str(_duckdb_file(tmp_path / "shop.duckdb", 1)), owner=OWNER)
    _run(sandboxes, spec, "SELECT v FROM t", tmp_path)
    prepared = _prepared_session(sandboxes)
    assert prepared is not None
    outcome, rows = _run(sandboxes, spec, "SELECT v, current_database() AS db FROM t", tmp_path)
    expected_database = sandbox_module.DATASOURCE_ALIAS if kind == "duckdb" else "memory"
    assert (outcome.reused_instance, rows) == (True, [{"v": 1, "db": expected_database}])
    following = _prepared_session(sandboxes)
    assert following is not None and following is not prepared  # each execution its own
    with pytest.raises(duckdb.ConnectionException):  # the used one was closed with its execution
        prepared.execute("SELECT 1")


def _prepared_session(sandboxes: WarmSandboxes):
    warm = sandboxes._warm
    return None if warm is None else warm[1]._next_session


@pytest.mark.parametrize("kind", ["postgres", "mysql", "s3"])
def test_remote_sessions_and_object_stores_are_never_kept(kind):
    """A remote session holds credentials and a connection the password may no longer open; an
    object store's listing changes without a file to notice it by: each execution connects."""
    remote = RemoteDatabaseSpec(
        "db.example", "192.0.2.1", 5432, "shop", "reader", "secret", False, False, 5.0
    )
    spec = DatasourceSpec(kind, "", remote=remote, owner=OWNER)
    assert affinity_of(spec) is None
    assert affinity_of(replace(spec, database_type="duckdb", remote=None)) is not None


def test_the_worker_names_each_file_datasource_by_its_organisation_and_id(api):
    """The owner is what keeps reuse within one organisation's datasource: it comes from the
    claim, and two organisations' datasources of one shape get different owners."""
    specs = DatasourceSpecs(api.settings, api.app.state.sessions)
    claim = lifecycle.Claim(
        execution_id="e", attempt=1, organization_id="org-a", execution_type="sql_query",
        sql="SELECT 1", bound_parameters=[], datasource_id="ds-1", database_type="sample",
        database=None, data_time_zone="UTC",
    )  # fmt: skip
    assert specs.for_claim(claim).owner == "org-a/ds-1"
    other = specs.for_claim(replace(claim, organization_id="org-b"))
    assert other.owner == "org-b/ds-1"
