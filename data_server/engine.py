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
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from data_server.sql_check import BASE_CONFIG, QueryFailed, check_sql, first_line
from shared.execution_states import ErrorCode

BATCH_ROWS = 65_536
DATASOURCE_ALIAS = "ds"
# The files datasource's {file name: absolute path}; its views read through it (see
# _create_file_views), and sql_check refuses getvariable() so tenants never see the paths.
FILES_VARIABLE = "dataferry_files"

_FILE_VIEW_READERS = {
    ".parquet": "read_parquet",
    ".csv": "read_csv",
    ".tsv": "read_csv",
    ".json": "read_json",
    ".jsonl": "read_json",
    ".ndjson": "read_json",
}


@dataclass(frozen=True)
class DatasourceSpec:
    database_type: str  # duckdb | sample | files
    path: str  # absolute, already confined to the data root (or the sample file)
    data_time_zone: str = "UTC"


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
        self._paths = {spec.path: "<datasource>", temp_dir: "<temp>"}
        Path(temp_dir).mkdir(parents=True, exist_ok=True)
        self.connection = duckdb.connect(":memory:", config=dict(BASE_CONFIG))
        try:
            self._attach()
            allowed = [temp_dir]
            if spec.database_type == "files":
                allowed.append(spec.path)
            self._set("allowed_directories", allowed)
            self._set("temp_directory", temp_dir)
            self._set("extension_directory", str(Path(temp_dir) / "no-extensions"))
            # The default is ~/.duckdb/stored_secrets: it would name the service's home and user.
            self._set("secret_directory", str(Path(temp_dir) / "no-secrets"))
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
            raise QueryFailed("datasource_unavailable", self.clean(exc)) from None

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
            self.connection.execute(f"USE {DATASOURCE_ALIAS}")
        elif spec.database_type == "files":
            self._create_file_views(Path(spec.path))
        else:
            raise QueryFailed(
                "datasource_unavailable", f"Unsupported database type {spec.database_type!r}."
            )

    def _create_file_views(self, folder: Path) -> None:
        """Each Parquet/CSV/JSON file becomes a view named after its stem (first one wins).

        A view's SQL is what duckdb_views(), information_schema.views and sqlite_master show, so
        it names the file, not its path: the path comes from a variable the tenant cannot read.
        """
        if not folder.is_dir():
            raise QueryFailed("datasource_unavailable", "The datasource folder does not exist.")
        files: dict[str, tuple[str, Path]] = {}
        for path in sorted(folder.iterdir()):
            reader = _FILE_VIEW_READERS.get(path.suffix.lower())
            if reader is not None and path.is_file():
                files.setdefault(path.stem.lower(), (reader, path))
        names = [path.name for _, path in files.values()]
        self.connection.execute(
            f"SET VARIABLE {FILES_VARIABLE} = MAP($1::VARCHAR[], $2::VARCHAR[])",
            [names, [str(path) for _, path in files.values()]],
        )
        for reader, path in files.values():
            # DDL takes no bound parameters; names are quoted, the reader is from a fixed map.
            self.connection.execute(
                f"CREATE VIEW {_identifier(path.stem)} AS SELECT * FROM "  # noqa: S608
                f"{reader}(getvariable('{FILES_VARIABLE}')[{_literal(path.name)}])"
            )

    def clean(self, error: BaseException) -> str:
        """The error's first line with server paths replaced, so no filesystem layout leaks."""
        message = first_line(error)
        for path, label in self._paths.items():
            message = message.replace(path, label)
        return message

    def close(self) -> None:
        self.connection.close()


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

    def __init__(self, connection: duckdb.DuckDBPyConnection, seconds: float) -> None:
        self.fired = False
        self._connection = connection
        self._timer = threading.Timer(max(0.01, seconds), self._fire)
        self._timer.daemon = True

    def _fire(self) -> None:
        self.fired = True
        self._connection.interrupt()

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
        with _Deadline(sandbox.connection, job.limits.timeout_seconds) as deadline:
            try:
                result = sandbox.connection.execute(job.sql, job.parameters or None)
                reader = result.to_arrow_reader(BATCH_ROWS)
                outcome = _write_result(reader, job.result_path, job.limits, deadline)
            except duckdb.Error as exc:
                code = classify(exc, ErrorCode.TIMEOUT if deadline.fired else None)
                if code == ErrorCode.TIMEOUT:
                    raise QueryFailed(
                        ErrorCode.TIMEOUT, "The query exceeded its time limit."
                    ) from None
                raise QueryFailed(code, sandbox.clean(exc)) from None
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
    """Schemas, tables/views with row counts, and columns of the attached datasource."""
    sandbox = Sandbox(spec, limits, temp_dir)
    database = DATASOURCE_ALIAS if spec.database_type in ("duckdb", "sample") else "memory"
    try:
        with _Deadline(sandbox.connection, limits.timeout_seconds) as deadline:
            try:
                return _describe(sandbox.connection, database)
            except duckdb.Error as exc:
                deadline.check()
                raise QueryFailed("datasource_unavailable", sandbox.clean(exc)) from None
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
    }


def check_connection(spec: DatasourceSpec, limits: Limits, temp_dir: str) -> None:
    """Attach the datasource and answer ``SELECT 1``; QueryFailed says why it cannot."""
    sandbox = Sandbox(spec, limits, temp_dir)
    try:
        sandbox.connection.execute("SELECT 1").fetchall()
    except duckdb.Error as exc:
        raise QueryFailed("datasource_unavailable", sandbox.clean(exc)) from None
    finally:
        sandbox.close()
