"""Fixtures: a migrated metadata DB per test (SQLite always, PostgreSQL when configured)."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from shared.db.engine import create_metadata_engine
from shared.db.migrate import upgrade_to_head
from shared.db.models import Base
from shared.settings import Settings
from tests.factories import Api
from tests.log_watch import CAPTURE


def pytest_configure(config: pytest.Config) -> None:
    """Log as production does (INFO) and keep every line for the no-secrets-in-logs test."""
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    root.addHandler(CAPTURE)


POSTGRES_ENV = "DATAFERRY_TEST_POSTGRES_URL"
# One schema per pytest process, so concurrent runs on one server never collide.
POSTGRES_SCHEMA = f"dataferry_test_{os.getpid()}"


def postgres_url_from_env() -> str | None:
    raw = os.environ.get(POSTGRES_ENV)
    if not raw:
        return None
    url = make_url(raw)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    return url.update_query_dict({"options": f"-csearch_path={POSTGRES_SCHEMA}"}).render_as_string(
        hide_password=False
    )


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
    url = postgres_url_from_env()
    if url is None:
        pytest.skip(
            f"PostgreSQL tests need {POSTGRES_ENV} (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)"
        )
    engine = create_metadata_engine(url)
    with engine.begin() as connection:
        connection.execute(text(f"DROP SCHEMA IF EXISTS {POSTGRES_SCHEMA} CASCADE"))
        connection.execute(text(f"CREATE SCHEMA {POSTGRES_SCHEMA}"))
    upgrade_to_head(engine)
    yield url
    with engine.begin() as connection:
        connection.execute(text(f"DROP SCHEMA IF EXISTS {POSTGRES_SCHEMA} CASCADE"))
    engine.dispose()


def _truncate_postgres(url: str) -> None:
    engine = create_metadata_engine(url)
    tables = ", ".join(table.name for table in Base.metadata.sorted_tables)
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {tables} CASCADE"))
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test gets an empty, migrated metadata DB of the parametrised backend."""
    if request.param == "sqlite":
        path = tmp_path / "metadata.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    url = request.getfixturevalue("postgres_url")
    _truncate_postgres(url)
    return url


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    (tmp_path / "state" / "data").mkdir(parents=True)
    return Settings(
        state_dir=tmp_path / "state",
        database_url=database_url,
        sample_scale=0.001,
        max_datasources=5,
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
