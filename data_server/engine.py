"""One execution on one fresh, locked-down DuckDB instance (DESIGN.md §2).

This module runs inside a sandbox child process (see ``sandbox_pool``); nothing here touches the
metadata DB or the network. Tenant SQL is checked before it runs (``sql_check``: a single SELECT
or EXPLAIN, allow-listed table functions, catalog views and settings, no file or URL scans) and
then executed on an instance whose configuration was set up in the order DESIGN.md §2 gives and
locked, so that even SQL that slips past the checks cannot reach files, settings, extensions or the
network. What the catalog shows is kept free of server paths too (docs/sql-sandbox.md).
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from data_server.object_storage import ObjectStorage, ObjectStorageSpec
from data_server.remote_databases import (
    RemoteDatabaseSpec,
    RemoteSession,
    attach_sqlite,
    connect_failure,
    describe_sqlite,
)
from data_server.sql_check import BASE_CONFIG, QueryFailed, check_sql, first_line
from shared.execution_states import ErrorCode
from shared.file_formats import VIEW_FILE_SUFFIXES

BATCH_ROWS = 65_536
DATASOURCE_ALIAS = "ds"
# Types whose database is attached as DATASOURCE_ALIAS (the others are views in "memory").
ATTACHED_DATABASE_TYPES = ("duckdb", "sample", "sqlite", "postgres", "mysql")
# The child exits with this when a remote database has not answered within the connect timeout
# (a driver without a timeout of its own would otherwise hold the child until the query's).
CONNECT_TIMEOUT_EXIT_STATUS = 75
# The files datasource's {file name: absolute path}; its views read through it (see
# _create_file_views), and sql_check refuses getvariable() so tenants never see the paths.
FILES_VARIABLE = "dataferry_files"

# Suffix → DuckDB reader, from the one declaration of what a files datasource reads.
_FILE_VIEW_READERS = {
    suffix: kind.reader for suffix, kind in VIEW_FILE_SUFFIXES.items() if kind.reader
}


@dataclass(frozen=True)
class DatasourceSpec:
    database_type: str  # duckdb | sample | files | sqlite | postgres | mysql | s3
    path: str  # absolute, already confined to the data root (or the sample file); s3: its URL
    data_time_zone: str = "UTC"
    object_storage: ObjectStorageSpec | None = None  # s3 only
    remote: RemoteDatabaseSpec | None = None  # postgres and mysql only


@dataclass(frozen=True)
class Limits:
    timeout_seconds: float
    memory_limit_mb: int
    threads: int
    max_temp_directory_size_mb: int
    max_result_rows: int
    max_result_bytes: int


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


# ---------------------------------------------------------------------------- the instance


class Sandbox:
    """A fresh in-memory DuckDB instance with the datasource attached read-only, then locked."""

    def __init__(self, spec: DatasourceSpec, limits: Limits, temp_dir: str) -> None:
        self.spec = spec
        self._paths = {
            path: label
            for path, label in ((spec.path, "<datasource>"), (temp_dir, "<temp>"))
            if path
        }
        self._storage: ObjectStorage | None = None
        self.remote: RemoteSession | None = None
        self._timeout_seconds = limits.timeout_seconds
        if spec.remote is not None and spec.remote.password:
            self._paths[spec.remote.password] = "<redacted>"
        Path(temp_dir).mkdir(parents=True, exist_ok=True)
        self.connection = duckdb.connect(":memory:", config=dict(BASE_CONFIG))
        try:
            # The default is ~/.duckdb/stored_secrets: it would name the service's home and user.
            # Set before the attach: an s3 datasource's secret puts the secret manager in use.
            self._set("secret_directory", str(Path(temp_dir) / "no-secrets"))
            self._attach()
            allowed = [temp_dir]
            if spec.database_type == "files":
                allowed.append(spec.path)
            if self._storage is not None:  # the prefix, and no other remote location
                allowed.append(self._storage.spec.url)
            self._set("allowed_directories", allowed)
            self._set("temp_directory", temp_dir)
            self._set("extension_directory", str(Path(temp_dir) / "no-extensions"))
            self._set("threads", max(1, limits.threads))
            self._set("memory_limit", f"{max(16, limits.memory_limit_mb)}MB")
            self._set("max_temp_directory_size", f"{max(1, limits.max_temp_directory_size_mb)}MB")
            self._set("TimeZone", spec.data_time_zone or "UTC")
            self.connection.execute("SET enable_external_access = false")
            self.connection.execute("SET lock_configuration = true")
        except QueryFailed:
            self.close()
            raise
        except duckdb.Error as exc:
            self.close()
            raise self.failure(exc, "datasource_unavailable") from None

    def _set(self, name: str, value: Any) -> None:
        self.connection.execute(f"SET {name} = $1", [value])

    def _attach(self) -> None:
        spec = self.spec
        if spec.database_type in ("duckdb", "sample"):
            if not Path(spec.path).is_file():
                raise QueryFailed("datasource_unavailable", "The datasource file does not exist.")
            # ATTACH takes no bound parameters: the path is quoted as a literal.
            self.connection.execute(
                f"ATTACH {_literal(spec.path)} AS {DATASOURCE_ALIAS} (READ_ONLY)"
            )
            if spec.database_type == "duckdb":
                self._check_stored_code()
            self.connection.execute(f"USE {DATASOURCE_ALIAS}")
        elif spec.database_type == "sqlite":
            if not Path(spec.path).is_file():
                raise QueryFailed("datasource_unavailable", "The datasource file does not exist.")
            attach_sqlite(self.connection, spec.path, DATASOURCE_ALIAS)
            self.connection.execute(f"USE {DATASOURCE_ALIAS}")
        elif spec.remote is not None and spec.database_type in ("postgres", "mysql"):
            self._attach_remote(spec.remote)
        elif spec.database_type == "files":
            self._create_file_views(Path(spec.path))
        elif spec.database_type == "s3" and spec.object_storage is not None:
            self._open_object_storage(spec.object_storage)
        else:
            raise QueryFailed(
                "datasource_unavailable", f"Unsupported database type {spec.database_type!r}."
            )

    def _check_stored_code(self) -> None:
        """Views and macros stored in a DuckDB file run SQL that a tenant's query only names, so
        the check of that query never sees it (a view over ``duckdb_settings()`` would show the
        server's paths): each body must pass the same check, or nothing runs."""
        views = self.connection.execute(
            "SELECT view_name, sql FROM duckdb_views() WHERE database_name = $1 AND NOT internal",
            [DATASOURCE_ALIAS],
        ).fetchall()
        macros = self.connection.execute(
            "SELECT function_name, function_type, macro_definition FROM duckdb_functions() "
            "WHERE database_name = $1 AND function_type IN ('macro', 'table_macro')",
            [DATASOURCE_ALIAS],
        ).fetchall()
        bodies = [(f"view {name}", _view_query(sql)) for name, sql in views]
        bodies += [
            (f"macro {name}", body if kind == "table_macro" else f"SELECT {body}")
            for name, kind, body in macros
        ]
        for what, body in bodies:
            try:
                if body is None:
                    raise QueryFailed("forbidden_operation", "its definition cannot be read")
                check_sql(body, self.connection)
            except QueryFailed as refusal:
                raise QueryFailed(
                    "datasource_unavailable",
                    f"The DuckDB file's {what} uses what queries may not "
                    f"({refusal.code}: {refusal.message}); views and macros stored in a "
                    "datasource's file keep to the same rules as queries (docs/sql-sandbox.md).",
                ) from None

    def _attach_remote(self, remote: RemoteDatabaseSpec) -> None:
        """Attach within the connect timeout; a driver stuck past it ends the child (the pool
        reports ``connection_timed_out``), since a blocked connect cannot be interrupted."""
        guard = threading.Timer(
            remote.connect_timeout_seconds + 1, os._exit, [CONNECT_TIMEOUT_EXIT_STATUS]
        )
        guard.daemon = True
        guard.start()
        try:
            self.remote = RemoteSession(
                self.connection,
                self.spec.database_type,
                remote,
                DATASOURCE_ALIAS,
                self._timeout_seconds,
            )
        except duckdb.Error as exc:
            raise connect_failure(exc, self.clean(exc)) from None
        finally:
            guard.cancel()
        self.connection.execute(f"USE {DATASOURCE_ALIAS}")

    def _create_file_views(self, folder: Path) -> None:
        """Each Parquet/CSV/JSON file becomes a view named after its stem (first one wins).

        A view's SQL is what duckdb_views(), information_schema.views and sqlite_master show, so
        it names the file, not its path: the path comes from a variable the tenant cannot read.
        """
        if not folder.is_dir():
            raise QueryFailed("datasource_unavailable", "The datasource folder does not exist.")
        inside = folder.resolve()
        self._create_views(
            {
                path.name: str(path)
                for path in sorted(folder.iterdir())
                # A link that leads out of the folder (into another organisation's area) is skipped.
                if path.is_file() and path.resolve().is_relative_to(inside)
            }
        )

    def _open_object_storage(self, storage_spec: ObjectStorageSpec) -> None:
        """The objects directly under the prefix become views, as a folder's files do."""
        self._paths.pop(self.spec.path, None)  # the tenant's own bucket URL is no server secret
        self._storage = ObjectStorage(self.connection, storage_spec)
        for secret in self._storage.secrets():
            self._paths[secret] = "<redacted>"
        names = self._storage.list_objects(self.connection)
        self._create_views({name: storage_spec.url + name for name in names})

    def _create_views(self, locations: dict[str, str]) -> None:
        """A view per readable file name, named after its stem (first one wins), reading
        ``locations[name]``: a path or an s3:// URL."""
        files: dict[str, tuple[str, str, str]] = {}
        for name in locations:
            stem, suffix = os.path.splitext(name)
            reader = _FILE_VIEW_READERS.get(suffix.lower())
            if reader is not None and stem:
                files.setdefault(stem.lower(), (reader, stem, name))
        self.connection.execute(
            f"SET VARIABLE {FILES_VARIABLE} = MAP($1::VARCHAR[], $2::VARCHAR[])",
            [[name for *_, name in files.values()], [locations[n] for *_, n in files.values()]],
        )
        for reader, stem, name in files.values():
            # DDL takes no bound parameters; names are quoted, the reader is from a fixed map.
            self.connection.execute(
                f"CREATE VIEW {_identifier(stem)} AS SELECT * FROM "  # noqa: S608
                f"{reader}(getvariable('{FILES_VARIABLE}')[{_literal(name)}])"
            )

    def clean(self, error: BaseException) -> str:
        """The error's first line with server paths (and credentials) replaced, so neither
        the filesystem layout nor a secret leaks."""
        message = first_line(error)
        for path, label in self._paths.items():
            message = message.replace(path, label)
        return message

    def failure(self, error: duckdb.Error, code: str) -> QueryFailed:
        """``code``, or what an object store's answer says more precisely, with a clean message."""
        if self._storage is not None and isinstance(error, duckdb.IOException):
            return self._storage.failure(error, self.clean(error))
        if self.remote is not None:
            return self.remote.failure(error, self.clean(error), code)
        return QueryFailed(code, self.clean(error))

    def close(self) -> None:
        self.connection.close()
        if self._storage is not None:
            self._storage.close()


# DuckDB writes a view's SQL as CREATE VIEW <name> [(<columns>)] AS <query>;
_IDENTIFIER = r'(?:"(?:[^"]|"")*"|[^\s."(]+)'
_VIEW_SQL = re.compile(
    rf"CREATE\s+(?:OR\s+REPLACE\s+)?VIEW\s+{_IDENTIFIER}(?:\.{_IDENTIFIER})*\s*"
    r'(?:\((?:[^()"]|"(?:[^"]|"")*")*\)\s*)?AS\s+(.*?);?\s*\Z',
    re.IGNORECASE | re.DOTALL,
)


def _view_query(sql: str | None) -> str | None:
    """The query of a view's ``CREATE VIEW`` text, or None if it cannot be told apart."""
    found = _VIEW_SQL.match(sql or "")
    return found.group(1) if found else None


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _identifier(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


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
        self._timer = threading.Timer(max(0.01, seconds), self._fire)
        self._timer.daemon = True

    def _fire(self) -> None:
        self.fired = True
        self._connection.interrupt()
        if self._remote is not None:  # an interrupt does not reach a query the server runs
            self._remote.cancel()

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def check(self) -> None:
        if self.fired:
            raise QueryFailed(ErrorCode.TIMEOUT, "The query exceeded its time limit.")


def run_query(job: QueryJob) -> QueryOutcome:
    """Check, run and stream the result into an Arrow IPC file at ``job.result_path``."""
    sandbox = Sandbox(job.datasource, job.limits, job.temp_dir)
    try:
        check_sql(job.sql, sandbox.connection)
        seconds = job.limits.timeout_seconds
        with _Deadline(sandbox.connection, seconds, sandbox.remote) as deadline:
            try:
                result = sandbox.connection.execute(job.sql, job.parameters or None)
                reader = result.to_arrow_reader(BATCH_ROWS)
                outcome = _write_result(reader, job.result_path, job.limits, deadline)
            except duckdb.Error as exc:
                code = classify(exc, ErrorCode.TIMEOUT if deadline.fired else None)
                if code == ErrorCode.TIMEOUT or deadline.fired:
                    raise QueryFailed(
                        ErrorCode.TIMEOUT, "The query exceeded its time limit."
                    ) from None
                raise sandbox.failure(exc, code) from None
            except pa.ArrowException as exc:
                deadline.check()
                raise QueryFailed("execution_error", sandbox.clean(exc)) from None
        return outcome
    finally:
        sandbox.close()


def _write_result(
    reader: pa.RecordBatchReader, path: str, limits: Limits, deadline: _Deadline
) -> QueryOutcome:
    """Copy batches into the IPC file until the reader ends or a row/byte cap cuts it."""
    rows = size = 0
    truncated = False
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, reader.schema) as writer:
        for batch in reader:
            deadline.check()
            keep = min(batch.num_rows, limits.max_result_rows - rows)
            if batch.num_rows and batch.nbytes:
                per_row = batch.nbytes / batch.num_rows
                keep = min(keep, int((limits.max_result_bytes - size) / per_row))
            if keep < batch.num_rows:
                truncated = True
                batch = batch.slice(0, max(0, keep))
            if batch.num_rows:
                writer.write_batch(batch)
                rows += batch.num_rows
                size += batch.nbytes
            if truncated:
                break
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
    return QueryOutcome(
        rows=rows,
        columns=len(reader.schema),
        size_bytes=os.path.getsize(path),
        truncated=truncated,
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
                schema = _describe(sandbox.connection, DATASOURCE_ALIAS if attached else "memory")
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
    sandbox = Sandbox(spec, limits, temp_dir)
    try:
        sandbox.connection.execute("SELECT 1").fetchall()
    except duckdb.Error as exc:
        raise sandbox.failure(exc, "datasource_unavailable") from None
    finally:
        sandbox.close()
