"""``insert_new``: a row inserted with one statement on its table reads as the row it stored, its
columns' Python defaults included, on both metadata databases; it is read-only."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import sessionmaker

from shared.db.engine import create_metadata_engine
from shared.db.migrate import upgrade_to_head
from shared.db.models import Datasource, Execution, Organization, insert_new, table_of
from tests.support.postgres import fresh_postgres_schema


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request, tmp_path) -> Iterator[Engine]:
    if request.param == "sqlite":
        created = create_metadata_engine(f"sqlite:///{tmp_path / 'meta.db'}")
        upgrade_to_head(created)
        yield created
        created.dispose()
        return
    with fresh_postgres_schema("dataferry_insert_new") as url:
        created = create_metadata_engine(url)
        upgrade_to_head(created)
        yield created
        created.dispose()


def test_an_inserted_object_reads_as_the_row_it_stored(engine):
    sessions = sessionmaker(engine, expire_on_commit=False)
    with sessions.begin() as session:
        session.add(Organization(id="abcd-efgh-ijkl", name="Org"))
        session.flush()
        session.add(Datasource(organization_id="abcd-efgh-ijkl", name="d", database_type="sample"))
    with sessions() as session:
        datasource_id = session.scalars(select(Datasource.id)).one()
    with sessions.begin() as session:
        execution = insert_new(
            session,
            Execution,
            id=str(uuid.uuid4()),
            organization_id="abcd-efgh-ijkl",
            datasource_id=datasource_id,
            execution_type="sql_query",
            sql_query="SELECT 1",
            kept_bytes=8,
        )
        assert not session.new and not session.identity_map  # nothing of it is tracked
    # every Python default filled in as it was stored
    assert (execution.status, execution.attempt, execution.parameters) == ("starting", 0, {})
    assert execution.created_at is not None and execution.cancel_requested is False
    with engine.connect() as connection:
        executions = table_of(Execution)
        stored = connection.execute(select(executions)).one()._mapping
    assert {key: getattr(execution, key) for key in stored} == dict(stored)
    with pytest.raises(AttributeError):  # a change to it would be written nowhere
        execution.status = "running"


def test_a_column_the_table_lacks_is_refused_before_anything_is_sent(engine):
    sessions = sessionmaker(engine)
    with sessions.begin() as session, pytest.raises(TypeError, match="no column statuz"):
        insert_new(session, Organization, id="abcd-efgh-ijkl", name="Org", statuz="x")
    with engine.connect() as connection:
        assert connection.execute(select(table_of(Organization))).all() == []
