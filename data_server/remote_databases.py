"""The sandbox side of PostgreSQL, MySQL/MariaDB and SQLite datasources: DuckDB's own extensions.

Set up inside the sandbox child before the instance is locked (``sandbox.Sandbox``): the extension
is loaded from its Python package under its own name (``postgres_scanner.duckdb_extension``, …;
autoload and autoinstall stay off), the connection goes into a TEMPORARY secret by bound values
(so the attach path that ``duckdb_databases()`` shows stays empty) which is dropped again once the
database is attached ``READ_ONLY``, and the remote session is read-only too: PostgreSQL runs with
``default_transaction_read_only`` and the extension opens every transaction ``READ ONLY`` on both
servers. The SQL check refuses every pass-through function (``postgres_query``, ``mysql_query``,
``postgres_scan``, ``sqlite_scan``, …): queries use DuckDB's dialect on the attached tables, with
filters and projections pushed to the server. docs/sql-sandbox.md and docs/result-formats.md say
what follows for tenants.
"""

from __future__ import annotations

import importlib.util
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from data_server.sql_check import BASE_CONFIG, QueryFailed
from shared.execution_states import ErrorCode

# database_type → (Python package, extension name): the file must keep the extension's own name.
EXTENSIONS = {
    "postgres": ("duckdb_extension_postgres_scanner", "postgres_scanner"),
    "mysql": ("duckdb_extension_mysql_scanner", "mysql_scanner"),
    "sqlite": ("duckdb_extension_sqlite_scanner", "sqlite_scanner"),
}
APPLICATION_NAME = "dataferry"  # how our sessions show in pg_stat_activity
_SECRET = "dataferry_remote"  # noqa: S105 - the secret's name, not a value
_SYSTEM_SCHEMAS = {
    "postgres": ("pg_catalog", "information_schema"),
    "mysql": ("information_schema", "mysql", "performance_schema", "sys"),
}
_CATALOG_SQL = {
    # Relations with their kind and the planner's row estimate (-1: never analysed).
    "postgres": "SELECT n.nspname AS schema_name, c.relname AS table_name, "
    "CASE WHEN c.relkind IN ('v', 'm') THEN 'view' ELSE 'table' END AS kind, "
    "CASE WHEN c.relkind <> 'v' AND c.reltuples >= 0 THEN c.reltuples::bigint END AS row_count "
    "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')",
    "mysql": "SELECT table_schema AS schema_name, table_name AS table_name, "
    "CASE WHEN table_type = 'VIEW' THEN 'view' ELSE 'table' END AS kind, "
    "CAST(table_rows AS SIGNED) AS row_count FROM information_schema.tables",
}
_VERSION_SQL = {
    "postgres": "SELECT 'PostgreSQL ' || current_setting('server_version') AS version",
    "mysql": "SELECT VERSION() AS version",
}

# Driver messages (libpq, MariaDB Connector/C) → stable error codes, first match wins.
_CONNECT_ERRORS = (
    # MySQL answers a database the user may not use like one that does not exist.
    (
        "database_not_found",
        r"database \".*\" does not exist|Unknown database|Access denied for user .* to database",
    ),
    (
        "authentication_failed",
        r"password authentication failed|Access denied for user|not permitted to log in|"
        r"role \".*\" does not exist|no password supplied|authentication failed",
    ),
    (
        "tls_required",
        r"no pg_hba\.conf entry .*no encryption|insecure transport|requires SSL|"
        r"SSL connection is required",
    ),
    (
        "tls_refused",
        r"server does not support SSL|SSL is required, but the server does not support|"
        r"certificate verify failed|SSL error|TLS/SSL error|certificate",
    ),
    ("connection_timed_out", r"timeout expired|timed out|Connection timed out"),
    (
        "host_unreachable",
        r"Connection refused|No route to host|Network is unreachable|Can't connect to|"
        r"could not translate host name|Unknown server host|Name or service not known",
    ),
)
_SUMMARIES = {
    "authentication_failed": "The database refused the username or password",
    "database_not_found": "The database does not exist on the server (or the user may not use it)",
    "tls_required": "The server accepts only TLS connections: set require_ssl",
    "tls_refused": "TLS is required, but the server does not offer it or its certificate "
    "did not verify",
    "connection_timed_out": "The server did not answer within the connect timeout",
    "host_unreachable": "The server cannot be reached",
    "connection_lost": "The connection to the database was lost",
}
# A connection that existed and went away while a query ran.
_LOST = re.compile(
    r"server closed the connection unexpectedly|terminating connection|connection to server "
    r"was lost|Lost connection to server|server has gone away|no connection to the server|"
    r"SSL SYSCALL error|could not receive data from server|Broken pipe",
    re.IGNORECASE,
)
_STATEMENT_TIMEOUT = re.compile(
    r"statement timeout|Query execution was interrupted|max_statement_time", re.IGNORECASE
)


@dataclass(frozen=True)
class RemoteDatabaseSpec:
    """How the child reaches one PostgreSQL or MySQL database; built by the worker, never logged."""

    host: str  # the name the datasource gives: TLS checks the certificate against it
    address: str  # the address the egress policy allowed: the connection goes there
    port: int
    database: str
    username: str
    password: str | None
    require_ssl: bool
    verify_ssl: bool
    connect_timeout_seconds: float

    def __repr__(self) -> str:  # a dataclass would print the password
        return (
            f"RemoteDatabaseSpec(host={self.host!r}, port={self.port}, database={self.database!r})"
        )


def extension_path(database_type: str) -> Path:
    """The packaged build of the type's extension for this DuckDB version, under its own name."""
    package, name = EXTENSIONS[database_type]
    found = importlib.util.find_spec(package)
    origin = Path(found.origin) if found is not None and found.origin else None
    path = (
        origin.parent / "extensions" / f"v{duckdb.__version__}" / f"{name}.duckdb_extension"
        if origin is not None
        else None
    )
    if path is None or not path.is_file():
        raise QueryFailed(
            "datasource_unavailable",
            f"The {name} extension for DuckDB {duckdb.__version__} is not installed "
            f"(package {package.replace('_', '-')}).",
        )
    return path


def load_extension(connection: duckdb.DuckDBPyConnection, database_type: str) -> None:
    path = str(extension_path(database_type))
    connection.execute("LOAD '" + path.replace("'", "''") + "'")


def attach_sqlite(connection: duckdb.DuckDBPyConnection, path: str, alias: str) -> None:
    """A SQLite file, read-only; the file's path is the attach path (duckdb_databases is refused)."""
    load_extension(connection, "sqlite")
    # GLOBAL: each execution on a reused instance runs in a session of its own (Sandbox.session).
    connection.execute("SET GLOBAL sqlite_all_varchar = false")
    connection.execute(f"ATTACH '{path.replace(chr(39), chr(39) * 2)}' AS {alias} "
                       "(TYPE sqlite, READ_ONLY)")  # fmt: skip


def describe_sqlite(
    connection: duckdb.DuckDBPyConnection, alias: str, schema: dict[str, Any]
) -> None:
    """Exact row counts (SQLite keeps no estimates; a count is one scan of a local file) and the
    SQLite library's version."""
    for entry in schema["schemas"]:
        for table in entry["tables"]:
            name = '"' + str(table["name"]).replace('"', '""') + '"'
            query = f"SELECT count(*) FROM {alias}.main.{name}"  # noqa: S608 - a quoted name
            row = connection.execute(query).fetchone() if table["type"] == "table" else None
            table["row_count"] = int(row[0]) if row else None
    row = connection.execute(
        "SELECT * FROM sqlite_query($1, 'SELECT sqlite_version()')", [alias]
    ).fetchone()
    schema["server_version"] = f"SQLite {row[0] if row else ''}".strip()


class RemoteSession:
    """One PostgreSQL or MySQL database attached read-only as ``alias`` on one instance."""

    def __init__(
        self,
        connection: duckdb.DuckDBPyConnection,
        database_type: str,
        spec: RemoteDatabaseSpec,
        alias: str,
        timeout_seconds: float,
    ) -> None:
        self.database_type = database_type
        self.spec = spec
        self.alias = alias
        self._connection_id: int | None = None
        load_extension(connection, database_type)
        timeout_ms = max(1000, math.ceil(timeout_seconds * 1000))
        if database_type == "postgres":
            self._attach_postgres(connection, timeout_ms)
        else:
            self._attach_mysql(connection, timeout_ms)

    # ------------------------------------------------------------------ set-up

    def _attach_postgres(self, connection: duckdb.DuckDBPyConnection, timeout_ms: int) -> None:
        spec = self.spec
        for name, value in {
            # Plain scans (not ctid ranges): a pushed-down filter can use the server's indexes.
            "pg_use_ctid_scan": False,
            # One pooled connection per execution, so max_concurrent_executions bounds the
            # queries running (attaching reads the catalog on a second one for a moment).
            "pg_connection_limit": 1,
            "pg_pool_max_connections": 1,
            "pg_pool_enable_reaper_thread": False,
        }.items():
            connection.execute(f"SET {name} = $1", [value])
        # The server ends what we started: a statement past the query timeout, a transaction left
        # idle, and (checked every second) a query whose client went away.
        options = (
            f"-c default_transaction_read_only=on -c statement_timeout={timeout_ms} "
            f"-c idle_in_transaction_session_timeout={timeout_ms} "
            "-c client_connection_check_interval=1000"
        )
        mode = "verify-full" if spec.verify_ssl else "require" if spec.require_ssl else "prefer"
        values: dict[str, Any] = {
            "HOST": spec.host,
            "HOSTADDR": spec.address,
            "PORT": str(spec.port),
            "DBNAME": spec.database,
            "USER": spec.username,
            "PASSWORD": spec.password or "",
            "SSLMODE": mode,
            "CONNECT_TIMEOUT": str(max(2, math.ceil(spec.connect_timeout_seconds))),
            "APPLICATION_NAME": APPLICATION_NAME,
            "OPTIONS": options,
        }
        if spec.verify_ssl:
            values["SSLROOTCERT"] = "system"  # the operating system's CA store
        self._attach(connection, "postgres", values)

    def _attach_mysql(self, connection: duckdb.DuckDBPyConnection, timeout_ms: int) -> None:
        spec = self.spec
        for name, value in {
            # One connection per execution; it stays open for the instance's life, so the id
            # read below is the one a timeout must end.
            "mysql_pool_size": 1,
            "mysql_pool_enable_reaper_thread": False,
            "mysql_session_time_zone": "+00:00",
            # MySQL 8 servers also stop a statement themselves (a MAX_EXECUTION_TIME hint).
            "mysql_query_timeout_min_ms": timeout_ms,
            "mysql_query_timeout_max_ms": timeout_ms,
        }.items():
            connection.execute(f"SET {name} = $1", [value])
        mode = (
            "verify_identity"
            if spec.verify_ssl
            else "required"
            if spec.require_ssl
            else "preferred"
        )
        # The checked address, except where the certificate must match the name: then the driver
        # resolves it again, and a certificate for the name is what a changed answer cannot give.
        self._attach(
            connection,
            "mysql",
            {
                "HOST": spec.host if spec.verify_ssl else spec.address,
                "PORT": spec.port,
                "DATABASE": spec.database,
                "USER": spec.username,
                "PASSWORD": spec.password or "",
                "SSL_MODE": mode,
            },
        )
        row = connection.execute(
            "SELECT * FROM mysql_query($1, 'SELECT CONNECTION_ID()')", [self.alias]
        ).fetchone()
        self._connection_id = int(row[0]) if row else None

    def _attach(
        self, connection: duckdb.DuckDBPyConnection, secret_type: str, values: dict[str, Any]
    ) -> None:
        """The connection as a secret of bound values, attached read-only, then dropped."""
        options = ", ".join(f"{name} ${index}" for index, name in enumerate(values, 1))
        connection.execute(
            f"CREATE TEMPORARY SECRET {_SECRET} (TYPE {secret_type}, {options})",
            list(values.values()),
        )
        try:
            connection.execute(
                f"ATTACH '' AS {self.alias} (TYPE {secret_type}, SECRET {_SECRET}, READ_ONLY)"
            )
        finally:
            connection.execute(f"DROP SECRET IF EXISTS {_SECRET}")

    # ------------------------------------------------------------------ what the engine asks

    def cancel(self) -> None:
        """End our query on the server (the timeout passed). PostgreSQL needs nothing: its
        statement_timeout is the query's. MySQL gets a KILL QUERY from a second connection."""
        if self.database_type != "mysql" or self._connection_id is None:
            return
        spec = self.spec
        try:
            with duckdb.connect(":memory:", config=dict(BASE_CONFIG)) as killer:
                load_extension(killer, "mysql")
                values = [
                    spec.address,
                    spec.port,
                    spec.database,
                    spec.username,
                    spec.password or "",
                ]
                killer.execute(
                    f"CREATE TEMPORARY SECRET {_SECRET} (TYPE mysql, HOST $1, PORT $2, "
                    "DATABASE $3, USER $4, PASSWORD $5, SSL_MODE 'preferred')",
                    values,
                )
                killer.execute(f"ATTACH '' AS killer (TYPE mysql, SECRET {_SECRET})")
                killer.execute(
                    f"CALL mysql_execute('killer', 'KILL QUERY {self._connection_id:d}')"
                )
        except duckdb.Error:
            pass  # the watchdog's kill closes the connection anyway

    def server_version(self, connection: duckdb.DuckDBPyConnection) -> str:
        row = connection.execute(
            f"SELECT * FROM {self.database_type}_query($1, $2)",  # noqa: S608 - a fixed name
            [self.alias, _VERSION_SQL[self.database_type]],
        ).fetchone()
        version = str(row[0]) if row else ""
        if self.database_type == "mysql":
            version = ("MariaDB " if "mariadb" in version.lower() else "MySQL ") + version
        return version[:64]

    def catalog(
        self, connection: duckdb.DuckDBPyConnection
    ) -> dict[tuple[str, str], tuple[str, int | None]]:
        """(schema, name) → (table or view, estimated rows) from the server's own catalog."""
        rows = connection.execute(
            f"SELECT * FROM {self.database_type}_query($1, $2)",  # noqa: S608 - a fixed name
            [self.alias, _CATALOG_SQL[self.database_type]],
        ).fetchall()
        return {
            (str(s), str(t)): (str(kind), None if n is None else int(n)) for s, t, kind, n in rows
        }

    def describe(self, connection: duckdb.DuckDBPyConnection, schema: dict[str, Any]) -> None:
        """Complete what DuckDB's catalog shows (every relation a table, no counts) from the
        server's: views as views, the planner's row estimates, the server's version; system
        schemas left out."""
        details = self.catalog(connection)
        hidden = _SYSTEM_SCHEMAS[self.database_type]
        schema["schemas"] = [entry for entry in schema["schemas"] if entry["name"] not in hidden]
        for entry in schema["schemas"]:
            for table in entry["tables"]:
                kind, rows = details.get((entry["name"], table["name"]), (table["type"], None))
                table["type"], table["row_count"] = kind, rows
        schema["server_version"] = self.server_version(connection)
        schema["row_counts_exact"] = False

    def failure(self, error: BaseException, message: str, default: str) -> QueryFailed:
        """The most specific code for a remote error; ``message`` is already free of the
        password (the sandbox cleans it)."""
        return _failure(classify_remote_error(str(error)) or default, message)


def classify_remote_error(text: str) -> str | None:
    """A stable code for what a driver said about the connection, or None."""
    if _LOST.search(text):
        return "connection_lost"
    if _STATEMENT_TIMEOUT.search(text):
        return ErrorCode.TIMEOUT
    for code, pattern in _CONNECT_ERRORS:
        if re.search(pattern, text, re.IGNORECASE):
            return code
    return None


def connect_failure(error: BaseException, message: str) -> QueryFailed:
    """An attach that failed: what the driver said, classified (datasource_unavailable if not)."""
    return _failure(classify_remote_error(str(error)) or "datasource_unavailable", message)


def _failure(code: str, message: str) -> QueryFailed:
    """Test Connection shows only the message: it starts with what the code means."""
    summary = _SUMMARIES.get(code)
    detail = message.removeprefix("IO Error: ").strip()
    return QueryFailed(code, f"{summary} ({detail})" if summary else message)
