"""PostgreSQL and MariaDB servers and one region for the remote datasource tests, against the
machine's real servers.

One region (real API and data server processes) for the package; each server gets a schema or
database of its own with fixture tables (every common type, events for Cluvio parameters, a slow
view, and on PostgreSQL a 1M-row table built server-side), read through a SELECT-only login with a
password. Everything is dropped afterwards. Skipped, naming the variable, where a server is not
configured. Package-scoped: the modules share them as the tests of one module did.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from tests.support.log_watch import remember
from tests.support.processes import running_region
from tests.support.remote_databases import BIG_ROWS, NAME, QUERY_TIMEOUT, Server, created

POSTGRES_ENV = "DATAFERRY_TEST_POSTGRES_URL"

MARIADB_ENV = "DATAFERRY_TEST_MARIADB_URL"


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
CREATE VIEW {s}.busy AS SELECT pg_sleep(30)::text AS x;
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
    # Busy for about 10 s, without noticing that its client went away (a SLEEP does).
    "CREATE VIEW busy AS SELECT BENCHMARK(30000000, md5('x')) AS x",
    "CREATE VIEW sleepy AS SELECT SLEEP(1.5) AS x",
]


@pytest.fixture(scope="package")
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


@pytest.fixture(scope="package")
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


@pytest.fixture(scope="package")
def region(tmp_path_factory):
    env = {
        "DATAFERRY_WORKER_PROCESSES": "3",
        "DATAFERRY_POLL_INTERVAL_SECONDS": "0.05",
        "DATAFERRY_QUERY_TIMEOUT_SECONDS": str(QUERY_TIMEOUT),
        # Short, so the silent-server cases end soon, but not so short that a loaded machine's
        # slow attach (the child's guard allows the timeout plus 1 s) fails a healthy connect:
        # at 1 s a CI run under heavy CPU steal timed out on a working MariaDB.
        "DATAFERRY_CONNECT_TIMEOUT_SECONDS": "3",
    }
    with running_region(tmp_path_factory.mktemp("remote-region"), env) as started:
        yield started


@pytest.fixture(scope="module")
def datasources(client, server) -> dict[str, str]:
    return {server.kind: created(client, **server.attributes())}
