"""The session factories, on both metadata databases: read sessions
(``create_read_session_factory``) run reads on their own, no transaction around them, and the
pooled connection goes back as it came; turn-taking sessions (``in_turn``, both servers')
begin their transactions one at a time in the process on SQLite, and as usual elsewhere."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from shared.db.engine import (
    TurnTakingSessions,
    create_metadata_engine,
    create_read_session_factory,
    create_session_factory,
    single_write,
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
    """On PostgreSQL in AUTOCOMMIT; on SQLite, whose driver begins a transaction only before a
    write, as it comes (AUTOCOMMIT would cost a PRAGMA per return to the pool): a write through
    it is its caller's to commit there, as ``api_keys.note_use`` does."""
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE seen (n integer)"))
    reads, sessions = create_read_session_factory(engine), create_session_factory(engine)
    with reads() as session:
        session.execute(text("INSERT INTO seen VALUES (1)"))
        with sessions() as other:
            seen = other.scalar(text("SELECT count(*) FROM seen"))
        assert seen == (1 if engine.dialect.name == "postgresql" else 0)  # committed at once
        session.commit()
        with sessions() as other:
            assert other.scalar(text("SELECT count(*) FROM seen")) == 1
    with sessions() as session:  # the pooled connection is transactional again
        session.execute(text("INSERT INTO seen VALUES (2)"))
        session.rollback()
        assert session.scalar(text("SELECT count(*) FROM seen")) == 1


def _second_transaction_begins(
    sessions: sessionmaker[Session], second_begin: Callable[[], AbstractContextManager[Any]]
) -> bool:
    """Begin a transaction (``second_begin``) while one of ``sessions`` holds a written row, in
    another thread; whether it got in before the first one ended (it must get in after)."""
    begun, done = threading.Event(), threading.Event()

    def second() -> None:
        with second_begin() as transaction:
            begun.set()
            transaction.execute(text("INSERT INTO seen VALUES (2)"))
        done.set()

    with sessions.begin() as session:
        session.execute(text("INSERT INTO seen VALUES (1)"))  # SQLite's write lock is held now
        thread = threading.Thread(target=second)
        thread.start()
        got_in = begun.wait(0.5)
    assert done.wait(30)  # then it did begin, and wrote
    thread.join()
    return got_in


def test_on_sqlite_turn_taking_transactions_begin_one_after_the_other(engine):
    """The second waits for its turn in the process, so that it never waits in SQLite's busy
    handler (which sleeps up to 100 ms between tries and is not woken when the lock is freed);
    an engine's own transaction (``single_write``: the audit log's) takes the same turn."""
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE seen (n integer)"))
    sessions = create_session_factory(engine, in_turn=True)
    for second_begin in (sessions.begin, lambda: single_write(engine)):
        got_in = _second_transaction_begins(sessions, second_begin)
        if engine.dialect.name == "sqlite":
            assert isinstance(sessions, TurnTakingSessions)
            assert not got_in
        else:  # PostgreSQL's transactions begin side by side, as ever
            assert type(sessions) is sessionmaker and got_in
    with sessions.begin() as session:  # re-entrant, as SQLite alone is
        with single_write(engine) as inner:
            assert inner.scalar(text("SELECT count(*) FROM seen")) == 4
        session.execute(text("DELETE FROM seen"))
