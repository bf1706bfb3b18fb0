"""Reading remote PostgreSQL and MariaDB tables: every common type arrives equal through Arrow and
JSON, Cluvio parameters bind, a selective filter is pushed down to the server, and a refresh
records the remote catalogue.
"""

from __future__ import annotations

import base64
import time
from datetime import datetime

import pyarrow as pa
import pytest

from tests.support.client import DataferryClient
from tests.support.remote_databases import BIG_ROWS, NAME, Server, created, rows

pytestmark = pytest.mark.e2e


def arrow(client: DataferryClient, datasource_id: str, sql: str) -> pa.Table:
    response = client.query(datasource_id, sql, accept="application/vnd.apache.arrow.stream")
    return pa.ipc.open_stream(response.content).read_all()


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
