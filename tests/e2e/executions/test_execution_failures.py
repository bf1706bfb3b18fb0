"""Executions that fail or are stopped, end to end: bad SQL with a stable code, the time and memory
limits, a killed sandbox child, a restarted data server, a connection test that fails, and an
idempotent retry cancelled while it runs.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import duckdb
import httpx
import pytest

pytestmark = pytest.mark.e2e

ESCAPE_TARGET = "/tmp/dataferry-escape-target"


SANDBOX_ESCAPES = [
    ("SELECT * FROM read_csv('/etc/passwd')", "forbidden_function"),
    ("SELECT * FROM read_text('/etc/passwd')", "forbidden_function"),
    ("SELECT * FROM glob('/etc/*')", "forbidden_function"),
    (f"COPY everything TO '{ESCAPE_TARGET}.csv'", "not_a_select"),
    (f"EXPORT DATABASE '{ESCAPE_TARGET}'", "not_a_select"),
    (f"ATTACH '{ESCAPE_TARGET}.duckdb' AS other", "not_a_select"),
    ("DETACH ds", "not_a_select"),
    (f"DETACH ds; ATTACH '{ESCAPE_TARGET}.duckdb' AS ds", "multiple_statements"),
    ("INSTALL httpfs", "not_a_select"),
    ("LOAD httpfs", "not_a_select"),
    ("SET enable_external_access = true", "not_a_select"),
    ("PRAGMA database_list", "not_a_select"),
    ("SELECT 1; SELECT 2", "multiple_statements"),
    ("SELECT * FROM query('SELECT * FROM read_csv(''/etc/passwd'')')", "forbidden_function"),
    ("SELECT * FROM 'http://127.0.0.1:1/x.csv'", "forbidden_operation"),
    ("SELECT * FROM read_parquet('http://127.0.0.1:1/x.parquet')", "forbidden_function"),
    ("SELEC 1", "syntax_error"),
]


@pytest.mark.parametrize(("sql", "code"), SANDBOX_ESCAPES)
def test_bad_sql_fails_the_execution_with_a_stable_code(client, shop, sql, code):
    datasource_id, path = shop
    before = path.read_bytes()
    done = client.wait_until_done(client.run(datasource_id, sql)["execution_id"])
    assert done["execution_status"] == "failed"
    assert done["error_code"] == code
    assert done["error_message"]
    assert (
        httpx.get(
            f"{client.api_url}/executions/{done['execution_id']}/data", headers=client.headers
        ).status_code
        == 204
    )
    assert path.read_bytes() == before
    assert not any(Path(ESCAPE_TARGET).parent.glob(Path(ESCAPE_TARGET).name + "*"))


def test_timeout_fails_within_the_limit_and_the_next_execution_succeeds(client, shop):
    datasource_id, _ = shop
    started = time.monotonic()
    # The range(1e12): DuckDB 1.5 has no range(DOUBLE), so the integer literal.
    slow = client.run(datasource_id, "SELECT count(*) FROM range(1000000000000)")
    done = client.wait_until_done(slow["execution_id"], timeout=30)
    assert (done["execution_status"], done["error_code"]) == ("failed", "timeout")
    assert time.monotonic() - started < 5 + 2 + 3  # limit + grace + polling slack
    assert client.query(datasource_id, "SELECT 41 + 1 AS answer").json()["rows"] == [[42]]


def test_memory_bomb_fails_with_its_own_code(client, shop):
    datasource_id, _ = shop
    bomb = client.run(datasource_id, "SELECT list(range) FROM range(200000000)")
    done = client.wait_until_done(bomb["execution_id"], timeout=60)
    assert done["execution_status"] == "failed"
    assert done["error_code"] == "out_of_memory"


def test_killed_child_fails_that_execution_only(region, client, shop):
    datasource_id, _ = shop
    slow = client.run(
        datasource_id,
        "SELECT count(*) FROM range(1000000) a, range(1000000) b WHERE a.range + b.range = 7",
    )
    deadline = time.monotonic() + 10
    while (
        client.execution(slow["execution_id"])["execution_status"] != "running"
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    time.sleep(0.3)
    children = region.sandbox_children()
    assert children
    for pid in children:
        os.kill(pid, signal.SIGKILL)
    done = client.wait_until_done(slow["execution_id"], timeout=30)
    assert done["execution_status"] == "failed"
    assert done["error_code"] in ("worker_crashed", "timeout")
    assert client.query(datasource_id, "SELECT 7 AS n").json()["rows"] == [[7]]


def test_restarted_data_server_recovers_expired_leases(region, client, shop):
    datasource_id, _ = shop
    execution = client.run(
        datasource_id,
        # A second or two: caught running (a poll of 0.05 s), short enough to run again.
        "SELECT count(*) FROM range(1000000) a, range(700) b WHERE a.range + b.range = 7",
    )
    deadline = time.monotonic() + 10
    while (
        client.execution(execution["execution_id"])["execution_status"] != "running"
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    region.restart_data_server(signal.SIGKILL)
    done = client.wait_until_done(execution["execution_id"], timeout=60)
    assert done["execution_status"] in ("completed", "failed")
    assert done["execution_status"] == "completed" or done["error_code"] in (
        "worker_lost",
        "timeout",
    )


def test_test_connection_reports_ok_and_error(region, client, shop):
    datasource_id, _ = shop
    ok = httpx.post(
        f"{client.api_url}/datasources/{datasource_id}/test_connection",
        headers=client.headers,
        timeout=60,
    )
    assert ok.json() == {"status": "ok", "error_message": None}
    broken_path = region.area(client.organization_id) / "gone.duckdb"
    with duckdb.connect(str(broken_path)) as connection:
        connection.execute("CREATE TABLE t AS SELECT 1")
    created = client.create_duckdb_datasource("gone", "gone.duckdb")
    broken_path.unlink()
    error = httpx.post(
        f"{client.api_url}/datasources/{created}/test_connection",
        headers=client.headers,
        timeout=60,
    ).json()
    assert error["status"] == "error" and error["error_message"]


def test_idempotent_retry_and_cancel_of_a_running_execution(client, shop):
    datasource_id, _ = shop
    sql = "SELECT count(*) FROM range(1000000) a, range(1000000) b WHERE a.range + b.range = 9"
    first = client.run(datasource_id, sql, **{"Idempotency-Key": "cancel-me"})
    again = client.run(datasource_id, sql, **{"Idempotency-Key": "cancel-me"})
    assert first["execution_id"] == again["execution_id"]
    deadline = time.monotonic() + 10
    while (
        client.execution(first["execution_id"])["execution_status"] == "starting"
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    cancelled = httpx.post(
        f"{client.api_url}/executions/{first['execution_id']}/cancel", headers=client.headers
    )
    assert cancelled.status_code == 200
    done = client.wait_until_done(first["execution_id"], timeout=30)
    assert done["execution_status"] == "cancelled"
