"""One execution, schema read or connection test on a locked-down DuckDB instance.

This module runs inside a sandbox child process (see ``sandbox_pool``); nothing here touches the
metadata DB or the network. Tenant SQL is checked before it runs (``sql_check``: a single SELECT
or EXPLAIN, allow-listed table functions, catalog views and settings, no file or URL scans) and
then executed on a locked instance (``sandbox``): a fresh one, or one kept warm for the same
datasource (``warm_sandboxes``), each execution in a client context of its own.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from typing import Any

import duckdb
import pyarrow as pa

from data_server.duckdb_errors import duckdb_error, undecodable_as_duckdb_error
from data_server.remote_databases import RemoteSession, describe_sqlite
from data_server.sandbox import (
    ATTACHED_DATABASE_TYPES,
    DATASOURCE_ALIAS,
    DatasourceSpec,
    Limits,
    Sandbox,
)
from data_server.sql_check import QueryFailed, check_sql
from data_server.stored_types import StoredTypes
from data_server.warm_sandboxes import WarmSandboxes
from data_server.write_behind import WriteBehind
from shared.execution_states import ErrorCode

BATCH_ROWS = 65_536


@dataclass(frozen=True)
class QueryJob:
    datasource: DatasourceSpec
    sql: str
    parameters: list[Any] | dict[str, Any] | None
    limits: Limits
    result_path: str
    temp_dir: str


@dataclass(frozen=True)
class QueryOutcome:
    rows: int
    columns: int
    size_bytes: int
    truncated: bool
    reused_instance: bool = False  # ran on an instance kept warm from the datasource's last run


def classify(error: duckdb.Error, interrupted_for: str | None) -> str:
    """Map a DuckDB exception to a stable ``error_code``."""
    if isinstance(error, duckdb.InterruptException):
        return interrupted_for or ErrorCode.CANCELLED
    if isinstance(error, duckdb.OutOfMemoryException):
        return "temp_space_exceeded" if "max_temp_directory_size" in str(error) else "out_of_memory"
    if isinstance(error, duckdb.ParserException):
        return "syntax_error"
    if isinstance(error, duckdb.PermissionException):
        return "forbidden_operation"
    return "execution_error"


# ---------------------------------------------------------------------------- running


# How often a fired deadline fires again while its call has not ended (``_Deadlines``).
REFIRE_SECONDS = 0.2


class _Deadline:
    """Interrupts the connection when the time limit passes; the parent kills us if that fails."""

    def __init__(
        self,
        connection: duckdb.DuckDBPyConnection,
        seconds: float,
        remote: RemoteSession | None = None,
    ) -> None:
        self.fired = False
        self._connection = connection
        self._remote = remote
        self._seconds = max(0.01, seconds)

    def fire(self) -> None:
        """The remote server's query first: once interrupted, the call may answer, and the
        pool kill this process, before a cancel sent after it had gone out."""
        self.fired = True
        if self._remote is not None:  # an interrupt does not reach a query the server runs
            self._remote.cancel()
        self._connection.interrupt()

    def __enter__(self) -> _Deadline:
        _DEADLINES.arm(self, time.monotonic() + self._seconds)
        return self

    def __exit__(self, *exc: object) -> None:
        _DEADLINES.disarm(self)

    def check(self) -> None:
        if self.fired:
            raise QueryFailed(ErrorCode.TIMEOUT, "The query exceeded its time limit.")


class _Deadlines:
    """One thread fires every deadline of the process: starting a timer thread per execution
    cost more than a small query (and, on a busy machine, a wait for the scheduler)."""

    def __init__(self) -> None:
        self._armed: dict[_Deadline, float] = {}
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._all_ended = False  # ``end_all``: no call of this process may start any more

    def arm(self, deadline: _Deadline, at: float) -> None:
        with self._changed:
            if self._all_ended:  # cancelled while it attached or was checked: it never starts
                raise QueryFailed(ErrorCode.CANCELLED, "The execution was cancelled.")
            self._armed[deadline] = at
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="deadlines", daemon=True)
                self._thread.start()
            self._changed.notify()

    def disarm(self, deadline: _Deadline) -> None:
        with self._changed:
            self._armed.pop(deadline, None)

    def end_all(self) -> None:
        """Fire every armed deadline now, and refuse to arm another: the process is about to
        be killed, or to exit."""
        with self._changed:
            self._all_ended = True
            armed = list(self._armed)
            self._fire_again_soon(armed)
        _fired(armed)

    def _run(self) -> None:
        while True:
            with self._changed:
                now = time.monotonic()
                due = [deadline for deadline, at in self._armed.items() if at <= now]
                self._fire_again_soon(due)
                if not due:
                    self._changed.wait(min(self._armed.values(), default=now + 60) - now)
            _fired(due)  # outside the lock: a remote cancel may take a while

    def _fire_again_soon(self, fired: list[_Deadline]) -> None:
        """A fired deadline stays armed, and fires again every ``REFIRE_SECONDS`` until its call
        ends: an interrupt (or a remote cancel) that came before its query ran reached nothing,
        and the query then ran on until the pool killed the process (found by the probe of a
        cancel sent as the query started)."""
        again = time.monotonic() + REFIRE_SECONDS
        for deadline in fired:
            self._armed[deadline] = again
        self._changed.notify()


def _fired(deadlines: list[_Deadline]) -> None:
    for deadline in deadlines:
        # Its query may have ended and its connection closed meanwhile.
        with suppress(duckdb.Error):
            deadline.fire()


_DEADLINES = _Deadlines()


def end_running_calls() -> None:
    """End every call of this process now, as its deadline would, its remote query too, and
    start none after (one attaching or being checked is refused as it would start): the
    sandbox pool cancelled it, or the data server went away."""
    _DEADLINES.end_all()


def run_query(job: QueryJob, sandboxes: WarmSandboxes | None = None) -> QueryOutcome:
    """Check, run and stream the result into an Arrow IPC file at ``job.result_path``, on an
    instance of ``sandboxes`` (a sandbox child's), else on a fresh one."""
    with _sandbox_for(job, sandboxes) as (sandbox, reused), sandbox.session() as session:
        check_sql(job.sql, session)
        seconds = job.limits.timeout_seconds
        with _Deadline(session, seconds, sandbox.remote) as deadline:
            try:
                with undecodable_as_duckdb_error():
                    result = session.execute(job.sql, job.parameters or None)
                duckdb_types = [column[1] for column in result.description or []]
                reader = result.to_arrow_reader(BATCH_ROWS)
                stored = StoredTypes(duckdb_types, reader.schema)
                with _BatchesAhead(reader, session.interrupt) as batches:
                    outcome = _write_result(batches, stored, job.result_path, job.limits, deadline)
            except duckdb.Error as exc:
                code = classify(exc, ErrorCode.TIMEOUT if deadline.fired else None)
                if code == ErrorCode.TIMEOUT or deadline.fired:
                    raise QueryFailed(
                        ErrorCode.TIMEOUT, "The query exceeded its time limit."
                    ) from None
                raise sandbox.failure(exc, code, of_query=True) from None
            except pa.ArrowException as exc:
                deadline.check()
                raise QueryFailed("execution_error", sandbox.clean(exc, of_query=True)) from None
        return replace(outcome, reused_instance=reused)


@contextmanager
def _sandbox_for(job: QueryJob, sandboxes: WarmSandboxes | None) -> Iterator[tuple[Sandbox, bool]]:
    if sandboxes is not None:
        with sandboxes.lease(job.datasource, job.limits, job.temp_dir) as leased:
            yield leased
        return
    sandbox = Sandbox(job.datasource, job.limits, job.temp_dir)
    try:
        yield sandbox, False
    finally:
        sandbox.close()


def _as_duckdb_errors(reader: pa.RecordBatchReader) -> Iterator[pa.RecordBatch]:
    """The reader's batches; an error while they stream (a timeout, a failing expression, out of
    memory) is raised as the DuckDB exception it is, so that it is reported like one."""
    try:
        yield from reader
    except OSError as exc:
        raise duckdb_error(str(exc)) from None


class _BatchesAhead:
    """A reader's batches, the next ones pulled in a thread of their own once the first batch
    comes full: DuckDB makes them (without the GIL) while the caller writes the last one. An
    execution of ``SELECT *`` over 10M rows (429 MB), run to stored through real servers, took
    1.03 to 1.50 s so, against 1.49 to 2.24 s pulling and writing in turn (interleaved runs on
    the 2-core VM this project is measured on).

    Memory: the puller makes a batch only while the batches made and not yet written weigh less
    than ``_AHEAD_BYTES``, and neither thread keeps a batch once it is written, so a result
    holds at most that much more than read in turn (with wide rows, one batch more is enough to
    reach the sandbox's memory cap). A result whose first batch is not full (one batch, as a
    rule) or is that wide starts no thread and is read in turn."""

    _AHEAD_BYTES = 16 * 1024 * 1024
    _END = object()

    def __init__(self, reader: pa.RecordBatchReader, interrupt: Callable[[], None]) -> None:
        self.schema = reader.schema
        self._reader = reader
        self._interrupt = interrupt
        self._changed = threading.Condition()
        self._ready: deque[tuple[Any, int]] = deque()  # (batch, end or error; its bytes)
        self._unwritten = 0  # bytes of the batches made and not yet written
        self._puller: threading.Thread | None = None
        self._stopping = False
        self._ended = False  # the caller took the puller's last batch

    def __enter__(self) -> _BatchesAhead:
        return self

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        batches = _as_duckdb_errors(self._reader)
        # A batch the caller has written is never held here: with wide batches, that alone
        # would hold one more of them while the next is read.
        item: Any = next(batches, None)
        if item is None:
            return
        size = item.nbytes
        if item.num_rows < BATCH_ROWS or size >= self._AHEAD_BYTES:
            yield item
            del item
            yield from batches
            return
        self._unwritten = size
        self._puller = threading.Thread(
            target=self._pull, args=(batches,), name="batches-ahead", daemon=True
        )
        self._puller.start()
        while True:
            yield item
            item = None
            with self._changed:  # the caller has written it
                self._unwritten -= size
                self._changed.notify_all()
                self._changed.wait_for(lambda: self._ready)
                item, size = self._ready.popleft()
            if item is self._END:
                break
            if isinstance(item, BaseException):
                raise item
        self._ended = True

    def _pull(self, batches: Iterator[pa.RecordBatch]) -> None:
        try:
            while True:
                with self._changed:
                    self._changed.wait_for(
                        lambda: self._stopping or self._unwritten < self._AHEAD_BYTES
                    )
                    if self._stopping:
                        return
                batch = next(batches, None)
                if batch is None:
                    break
                self._hand_over(batch, batch.nbytes)
                del batch  # the caller's now: not held here once written
        except BaseException as exc:  # raised again by the caller's thread (a timeout, an error)
            self._hand_over(exc, 0)
            return
        self._hand_over(self._END, 0)

    def _hand_over(self, item: Any, size: int) -> None:
        with self._changed:
            self._unwritten += size
            self._ready.append((item, size))
            self._changed.notify_all()

    def __exit__(self, *exc: object) -> None:
        """When the caller stopped early (a cap, an error), interrupts the query and waits for
        the puller to end: the session must not close under it."""
        puller = self._puller
        if puller is None:
            return
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        if not self._ended and puller.is_alive():
            self._interrupt()
        puller.join()


def _write_result(
    batches: _BatchesAhead, stored: StoredTypes, path: str, limits: Limits, deadline: _Deadline
) -> QueryOutcome:
    """Copy batches, in their stored types, into the IPC file until the reader ends or a
    row/byte cap cuts it; the file is on disk (fsync) before this returns."""
    rows = size = 0
    truncated = False
    with pa.OSFile(path, "wb") as sink:
        write_behind = WriteBehind(sink.fileno())
        with pa.ipc.new_file(sink, stored.schema) as writer:
            for made in batches:
                deadline.check()
                batch = stored.conform(made)
                del made  # a converted batch's original is not held while it is written
                keep = min(batch.num_rows, limits.max_result_rows - rows)
                if batch.num_rows and batch.nbytes:
                    per_row = batch.nbytes / batch.num_rows
                    keep = min(keep, int((limits.max_result_bytes - size) / per_row))
                if keep < batch.num_rows:
                    truncated = True
                    batch = batch.slice(0, max(0, keep))
                if batch.num_rows:
                    writer.write_batch(batch)
                    write_behind.after_write(sink.tell())
                    rows += batch.num_rows
                    size += batch.nbytes
                if truncated:
                    break
        os.fsync(sink.fileno())
        file_size = sink.tell()
    return QueryOutcome(
        rows=rows, columns=len(stored.schema), size_bytes=file_size, truncated=truncated
    )


def schema_of(spec: DatasourceSpec, limits: Limits, temp_dir: str) -> dict[str, Any]:
    """Schemas, tables/views with row counts, and columns of the attached datasource.

    ``row_counts_exact`` says whether the counts are exact (a remote server's are its planner's
    estimates); the worker records it and keeps it out of the stored schema.
    """
    sandbox = Sandbox(spec, limits, temp_dir)
    attached = spec.database_type in ATTACHED_DATABASE_TYPES
    try:
        with _Deadline(sandbox.connection, limits.timeout_seconds, sandbox.remote) as deadline:
            try:
                with undecodable_as_duckdb_error():
                    schema = _describe(
                        sandbox.connection, DATASOURCE_ALIAS if attached else "memory"
                    )
                    if sandbox.remote is not None:
                        sandbox.remote.describe(sandbox.connection, schema)
                    elif spec.database_type == "sqlite":
                        describe_sqlite(sandbox.connection, DATASOURCE_ALIAS, schema)
                return schema
            except duckdb.Error as exc:
                deadline.check()
                raise sandbox.failure(exc, "datasource_unavailable") from None
    finally:
        sandbox.close()


def _describe(connection: duckdb.DuckDBPyConnection, database: str) -> dict[str, Any]:
    tables = connection.execute(
        """
        SELECT schema_name, table_name, 'table' AS kind, estimated_size FROM duckdb_tables()
        WHERE database_name = $1 AND NOT internal
        UNION ALL
        SELECT schema_name, view_name, 'view', NULL FROM duckdb_views()
        WHERE database_name = $1 AND NOT internal
        ORDER BY 1, 2
        """,
        [database],
    ).fetchall()
    columns = connection.execute(
        """
        SELECT schema_name, table_name, column_name, data_type, is_nullable
        FROM duckdb_columns() WHERE database_name = $1 AND NOT internal
        ORDER BY schema_name, table_name, column_index
        """,
        [database],
    ).fetchall()
    by_table: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for schema, table, column, data_type, nullable in columns:
        by_table.setdefault((schema, table), []).append(
            {"name": column, "type": data_type, "nullable": bool(nullable)}
        )
    schemas: dict[str, list[dict[str, Any]]] = {}
    for schema, table, kind, row_count in tables:
        schemas.setdefault(schema, []).append(
            {
                "name": table,
                "type": kind,
                "row_count": row_count,
                "columns": by_table.get((schema, table), []),
            }
        )
    return {
        "server_version": f"DuckDB {duckdb.__version__}",
        "schemas": [{"name": name, "tables": items} for name, items in schemas.items()],
        "row_counts_exact": True,
    }


def check_connection(spec: DatasourceSpec, limits: Limits, temp_dir: str) -> None:
    """Attach the datasource and answer ``SELECT 1``; QueryFailed says why it cannot."""
    sandbox = Sandbox(spec, limits, temp_dir, testing_connection=True)
    try:
        with undecodable_as_duckdb_error():
            sandbox.connection.execute("SELECT 1").fetchall()
    except duckdb.Error as exc:
        raise sandbox.failure(exc, "datasource_unavailable") from None
    finally:
        sandbox.close()
