"""A 1M-row PostgreSQL table through dataferry (run → stored result) against psycopg's binary
``COPY … TO STDOUT`` of the same table, in one script; then a selective aggregate, to show what
pushing the filter to the server saves.

Needs the PostgreSQL server of ``DATAFERRY_TEST_POSTGRES_URL`` (the one ``make test`` uses); the
table lives in a schema of its own, dropped afterwards. The region is started as ``make run``
starts it (bench/big_result.py), with loopback allowed as ``make run`` allows it.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.client import DataferryClient
from tests.support.processes import running_region

ROWS = 1_000_000
REPEATS = 3
SCHEMA = f"dataferry_bench_{os.getpid()}"
TABLE_SQL = """
CREATE TABLE {s}.big AS
SELECT g AS id, (g % 100000) / 100.0::numeric(12, 2) AS amount, 'name ' || g AS name,
       DATE '2024-01-01' + (g % 365) AS day,
       TIMESTAMPTZ '2024-01-01 00:00:00+00' + g * INTERVAL '1 second' AS happened_at
FROM generate_series(1, {rows}) g;
CREATE INDEX ON {s}.big (id);
ANALYZE {s}.big;
"""


def best(action, repeats: int = REPEATS) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return min(times)


def copy_all(conninfo: dict) -> None:
    with psycopg.connect(**conninfo) as connection, connection.cursor() as cursor:
        query = sql.SQL("COPY {}.big TO STDOUT (FORMAT binary)").format(sql.Identifier(SCHEMA))
        with cursor.copy(query) as copy:
            for _ in copy:
                pass


def stored(client: DataferryClient, datasource: str, query: str) -> dict:
    execution = client.run(datasource, query)
    done = client.wait_until_done(execution["execution_id"], timeout=600)
    assert done["execution_status"] == "completed", done
    return done


def table_reads(admin: psycopg.Connection) -> tuple[int, int]:
    admin.execute("SELECT pg_stat_clear_snapshot()")
    row = admin.execute(
        "SELECT seq_tup_read, coalesce(idx_tup_fetch, 0) FROM pg_stat_user_tables "
        "WHERE schemaname = %s AND relname = 'big'",
        [SCHEMA],
    ).fetchone()
    assert row is not None
    return row[0], row[1]


def main() -> None:
    raw = os.environ.get("DATAFERRY_TEST_POSTGRES_URL")
    if not raw:
        print("skipped: set DATAFERRY_TEST_POSTGRES_URL to a PostgreSQL server")
        return
    url = make_url(raw)
    conninfo = {
        "host": url.host or "127.0.0.1",
        "port": url.port or 5432,
        "user": url.username,
        "password": url.password,
        "dbname": url.database,
    }
    admin = psycopg.connect(**conninfo, autocommit=True)
    admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA)))
    try:
        admin.execute(TABLE_SQL.format(s=SCHEMA, rows=ROWS))  # type: ignore[arg-type]
        measure(admin, conninfo)
    finally:
        admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(SCHEMA)))
        admin.close()


def measure(admin: psycopg.Connection, conninfo: dict) -> None:
    raised = {"DATAFERRY_MAX_RESULT_ROWS": str(ROWS * 2), "DATAFERRY_LOG_LEVEL": "WARNING"}
    print(f"policy limit raised for the bench: DATAFERRY_MAX_RESULT_ROWS={ROWS * 2}")
    with tempfile.TemporaryDirectory() as tmp, running_region(Path(tmp), raised) as region:
        credentials = region.create_organization()
        client = DataferryClient(region.api_url, region.data_url, credentials["api_key"])
        response = client.http.post(
            f"{region.api_url}/datasources",
            headers={**client.headers, "Content-Type": "application/vnd.api+json"},
            json={"data": {"type": "datasources", "attributes": {
                "name": "bench", "database_type": "postgres", "host": conninfo["host"],
                "port": conninfo["port"], "database": conninfo["dbname"],
                "username": conninfo["user"], "password": conninfo["password"],
                "require_ssl": False,
            }}},
        )  # fmt: skip
        assert response.status_code == 201, response.text
        datasource = response.json()["data"]["id"]
        everything = f'SELECT * FROM "{SCHEMA}".big'
        stored(client, datasource, everything)  # warm: the sandbox children and the server cache

        copy_seconds = best(lambda: copy_all(conninfo))
        dataferry_seconds = best(lambda: stored(client, datasource, everything))
        size = stored(client, datasource, everything)["result_size"]
        print(f"{ROWS:,} rows, 5 columns")
        print(f"  psycopg binary COPY TO STDOUT   {copy_seconds:7.3f} s")
        print(
            f"  dataferry run → stored          {dataferry_seconds:7.3f} s  ({size / 1e6:.0f} MB Arrow)"
        )
        print(
            f"  ratio (COPY time / dataferry)   {copy_seconds / dataferry_seconds:7.2f}x  (aim: at least 0.5x)"
        )

        selective = (
            f'SELECT count(*), sum(amount) FROM "{SCHEMA}".big WHERE id BETWEEN 400001 AND 410000'
        )
        whole = f'SELECT count(*), sum(amount) FROM "{SCHEMA}".big'
        before = table_reads(admin)
        selective_seconds = best(lambda: stored(client, datasource, selective))
        time.sleep(1.5)  # the sandbox sessions ended: their statistics are in
        after = table_reads(admin)
        whole_seconds = best(lambda: stored(client, datasource, whole))
        print("selective aggregate (10,000 of 1M rows, filter pushed to PostgreSQL's index)")
        print(f"  with the filter                 {selective_seconds:7.3f} s")
        print(f"  the same over the whole table   {whole_seconds:7.3f} s")
        print(
            f"  rows PostgreSQL read for the {REPEATS} filtered runs: "
            f"{after[1] - before[1]:,} by index, {after[0] - before[0]:,} by sequential scan"
        )


if __name__ == "__main__":
    main()
