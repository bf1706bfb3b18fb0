"""Read sessions (``create_read_session_factory``): statements on their own, no transaction
around them, on both metadata databases; the pooled connection goes back as it came."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text

from shared.db.engine import (
    create_metadata_engine,
    create_read_session_factory,
    create_session_factory,
)
from tests.support.postgres import fresh_postgres_schema


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path) -> Iterator[Engine]:
    if request.param == "sqlite":
        created = create_metadata_engine(f"sqlite:///{tmp_path / 'meta.db'}")
        yield created
        created.dispose()
        return
    with fresh_postgres_schema("dataferry_read_sessions") as url:
        created = create_metadata_engine(url)
        yield created
        created.dispose()


def test_a_read_session_runs_each_statement_on_its_own(engine):
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE seen (n integer)"))
    reads, sessions = create_read_session_factory(engine), create_session_factory(engine)
    with reads() as session:
        session.execute(text("INSERT INTO seen VALUES (1)"))  # committed at once
        with sessions() as other:
            assert other.scalar(text("SELECT count(*) FROM seen")) == 1
    with sessions() as session:  # the pooled connection is transactional again
        session.execute(text("INSERT INTO seen VALUES (2)"))
        session.rollback()
        assert session.scalar(text("SELECT count(*) FROM seen")) == 1
