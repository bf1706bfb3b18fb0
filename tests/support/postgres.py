"""The PostgreSQL server of the test run (DATAFERRY_TEST_POSTGRES_URL), one schema per use."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from shared.db.engine import create_metadata_engine

POSTGRES_ENV = "DATAFERRY_TEST_POSTGRES_URL"
# One schema per pytest process, so concurrent runs on one server never collide.
POSTGRES_SCHEMA = f"dataferry_test_{os.getpid()}"


def postgres_url_from_env(schema: str = POSTGRES_SCHEMA) -> str | None:
    raw = os.environ.get(POSTGRES_ENV)
    if not raw:
        return None
    url = make_url(raw)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    return url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
        hide_password=False
    )


@contextmanager
def fresh_postgres_schema(schema: str) -> Iterator[str]:
    """An empty schema of its own on the test server (skips without it); dropped afterwards."""
    url = postgres_url_from_env(schema)
    if url is None:
        pytest.skip(
            f"PostgreSQL tests need {POSTGRES_ENV} (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)"
        )
    engine = create_metadata_engine(url)
    with engine.begin() as connection:
        connection.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield url
    finally:
        with engine.begin() as connection:
            connection.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        engine.dispose()
