"""The Python client against real servers: every method, typed errors, resuming, re-granting, 429."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import logging
import os
import threading
import time

import duckdb
import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dataferry_client import (
    AsyncClient,
    AuthenticationError,
    Client,
    Conflict,
    DataNotAvailable,
    ExecutionFailed,
    ExecutionStatus,
    NotFound,
    PermissionDenied,
    QueryTimeout,
    RateLimited,
    Unprocessable,
    operations,
    transport,
)

from tests.client.conftest import new_organization, set_limits
from tests.client.cutting_proxy import cutting_proxy
from tests.support.log_watch import remember
from tests.support.processes import run_cli

pytestmark = pytest.mark.e2e

ORDERS = "SELECT order_id, customer_id, ordered_at, status FROM orders ORDER BY order_id"
# Five stored batches of 65,536 rows: enough for a cut between and inside batches.
WIDE = "SELECT range AS id, 'row ' || range AS label, range * 0.5 AS half FROM range(300000)"
SLOW = "SELECT sum(hash(range)) FROM range(20000000000)"


def raw_fetch(client: Client, execution_id: str, fmt: str) -> bytes:
    """What a plain, unbroken GET of the data server returns."""
    grant = client.executions.grant(execution_id)
    response = httpx.get(
        f"{client.config.data_url}/data/{grant.data_key}",
        params={"format": fmt},
        headers={"Authorization": f"Data {grant.data_access_token}"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return response.content


def test_query_converts_to_arrow_polars_pandas_and_duckdb(dataferry, org):
    result = dataferry.query(org.sample_id, ORDERS)
    table = result.to_arrow()
    assert result.execution.status is ExecutionStatus.COMPLETED
    assert table.num_rows == result.row_count > 1000
    assert table.column_names == ["order_id", "customer_id", "ordered_at", "status"]
    assert table.column("order_id").to_pylist()[:3] == [1, 2, 3]
    assert result.to_polars().shape == (table.num_rows, 4)
    assert result.to_pandas()["order_id"].tolist() == table.column("order_id").to_pylist()
    with duckdb.connect() as connection:
        relation = result.to_duckdb(connection, name="orders_copy")
        assert relation.aggregate("count(*)").fetchone()[0] == table.num_rows
        assert connection.sql("SELECT max(order_id) FROM orders_copy").fetchone()[0] == (
            table.num_rows
        )


def test_the_data_server_is_found_through_the_grant(org, monkeypatch, tmp_path):
    """No data server configured: the grant's data_url says where the data lives."""
    monkeypatch.delenv("DATAFERRY_DATA_URL", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    with Client(org.api_url, org.api_key) as client:
        assert client.config.data_url is None
        result = client.query(org.sample_id, ORDERS)
        assert result.to_arrow().num_rows == result.row_count > 1000
        grant = client.executions.grant(result.execution.id)
    assert grant.data_server == org.data_url
    assert grant.data_access_token not in repr(grant)


def test_query_by_datasource_name_with_parameters(dataferry):
    result = dataferry.query(
        "Sample Data",
        "SELECT order_id FROM orders WHERE {order_id=picked} ORDER BY order_id",
        {"filters": [{"variable_name": "picked", "selected_values": [2, 5]}]},
    )
    assert result.to_arrow().column("order_id").to_pylist() == [2, 5]


def test_empty_result_keeps_its_schema(dataferry, org):
    table = dataferry.query(org.sample_id, "SELECT 1::INTEGER AS one WHERE false").to_arrow()
    assert table.num_rows == 0 and table.schema.field("one").type == pa.int32()


def test_iter_batches_and_save_in_every_format(dataferry, org, tmp_path):
    result = dataferry.query(org.sample_id, WIDE)
    assert sum(batch.num_rows for batch in result.iter_batches()) == 300000
    for name in ("r.arrow", "r.parquet", "r.csv", "r.json", "r.ndjson"):
        result.save(tmp_path / name)
    assert pa.ipc.open_stream((tmp_path / "r.arrow").read_bytes()).read_all().num_rows == 300000
    assert pq.read_table(tmp_path / "r.parquet").num_rows == 300000
    assert (tmp_path / "r.csv").read_text().count("\n") == 300001
    assert json.loads((tmp_path / "r.json").read_text())["row_count"] == 300000
    assert (tmp_path / "r.ndjson").read_text().count("\n") == 300000
    result.save(tmp_path / "out.bin", format="csv")
    assert (tmp_path / "out.bin").read_bytes() == (tmp_path / "r.csv").read_bytes()


@pytest.mark.parametrize(
    ("reader", "cut"),
    [
        ("to_arrow", 2_500_000),
        ("to_arrow_without_memfd", 5_000_000),
        ("iter_batches", 1_000_000),
        ("save_csv", 3_000_000),
    ],
)
def test_download_cut_mid_stream_resumes_byte_identical(dataferry, org, monkeypatch, reader, cut):
    execution = dataferry.query(org.sample_id, WIDE).execution
    fmt = "csv" if reader == "save_csv" else "arrow"
    expected = raw_fetch(dataferry, execution.id, fmt)
    assert len(expected) > cut  # the cut falls inside the body
    with cutting_proxy(org.data_url, [cut]) as proxy, org.client(data_url=proxy.url) as client:
        result = client.result(execution)
        out = io.BytesIO()
        if reader.startswith("to_arrow"):
            if reader == "to_arrow_without_memfd":  # the spool of other systems
                monkeypatch.delattr(os, "memfd_create")
            result.to_arrow()
            result.write(out, "arrow")
        elif reader == "iter_batches":
            batches = list(result.iter_batches())
            with pa.ipc.new_stream(out, batches[0].schema) as writer:
                for batch in batches:
                    writer.write_batch(batch)
        else:
            result.write(out, "csv")
        assert proxy.connections >= 2  # the cut connection, then the continuation
    assert out.getvalue() == expected


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_a_download_cut_again_and_again_continues_where_it_broke(dataferry, org, fmt):
    """Text and Parquet were fetched from their first byte after each cut, and a result cut
    every few megabytes failed after five cuts (found by the outside probe): each continuation
    asks for the rest (Range, If-Range), and cuts that each bring more are not counted against
    the download."""
    execution = dataferry.query(org.sample_id, WIDE).execution
    expected = raw_fetch(dataferry, execution.id, fmt)
    cut = len(expected) // 9 + 1  # eight cuts: more than MAX_INTERRUPTIONS in a row
    with cutting_proxy(org.data_url, [cut] * 8) as proxy, org.client(data_url=proxy.url) as client:
        out = io.BytesIO()
        client.result(execution).write(out, fmt)
    assert out.getvalue() == expected
    assert proxy.connections == 9
    # Each connection brought what was missing (from 0 each time, none would have got past the
    # first cut): the body about once (a chunked body's last piece before a cut is fetched
    # again).
    assert sum(proxy.forwarded) < 1.5 * len(expected)


@pytest.mark.parametrize("reader", ["to_arrow", "iter_batches"])
def test_download_cut_between_batches_resumes(dataferry, org, reader):
    """A cut right after a whole batch: pyarrow alone would take it for the end of the stream."""
    execution = dataferry.query(org.sample_id, WIDE).execution
    expected = raw_fetch(dataferry, execution.id, "arrow")
    stream = pa.ipc.open_stream(expected)
    sink = pa.BufferOutputStream()
    pa.ipc.new_stream(sink, stream.schema).write_batch(stream.read_next_batch())
    boundary = sink.tell()  # the schema message and the first batch
    with cutting_proxy(org.data_url, [None]) as proxy, org.client(data_url=proxy.url) as client:
        client.result(execution).to_arrow()  # a whole transfer: its header length
        proxy.cuts.append(proxy.forwarded[0] - len(expected) + boundary)
        result = client.result(execution)
        table = result.to_arrow() if reader == "to_arrow" else list(result.iter_batches())
        assert proxy.forwarded[1] == proxy.cuts[1] and proxy.connections == 3
    got = table if reader == "to_arrow" else pa.Table.from_batches(table)
    assert got.equals(pa.ipc.open_stream(expected).read_all())


def test_expired_data_token_is_regranted(dataferry, org, caplog):
    result = dataferry.query(org.sample_id, ORDERS)
    first = result.to_arrow()
    time.sleep(6.5)  # 1 s lifetime + 5 s leeway: the token the result holds has expired
    caplog.set_level(logging.INFO, logger="dataferry_client")
    out = io.BytesIO()
    result.write(out, "ndjson")
    assert out.getvalue().count(b"\n") == first.num_rows
    assert any("asking for a new grant" in r.getMessage() for r in caplog.records)


def test_429_is_waited_out(client_region, caplog):
    org = new_organization(client_region, "Busy")
    set_limits(client_region, org.organization_id, "--max-running-executions", "1")
    with org.client(max_retries=20) as client:
        slow = client.executions.run(org.sample_id, SLOW)
        cancel = threading.Timer(1.5, lambda: client.executions.cancel(slow.id))
        caplog.set_level(logging.INFO, logger="dataferry_client")
        cancel.start()
        try:
            assert client.query(org.sample_id, "SELECT 42 AS n").to_arrow()["n"][0].as_py() == 42
        finally:
            cancel.join()
    assert any("HTTP 429; retrying" in r.getMessage() for r in caplog.records)
    with org.client(max_retries=0) as impatient:
        running = impatient.executions.run(org.sample_id, SLOW)
        with pytest.raises(RateLimited) as raised:
            impatient.executions.run(org.sample_id, "SELECT 1")
        impatient.executions.cancel(running.id)  # free the worker for the other tests
        assert raised.value.status == 429 and raised.value.retry_after == 1
        assert raised.value.code == "too_many_running_executions"


def test_run_with_the_same_idempotency_key_runs_once(dataferry, org):
    first = dataferry.executions.run(org.sample_id, "SELECT 1", idempotency_key="k-1")
    again = dataferry.executions.run(org.sample_id, "SELECT 1", idempotency_key="k-1")
    assert first.id == again.id


def test_executions_get_wait_cancel_delete_and_result(dataferry, org):
    quick = dataferry.executions.run(org.sample_id, "SELECT 7 AS seven")
    done = dataferry.executions.wait(quick.id, timeout=30)
    assert done.status is ExecutionStatus.COMPLETED and done.result_rows == 1
    assert dataferry.executions.get(quick.id).attributes["expanded_sql"] == "SELECT 7 AS seven"
    assert dataferry.executions.result(quick.id).to_arrow()["seven"][0].as_py() == 7
    dataferry.executions.delete(quick.id)
    with pytest.raises(NotFound) as purged:
        dataferry.executions.result(quick.id).to_arrow()
    assert purged.value.status == 404
    slow = dataferry.executions.run(org.sample_id, SLOW)
    dataferry.executions.cancel(slow.id)
    cancelled = dataferry.executions.wait(slow.id, timeout=30)
    assert cancelled.status is ExecutionStatus.CANCELLED
    with pytest.raises(ExecutionFailed) as failed:
        dataferry.executions.result(slow.id)
    assert failed.value.execution_status == "cancelled"
    with pytest.raises(DataNotAvailable):  # Get Execution Data answers 204
        dataferry.executions.grant(slow.id)


def test_failed_execution_raises_with_its_error_code(dataferry, org):
    with pytest.raises(ExecutionFailed) as raised:
        dataferry.query(org.sample_id, "SELECT * FROM no_such_table")
    assert raised.value.code and raised.value.execution_status == "failed"
    assert "no_such_table" in raised.value.detail


def test_wait_beyond_timeout_raises_query_timeout(dataferry, org):
    with pytest.raises(QueryTimeout) as raised:
        dataferry.query(org.sample_id, SLOW, timeout=0.5)
    dataferry.executions.cancel(raised.value.execution_id)


def test_errors_carry_status_code_detail_and_pointer(org):
    stranger = Client(org.api_url, "dfk_" + "x" * 40 + "_000000", data_url=org.data_url)
    with stranger, pytest.raises(AuthenticationError) as unauthorised:
        stranger.api_key()
    assert unauthorised.value.status == 401 and unauthorised.value.code
    with org.client() as client:
        with pytest.raises(NotFound) as unknown:
            client.query("zzzz-zzzz-zzzz", "SELECT 1")
        assert unknown.value.status == 404 and unknown.value.detail
        with pytest.raises(Unprocessable) as invalid:
            client.query(
                org.sample_id,
                "SELECT 1",
                {"filters": [{"variable_name": "unused", "selected_values": [1]}]},
            )
    assert invalid.value.status == 422 and invalid.value.pointer.startswith("/parameters/filters")


def test_datasources_every_method(dataferry, client_region, org):
    folder = client_region.area(org.organization_id) / "client_shop"
    folder.mkdir(exist_ok=True)
    (folder / "orders.csv").write_text("order_id,amount\n1,9.50\n2,20.00\n")
    created = dataferry.datasources.create(
        name="Client shop", database_type="files", database="client_shop"
    )
    assert created.name == "Client shop" and created.database_type == "files"
    assert dataferry.datasources.get(created.id).id == created.id
    assert created.id in [d.id for d in dataferry.datasources.list()]
    assert [d.id for d in dataferry.datasources.list(name="Client shop")] == [created.id]
    assert dataferry.datasources.update(created.id, name="Shop").name == "Shop"
    assert dataferry.datasources.test_connection(created.id).status == "ok"
    refresh = dataferry.datasources.refresh(created.id)
    assert dataferry.executions.wait(refresh, timeout=30).status is ExecutionStatus.COMPLETED
    schema = dataferry.datasources.schema(created.id)
    assert "orders" in json.dumps(schema)
    assert dataferry.query(created.id, "SELECT sum(amount) AS s FROM orders").to_arrow()["s"][
        0
    ].as_py() == pytest.approx(29.5)
    dataferry.datasources.delete(created.id)
    with pytest.raises(NotFound):
        dataferry.datasources.get(created.id)


def test_snippets_every_method(dataferry, org):
    snippet = dataferry.snippets.create("client_big", "SELECT 5 AS five", description="five")
    assert snippet.name == "client_big" and snippet.attributes["description"] == "five"
    assert dataferry.snippets.get(snippet.id).sql == "SELECT 5 AS five"
    assert snippet.id in [s.id for s in dataferry.snippets.list()]
    assert dataferry.snippets.update(snippet.id, sql="SELECT 6 AS five").sql == "SELECT 6 AS five"
    assert dataferry.query(org.sample_id, "[client_big]").to_arrow()["five"][0].as_py() == 6
    dataferry.snippets.delete(snippet.id)
    with pytest.raises(NotFound):
        dataferry.snippets.get(snippet.id)


def test_api_key_is_the_calling_key(dataferry, org):
    key = dataferry.api_key()
    assert key.organization_id == org.organization_id
    assert "Manage Datasources" in key.permissions


def test_async_client_every_method(org, tmp_path):
    async def scenario() -> None:
        async with AsyncClient(org.api_url, org.api_key, data_url=org.data_url) as client:
            assert (await client.api_key()).organization_id == org.organization_id
            [sample] = await client.datasources.list(name="Sample Data")
            assert (await client.datasources.get(sample.id)).name == "Sample Data"
            result = await client.query(sample.id, ORDERS)
            table = await result.to_arrow()
            assert table.num_rows == result.row_count
            assert (await result.to_polars()).shape[0] == table.num_rows
            assert len(await result.to_pandas()) == table.num_rows
            rows = [
                batch.num_rows
                async for batch in (await client.query(sample.id, ORDERS)).iter_batches()
            ]
            assert sum(rows) == table.num_rows
            await result.save(tmp_path / "orders.parquet")
            assert result.execution_id == result.execution.id  # as Result has them
            written = io.BytesIO()
            await result.write(written, "csv")
            assert written.getvalue().count(b"\n") == table.num_rows + 1
            execution = await client.executions.run(sample.id, "SELECT 3 AS three")
            done = await client.executions.wait(execution.id, timeout=30)
            assert done.status is ExecutionStatus.COMPLETED
            assert (await (await client.executions.result(execution.id)).to_arrow())["three"][
                0
            ].as_py() == 3
            snippet = await client.snippets.create("async_one", "SELECT 1")
            assert [s.id for s in await client.snippets.list()].count(snippet.id) == 1
            await client.snippets.delete(snippet.id)
            with pytest.raises(NotFound):
                await client.executions.get("00000000-0000-0000-0000-000000000000")

    asyncio.run(scenario())
    assert pq.read_table(tmp_path / "orders.parquet").num_rows > 1000


@pytest.mark.parametrize("pasted", ["\n", "\r\n", " ", "\t"])
def test_a_pasted_key_s_blanks_are_dropped(tmp_path, pasted):
    from dataferry_client.config import resolve_config

    key = "dfk_" + "A" * 40 + "_abcdef"
    environ = {"DATAFERRY_API_KEY": key + pasted, "XDG_CONFIG_HOME": str(tmp_path)}
    assert resolve_config("http://127.0.0.1:1", environ=environ).api_key == key


@pytest.mark.parametrize("inside", ["\r", "é", "\x00", " "])
def test_a_key_with_a_character_no_key_has_is_refused_without_showing_it(tmp_path, inside):
    """Sent as it was, the HTTP library's error quoted the whole header, key included."""
    from dataferry_client.config import resolve_config
    from dataferry_client.errors import ConfigurationError

    key = "dfk_SECRET" + inside + "KEY"
    environ = {"XDG_CONFIG_HOME": str(tmp_path)}
    with pytest.raises(ConfigurationError) as refused:
        resolve_config("http://127.0.0.1:1", key, environ=environ)
    assert "SECRET" not in str(refused.value) and "SECRET" not in repr(refused.value)


def test_a_key_that_may_run_sql_but_not_read_datasources_queries_by_id(client_region, org):
    """The client read the datasource first (View Datasources) and stopped at its 403, though
    the key may run SQL on it (Manage Dashboards alone): found by the outside probe."""
    made = run_cli(
        client_region.env,
        client_region.cwd,
        "create-api-key",
        "--organization",
        org.organization_id,
        "--permissions",
        "Manage Dashboards",
    )
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)["api_key"]
    remember(key)
    with Client(org.api_url, key, data_url=org.data_url) as dashboards_only:
        assert dashboards_only.query(org.sample_id, "SELECT 7 AS n").to_arrow()["n"][0].as_py() == 7
        with pytest.raises(PermissionDenied):
            dashboards_only.datasources.get(org.sample_id)


def test_a_name_two_datasources_have_is_refused_as_ambiguous(dataferry, client_region, org):
    folder = client_region.area(org.organization_id) / "twins"
    folder.mkdir(exist_ok=True)
    twins = [
        dataferry.datasources.create(name="Twin", database_type="files", database="twins")
        for _ in range(2)
    ]
    try:
        with pytest.raises(Conflict) as ambiguous:
            dataferry.query("Twin", "SELECT 1")
        assert ambiguous.value.code == "ambiguous_name" and "give the id" in str(ambiguous.value)
        assert dataferry.query(twins[0].id, "SELECT 1 AS n").to_arrow()["n"][0].as_py() == 1
    finally:
        for twin in twins:
            dataferry.datasources.delete(twin.id)


def test_a_name_with_a_slash_resolves_and_an_unknown_one_is_named(dataferry, client_region, org):
    """A name may hold a slash, which no id does and no path can carry: it was sent as an id,
    and the server's 400 (``encoded_slash``) ended the query. An unknown name was answered with
    the server's "No datasource with this id exists." (outside probe)."""
    (client_region.area(org.organization_id) / "slashed").mkdir(exist_ok=True)
    made = dataferry.datasources.create(
        name="Sales 2024/Q1", database_type="files", database="slashed"
    )
    try:
        assert dataferry.query("Sales 2024/Q1", "SELECT 3 AS n").to_arrow()["n"][0].as_py() == 3
        with pytest.raises(NotFound) as unknown:
            dataferry.query("No such/name", "SELECT 1")
        assert "id or name 'No such/name'" in str(unknown.value)
        with pytest.raises(NotFound) as unknown:
            dataferry.query("Nope", "SELECT 1")
        assert "id or name 'Nope'" in str(unknown.value)
    finally:
        dataferry.datasources.delete(made.id)


def test_a_parameter_json_cannot_hold_is_refused_before_sending(dataferry, org):
    from dataferry_client import NotJson

    for value in (float("nan"), float("inf")):
        with pytest.raises(NotJson) as refused:
            dataferry.query(
                org.sample_id,
                "SELECT {v.value} AS v",
                {"filters": [{"variable_name": "v", "selected_values": [value]}]},
            )
        assert isinstance(refused.value, ValueError) and "send it as a string" in str(refused.value)


class _Answer:
    def __init__(self, status: int, **headers: str) -> None:
        self.status, self._headers = status, {k.replace("_", "-"): v for k, v in headers.items()}

    def getheader(self, name: str, default: str | None = None) -> str | None:
        return self._headers.get(name, default)


def test_a_continuation_never_splices_two_renderings_and_ends_at_the_end():
    """From a review: a 200 after a break was skipped into whatever it was (another encoding
    after an upgrade), and a body whose final chunk was lost after its last byte failed 416."""
    from dataferry_client import IncompleteResult
    from dataferry_client.download import _what_to_skip

    assert _what_to_skip(_Answer(200, ETag='"a"'), 0, None) == 0  # the first answer
    assert _what_to_skip(_Answer(206, Content_Range="bytes 100-199/200"), 100, '"a"') == 0
    assert _what_to_skip(_Answer(200, ETag='"a"'), 100, '"a"') == 100  # whole again: skipped
    assert _what_to_skip(_Answer(416, Content_Range="bytes */100"), 100, '"a"') is None
    for refused in (
        _Answer(200, ETag='"b"'),  # another rendering: never spliced
        _Answer(206, Content_Range="bytes 50-199/200"),  # not where it broke
        _Answer(416, Content_Range="bytes */300"),  # bytes still missing
    ):
        with pytest.raises(IncompleteResult):
            _what_to_skip(refused, 100, '"a"')


@pytest.mark.parametrize("during", ["the run", "a later wait"])
def test_an_async_query_whose_task_is_cancelled_cancels_its_execution(org, monkeypatch, during):
    """A timeout around ``await client.query(...)`` left the execution running on to its time
    limit. Cancelled during the run, which waits, the run is sent again with its key and no
    wait; cancelled later, in a wait of its own, the execution is known."""
    sent: list[str] = []  # each call as it is sent, and its answer's status if one came
    real_send = transport.AsyncTransport.send

    cancelled: list[str] = []

    async def recorded(self, call):
        kind = call.path.rsplit("/", 1)[-1] if call.method == "POST" else call.path
        kind = "wait" if call.path.startswith("/executions/") and call.method == "GET" else kind
        if kind == "cancel":
            cancelled.append(call.path.split("/")[2])
        sent.append(kind)
        reply = await real_send(self, call)
        sent[-1] = f"{kind} {reply.status}"
        return reply

    monkeypatch.setattr(transport.AsyncTransport, "send", recorded)
    if during == "a later wait":  # the run answers at once, still running; then waits
        calls, real_wait = itertools.count(), operations._next_wait
        monkeypatch.setattr(
            operations, "_next_wait", lambda *args: real_wait(*args) if next(calls) else 0.0
        )

    async def scenario() -> None:
        async with AsyncClient(org.api_url, org.api_key, data_url=org.data_url) as client:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(3):
                    await client.query(org.sample_id, SLOW)

    asyncio.run(scenario())
    found = f"/datasources/{org.sample_id} 200"  # the datasource named, looked up first
    if during == "the run":
        assert sent == [found, "executions", "executions 200", "cancel 200"]
    else:
        assert sent[:2] == [found, "executions 200"] and sent[-2:] == ["wait", "cancel 200"], sent
    [execution_id] = cancelled
    with org.client() as client:
        assert client.executions.wait(execution_id, timeout=30).status is ExecutionStatus.CANCELLED
