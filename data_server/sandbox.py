"""One locked-down DuckDB instance with a datasource attached (DESIGN.md §2).

The instance is configured in the order DESIGN.md §2 gives and then locked, so that even SQL that
slips past the check (``sql_check``) cannot reach files, settings, extensions or the network; what
the catalog shows is kept free of server paths too (docs/sql-sandbox.md). It runs inside a sandbox
child process (``sandbox_pool``); ``engine`` runs executions on it.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from data_server.duckdb_errors import undecodable_as_duckdb_error
from data_server.object_storage import ObjectStorage, ObjectStorageSpec
from data_server.remote_databases import (
    RemoteDatabaseSpec,
    RemoteSession,
    attach_sqlite,
    connect_failure,
)
from data_server.sql_check import BASE_CONFIG, QueryFailed, check_sql, first_line
from shared.file_formats import VIEW_FILE_SUFFIXES, holds_glob_characters
from shared.text import is_text

DATASOURCE_ALIAS = "ds"
# Types whose database is attached as DATASOURCE_ALIAS (the others are views in "memory").
ATTACHED_DATABASE_TYPES = ("duckdb", "sample", "sqlite", "postgres", "mysql")
# Types whose instance may serve several executions of one datasource (``warm_sandboxes``): what
# they expose is the files behind them, which the warm key identifies. A remote session or an
# object store's listing is opened for each execution.
REUSABLE_DATABASE_TYPES = frozenset({"duckdb", "sample", "sqlite", "files"})
# The child exits with this when a remote database has not answered within the connect timeout
# (a driver without a timeout of its own would otherwise hold the child until the query's).
CONNECT_TIMEOUT_EXIT_STATUS = 75
# The files datasource's {file name: absolute path}; its views read through it (see
# _create_file_views), and sql_check refuses getvariable() so tenants never see the paths.
FILES_VARIABLE = "dataferry_files"
# A text shorter than this is replaced only where it stands alone, not inside a word: a password
# "p" turned "server does not support SSL" into "server does not su<redacted><redacted>ort SSL".
_REPLACED_INSIDE_WORDS_FROM = 8

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
    # "<organisation>/<datasource>" when the worker allows a warm instance of this datasource to
    # serve the next execution of the same one (``warm_sandboxes``); empty: a fresh instance.
    owner: str = ""


@dataclass(frozen=True)
class Limits:
    timeout_seconds: float
    memory_limit_mb: int
    threads: int
    max_temp_directory_size_mb: int
    max_result_rows: int
    max_result_bytes: int


class Sandbox:
    """A fresh in-memory DuckDB instance with the datasource attached read-only, then locked.

    ``connection``, when given, is a bare instance opened ahead of time (``BASE_CONFIG`` only,
    never used), so that the caller does not wait for DuckDB's start-up.
    """

    def __init__(
        self,
        spec: DatasourceSpec,
        limits: Limits,
        temp_dir: str,
        connection: duckdb.DuckDBPyConnection | None = None,
        *,
        testing_connection: bool = False,
    ) -> None:
        """``testing_connection``: for Test Connection, which also asks an ``s3`` endpoint
        whether it is an object store at all (ObjectStorage.list_objects)."""
        self.spec = spec
        self.temp_dir = temp_dir
        self._testing_connection = testing_connection
        self._file_locations: tuple[list[str], list[str]] | None = None
        self._replacements = {
            path: label
            for path, label in ((spec.path, "<datasource>"), (temp_dir, "<temp>"))
            if path
        }
        self._passwords: set[str] = set()  # a remote database's, as a message may show it
        self._storage: ObjectStorage | None = None
        self.remote: RemoteSession | None = None
        self._next_session: duckdb.DuckDBPyConnection | None = None  # ``prepare_session``
        self._timeout_seconds = limits.timeout_seconds
        if spec.remote is not None and spec.remote.password:
            self._passwords |= _as_shown(spec.remote.password)
        if spec.remote is not None and spec.remote.address != spec.remote.host:
            # The driver names the address it connected to; the tenant gave a name, and what a
            # name resolves to inside the region's network is not the tenant's to learn.
            self._replacements[spec.remote.address] = spec.remote.host
        Path(temp_dir).mkdir(parents=True, exist_ok=True)
        self.connection = connection or duckdb.connect(":memory:", config=dict(BASE_CONFIG))
        try:
            # The default is ~/.duckdb/stored_secrets: it would name the service's home and user.
            # Set before the attach: an s3 datasource's secret puts the secret manager in use.
            self._set("secret_directory", str(Path(temp_dir) / "no-secrets"))
            with undecodable_as_duckdb_error():  # an object store's answer, say
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
        """GLOBAL: a session (below) reads the global value of a setting, never another's own."""
        self.connection.execute(f"SET GLOBAL {name} = $1", [value])

    @contextmanager
    def session(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """The connection one execution runs on.

        An instance that may serve several executions gives each a client context of its own
        (a cursor): what a query leaves in its session (a random seed, a temporary object if one
        could be made) is gone for the next. Configuration is global and locked; only the default
        database and the files variable are per session, so they are set here again. Any other
        instance serves its one execution on its own connection.
        """
        if self.spec.database_type not in REUSABLE_DATABASE_TYPES:
            yield self.connection
            return
        session, self._next_session = self._next_session or self._new_session(), None
        try:
            yield session
        finally:
            session.close()

    def prepare_session(self) -> None:
        """Open the next execution's session now, between executions (the child's tidying after
        a reply): setting its default database is a statement of its own, 0.14 ms of DuckDB's
        that the next execution then does not wait for. It is as fresh as one opened then."""
        if self.spec.database_type in REUSABLE_DATABASE_TYPES and self._next_session is None:
            self._next_session = self._new_session()

    def _new_session(self) -> duckdb.DuckDBPyConnection:
        session = self.connection.cursor()
        try:
            if self.spec.database_type in ATTACHED_DATABASE_TYPES:
                session.execute(f"USE {DATASOURCE_ALIAS}")
            else:
                self._set_files_variable(session)
        except BaseException:
            session.close()
            raise
        return session

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
            self._check_sqlite_views()
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
        """SQL stored in a DuckDB file runs when a tenant's query only names what holds it: a
        view's query, a macro's body, a generated column's expression (computed as its table is
        read). The check of the query never sees that SQL (a view over ``duckdb_settings()``, or a
        column ``AS (current_setting('temp_directory'))``, showed the server's paths), so each must
        pass the same check, or nothing runs.

        The catalog lists generated expressions and column defaults in one column, so defaults
        are checked too, though they run only on inserts, like CHECK constraints and index
        expressions: the read-only attach never lets those run (docs/sql-sandbox.md).
        """
        views = self.connection.execute(
            "SELECT view_name, sql FROM duckdb_views() WHERE database_name = $1 AND NOT internal",
            [DATASOURCE_ALIAS],
        ).fetchall()
        macros = self.connection.execute(
            "SELECT function_name, function_type, macro_definition FROM duckdb_functions() "
            "WHERE database_name = $1 AND function_type IN ('macro', 'table_macro')",
            [DATASOURCE_ALIAS],
        ).fetchall()
        columns = self.connection.execute(
            "SELECT table_name, column_name, column_default FROM duckdb_columns() "
            "WHERE database_name = $1 AND column_default IS NOT NULL",
            [DATASOURCE_ALIAS],
        ).fetchall()
        bodies = [(f"view {name}", _view_query(sql)) for name, sql in views]
        bodies += [
            (f"macro {name}", body if kind == "table_macro" else f"SELECT {body}")
            for name, kind, body in macros
        ]
        # A file may have thousands of columns with an expression (most of them a default): they
        # are checked as one SELECT list, and one by one only to name the one that fails.
        expressions: dict[str, str] = {}
        for table, column, expression in columns:
            expressions.setdefault(expression, f"column {table}.{column}")
        try:
            if expressions:
                check_sql("SELECT " + ", ".join(expressions), self.connection)
        except QueryFailed:
            bodies += [(what, f"SELECT {expression}") for expression, what in expressions.items()]
        self._check_bodies("DuckDB", bodies)

    def _check_sqlite_views(self) -> None:
        """DuckDB reads a SQLite file's view by parsing its ``CREATE VIEW`` text as DuckDB SQL, and
        runs the query itself when it binds (else hands it to SQLite): the same check as a DuckDB
        file's views. A view DuckDB cannot parse is never run by it, so it is left alone; a query
        that names it fails as it always did."""
        views = self.connection.execute(
            "SELECT name, sql FROM sqlite_query($1, "
            "'SELECT name, sql FROM sqlite_master WHERE type = ''view''')",
            [DATASOURCE_ALIAS],
        ).fetchall()
        bodies = []
        for name, sql in views:
            try:
                self.connection.extract_statements(sql or "")
            except duckdb.ParserException:
                continue
            bodies.append((f"view {name}", _view_query(sql)))
        self._check_bodies("SQLite", bodies)

    def _check_bodies(self, file_type: str, bodies: list[tuple[str, str | None]]) -> None:
        for what, body in bodies:
            try:
                if body is None:
                    raise QueryFailed("forbidden_operation", "its definition cannot be read")
                check_sql(body, self.connection)
            except QueryFailed as refusal:
                raise QueryFailed(
                    "datasource_unavailable",
                    f"The {file_type} file's {what} uses what queries may not "
                    f"({refusal.code}: {refusal.message}); views, macros and column expressions "
                    "stored in a datasource's file keep to the same rules as queries "
                    "(docs/sql-sandbox.md).",
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
            with undecodable_as_duckdb_error():  # a refusal in the server's Latin-1
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
                # A link that leads out of the folder (into another organisation's area) is skipped,
                # and so is a name DuckDB would read as a pattern (put there by other means than
                # an upload, which refuses it): it would read other files of the folder. So is a
                # name that is not UTF-8 (a shared folder's, or one copied in), which no DuckDB
                # text holds: it failed every query of the datasource ("RuntimeError").
                if path.is_file()
                and path.resolve().is_relative_to(inside)
                and not holds_glob_characters(path.name)
                and is_text(str(path))
            }
        )

    def _open_object_storage(self, storage_spec: ObjectStorageSpec) -> None:
        """The objects directly under the prefix become views, as a folder's files do."""
        self._replacements.pop(
            self.spec.path, None
        )  # the tenant's own bucket URL is no server secret
        self._storage = ObjectStorage(self.connection, storage_spec)
        # Random keys, which no guess finds, and an object store's answer may quote a key's id:
        # replaced in every message, a query's too.
        for secret in self._storage.secrets():
            self._replacements[secret] = "<redacted>"
        # A connection test asks before external access is confined to the prefix.
        names = self._storage.list_objects(
            self.connection, testing_connection=self._testing_connection
        )
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
        self._file_locations = (
            [name for *_, name in files.values()],
            [locations[name] for *_, name in files.values()],
        )
        self._set_files_variable(self.connection)
        for reader, stem, name in files.values():
            # DDL takes no bound parameters; names are quoted, the reader is from a fixed map.
            self.connection.execute(
                f"CREATE VIEW {_identifier(stem)} AS SELECT * FROM "  # noqa: S608
                f"{reader}(getvariable('{FILES_VARIABLE}')[{_literal(name)}])"
            )

    def _set_files_variable(self, connection: duckdb.DuckDBPyConnection) -> None:
        if self._file_locations is not None:
            connection.execute(
                f"SET VARIABLE {FILES_VARIABLE} = MAP($1::VARCHAR[], $2::VARCHAR[])",
                list(self._file_locations),
            )

    def clean(self, error: BaseException, *, of_query: bool = False) -> str:
        """The error's first line with server paths, credentials and the address a host name
        resolved to replaced, so neither the filesystem layout, a secret nor the region's
        internal addresses leak. ``of_query``: the error of the tenant's query, which may quote
        any text the query chose, a password kept as written: replacing it there answered
        whether a text was the password (``SELECT error('guess1 guess2 …')`` came back with
        ``<redacted>`` for the right word: a dictionary tried per query, against a password no
        answer shows). A query's errors do not quote it otherwise: DuckDB attaches with a
        secret, whose values no message of it shows, and a driver never quotes a password."""
        replacements = dict(self._replacements)
        if not of_query:
            replacements |= dict.fromkeys(self._passwords, "<redacted>")
        return with_replacements(first_line(error), replacements)

    def failure(self, error: duckdb.Error, code: str, *, of_query: bool = False) -> QueryFailed:
        """``code``, or what an object store's answer says more precisely, with a clean message
        (``clean``)."""
        message = self.clean(error, of_query=of_query)
        if self._storage is not None and isinstance(error, duckdb.IOException):
            return self._storage.failure(error, message)
        if self.remote is not None:
            return self.remote.failure(error, message, code)
        return QueryFailed(code, message)

    def close(self) -> None:
        if self._next_session is not None:
            self._next_session.close()
            self._next_session = None
        self.connection.close()
        if self._storage is not None:
            self._storage.close()


def _as_shown(secret: str) -> set[str]:
    """A secret as an error message may show it: as it is, and as a server that echoes it in a
    single-byte encoding (a Latin-1 server's, before the client's encoding is set) makes it
    read, its bytes decoded as UTF-8 with U+FFFD for those that are not (``duckdb_errors``)."""
    shown = {secret}
    for encoding in ("latin-1", "cp1252"):
        with contextlib.suppress(UnicodeEncodeError):
            shown.add(secret.encode(encoding).decode("utf-8", "replace"))
    return shown


def with_replacements(message: str, replacements: dict[str, str]) -> str:
    """``message`` with each text of ``replacements`` replaced by its label; a short one only
    where it does not continue a word (``_REPLACED_INSIDE_WORDS_FROM``): a letter or digit at
    its edge next to another is a coincidence, not the secret shown."""
    for text, label in replacements.items():
        if not text:
            continue
        if len(text) >= _REPLACED_INSIDE_WORDS_FROM:
            message = message.replace(text, label)
            continue
        before = r"(?<![^\W_])" if text[0].isalnum() else ""
        after = r"(?![^\W_])" if text[-1].isalnum() else ""
        literal = label.replace("\\", "\\\\")  # in a replacement template, a backslash is special
        message = re.sub(before + re.escape(text) + after, literal, message)
    return message


# DuckDB writes a view's SQL as CREATE VIEW <name> [(<columns>)] AS <query>; SQLite keeps the text
# as written, which may add TEMP and IF NOT EXISTS.
_IDENTIFIER = r'(?:"(?:[^"]|"")*"|[^\s."(]+)'
_VIEW_SQL = re.compile(
    r"CREATE\s+(?:OR\s+REPLACE\s+)?(?:TEMP(?:ORARY)?\s+)?VIEW\s+(?:IF\s+NOT\s+EXISTS\s+)?"
    rf"{_IDENTIFIER}(?:\.{_IDENTIFIER})*\s*"
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
