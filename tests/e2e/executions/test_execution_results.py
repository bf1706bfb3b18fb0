"""Executions' results end to end: every format returns the in-process values, row windows,
schema refreshes, purging, the store results live in, and what deleting a datasource ends.
"""

from __future__ import annotations

import io
import json
import math

import duckdb
import httpx
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.e2e


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
    # The grant of a named schema is that schema's, fetched as Cluvio's reference says (the data
    # key and its token, no name repeated), and no other's.
    assert client.fetch(named.json()).json() == narrowed
    assert httpx.get(named.json()["data_url"]).json() == narrowed
    refused = client.fetch(named.json(), name="nope")  # the grant is of that one schema
    assert refused.status_code == 403, refused.text
    assert refused.json()["errors"][0]["code"] == "schema_not_granted"
    assert client.fetch(named.json(), name=name).json() == narrowed
    missing = httpx.get(
        f"{client.api_url}/datasources/{datasource_id}/schema",
        params={"name": "nope"},
        headers=client.headers,
    )
    assert missing.status_code == 404
    # ?format= is read as for results: JSON in any case, an unknown one 400, a known other 406.
    for wanted, status in (("JSON", 200), (" json ", 200), ("xml", 400), ("", 400), ("csv", 406)):
        answer = client.fetch(grant, format=wanted)
        assert answer.status_code == status, (wanted, answer.text)
        if status == 400:
            assert answer.json()["errors"][0]["source"] == {"parameter": "format"}
    # Conditional requests as for a row window (no ETag): If-Match of anything is a 412,
    # If-None-Match: * a 304; the answer varies with Accept.
    url = f"{client.data_url}/data/{grant['data_key']}"
    token = {"Authorization": f"Data {grant['data_access_token']}"}
    assert httpx.get(url, headers={**token, "If-Match": '"x"'}).status_code == 412
    assert httpx.get(url, headers={**token, "If-None-Match": "*"}).status_code == 304
    assert httpx.get(url, headers={**token, "If-None-Match": '"x"'}).status_code == 200
    assert client.fetch(grant).headers["vary"] == "Accept"
    # A schema token is not a result token.
    result_url = f"{client.data_url}/data/{grant['data_key'].replace('s_', 'r_', 1)}"
    assert (
        httpx.get(
            result_url, headers={"Authorization": f"Data {grant['data_access_token']}"}
        ).status_code
        == 401
    )


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


def test_what_the_servers_store_is_readable_by_their_user_alone(region, client, shop, deployment):
    """Stored results, schemas and representations and the SQLite metadata database hold tenants'
    rows and SQL: no group or other bits (an outside probe read them as another local user)."""
    datasource_id, _ = shop
    execution = client.run(datasource_id, "SELECT 'private' AS answer")
    client.wait_until_done(execution["execution_id"])
    grant = client.grant(execution["execution_id"])
    assert client.fetch(grant, format="csv").status_code == 200  # a representation, stored
    state = region.cwd / "var"
    stored = [state / "data", *(state / "results").rglob("*")]
    if "DATAFERRY_RESULTS_URL" not in deployment:
        assert any(path.suffix == ".arrow" for path in stored)
    if "DATAFERRY_DATABASE_URL" not in deployment:
        stored += list(state.glob("dataferry.db*"))
    shared = {str(p): oct(p.stat().st_mode & 0o777) for p in stored if p.stat().st_mode & 0o077}
    assert not shared


def test_a_forwarded_for_header_is_believed_only_from_a_trusted_proxy(client, shop):
    """No DATAFERRY_TRUSTED_PROXIES here: a client on the same machine (uvicorn trusts 127.0.0.1
    by default) cannot write its own remote_addr into the audit log."""
    datasource_id, _ = shop
    forged = {"X-Forwarded-For": "203.0.113.77", "X-Forwarded-Proto": "https"}
    execution = client.run(datasource_id, "SELECT 1 AS one", **forged)
    events = client.http.get(
        f"{client.api_url}/audit_events",
        params={"filter[resource_id]": execution["execution_id"]},
        headers=client.headers,
    ).json()["data"]
    assert [event["attributes"]["remote_addr"] for event in events] == ["127.0.0.1"]
