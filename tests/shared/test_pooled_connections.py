"""The metadata engine's pool: on PostgreSQL a connection that answered a moment ago is reused
without a ping; one the server has closed since is noticed at checkout and replaced, so the
caller never sees the dead connection. Reads outside a transaction send nothing but themselves,
on PostgreSQL and on SQLite."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, event, text

from shared.db.engine import autocommit, create_metadata_engine
from shared.lifecycle import claims
from tests.support.postgres import fresh_postgres_schema


@pytest.fixture
def engine() -> Iterator[Engine]:
    with fresh_postgres_schema("dataferry_pooled_connections") as url:
        created = create_metadata_engine(url)
        yield created
        created.dispose()


@pytest.fixture
def pings(engine, monkeypatch) -> list[object]:
    """Every ping the pool sends, by connection."""
    sent: list[object] = []
    real = engine.dialect.do_ping

    def counted(dbapi_connection):
        sent.append(dbapi_connection)
        return real(dbapi_connection)

    monkeypatch.setattr(engine.dialect, "do_ping", counted)
    return sent


def backend_pid(engine: Engine) -> int:
    with engine.connect() as connection:
        return connection.execute(text("SELECT pg_backend_pid()")).scalar_one()


def test_a_connection_that_just_answered_is_reused_without_a_ping(engine, pings):
    first = backend_pid(engine)
    for _ in range(5):
        assert backend_pid(engine) == first
    assert pings == []


def test_a_connection_the_server_closed_is_replaced_before_anyone_uses_it(engine, pings):
    cut = backend_pid(engine)
    killer = create_metadata_engine(engine.url)
    with killer.connect() as other:
        assert other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": cut}).scalar()
    killer.dispose()
    time.sleep(0.2)  # the server's goodbye reaches the idle socket

    assert backend_pid(engine) != cut  # no error: the pool pinged, dropped and reconnected
    assert len(pings) == 1


def test_the_queue_probe_runs_outside_any_transaction(engine):
    """The worker's probe, several times per execution: one round trip, not a BEGIN, the read
    and a ROLLBACK."""
    with engine.begin() as connection:
        connection.execute(
            text("CREATE TABLE executions (status varchar(16), organization_id varchar(36))")
        )
    seen: list[str] = []

    def status_after(connection, *_):
        seen.append(connection.connection.driver_connection.info.transaction_status.name)

    event.listen(engine, "after_cursor_execute", status_after)
    try:
        assert claims._anything_queued(engine, frozenset({"an-organisation"})) is False
        with engine.connect() as connection:  # a transactional connection, for contrast
            connection.execute(text("SELECT 1"))
    finally:
        event.remove(engine, "after_cursor_execute", status_after)
    assert seen == ["IDLE", "INTRANS"]


def test_on_sqlite_reads_outside_a_transaction_send_nothing_but_themselves(tmp_path):
    """No BEGIN, no ROLLBACK, and no PRAGMA resetting the isolation level as each connection
    goes back to the pool (what AUTOCOMMIT costs on SQLite): the API server's reads and the
    worker's probe run several times per execution."""
    engine = create_metadata_engine(f"sqlite:///{tmp_path / 'metadata.db'}")
    sent: list[str] = []
    event.listen(engine, "connect", lambda dbapi, _: dbapi.set_trace_callback(sent.append))
    try:
        with engine.begin() as connection:
            connection.execute(
                text("CREATE TABLE executions (status varchar(16), organization_id varchar(36))")
            )
        sent.clear()
        for _ in range(2):
            with autocommit(engine).connect() as connection:
                connection.execute(text("SELECT 1")).all()
            assert claims._anything_queued(engine, frozenset({"an-organisation"})) is False
            assert claims._anything_queued(engine, frozenset()) is False  # nobody left out
        assert [statement.split()[0] for statement in sent] == ["SELECT"] * 6, sent
    finally:
        engine.dispose()
