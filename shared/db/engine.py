"""Engine and session factories for the metadata DB (SQLite by default, PostgreSQL in scale-out)."""

from __future__ import annotations

import logging
import re
import select as io_select
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Select,
    create_engine,
    event,
    exc,
    func,
    literal_column,
    select,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import QueryableAttribute, Session, sessionmaker
from sqlalchemy.pool import Pool

from shared.settings import Settings

SelectT = TypeVar("SelectT", bound=Select[Any])


def create_metadata_engine(url: str, *, idle_transaction_seconds: float | None = None) -> Engine:
    """``hide_parameters``: a database error's text (which is logged) never quotes the values of
    the statement, some of which are bound parameters, secrets' digests or tenant data.

    ``idle_transaction_seconds`` (the servers pass ``DATAFERRY_IDLE_TRANSACTION_SECONDS``): on
    PostgreSQL, a session left idle inside a transaction that long is ended by the database,
    and its locks with it. A process frozen mid-transaction (SIGSTOP, a paused VM, a swap
    storm) otherwise holds its row locks for as long as it stays frozen, and the lease reaper's
    one update of every expired row waits for them: no execution of the region would be
    re-queued. Not the lease: a transaction that finds an upload committed between the storage
    quota's walk of an organisation's files and its lock walks them again under the lock, which
    takes seconds for a large area."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30}, hide_parameters=True)
        event.listen(engine, "connect", _configure_sqlite)
        return engine
    # A server that accepts and never answers fails a connection within seconds, and a host
    # gone away a statement within a minute, where both waited on the kernel's defaults (130 s
    # for each request: an outside probe). A server frozen on a host that still acknowledges is
    # not ended so (/readyz is bounded instead: shared/web/health.py). A URL's own values win.
    connect_args = connection_bounds(parsed)
    if idle_transaction_seconds is not None:
        milliseconds = max(1, round(idle_transaction_seconds * 1000))
        # After the URL's own options (a search_path, say), which connect_args would replace.
        given = parsed.query.get("options", "")
        given = given if isinstance(given, str) else " ".join(given)
        connect_args["options"] = (
            f"{given} -c idle_in_transaction_session_timeout={milliseconds}".strip()
        )
    engine = create_engine(
        url, pool_size=10, max_overflow=10, hide_parameters=True, connect_args=connect_args
    )
    event.listen(engine, "checkout", partial(_ping_if_disturbed, engine))
    return engine


# libpq's: seconds to connect; TCP keepalives (idle 15 s, then 3 probes 5 s apart); how long
# sent data may go unacknowledged (milliseconds).
_CONNECTION_BOUNDS: dict[str, Any] = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 15,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}


def connection_bounds(url: URL) -> dict[str, Any]:
    """The bounds a PostgreSQL connection of ``url`` is made with: ``_CONNECTION_BOUNDS`` but
    those the URL sets itself (for a connection made without the engine: the LISTEN one)."""
    return {name: value for name, value in _CONNECTION_BOUNDS.items() if name not in url.query}


def create_server_engine(settings: Settings) -> Engine:
    """The metadata engine of a server process (API server, data server, worker): its sessions
    idle inside a transaction are ended after ``DATAFERRY_IDLE_TRANSACTION_SECONDS``."""
    return create_metadata_engine(
        settings.database_url, idle_transaction_seconds=settings.idle_transaction_seconds
    )


# PostgreSQL's "invalid schema name": the URL's search_path names no schema of the database.
_NO_SUCH_SCHEMA = "3F000"


def unusable_database(error: BaseException) -> bool:
    """Whether a server starting or an operator command met a metadata database it cannot use,
    which it reports in one line (exit status 2) instead of a traceback: unreachable, refused,
    authentication failed (``database_unavailable``); a URL the driver refuses before any
    statement (``connect_timeout=abc``); a search_path naming no schema. Any other database
    error (a bug, a constraint) keeps its traceback. (A running server's requests answer 503:
    shared/web/middleware.py.)"""
    if not isinstance(error, exc.DBAPIError):
        return False
    refused_at_connect = error.statement is None
    no_schema = getattr(error.orig, "sqlstate", None) == _NO_SUCH_SCHEMA
    return database_unavailable(error) or refused_at_connect or no_schema


def unusable_database_line(error: BaseException) -> str:
    """The driver's own first line (the pool's, when it had no connection to give), which names
    the host and port but never the password."""
    cause = getattr(error, "orig", None) or error
    lines = str(cause).strip().splitlines()
    said = lines[0] if lines else type(error).__name__
    if getattr(cause, "sqlstate", None) == _NO_SUCH_SCHEMA:
        said += " (the schema of the URL's search_path does not exist)"
    return f"the metadata database (DATAFERRY_DATABASE_URL) cannot be used: {said}"


# PostgreSQL's codes for a connection that failed or a server going away (an operator's or a
# failover's shutdown, a crash, a server still starting).
_UNREACHED_SQLSTATES = ("08", "57P01", "57P02", "57P03")


def database_unavailable(error: BaseException) -> bool:
    """Whether the metadata database could not be reached or went away mid-request (refused,
    timed out, restarted; the pool empty for its whole wait; SQLite held by another process
    past its wait): an operator's matter, answered 503 by the servers and logged in one line
    (``unusable_database_line``), not as a bug. A driver's error of the request's own making
    (psycopg refuses a statement of more than 65,535 parameters, with no SQLSTATE either) is
    not one."""
    if isinstance(error, exc.TimeoutError):  # the pool's
        return True
    if not isinstance(error, exc.OperationalError):
        return False
    if error.connection_invalidated:
        return True
    sqlstate = getattr(error.orig, "sqlstate", None)
    if sqlstate is not None:
        return str(sqlstate).startswith(_UNREACHED_SQLSTATES)
    sqlite_error = getattr(error.orig, "sqlite_errorname", None)
    if sqlite_error is not None:
        return sqlite_error == "SQLITE_BUSY"
    # psycopg's failure to connect carries no SQLSTATE, and no statement ran.
    return error.statement is None and type(error.orig).__module__.startswith("psycopg")


def log_failure(logger: logging.Logger, error: BaseException, what: str, *args: Any) -> None:
    """A background loop's failure (a worker claiming, a heartbeat, maintenance), ``what`` and
    its ``args`` as a log call takes them: with its traceback, unless the database was
    unavailable, which is one line. An outage of 30 s made 4,700 lines of tracebacks of a data
    server's log (outside probe)."""
    if database_unavailable(error):
        logger.error(f"{what}: %s", *args, unusable_database_line(error))
    else:
        logger.error(what, *args, exc_info=error)


def _ping_if_disturbed(engine: Engine, dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """A pooled connection is pinged before use only if its socket has something to read while
    it sits idle: the server closing it (a restart, ``pg_terminate_backend``, an idle timeout)
    sends an error and an end of stream, which an idle connection is never sent otherwise. A
    ping on every checkout (``pool_pre_ping``) was 15 of the 61 round trips of a one-row
    execution, each to a connection that had answered milliseconds before. A connection cut
    without a word (a silent network drop) fails its next statement either way, as a pinged one
    would hang on the ping. A ping that fails makes the pool replace the connection and try
    again."""
    try:
        disturbed = _has_news(dbapi_connection.fileno())
    except Exception:  # closed, or no socket to ask: let the ping decide
        disturbed = True
    if not disturbed:
        return
    try:
        engine.dialect.do_ping(dbapi_connection)
    except Exception as error:
        raise exc.DisconnectionError("the pooled connection failed its ping") from error


def _has_news(fd: int) -> bool:
    """Whether a socket has anything to read right now (input, an error or a hang-up)."""
    poller = io_select.poll()
    poller.register(
        fd, io_select.POLLIN | io_select.POLLPRI | io_select.POLLERR | io_select.POLLHUP
    )
    return bool(poller.poll(0))


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    """WAL for concurrent readers, enforced foreign keys, and waiting instead of failing on locks."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def create_session_factory(engine: Engine, *, in_turn: bool = False) -> sessionmaker[Session]:
    """``in_turn`` (a server's): on SQLite, the transactions begun with ``begin()`` take turns
    within this process (``TurnTakingSessions``); elsewhere it changes nothing."""
    if in_turn and engine.dialect.name == "sqlite":
        return TurnTakingSessions(engine)
    return sessionmaker(engine, expire_on_commit=False)


class TurnTakingSessions(sessionmaker[Session]):
    """Sessions whose ``begin()`` transactions wait for each other in this process, for SQLite.

    SQLite lets one transaction write at a time. One that finds the write lock taken waits in
    SQLite's busy handler, which sleeps 1, 2, 5, 10, 15, 20, 25 and up to 100 ms between tries
    and is not woken when the lock is freed: with 16 clients, embedded, the two servers slept
    there 4,500 to 4,900 times per 480 executions, 1,530 once both took turns. Here the next
    transaction of the process starts as soon as the one before it ends (``single_write``
    takes the same turn), and only the other server's transactions still meet them in SQLite's
    handler. Re-entrant: a transaction may begin another inside itself, on the same thread, as
    SQLite alone allows. A transaction that only reads waits its turn too: none of the
    servers' is long. Two threads of one process therefore never both hold a transaction
    begun here: a test that plays two servers gives each a factory of its own."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine, expire_on_commit=False)
        self._turn = _turn_of(engine)

    @contextmanager
    def begin(self) -> Iterator[Session]:
        with self._turn, super().begin() as session:
            yield session


@contextmanager
def single_write(engine: Engine) -> Iterator[Connection]:
    """A connection for one write statement, which commits as it runs (the audit log's events).
    On PostgreSQL in autocommit: a BEGIN and a COMMIT would be two of its three round trips. On
    SQLite ``engine.begin()``, in turn with the process's other transactions, as those of
    ``TurnTakingSessions`` are."""
    if engine.dialect.name != "sqlite":
        with autocommit(engine).connect() as connection:
            yield connection
        return
    with _turn_of(engine), engine.begin() as connection:
        yield connection


_TURNS: weakref.WeakKeyDictionary[Pool, threading.RLock] = weakref.WeakKeyDictionary()


def _turn_of(engine: Engine) -> threading.RLock:
    """The turn of ``engine``'s database in this process: one per connection pool, which the
    engines derived from it (``autocommit``) share."""
    return _of_pool(_TURNS, engine.pool, threading.RLock)


PoolStateT = TypeVar("PoolStateT")
_OF_POOL_GUARD = threading.Lock()


def _of_pool(
    registry: weakref.WeakKeyDictionary[Pool, PoolStateT],
    pool: Pool,
    make: Callable[[], PoolStateT],
) -> PoolStateT:
    """``pool``'s entry of ``registry``, made on first use only (these are asked for on every
    transaction and every clock reading: ``setdefault`` would make one each time)."""
    with _OF_POOL_GUARD:
        found = registry.get(pool)
        if found is None:
            found = registry[pool] = make()
        return found


def autocommit(engine: Engine) -> Engine:
    """``engine`` whose statements each run on their own: for reads that need no transaction
    around them, on the paths every request or execution takes. A transaction costs a BEGIN and
    a ROLLBACK, on PostgreSQL two of the four round trips of a one-query session; and under read
    committed, PostgreSQL's default, a transaction's statements share no snapshot anyway. A
    write made through it is committed by its caller at once: never one that another must undo.

    SQLite's driver already begins no transaction for a read (only before a write), and its
    rollback of a connection in none sends nothing; there, AUTOCOMMIT would only cost a PRAGMA
    each time a connection goes back to the pool (SQLAlchemy resets the isolation level), one
    statement in three of a request's reads. So on SQLite the engine itself serves.

    Derived once per engine and kept on it: deriving one registers an event listener, which on
    a data server cost a quarter of a millisecond of CPU per execution (the probe for queued
    work asks through it at each claim and each end of a run). The engine and the derived one
    refer to each other; the collector frees both together."""
    if engine.dialect.name == "sqlite":
        return engine
    derived = engine.__dict__.get(_AUTOCOMMIT_ENGINE)
    if derived is None:  # two threads may both derive one: either serves
        derived = engine.execution_options(isolation_level="AUTOCOMMIT")
        engine.__dict__[_AUTOCOMMIT_ENGINE] = derived
    return derived


_AUTOCOMMIT_ENGINE = "_dataferry_autocommit_engine"


def create_read_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions on ``autocommit(engine)``, for reads that load model objects."""
    return sessionmaker(autocommit(engine), expire_on_commit=False)


def write_lock_on_sqlite(session: Session) -> None:
    """On SQLite, take the database's write lock now (``BEGIN IMMEDIATE``), so that a count read
    next stays true until commit: SQLite ignores ``FOR UPDATE``. A connection already in a
    transaction holds the lock from its first write, or is the caller's own to begin first."""
    connection = session.connection()
    if connection.dialect.name != "sqlite":
        return
    dbapi_connection = connection.connection.dbapi_connection
    if dbapi_connection is not None and not dbapi_connection.in_transaction:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def locked_to_change(session: Session, statement: SelectT) -> SelectT:
    """``statement`` locking the rows it reads until the transaction ends, to change or delete
    them: SQLite's write lock first (it ignores ``FOR UPDATE``); on PostgreSQL ``FOR NO KEY
    UPDATE``, which a transaction inserting a row that refers to them (``FOR KEY SHARE``: an
    execution's key or datasource) does not wait for. A second change waits, then reads them
    afresh: one racing a delete finds them gone."""
    write_lock_on_sqlite(session)
    return statement.with_for_update(key_share=True).execution_options(populate_existing=True)


def held_against_delete(statement: SelectT) -> SelectT:
    """``statement`` holding the rows it reads (``FOR KEY SHARE``) until the transaction ends,
    for a row about to refer to them: a delete waits for it, or has committed and they are not
    found, never a foreign key's failure. Changes of them (``locked_to_change``) do not wait.
    (On SQLite the caller holds the database's write lock, which orders the two.)"""
    return statement.with_for_update(read=True, key_share=True)


def one_of(
    column: ColumnElement[Any] | QueryableAttribute[Any], values: Iterable[Any]
) -> ColumnElement[bool]:
    """``column IN ('a', 'b')`` for a fixed set of the code's own names (an enum's values, such as
    statuses), written into the statement rather than bound. A plain ``in_`` binds an expanding
    list, which SQLAlchemy renders again on every execution (a third of a cached one-row count's
    cost on SQLite). And psycopg prepares a statement run five times on a connection, for which
    PostgreSQL may keep a plan made for any value of a bound status: one that expects most rows to
    match, and so reads an organisation's whole history to find its few unfinished executions."""
    return column.in_([literal_column(quoted_name(value)) for value in sorted(values)])


_NAME = re.compile(r"[a-z][a-z0-9_]*")


def quoted_name(value: Any) -> str:
    """A name of the code's own (an enum member's value) as an SQL string literal, to be written
    into a statement (``one_of``); anything but a lower-case name is refused."""
    name = getattr(value, "value", value)  # an enum member's value
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"not a name to write into SQL: {name!r}")
    return f"'{name}'"


def database_now(session: Session) -> datetime:
    """The time by the database server's clock: leases are stamped and reaped by many data
    servers, and one whose clock runs ahead must not reap the others' live leases. SQLite is
    one machine's file, so its clock is this machine's. PostgreSQL's is read at most every
    ``CLOCK_READ_SECONDS`` (``DatabaseClock``)."""
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        return _of_pool(_CLOCKS, bind.engine.pool, DatabaseClock).now(session)
    return datetime.now(UTC)


# Between two reads of PostgreSQL's clock, this process's own steady clock advances the last one;
# each read costs a round trip, two per execution when read every time.
CLOCK_READ_SECONDS = 10.0
# A read that comes out earlier than the last time told by at most this much is the reads' own
# imprecision (half a round trip each), and the clock holds still until it catches up; by more,
# the database's clock was set back, and the new reading is taken, as every process reading it
# takes it: one that held still meanwhile would see the others' fresh leases as expired.
CLOCK_JITTER_SECONDS = 1.0


def _steady_seconds() -> float:
    """Seconds by a clock nothing sets, which also counts time the machine spent suspended
    (Linux's boot time; elsewhere the monotonic clock): a clock stopped while suspended would
    tell a time that far behind, and leases that much shorter, until the next read."""
    return time.clock_gettime(_STEADY)


_STEADY = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)


class DatabaseClock:
    """The database server's clock as last read (``clock_timestamp()``), advanced by this
    process's steady clock since: what the database would answer, within half the read's round
    trip, without asking it. It holds still rather than go back by up to
    ``CLOCK_JITTER_SECONDS``, and follows the database's clock back by more."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._read: tuple[float, datetime] | None = None  # (steady time, database time)
        self._last = datetime.min.replace(tzinfo=UTC)

    def now(self, session: Session) -> datetime:
        read = self._read
        if read is None or _steady_seconds() - read[0] > CLOCK_READ_SECONDS:
            connection = session.connection()  # a new connection's set-up is no part of it
            asked = _steady_seconds()
            answer = connection.execute(select(func.clock_timestamp())).scalar_one()
            read = ((asked + _steady_seconds()) / 2, answer)
            self._read = read
        with self._lock:
            now = read[1] + timedelta(seconds=_steady_seconds() - read[0])
            if timedelta(0) < self._last - now <= timedelta(seconds=CLOCK_JITTER_SECONDS):
                now = self._last
            self._last = now
        return now


_CLOCKS: weakref.WeakKeyDictionary[Pool, DatabaseClock] = weakref.WeakKeyDictionary()
