"""Fixtures: a migrated metadata DB per test (SQLite always, PostgreSQL when configured)."""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.db.engine import create_metadata_engine
from shared.db.migrate import upgrade_to_head
from shared.db.models import Base
from shared.settings import Settings
from tests.support.factories import Api
from tests.support.log_watch import CAPTURE, leaked_secrets
from tests.support.object_store import ObjectStore, running_object_store
from tests.support.postgres import POSTGRES_SCHEMA, fresh_postgres_schema
from tests.support.processes import LOOPBACK_NETWORKS, Region, running_region


def pytest_configure(config: pytest.Config) -> None:
    """Log as production does (INFO) and keep every line for the no-secrets-in-logs test."""
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    root.addHandler(CAPTURE)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """After every test, in whatever order they ran: no log line of the run holds a secret the
    suite handed out (tests/contract/test_logs_hold_no_secrets.py checks its own scenario)."""
    leaked = leaked_secrets()
    if leaked:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = f"secrets found in the logs of this run (first 12 characters): {leaked}"
        if reporter is not None:
            reporter.write_line(message, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "metadata.db"
    engine = create_metadata_engine(f"sqlite:///{path}")
    upgrade_to_head(engine)
    with engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    return path


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with fresh_postgres_schema(POSTGRES_SCHEMA) as url:
        engine = create_metadata_engine(url)
        upgrade_to_head(engine)
        engine.dispose()
        yield url


def _empty_postgres(url: str) -> None:
    """Every table emptied, children first. DELETE, not TRUNCATE: on tables of a few rows it is
    about a quarter of the time (TRUNCATE makes new files for each table), paid by every
    PostgreSQL test."""
    engine = create_metadata_engine(url)
    statements = "; ".join(
        f"DELETE FROM {table.name}" for table in reversed(Base.metadata.sorted_tables)
    )
    with engine.begin() as connection:
        connection.exec_driver_sql(statements)
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test gets an empty, migrated metadata DB of the parametrised backend."""
    if request.param == "sqlite":
        path = tmp_path / "metadata.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    url = request.getfixturevalue("postgres_url")
    _empty_postgres(url)
    return url


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    (tmp_path / "state" / "data").mkdir(parents=True)
    return Settings(
        state_dir=tmp_path / "state",
        database_url=database_url,
        sample_scale=0.001,
        max_datasources=5,
        datasource_allowed_networks=LOOPBACK_NETWORKS,
    )


@pytest.fixture
def api(settings: Settings) -> Iterator[Api]:
    with Api.start(settings) as started:
        yield started


@pytest.fixture(scope="module")
def client(region):
    """End-to-end modules: a client of a new organisation in the module's own ``region``."""
    with region.organization_client() as client:
        yield client


@pytest.fixture(scope="session")
def object_store() -> Iterator[ObjectStore]:
    """moto's S3 server on 127.0.0.1 (a dev dependency, so it is always there)."""
    with running_object_store() as store:
        yield store


@pytest.fixture(
    scope="module", params=["embedded", pytest.param("scale-out", marks=pytest.mark.postgres)]
)
def deployment(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """Settings of the two tested configurations: "embedded" (SQLite and a local directory) and
    "scale-out" (PostgreSQL as metadata DB and queue, results in an S3-compatible bucket)."""
    if request.param == "embedded":
        yield {}
        return
    schema = f"dataferry_e2e_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with fresh_postgres_schema(schema) as url:
        object_store = request.getfixturevalue("object_store")
        bucket = object_store.new_bucket_url()
        yield {"DATAFERRY_DATABASE_URL": url, **object_store.settings_env(bucket)}


@pytest.fixture(scope="session")
def small_region(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Region]:
    """Real API and data servers, each accepting at most 4 connections: the connection tests
    of several modules share them (each closes what it opens)."""
    with running_region(
        tmp_path_factory.mktemp("small-region"), {"DATAFERRY_MAX_CONNECTIONS": "4"}
    ) as region:
        yield region
