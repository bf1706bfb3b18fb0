"""Whether an uploaded file parses as its format, decided in a child process before it replaces
anything.

Parquet footers, DuckDB and SQLite files are read by large C and C++ parsers; a hostile file must
cost one short-lived child, never the API server. The child (``python -m api_server.file_check
FORMAT PATH``) has an address-space cap, one thread, a DuckDB memory limit and a deadline, and
reads only the one file: DuckDB with external access off beyond the file's folder and no
extension loading, SQLite through a read-only, immutable URI. Text formats are sniffed on a
bounded prefix (DuckDB's sniffer sample and the first ``SAMPLE_ROWS`` rows), so a large file costs
no more to check than a small one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

from shared.errors import Unprocessable
from shared.file_formats import FileFormat

CHECK_TIMEOUT_SECONDS = 60
SAMPLE_ROWS = 1000
SAMPLE_TABLES = 100
_ADDRESS_SPACE_BYTES = 2 * 1024**3
_DUCKDB_CONFIG: dict[str, str | bool | int | float | list[str]] = {
    "threads": "1",
    "memory_limit": "256MB",
    "autoinstall_known_extensions": "false",
    "autoload_known_extensions": "false",
}
_CHILD_ENVIRONMENT = ("PATH", "HOME", "LANG", "LC_ALL", "VIRTUAL_ENV", "TZ", "TMPDIR")
_READERS = {FileFormat.CSV: "read_csv", FileFormat.JSON: "read_json"}
_SQLITE_HEADER = b"SQLite format 3\x00"
# A DuckDB file begins with its main header and two database headers, 4 KiB each; its blocks
# follow.
_DUCKDB_HEADERS_BYTES = 3 * 4096


class FileNotParsable(Unprocessable):
    code = "file_not_parsable"


def check_file(path: Path, file_format: FileFormat, shown_name: str) -> None:
    """Raise ``FileNotParsable`` (422) unless the file at ``path`` reads as ``file_format``.

    Messages name the file as ``shown_name``: the server's paths never reach the client.
    """
    environment = {key: os.environ[key] for key in _CHILD_ENVIRONMENT if key in os.environ}
    environment["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    what = f"{shown_name} is not a readable {file_format.value} file"
    try:
        finished = subprocess.run(
            [sys.executable, "-m", "api_server.file_check", file_format.value, str(path)],
            env=environment,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=CHECK_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise FileNotParsable(
            f"{what}: reading it took longer than {CHECK_TIMEOUT_SECONDS} s."
        ) from None
    try:
        verdict = orjson.loads(finished.stdout.strip().splitlines()[-1])
    except (IndexError, orjson.JSONDecodeError):
        verdict = {"ok": False, "detail": "the reader stopped without an answer"}
    if not verdict.get("ok"):
        detail = str(verdict.get("detail") or "unreadable").replace(str(path), shown_name)
        raise FileNotParsable(f"{what}: {detail}")


# ---------------------------------------------------------------------------- the child


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:500]


def _check_parquet(path: str) -> None:
    import pyarrow.parquet as pq

    metadata = pq.ParquetFile(path).metadata
    if metadata.num_columns == 0:
        raise ValueError("it has no columns")
    _check_with_duckdb_reader(path, "read_parquet")


def _check_with_duckdb_reader(path: str, reader: str) -> None:
    import duckdb

    connection = duckdb.connect(":memory:", config=dict(_DUCKDB_CONFIG))
    try:
        folder = _literal(str(Path(path).parent) + "/")
        connection.execute(f"SET allowed_directories = [{folder}]")
        connection.execute("SET enable_external_access = false")
        connection.execute("SET lock_configuration = true")
        # The reader is one of a fixed few, the path a quoted literal.
        source = f"{reader}({_literal(path)})"
        columns = connection.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()  # noqa: S608
        if not columns:
            raise ValueError("it has no columns")
        connection.execute(
            f"SELECT count(*) FROM (SELECT * FROM {source} LIMIT {SAMPLE_ROWS})"  # noqa: S608
        ).fetchall()
    finally:
        connection.close()


def _literal(text: str) -> str:
    """A SQL string literal. Literals, not bound parameters: binding a Python value makes DuckDB
    import pandas, which would triple the child's start-up time."""
    return "'" + text.replace("'", "''") + "'"


def _check_duckdb(path: str) -> None:
    """Opens it (the catalog), checks that its blocks are all in the file, and reads a row of
    each of its first tables. Opening reads the catalog alone, which a file cut short (a partial
    upload) may still hold whole: its tables' data would then fail on every query.

    Nothing the file stores runs here: views are not read, and a row is read without the columns
    that have an expression. A generated column's is computed as its table is read, and its
    error became this check's answer: a column ``AS (error(current_setting('home_directory')))``
    showed the server's settings (found by the outside probe). The catalog lists generated
    expressions and defaults alike, so stored columns with a default are left out too. The data
    server checks what a file stores before any query reads it (``data_server.sandbox``)."""
    import duckdb

    with open(path, "rb") as handle:
        if handle.read(16) == _SQLITE_HEADER:
            raise ValueError("it is a SQLite file (a sqlite datasource reads it)")
    config = {**_DUCKDB_CONFIG, "enable_external_access": "false"}
    connection = duckdb.connect(path, read_only=True, config=config)
    try:
        block_size, total_blocks = connection.execute(
            "SELECT block_size, total_blocks FROM pragma_database_size()"
            " WHERE database_name = current_database()"
        ).fetchone() or (0, 0)
        needed = _DUCKDB_HEADERS_BYTES + block_size * total_blocks
        held = os.path.getsize(path)
        if held < needed:
            raise ValueError(
                f"it is cut short: it holds {held:,} bytes of the {needed:,} its header lists"
            )
        tables = connection.execute(
            "SELECT schema_name, table_name, list(column_name ORDER BY column_index)"
            " FILTER (WHERE column_default IS NULL) FROM duckdb_tables()"
            " JOIN duckdb_columns() USING (database_name, schema_name, table_name)"
            " WHERE database_name = current_database() GROUP BY ALL ORDER BY 1, 2 LIMIT ?",
            [SAMPLE_TABLES],
        ).fetchall()
        for schema, table, plain_columns in tables:  # names read from the file's catalog, quoted
            # As text: every value is read all the same, and none becomes a Python object (a
            # TIMESTAMPTZ would need pytz, which is not installed).
            cast = (f"CAST({_quoted(column)} AS VARCHAR)" for column in plain_columns or [])
            columns = ", ".join(cast) or "1"
            source = f"{_quoted(schema)}.{_quoted(table)}"
            connection.execute(f"SELECT {columns} FROM {source} LIMIT 1").fetchall()  # noqa: S608
    finally:
        connection.close()


def _quoted(name: str) -> str:
    return '"' + str(name).replace('"', '""') + '"'


def _check_sqlite(path: str) -> None:
    import sqlite3
    from urllib.parse import quote

    with open(path, "rb") as handle:
        if handle.read(16) != _SQLITE_HEADER:
            raise ValueError("it does not start with the SQLite header")
    # immutable: nothing else writes the file while it is checked, and no -wal/-shm is created.
    connection = sqlite3.connect(f"file:{quote(path)}?mode=ro&immutable=1", uri=True)
    try:
        # Every name of the catalog is read, and so decoded: one that is not UTF-8 fails every
        # read of the datasource's schema, however many tables come before it. (Names are few
        # and cheap to read; the contents are sampled.)
        connection.execute(
            "SELECT s.name, c.name FROM sqlite_schema AS s, pragma_table_info(s.name) AS c"
        ).fetchall()
        tables = connection.execute(
            "SELECT name FROM sqlite_schema WHERE type = 'table' LIMIT ?", (SAMPLE_TABLES,)
        ).fetchall()
        for (name,) in tables:
            connection.execute(f"SELECT * FROM {_quoted(name)} LIMIT 1").fetchall()  # noqa: S608
    finally:
        connection.close()


def _check(file_format: FileFormat, path: str) -> None:
    if file_format == FileFormat.PARQUET:
        _check_parquet(path)
    elif file_format == FileFormat.DUCKDB:
        _check_duckdb(path)
    elif file_format == FileFormat.SQLITE:
        _check_sqlite(path)
    else:
        _check_with_duckdb_reader(path, _READERS[file_format])


def main(argv: list[str]) -> int:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (_ADDRESS_SPACE_BYTES, _ADDRESS_SPACE_BYTES))
    file_format, path = FileFormat(argv[0]), argv[1]
    verdict: dict[str, Any] = {"ok": True}
    try:
        _check(file_format, path)
    except Exception as exc:  # every failure to read is the file's, and is the answer
        verdict = {"ok": False, "detail": _first_line(exc)}
    sys.stdout.write(orjson.dumps(verdict).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
