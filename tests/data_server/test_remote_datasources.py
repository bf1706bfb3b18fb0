"""PostgreSQL, MariaDB and SQLite datasources end to end, against the machine's real servers.

One region (real API and data server processes) per module; each server gets a schema or database
of its own with fixture tables (every common type, events for Cluvio parameters, a slow view, and
on PostgreSQL a 1M-row table built server-side), read through a SELECT-only login with a password.
Everything is dropped afterwards. Skipped, naming the variable, where a server is not configured.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import pyarrow as pa
import pytest
from sqlalchemy.engine import make_url

from data_server import engine
from data_server.remote_databases import RemoteDatabaseSpec
from data_server.sql_check import QueryFailed
from tests.support.client import DataferryClient
from tests.support.log_watch import remember
from tests.support.processes import running_region

pytestmark = pytest.mark.e2e

POSTGRES_ENV = "DATAFERRY_TEST_POSTGRES_URL"
MARIADB_ENV = "DATAFERRY_TEST_MARIADB_URL"
NAME = f"dataferry_remote_{os.getpid()}"  # schema/database and login of this module
QUERY_TIMEOUT = 3
BIG_ROWS = 1_000_000


# ---------------------------------------------------------------------------- the servers


@dataclass
class Server:
    kind: str  # postgres | mysql
    host: str
    port: int
    database: str  # where the fixture tables are: the datasource's database
    schema: str  # how queries name the fixture tables' schema
    user: str
    password: str
    admin: Any
    admin_login: tuple[str, str]  # user and password of the server's admin: it may write

    def attributes(self, **overrides: Any) -> dict[str, Any]:
        attributes = {
            "name": f"{self.kind} fixtures",
            "database_type": self.kind,
            "host": self.host,
            "port": self.port,
            "database": self.database,
            "username": self.user,
            "password": self.password,
            "require_ssl": False,
        }
        return {**attributes, **overrides}

    def scalar(self, sql: str, *args: Any) -> Any:
        with self.admin.cursor() as cursor:
            cursor.execute(sql, args or None)
            row = cursor.fetchone()
        return row[0] if row else None

    def active_queries(self) -> int:
        """Statements of our login the server is running now."""
        if self.kind == "postgres":
            return self.scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND state = 'active'",
                self.user,
            )
        return self.scalar(
            "SELECT count(*) FROM information_schema.processlist WHERE user = %s "
            "AND command <> 'Sleep'",  # the extension's statements are prepared: 'Execute'
            self.user,
        )

    def connections(self) -> int:
        if self.kind == "postgres":
            return self.scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = %s", self.user
            )
        return self.scalar(
            "SELECT count(*) FROM information_schema.processlist WHERE user = %s", self.user
        )

    def fingerprint(self) -> Any:
        """What the fixture tables hold, to show that nothing changed them."""
        table = f"{self.schema}.events"
        return self.scalar(f"SELECT count(*) * 1000 + sum(id) FROM {table}")


PG_TYPES_SQL = """
CREATE TYPE {s}.mood AS ENUM ('sad', 'happy');
CREATE TABLE {s}.types (
  id integer PRIMARY KEY, small smallint, big bigint, exact numeric(38, 10),
  money numeric(12, 2), plain_numeric numeric, real_v real, double_v double precision,
  text_v text, varchar_v varchar(20), char_v char(5), bool_v boolean, date_v date,
  time_v time, timetz_v timetz, ts_v timestamp, tstz_v timestamptz, interval_v interval,
  uuid_v uuid, json_v json, jsonb_v jsonb, bytea_v bytea, int_array integer[],
  text_array text[], mood_v {s}.mood, inet_v inet);
INSERT INTO {s}.types VALUES
 (1, -32768, 9223372036854775807, 1234567890123456789012345678.0123456789, 12345.67, 0.5,
  1.5, 0.1, 'Zürich ✓ ''quoted''', 'var', 'ab', true, '2024-02-29', '23:59:59.123456',
  '12:00:00+02', '2024-03-31 01:30:00.5', '2024-03-31 01:30:00+00',
  '1 year 2 months 3 days 04:05:06.789', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
  '{{"a": [1, 2]}}', '{{"b": null}}', '\\xdeadbeef00', '{{1,NULL,3}}', '{{"x","y z"}}',
  'happy', '192.168.0.1/24');
INSERT INTO {s}.types (id) VALUES (2);
CREATE TABLE {s}.events (id integer, country text, amount numeric(10, 2), happened_at timestamptz);
INSERT INTO {s}.events VALUES
 (1, 'DE', 10.50, '2024-03-30 22:30:00+00'), (2, 'DE', 20.00, '2024-03-30 23:30:00+00'),
 (3, 'FR', 30.00, '2024-03-31 00:30:00+00'), (4, 'US', 40.00, '2024-04-02 01:30:00+00'),
 (5, 'O''Brien', 50.00, '2024-04-02 02:30:00+00');
CREATE VIEW {s}.german AS SELECT * FROM {s}.events WHERE country = 'DE';
CREATE VIEW {s}.slow AS SELECT pg_sleep(30)::text AS x;
CREATE VIEW {s}.sleepy AS SELECT pg_sleep(1.5)::text AS x;
CREATE TABLE {s}.big AS SELECT g AS id, g % 97 AS k, md5(g::text) AS s
  FROM generate_series(1, {rows}) g;
CREATE INDEX ON {s}.big (id);
ANALYZE {s}.big; ANALYZE {s}.events;
"""

MYSQL_TYPES_SQL = [
    """CREATE TABLE types (
  id INT PRIMARY KEY, tiny TINYINT, small SMALLINT, medium MEDIUMINT, big BIGINT,
  ubig BIGINT UNSIGNED, exact DECIMAL(38,10), float_v FLOAT, double_v DOUBLE,
  varchar_v VARCHAR(20), char_v CHAR(5), text_v TEXT, bool_v TINYINT(1), bit_v BIT(1),
  date_v DATE, time_v TIME(6), datetime_v DATETIME(6), timestamp_v TIMESTAMP(6) NULL,
  year_v YEAR, json_v JSON, blob_v BLOB, enum_v ENUM('sad','happy'), set_v SET('a','b'))""",
    """INSERT INTO types VALUES (1, -128, -32768, -8388608, -9223372036854775808,
  18446744073709551615, 1234567890123456789012345678.0123456789, 1.5, 0.1, 'Zürich ✓ ''q''',
  'ab', 'long text', 1, b'1', '2024-02-29', '838:59:59.250000', '2024-03-31 01:30:00.500000',
  '2024-03-31 01:30:00.250000', 2024, '{"a": [1, 2]}', x'deadbeef00', 'happy', 'a,b')""",
    "INSERT INTO types (id) VALUES (2)",
    "CREATE TABLE events (id INT, country VARCHAR(20), amount DECIMAL(10,2), happened_at DATETIME)",
    """INSERT INTO events VALUES (1, 'DE', 10.50, '2024-03-30 22:30:00'),
  (2, 'DE', 20.00, '2024-03-30 23:30:00'), (3, 'FR', 30.00, '2024-03-31 00:30:00'),
  (4, 'US', 40.00, '2024-04-02 01:30:00'), (5, 'O''Brien', 50.00, '2024-04-02 02:30:00')""",
    "CREATE VIEW german AS SELECT * FROM events WHERE country = 'DE'",
    "CREATE VIEW slow AS SELECT SLEEP(30) AS x",
    "CREATE VIEW sleepy AS SELECT SLEEP(1.5) AS x",
]


@pytest.fixture(scope="module")
def postgres() -> Iterator[Server]:
    raw = os.environ.get(POSTGRES_ENV)
    if not raw:
        pytest.skip(f"remote PostgreSQL tests need {POSTGRES_ENV}")
    import psycopg
    from psycopg import sql

    url = make_url(raw)
    admin = psycopg.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 5432,
        user=url.username,
        password=url.password,
        dbname=url.database,
        autocommit=True,
    )
    password = "pg-" + secrets.token_urlsafe(16)
    remember(password)
    login, schema = sql.Identifier(NAME), sql.Identifier(NAME)
    _drop_postgres(admin, sql)
    admin.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(login, sql.Literal(password)))
    admin.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(NAME + "_nologin")))
    admin.execute(sql.SQL("CREATE SCHEMA {}").format(schema))
    admin.execute(PG_TYPES_SQL.format(s=NAME, rows=BIG_ROWS))  # type: ignore[arg-type]
    for grant in (
        "GRANT USAGE ON SCHEMA {s} TO {r}",
        "GRANT SELECT ON ALL TABLES IN SCHEMA {s} TO {r}",
    ):
        admin.execute(sql.SQL(grant).format(s=schema, r=login))
    try:
        yield Server(
            "postgres", url.host or "127.0.0.1", url.port or 5432, url.database or "", NAME, NAME,
            password, admin, (url.username or "postgres", url.password or ""),
        )  # fmt: skip
    finally:
        _drop_postgres(admin, sql)
        admin.close()


def _drop_postgres(admin: Any, sql: Any) -> None:
    admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [NAME]
    )
    admin.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(NAME)))
    for role in (NAME, NAME + "_nologin"):
        admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


@pytest.fixture(scope="module")
def mariadb() -> Iterator[Server]:
    raw = os.environ.get(MARIADB_ENV)
    if not raw:
        pytest.skip(f"remote MariaDB tests need {MARIADB_ENV}")
    import pymysql

    url = make_url(raw)
    admin = pymysql.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 3306,
        user=url.username or "root",
        password=url.password or "",
        autocommit=True,
    )
    password = "my-" + secrets.token_urlsafe(16)
    remember(password)
    with admin.cursor() as cursor:
        _drop_mariadb(cursor)
        cursor.execute(f"CREATE DATABASE `{NAME}`")
        cursor.execute(f"CREATE USER '{NAME}'@'127.0.0.1' IDENTIFIED BY %s", [password])
        cursor.execute(f"GRANT SELECT, SHOW VIEW ON `{NAME}`.* TO '{NAME}'@'127.0.0.1'")
        cursor.execute(f"USE `{NAME}`")
        cursor.execute("SET time_zone = '+00:00'")
        for statement in MYSQL_TYPES_SQL:
            cursor.execute(statement)
    try:
        yield Server(
            "mysql", url.host or "127.0.0.1", url.port or 3306, NAME, NAME, NAME, password, admin,
            (url.username or "root", url.password or ""),
        )  # fmt: skip
    finally:
        with admin.cursor() as cursor:
            _drop_mariadb(cursor)
        admin.close()


def _drop_mariadb(cursor: Any) -> None:
    cursor.execute("SELECT id FROM information_schema.processlist WHERE user = %s", [NAME])
    for (thread,) in cursor.fetchall():
        with contextlib.suppress(Exception):  # it ended by itself meanwhile
            cursor.execute(f"KILL {int(thread)}")
    cursor.execute(f"DROP DATABASE IF EXISTS `{NAME}`")
    cursor.execute(f"DROP USER IF EXISTS '{NAME}'@'127.0.0.1'")


@pytest.fixture(scope="module", params=["postgres", "mysql"])
def server(request: pytest.FixtureRequest) -> Server:
    return request.getfixturevalue("postgres" if request.param == "postgres" else "mariadb")


# ---------------------------------------------------------------------------- the region


@pytest.fixture(scope="module")
def region(tmp_path_factory):
    env = {
        "DATAFERRY_WORKER_PROCESSES": "3",
        "DATAFERRY_POLL_INTERVAL_SECONDS": "0.05",
        "DATAFERRY_QUERY_TIMEOUT_SECONDS": str(QUERY_TIMEOUT),
        "DATAFERRY_CONNECT_TIMEOUT_SECONDS": "1",
    }
    with running_region(tmp_path_factory.mktemp("remote-region"), env) as started:
        yield started


def create(client: DataferryClient, **attributes: Any) -> httpx.Response:
    return client.http.post(
        f"{client.api_url}/datasources",
        headers={**client.headers, "Content-Type": "application/vnd.api+json"},
        json={"data": {"type": "datasources", "attributes": attributes}},
    )


def created(client: DataferryClient, **attributes: Any) -> str:
    response = create(client, **attributes)
    assert response.status_code == 201, response.text
    return response.json()["data"]["id"]


@pytest.fixture(scope="module")
def datasources(client, server) -> dict[str, str]:
    return {server.kind: created(client, **server.attributes())}


def finished(client: DataferryClient, datasource_id: str, sql: str, parameters=None) -> dict:
    execution = client.run(datasource_id, sql, parameters)
    return client.wait_until_done(execution["execution_id"], timeout=60)


def failure(client: DataferryClient, datasource_id: str, sql: str) -> dict:
    done = finished(client, datasource_id, sql)
    assert done["execution_status"] == "failed", done
    return done


def rows(client: DataferryClient, datasource_id: str, sql: str, parameters=None) -> list:
    return client.query(datasource_id, sql, parameters=parameters).json()["rows"]


def arrow(client: DataferryClient, datasource_id: str, sql: str) -> pa.Table:
    response = client.query(datasource_id, sql, accept="application/vnd.apache.arrow.stream")
    return pa.ipc.open_stream(response.content).read_all()


def check_connection(client: DataferryClient, datasource_id: str) -> dict:
    response = client.http.post(
        f"{client.api_url}/datasources/{datasource_id}/test_connection",
        headers=client.headers,
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return response.json()


# ---------------------------------------------------------------------------- types

PG_EXPECTED = {
    "id": ("int32", 1, 1),
    "small": ("int16", -32768, -32768),
    "big": ("int64", 9223372036854775807, 9223372036854775807),
    "exact": ("decimal128(38, 10)", "1234567890123456789012345678.0123456789", None),
    "money": ("decimal128(12, 2)", "12345.67", None),
    "plain_numeric": ("double", 0.5, 0.5),  # numeric without precision: a DOUBLE
    "real_v": ("float", 1.5, 1.5),
    "double_v": ("double", 0.1, 0.1),
    "text_v": ("string", "Zürich ✓ 'quoted'", "Zürich ✓ 'quoted'"),
    "varchar_v": ("string", "var", "var"),
    "char_v": ("string", "ab", "ab"),
    "bool_v": ("bool", True, True),
    "date_v": ("date32[day]", "2024-02-29", None),
    "time_v": ("time64[us]", "23:59:59.123456", None),
    "ts_v": ("timestamp[us]", "2024-03-31T01:30:00.500000", None),
    "tstz_v": ("timestamp[us, tz=UTC]", "2024-03-31T01:30:00.000000+00:00", None),
    "interval_v": (
        "month_day_nano_interval",
        {"months": 14, "days": 3, "nanoseconds": 14706789000000},
        None,
    ),
    "uuid_v": ("string", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", None),
    "json_v": ("string", '{"a": [1, 2]}', '{"a": [1, 2]}'),
    "jsonb_v": ("string", '{"b": null}', '{"b": null}'),
    "bytea_v": ("binary", base64.b64encode(b"\xde\xad\xbe\xef\x00").decode(), None),
    "int_array": ("list<l: int32>", [1, None, 3], [1, None, 3]),
    "text_array": ("list<l: string>", ["x", "y z"], ["x", "y z"]),
    "mood_v": ("dictionary<values=string, indices=uint8, ordered=0>", "happy", "happy"),
    "inet_v": ("string", "192.168.0.1/24", "192.168.0.1/24"),
}
MYSQL_EXPECTED = {
    "id": ("int32", 1, 1),
    "tiny": ("int8", -128, -128),
    "small": ("int16", -32768, -32768),
    "medium": ("int32", -8388608, -8388608),
    "big": ("int64", -9223372036854775808, -9223372036854775808),
    "ubig": ("uint64", 18446744073709551615, 18446744073709551615),
    "exact": ("decimal128(38, 10)", "1234567890123456789012345678.0123456789", None),
    "float_v": ("float", 1.5, 1.5),
    "double_v": ("double", 0.1, 0.1),
    "varchar_v": ("string", "Zürich ✓ 'q'", "Zürich ✓ 'q'"),
    "char_v": ("string", "ab", "ab"),
    "text_v": ("string", "long text", "long text"),
    "bool_v": ("bool", True, True),
    "bit_v": ("bool", True, True),
    "date_v": ("date32[day]", "2024-02-29", None),
    "time_v": ("string", "838:59:59.25", "838:59:59.25"),  # beyond a day: text
    "datetime_v": ("timestamp[us]", "2024-03-31T01:30:00.500000", None),
    "timestamp_v": ("timestamp[us]", "2024-03-31T01:30:00.250000", None),  # UTC
    "year_v": ("int32", 2024, 2024),
    "json_v": ("string", '{"a": [1, 2]}', '{"a": [1, 2]}'),
    "blob_v": ("binary", base64.b64encode(b"\xde\xad\xbe\xef\x00").decode(), None),
    "enum_v": ("string", "happy", "happy"),
    "set_v": ("string", "a,b", "a,b"),
}


def test_every_type_arrives_equal_through_arrow_and_json(client, server, datasources):
    expected = PG_EXPECTED if server.kind == "postgres" else MYSQL_EXPECTED
    datasource = datasources[server.kind]
    columns = ", ".join(expected)
    sql = f"SELECT {columns} FROM {server.schema}.types ORDER BY id"
    document = client.query(datasource, sql).json()
    table = arrow(client, datasource, sql)
    json_types = {column["name"]: column["type"] for column in document["columns"]}
    first, empty = document["rows"]
    for index, (name, (arrow_type, json_value, python_value)) in enumerate(expected.items()):
        assert str(table.schema.field(name).type) == arrow_type == json_types[name], name
        assert first[index] == json_value, name
        assert empty[index] is None or name == "id", name
        if python_value is not None:
            assert table.column(name)[0].as_py() == python_value, name
    assert str(table.column("exact")[0].as_py()) == "1234567890123456789012345678.0123456789"
    assert table.column("date_v")[0].as_py().isoformat() == "2024-02-29"


# ---------------------------------------------------------------------------- parameters


def test_cluvio_parameters_bind_on_remote_tables(client, server, datasources):
    datasource, table = datasources[server.kind], f"{server.schema}.events"
    day = f"{int(datetime.fromisoformat('2024-03-30T23:00:00+00:00').timestamp())}~" + str(
        int(datetime.fromisoformat("2024-03-31T23:00:00+00:00").timestamp())
    )
    in_range = rows(
        client,
        datasource,
        f"SELECT id FROM {table} WHERE {{happened_at=timerange}} ORDER BY id",
        {"timerange": day},
    )
    assert in_range == [[2], [3]]
    filtered = rows(
        client,
        datasource,
        f"SELECT id FROM {table} WHERE {{country=country}} ORDER BY id",
        {"filters": [{"variable_name": "country", "selected_values": ["O'Brien", "FR"]}]},
    )
    assert filtered == [[3], [5]]
    by_day = rows(
        client,
        datasource,
        f"SELECT CAST({{happened_at:aggregation}} AS VARCHAR) AS d, sum(amount) AS total "
        f"FROM {table} GROUP BY 1 ORDER BY 1",
        {"aggregation": "day"},
    )
    assert [row[1] for row in by_day] == ["30.50", "30.00", "90.00"]
    assert by_day[0][0].startswith("2024-03-30")


# ---------------------------------------------------------------------------- pushdown


def _table_reads(server: Server) -> tuple[int, int, int, int]:
    server.admin.execute("SELECT pg_stat_clear_snapshot()")
    return server.admin.execute(
        "SELECT seq_scan, seq_tup_read, coalesce(idx_scan, 0), coalesce(idx_tup_fetch, 0) "
        "FROM pg_stat_user_tables WHERE schemaname = %s AND relname = 'big'",
        [NAME],
    ).fetchone()


def test_selective_filter_reads_only_matching_rows_on_the_server(client, postgres):
    """PostgreSQL's own statistics of the 1M-row table: the filter reached the server and used
    its index (1,000 rows fetched), no row was read by a sequential scan."""
    datasource = created(client, **postgres.attributes(name="pushdown"))
    before = _table_reads(postgres)
    result = rows(
        client,
        datasource,
        f"SELECT count(*), sum(id) FROM {NAME}.big WHERE id BETWEEN 500001 AND 501000",
    )
    assert result == [[1000, str(sum(range(500001, 501001)))]]  # a HUGEINT: a JSON string
    deadline = time.monotonic() + 15  # statistics arrive when the sandbox's session has ended
    while (after := _table_reads(postgres))[2] == before[2] and time.monotonic() < deadline:
        time.sleep(0.2)
    seq_scans, seq_read, index_scans, index_fetched = (
        a - b for a, b in zip(after, before, strict=True)
    )
    assert index_scans >= 1 and index_fetched == 1000
    assert seq_scans == 0 and seq_read == 0


# ---------------------------------------------------------------------------- read-only

WRITES = [
    ("INSERT INTO {t} VALUES (9, 'XX', 1, NULL)", "not_a_select"),
    ("UPDATE {t} SET amount = 0", "not_a_select"),
    ("DELETE FROM {t}", "not_a_select"),
    ("DROP TABLE {t}", "not_a_select"),
    ("CREATE TABLE {s}.made AS SELECT 1", "not_a_select"),
    ("COPY {t} TO '/tmp/dataferry-copy.csv'", "not_a_select"),
    ("ATTACH 'host=127.0.0.1 dbname=test' AS other (TYPE postgres)", "not_a_select"),
    ("CREATE SECRET s (TYPE postgres, HOST '127.0.0.1')", "not_a_select"),
    ("CALL postgres_execute('ds', 'DELETE FROM {t}')", "not_a_select"),
    ("SELECT * FROM postgres_execute('ds', 'DELETE FROM {t}')", "forbidden_function"),
    ("SELECT * FROM postgres_query('ds', 'DELETE FROM {t} RETURNING id')", "forbidden_function"),
    (
        "SELECT * FROM postgres_scan('host=127.0.0.1 dbname=test', 'public', 'x')",
        "forbidden_function",
    ),
    ("SELECT * FROM postgres_attach('host=127.0.0.1 dbname=test')", "forbidden_function"),
    ("SELECT * FROM mysql_execute('ds', 'DELETE FROM {t}')", "forbidden_function"),
    ("SELECT * FROM mysql_query('ds', 'SELECT 1')", "forbidden_function"),
    ("SELECT * FROM sqlite_scan('/etc/passwd', 't')", "forbidden_function"),
    ("SELECT * FROM duckdb_secrets()", "forbidden_function"),
    ("SELECT * FROM duckdb_databases", "forbidden_catalog"),
    ("SELECT current_setting('pg_pool_health_check_query')", "forbidden_function"),
    ("SELECT 1; DELETE FROM {t}", "multiple_statements"),
]


def test_writes_and_escapes_fail_and_leave_the_tables_unchanged(client, server, datasources):
    before = server.fingerprint()
    queued = {
        sql: client.run(
            datasources[server.kind], sql.format(t=f"{server.schema}.events", s=server.schema)
        )["execution_id"]
        for sql, _ in WRITES
    }  # all at once: the region's workers take them in parallel
    for sql, code in WRITES:
        done = client.wait_until_done(queued[sql], timeout=60)
        assert (done["execution_status"], done["error_code"]) == ("failed", code), (sql, done)
        assert server.password not in done["error_message"]
    assert server.fingerprint() == before


# Run on the locked instance itself, past the SQL check: DuckDB's read-only attach, the remote
# read-only session, or the locked configuration must refuse each one.
UNCHECKED_ESCAPES = {
    "postgres": [
        "INSERT INTO {t} VALUES (9, 'XX', 1, NULL)",
        "DELETE FROM {t}",
        "CALL postgres_execute('ds', 'DELETE FROM {t}')",
        "CALL postgres_execute('ds', 'COMMIT; DELETE FROM {t}')",
        "SELECT * FROM postgres_query('ds', 'DELETE FROM {t} RETURNING id')",
        "ATTACH 'host=127.0.0.1 dbname=test' AS other (TYPE postgres)",
    ],
    "mysql": [
        "INSERT INTO {t} VALUES (9, 'XX', 1, NULL)",
        "DELETE FROM {t}",
        "CALL mysql_execute('ds', 'DELETE FROM {t}')",
        "CALL mysql_execute('ds', 'COMMIT; DELETE FROM {t}')",
        "SELECT * FROM mysql_query('ds', 'DELETE FROM {t}')",
        "ATTACH 'host=127.0.0.1' AS other (TYPE mysql)",
    ],
}


def _spec(server: Server, **overrides: Any) -> engine.DatasourceSpec:
    values = {
        "host": server.host,
        "address": "127.0.0.1",
        "port": server.port,
        "database": server.database,
        "username": server.user,
        "password": server.password,
        "require_ssl": False,
        "verify_ssl": False,
        "connect_timeout_seconds": 2.0,
        **overrides,
    }
    return engine.DatasourceSpec(
        database_type=server.kind, path="", remote=RemoteDatabaseSpec(**values)
    )


LIMITS = engine.Limits(
    timeout_seconds=QUERY_TIMEOUT,
    memory_limit_mb=256,
    threads=2,
    max_temp_directory_size_mb=64,
    max_result_rows=1000,
    max_result_bytes=1 << 20,
)


def test_the_locked_instance_and_the_server_refuse_what_the_check_would(server, tmp_path):
    """As the server's admin, a login that may write: what refuses is dataferry's doing."""
    import duckdb

    before = server.fingerprint()
    user, password = server.admin_login
    spec = _spec(server, username=user, password=password or None)
    sandbox = engine.Sandbox(spec, LIMITS, str(tmp_path))
    try:
        for sql in UNCHECKED_ESCAPES[server.kind]:
            statement = sql.format(t=f"{server.schema}.events")
            with pytest.raises(duckdb.Error):
                sandbox.connection.execute(statement).fetchall()
            assert server.fingerprint() == before, statement
        assert sandbox.connection.execute(
            "SELECT database_name, path FROM duckdb_databases() WHERE database_name = 'ds'"
        ).fetchall() == [("ds", "")]
        assert sandbox.connection.execute("SELECT count(*) FROM duckdb_secrets()").fetchone() == (
            0,
        )
    finally:
        sandbox.close()


# ---------------------------------------------------------------------------- limits


def test_timeout_ends_the_query_on_the_server_too(client, server, datasources):
    done = failure(client, datasources[server.kind], f"SELECT * FROM {server.schema}.slow")
    assert done["error_code"] == "timeout"
    deadline = time.monotonic() + 10
    while server.active_queries() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert server.active_queries() == 0
    assert rows(client, datasources[server.kind], "SELECT 1") == [[1]]


def test_max_concurrent_executions_bounds_the_connections(client, server):
    datasource = created(
        client, **server.attributes(name="one at a time", max_concurrent_executions=1)
    )
    executions = [
        client.run(datasource, f"SELECT * FROM {server.schema}.sleepy")["execution_id"]
        for _ in range(2)
    ]
    most = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal most
        while not stop.is_set():
            most = max(most, server.connections())
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        outcomes = [client.wait_until_done(e, timeout=60)["execution_status"] for e in executions]
    finally:
        stop.set()
        sampler.join()
    assert outcomes == ["completed"] * 2
    assert most == 1


def test_a_dropped_connection_fails_with_connection_lost_and_the_next_query_works(
    client, server, datasources
):
    datasource = datasources[server.kind]
    execution = client.run(datasource, f"SELECT * FROM {server.schema}.sleepy")["execution_id"]
    deadline = time.monotonic() + 10
    while not server.active_queries() and time.monotonic() < deadline:
        time.sleep(0.05)
    if server.kind == "postgres":
        server.admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [NAME]
        )
    else:
        with server.admin.cursor() as cursor:
            cursor.execute("SELECT id FROM information_schema.processlist WHERE user = %s", [NAME])
            for (thread,) in cursor.fetchall():
                cursor.execute(f"KILL CONNECTION {int(thread)}")
    done = client.wait_until_done(execution, timeout=60)
    assert (done["execution_status"], done["error_code"]) == ("failed", "connection_lost"), done
    assert rows(client, datasource, "SELECT count(*) FROM " + f"{server.schema}.events") == [[5]]


# ---------------------------------------------------------------------------- connecting


def _silent_server() -> tuple[socket.socket, int]:
    """Accepts connections and never says a word: a server that does not answer."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    return listener, listener.getsockname()[1]


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_connection_errors_are_specific(client, server, datasources):
    listener, silent = _silent_server()
    cases = {
        "authentication_failed": (
            {"password": "wrong-" + secrets.token_hex(4)}
            if server.kind == "mysql"
            else {"username": NAME + "_nologin"}  # the test server trusts loopback passwords
        ),
        "database_not_found": {"database": NAME + "_missing"},
        "host_unreachable": {"port": _closed_port()},
        "connection_timed_out": {"port": silent},
        "tls_refused": {"require_ssl": True},  # the test servers offer no TLS
    }
    try:
        ids = {
            code: created(client, **server.attributes(name=code, **o)) for code, o in cases.items()
        }
        queued = {code: client.run(ids[code], "SELECT 1")["execution_id"] for code in cases}
        for code in cases:
            done = client.wait_until_done(queued[code], timeout=60)
            assert (done["execution_status"], done["error_code"]) == ("failed", code), done
            assert server.password not in done["error_message"]
        for code in ("authentication_failed", "connection_timed_out"):  # what Test Connection says
            started = time.monotonic()
            answer = check_connection(client, ids[code])
            assert answer["status"] == "error", (code, answer)
            assert time.monotonic() - started < 15, code  # bounded by the connect timeout
            assert server.password not in answer["error_message"]
        assert (
            "refused the username or password"
            in check_connection(client, ids["authentication_failed"])["error_message"]
        )
    finally:
        listener.close()
    answer = check_connection(client, datasources[server.kind])
    assert answer == {"status": "ok", "error_message": None}


# ---------------------------------------------------------------------------- refresh


def test_refresh_records_the_remote_catalog(client, server, datasources):
    datasource = datasources[server.kind]
    refresh = client.http.post(
        f"{client.api_url}/datasources/{datasource}/refresh", headers=client.headers
    ).json()
    assert client.wait_until_done(refresh["execution_id"])["execution_status"] == "completed"
    grant = client.http.get(
        f"{client.api_url}/datasources/{datasource}/schema", headers=client.headers
    ).json()
    document = client.fetch(grant).json()
    assert server.password not in str(document)
    schemas = {schema["name"]: schema for schema in document["schemas"]}
    assert server.schema in schemas and "pg_catalog" not in schemas and "mysql" not in schemas
    tables = {table["name"]: table for table in schemas[server.schema]["tables"]}
    assert tables["german"]["type"] == "view" and tables["events"]["type"] == "table"
    assert isinstance(tables["events"]["row_count"], int)  # the server's estimate
    columns = {column["name"]: column["type"] for column in tables["events"]["columns"]}
    assert columns["id"] == "INTEGER" and columns["amount"] == "DECIMAL(10,2)"
    if server.kind == "postgres":
        assert tables["events"]["row_count"] == 5  # the planner's estimates, after ANALYZE
        assert abs(tables["big"]["row_count"] - BIG_ROWS) < BIG_ROWS / 100
    attributes = client.http.get(
        f"{client.api_url}/datasources/{datasource}", headers=client.headers
    ).json()["data"]["attributes"]
    prefix = "PostgreSQL " if server.kind == "postgres" else "MariaDB "
    assert attributes["server_version"].startswith(prefix)
    assert attributes["total_row_count_exact"] is False


# ---------------------------------------------------------------------------- the API


def test_the_password_is_never_shown_and_not_in_the_logs(region, client, server, datasources):
    datasource = datasources[server.kind]
    shown = client.http.get(f"{client.api_url}/datasources/{datasource}", headers=client.headers)
    assert shown.status_code == 200 and "password" not in shown.json()["data"]["attributes"]
    listed = client.http.get(f"{client.api_url}/datasources", headers=client.headers)
    assert server.password not in shown.text + listed.text
    failure(client, datasource, "SELECT * FROM duckdb_databases()")
    assert server.password not in region.log()


BAD_REMOTE_ATTRIBUTES = [
    ({"host": None}, "missing_attribute", "host"),
    ({"host": "  "}, "missing_attribute", "host"),
    ({"database": None}, "missing_attribute", "database"),
    ({"username": None}, "missing_attribute", "username"),
    ({"port": 0}, "invalid_attribute", "port"),
    ({"port": 65536}, "invalid_attribute", "port"),
    ({"ssh_tunnel_port": 70000}, "invalid_attribute", "ssh_tunnel_port"),
    ({"host": "169.254.169.254"}, "destination_not_allowed", "host"),
]


@pytest.mark.parametrize(("overrides", "code", "attribute"), BAD_REMOTE_ATTRIBUTES)
def test_bad_remote_attributes_are_422_with_a_pointer(client, postgres, overrides, code, attribute):
    response = create(client, **postgres.attributes(**overrides))
    assert response.status_code == 422, response.text
    error = response.json()["errors"][0]
    assert (error["code"], error["source"]["pointer"]) == (code, f"/data/attributes/{attribute}")


def test_port_defaults_per_type_and_a_file_type_takes_no_credentials(region, client):
    for kind, port in (("postgres", 5432), ("mysql", 3306)):
        attributes = {"name": kind, "database_type": kind, "host": "127.0.0.1",
                      "database": "d", "username": "u", "require_ssl": False}  # fmt: skip
        response = create(client, **attributes)
        assert response.status_code == 201, response.text
        assert response.json()["data"]["attributes"]["port"] == port
    sqlite3.connect(region.area(client.organization_id) / "a.sqlite").close()
    refused = create(client, name="x", database_type="sqlite", database="a.sqlite", password="pw")
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["source"]["pointer"] == "/data/attributes/password"


def test_ssh_tunnel_attributes_are_stored_but_the_datasource_cannot_run(client, postgres):
    tunnel = {"ssh_tunnel_host": "bastion.example", "ssh_tunnel_port": 22, "ssh_tunnel_user": "me"}
    response = create(client, **postgres.attributes(name="tunnelled", **tunnel))
    assert response.status_code == 201, response.text
    attributes = response.json()["data"]["attributes"]
    assert {name: attributes[name] for name in tunnel} == tunnel
    datasource = response.json()["data"]["id"]
    for path, body in (("executions", {"sql_query": "SELECT 1"}), ("test_connection", None),
                       ("refresh", None)):  # fmt: skip
        answer = client.http.post(
            f"{client.api_url}/datasources/{datasource}/{path}", headers=client.headers, json=body
        )
        assert answer.status_code == 422, (path, answer.text)
        assert answer.json()["errors"][0]["code"] == "ssh_tunnel_not_supported"


# ---------------------------------------------------------------------------- SQLite


def test_sqlite_file_datasource_reads_its_file_only(region, client):
    area = region.area(client.organization_id)
    with sqlite3.connect(area / "shop.sqlite") as connection:
        connection.execute("CREATE TABLE IF NOT EXISTS orders (id INTEGER, item TEXT)")
        connection.execute("DELETE FROM orders")
        connection.executemany("INSERT INTO orders VALUES (?, ?)", [(1, "tea"), (2, "café")])
    datasource = created(client, name="shop", database_type="sqlite", database="shop.sqlite")
    assert rows(client, datasource, "SELECT id, item FROM orders ORDER BY id") == [
        [1, "tea"],
        [2, "café"],
    ]
    for sql, code in (
        ("SELECT * FROM sqlite_scan('/etc/hostname', 'x')", "forbidden_function"),
        ("SELECT * FROM sqlite_query('ds', 'SELECT 1')", "forbidden_function"),
        ("DELETE FROM orders", "not_a_select"),
    ):
        assert failure(client, datasource, sql)["error_code"] == code
    refresh = client.http.post(
        f"{client.api_url}/datasources/{datasource}/refresh", headers=client.headers
    ).json()
    assert client.wait_until_done(refresh["execution_id"])["execution_status"] == "completed"
    attributes = client.http.get(
        f"{client.api_url}/datasources/{datasource}", headers=client.headers
    ).json()["data"]["attributes"]
    assert attributes["server_version"].startswith("SQLite 3.")
    assert (attributes["total_row_count"], attributes["total_row_count_exact"]) == (2, True)


def test_engine_refuses_a_remote_spec_that_cannot_connect(postgres, tmp_path):
    """Without the region: the attach fails with the classified code and no password."""
    with pytest.raises(QueryFailed) as refused:
        engine.Sandbox(_spec(postgres, port=_closed_port()), LIMITS, str(tmp_path))
    assert refused.value.code == "host_unreachable"
    assert postgres.password not in refused.value.message
