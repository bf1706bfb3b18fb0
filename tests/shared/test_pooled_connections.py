"""The metadata engine's pool: on PostgreSQL a connection that answered a moment ago is reused
without a ping; one the server has closed since is noticed at checkout and replaced, so the
caller never sees the dead connection. Reads outside a transaction send nothing but themselves,
on PostgreSQL and on SQLite. The database's clock is read every few seconds, not each time."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import Engine, event, func, literal, select, text
from sqlalchemy.orm import sessionmaker

from shared.db import engine as engine_module
from shared.db.engine import autocommit, create_metadata_engine, database_now
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


def test_the_autocommit_engine_is_derived_once(engine):
    """Deriving it registers an event listener: on a path run several times per execution."""
    derived = autocommit(engine)
    assert autocommit(engine) is derived and derived is not engine
    with derived.connect() as connection:
        assert connection.connection.driver_connection.autocommit is True


def test_the_database_clock_is_read_at_most_every_few_seconds_and_follows_a_step_back(
    engine, monkeypatch
):
    """``database_now`` on PostgreSQL: the database's clock, read once and advanced by this
    process's steady clock until ``CLOCK_READ_SECONDS`` have passed (each read is a round
    trip, two per execution when read every time)."""
    reads: list[str] = []

    def counted(_connection, _cursor, statement, *_):
        if "clock_timestamp" in statement:
            reads.append(statement)

    event.listen(engine, "before_cursor_execute", counted)
    sessions = sessionmaker(engine)
    try:
        with sessions() as session:
            first = database_now(session)
            told = [database_now(session) for _ in range(50)]
            read = session.execute(select(func.clock_timestamp())).scalar_one()
            after = database_now(session)
        assert len(reads) == 2  # one by database_now, one by this test
        assert told == sorted(told) and first <= told[0]
        # As the database would have said, within the round trips of the reads (loopback).
        assert abs((after - read).total_seconds()) < 0.05
        assert abs((told[-1] - read).total_seconds()) < 0.05

        monkeypatch.setattr(engine_module, "CLOCK_READ_SECONDS", 0.0)  # read each time now
        # A read that comes out a little earlier than the last time told: the reads' jitter.
        monkeypatch.setattr(engine_module, "func", _ClockBehind(timedelta(milliseconds=200)))
        with sessions() as session:
            held = database_now(session)
        assert held >= after  # held still, not back
        # Much earlier: the database's clock was set back, and every process reading it now
        # tells the new time; one holding still would see their fresh leases as expired.
        monkeypatch.setattr(engine_module, "func", _ClockBehind(timedelta(seconds=60)))
        with sessions() as session:
            stepped = database_now(session)
        assert timedelta(seconds=59) < after - stepped < timedelta(seconds=61)
        assert len(reads) == 4
    finally:
        event.remove(engine, "before_cursor_execute", counted)


class _ClockBehind:
    """``func`` whose ``clock_timestamp()`` is the database's, ``by`` earlier."""

    def __init__(self, by: timedelta) -> None:
        self.by = by

    def clock_timestamp(self):
        return func.clock_timestamp() - literal(self.by)
