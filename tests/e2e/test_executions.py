"""Executions end to end through real uvicorn processes of both servers."""

from __future__ import annotations

import io
import json
import math
import os
import signal
import time
from pathlib import Path

import duckdb
import httpx
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from tests.support.processes import running_region

pytestmark = pytest.mark.e2e

TYPES_SQL = """
SELECT * FROM (VALUES
  (1, 9007199254740993::BIGINT, 170141183460469231731687303715884105727::HUGEINT, 12.50::DECIMAL(10,2),
   1.5::DOUBLE, 'NaN'::DOUBLE, 'héllo "wörld"'::VARCHAR, TRUE, DATE '2024-02-29', TIME '13:45:31.5',
   TIMESTAMP '2024-03-31 01:30:00.123456', TIMESTAMPTZ '2024-03-31 01:30:00+02', INTERVAL 1 MONTH + INTERVAL 2 DAY + INTERVAL 3 SECOND,
   [1, 2, NULL]::INTEGER[], {'a': 1, 'b': 'x'}, '\\x00\\xFF'::BLOB, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::UUID),
  (2, (-9223372036854775808)::BIGINT, NULL, NULL, 'Infinity'::DOUBLE, '-Infinity'::DOUBLE, NULL, NULL, NULL, NULL,
   NULL, NULL, NULL, [], NULL, NULL, NULL)
) AS t(id, big, huge, dec, dbl, special, txt, flag, day, tod, ts, tstz, span, ints, obj, raw, uid)
ORDER BY id
"""


@pytest.fixture(scope="module")
def region(tmp_path_factory, deployment):
    cwd = tmp_path_factory.mktemp("exec-region")
    env = {
        **deployment,
        "DATAFERRY_QUERY_TIMEOUT_SECONDS": "5",
        "DATAFERRY_LEASE_SECONDS": "3",
        "DATAFERRY_QUERY_MEMORY_LIMIT_MB": "256",
        "DATAFERRY_WORKER_PROCESSES": "2",
        "DATAFERRY_POLL_INTERVAL_SECONDS": "0.05",
    }
    with running_region(cwd, env) as started:
        yield started


@pytest.fixture(scope="module")
def shop(region, client):
    """A DuckDB datasource with a table of every type, created through the API."""
    path = region.area(client.organization_id) / "types.duckdb"
    with duckdb.connect(str(path)) as connection:
        connection.execute(f"CREATE TABLE everything AS {TYPES_SQL}")
        connection.execute("CREATE TABLE numbers AS SELECT range AS n FROM range(250000)")
    return client.create_duckdb_datasource("types", "types.duckdb"), path


# What the JSON format must say for TYPES_SQL: exact integers beyond 2^53, decimals as strings with
# their scale, NaN/Infinity as strings, ISO 8601 times (zoned ones in UTC), base64 blobs.
EXPECTED_JSON_ROWS = [
    [
        1, 9007199254740993, "170141183460469231731687303715884105727", "12.50", 1.5, "NaN",
        'héllo "wörld"', True, "2024-02-29", "13:45:31.500000", "2024-03-31T01:30:00.123456",
        "2024-03-30T23:30:00.000000+00:00", {"months": 1, "days": 2, "nanoseconds": 3_000_000_000},
        [1, 2, None], {"a": 1, "b": "x"}, "AP8=", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    ],
    [
        2, -9223372036854775808, None, None, "Infinity", "-Infinity", None, None, None, None,
        None, None, None, [], None, None, None,
    ],
]  # fmt: skip


def _same_values(got: pa.Table, expected: pa.Table) -> bool:
    """Equal schemas and values, NaN counting as equal to NaN (Table.equals says it is not)."""

    def comparable(value):
        return "NaN" if isinstance(value, float) and math.isnan(value) else value

    return got.schema.equals(expected.schema) and [
        [comparable(v) for v in column.to_pylist()] for column in got.columns
    ] == [[comparable(v) for v in column.to_pylist()] for column in expected.columns]


def _in_process(path, sql):
    with duckdb.connect(str(path), read_only=True) as connection:
        connection.execute("SET TimeZone = 'UTC'")
        return connection.execute(sql).to_arrow_table()


def test_every_format_returns_the_in_process_values(client, shop):
    datasource_id, path = shop
    sql = "SELECT * FROM everything ORDER BY id"
    expected = _in_process(path, sql)
    execution = client.run(datasource_id, sql)
    done = client.wait_until_done(execution["execution_id"])
    assert done["execution_status"] == "completed", done
    assert (done["result_rows"], done["result_columns"]) == (2, expected.num_columns)
    assert done["result_size"] > 0 and done["result_truncated"] is False
    grant = client.grant(execution["execution_id"])
    assert set(grant) == {"data_key", "data_access_token", "data_timestamp", "data_url"}
    assert grant["data_url"] == (
        f"{client.data_url}/data/{grant['data_key']}?token={grant['data_access_token']}"
    )

    arrow = client.fetch(grant, "application/vnd.apache.arrow.stream")
    assert arrow.headers["content-type"] == "application/vnd.apache.arrow.stream"
    assert _same_values(pa.ipc.open_stream(arrow.content).read_all(), expected)

    parquet = pq.read_table(io.BytesIO(client.fetch(grant, format="parquet").content))
    # Parquet has no month-day-nano interval: that column travels as its JSON text.
    assert _same_values(parquet.drop_columns(["span"]), expected.drop_columns(["span"]))
    assert json.loads(parquet.column("span")[0].as_py()) == EXPECTED_JSON_ROWS[0][12]

    document = client.fetch(grant).json()  # JSON is the default
    assert document["row_count"] == 2
    assert [c["name"] for c in document["columns"]] == expected.column_names
    assert [c["type"] for c in document["columns"]] == [str(t) for t in expected.schema.types]
    assert document["rows"] == EXPECTED_JSON_ROWS

    lines = client.fetch(grant, "application/x-ndjson").text.strip().split("\n")
    assert [json.loads(line) for line in lines] == [
        dict(zip(expected.column_names, row, strict=True)) for row in EXPECTED_JSON_ROWS
    ]

    csv = client.fetch(grant, "text/csv")
    assert csv.headers["content-type"].startswith("text/csv")
    table = pa_csv.read_csv(
        io.BytesIO(csv.content),
        convert_options=pa_csv.ConvertOptions(
            column_types=dict.fromkeys(expected.column_names, pa.string())
        ),
    )
    assert table.to_pylist()[0] | {"tstz": None} == {
        "id": "1", "big": "9007199254740993", "huge": "170141183460469231731687303715884105727",
        "dec": "12.50", "dbl": "1.5", "special": "nan", "txt": 'héllo "wörld"', "flag": "true",
        "day": "2024-02-29", "tod": "13:45:31.500000", "ts": "2024-03-31 01:30:00.123456",
        "tstz": None, "span": '{"months":1,"days":2,"nanoseconds":3000000000}', "ints": "[1,2,null]",
        "obj": '{"a":1,"b":"x"}', "raw": "AP8=", "uid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    }  # fmt: skip


def test_offset_and_limit_select_rows_without_rerunning(client, shop):
    datasource_id, _ = shop
    execution = client.run(datasource_id, "SELECT n FROM numbers ORDER BY n")
    client.wait_until_done(execution["execution_id"])
    grant = client.grant(execution["execution_id"])
    window = client.fetch(grant, format="json", offset=100_000, limit=70_000).json()
    assert window["row_count"] == 70_000
    assert window["rows"][0] == [100_000] and window["rows"][-1] == [169_999]
    assert (
        client.execution(execution["execution_id"])["completed_at"]
        == client.execution(execution["execution_id"])["completed_at"]
    )


def test_sample_datasource_answers_queries(client):
    sample_id = httpx.get(
        f"{client.api_url}/datasources?filter[database_type]=sample", headers=client.headers
    ).json()["data"][0]["id"]
    rows = client.query(
        sample_id, "SELECT count(*) AS n FROM orders JOIN customers USING (customer_id)"
    ).json()["rows"]
    assert rows[0][0] > 0


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
        "SELECT count(*) FROM range(1000000) a, range(2000) b WHERE a.range + b.range = 7",
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


def test_schema_refresh_and_fetch(client, shop):
    datasource_id, _ = shop
    refresh = httpx.post(
        f"{client.api_url}/datasources/{datasource_id}/refresh", headers=client.headers
    ).json()
    assert client.wait_until_done(refresh["execution_id"])["execution_status"] == "completed"
    grant = httpx.get(
        f"{client.api_url}/datasources/{datasource_id}/schema", headers=client.headers
    ).json()
    assert set(grant) == {"data_key", "data_access_token", "data_url"}
    assert httpx.get(grant["data_url"]).json() == client.fetch(grant).json()
    document = client.fetch(grant).json()
    tables = {t["name"] for s in document["schemas"] for t in s["tables"]}
    assert {"everything", "numbers"} <= tables
    name = document["schemas"][0]["name"]
    narrowed = client.fetch(grant, name=name).json()
    assert narrowed["name"] == name
    named = httpx.get(
        f"{client.api_url}/datasources/{datasource_id}/schema",
        params={"name": name},
        headers=client.headers,
    )
    assert named.status_code == 200
    missing = httpx.get(
        f"{client.api_url}/datasources/{datasource_id}/schema",
        params={"name": "nope"},
        headers=client.headers,
    )
    assert missing.status_code == 404
    # A schema token is not a result token.
    result_url = f"{client.data_url}/data/{grant['data_key'].replace('s_', 'r_', 1)}"
    assert (
        httpx.get(
            result_url, headers={"Authorization": f"Data {grant['data_access_token']}"}
        ).status_code
        == 401
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


def test_purged_result_is_gone(client, shop):
    datasource_id, _ = shop
    execution = client.run(datasource_id, "SELECT 1 AS one")
    client.wait_until_done(execution["execution_id"])
    grant = client.grant(execution["execution_id"])
    assert client.fetch(grant).status_code == 200
    assert (
        httpx.delete(
            f"{client.api_url}/executions/{execution['execution_id']}", headers=client.headers
        ).status_code
        == 204
    )
    assert client.fetch(grant).status_code == 404
    assert (
        httpx.get(
            f"{client.api_url}/executions/{execution['execution_id']}/data", headers=client.headers
        ).status_code
        == 404
    )


def test_unsupported_accept_is_406_and_bad_window_400(client, shop):
    datasource_id, _ = shop
    execution = client.run(datasource_id, "SELECT 1 AS one")
    client.wait_until_done(execution["execution_id"])
    grant = client.grant(execution["execution_id"])
    assert client.fetch(grant, "image/png").status_code == 406
    assert client.fetch(grant, offset="-1").status_code == 400
    assert client.fetch(grant, format="xml").status_code == 400


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


def test_results_live_in_the_configured_store(region, client, shop, deployment, request):
    datasource_id, _ = shop
    execution = client.run(datasource_id, "SELECT 42 AS answer")
    client.wait_until_done(execution["execution_id"])
    data_key = client.grant(execution["execution_id"])["data_key"]
    local = region.cwd / "var" / "results" / "results" / f"{data_key}.arrow"
    if "DATAFERRY_RESULTS_URL" in deployment:
        object_store = request.getfixturevalue("object_store")
        keys = object_store.keys(deployment["DATAFERRY_RESULTS_URL"])
        assert f"results/results/{data_key}.arrow" in keys
        assert not local.exists()
        assert deployment["DATAFERRY_DATABASE_URL"].startswith("postgresql")
    else:
        assert local.exists()


def test_deleting_a_datasource_ends_its_tokens_and_stored_results(
    region, client, deployment, request
):
    path = region.area(client.organization_id) / "doomed.duckdb"
    with duckdb.connect(str(path)) as connection:
        connection.execute("CREATE TABLE t AS SELECT 1 AS a")
    datasource_id = client.create_duckdb_datasource("doomed", path.name)
    execution = client.run(datasource_id, "SELECT a FROM t")
    assert client.wait_until_done(execution["execution_id"])["execution_status"] == "completed"
    grant = client.grant(execution["execution_id"])
    assert client.fetch(grant).status_code == 200

    deleted = httpx.delete(f"{client.api_url}/datasources/{datasource_id}", headers=client.headers)
    assert deleted.status_code == 204

    gone = client.fetch(grant)
    assert gone.status_code == 404, gone.text
    assert gone.json()["errors"][0]["code"] == "result_gone"
    if "DATAFERRY_RESULTS_URL" in deployment:
        keys = request.getfixturevalue("object_store").keys(deployment["DATAFERRY_RESULTS_URL"])
        assert not [key for key in keys if grant["data_key"] in key]
    else:
        assert not (
            region.cwd / "var" / "results" / "results" / f"{grant['data_key']}.arrow"
        ).exists()
