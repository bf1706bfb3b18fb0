"""The engine in-process: the SQL check, the locked DuckDB instance behind it, and result caps."""

from __future__ import annotations

import decimal
import hashlib
import os
import sqlite3
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from data_server import duckdb_errors, engine
from data_server.engine import DatasourceSpec, Limits, QueryFailed, QueryJob, Sandbox
from tests.support.factories import SANDBOX_LIMITS

LIMITS = replace(SANDBOX_LIMITS, timeout_seconds=5)


@pytest.fixture
def datasource(tmp_path) -> DatasourceSpec:
    root = tmp_path / "data"
    root.mkdir()
    with duckdb.connect(str(root / "shop.duckdb")) as connection:
        connection.execute("CREATE TABLE numbers AS SELECT range AS n FROM range(200000)")
        connection.execute("CREATE VIEW evens AS SELECT n FROM numbers WHERE n % 2 = 0")
    (root / "secret.csv").write_text("password\nhunter2\n")
    return DatasourceSpec("duckdb", str(root / "shop.duckdb"))


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _job(spec: DatasourceSpec, sql: str, tmp_path: Path, limits: Limits = LIMITS) -> QueryJob:
    return QueryJob(spec, sql, None, limits, str(tmp_path / "out.arrow"), str(tmp_path / "scratch"))


def test_a_select_is_written_as_an_arrow_ipc_file(datasource, tmp_path):
    outcome = engine.run_query(
        _job(datasource, "SELECT n, n * 2 AS twice FROM numbers ORDER BY n", tmp_path)
    )
    table = pa.ipc.open_file(str(tmp_path / "out.arrow")).read_all()
    assert (outcome.rows, outcome.columns, outcome.truncated) == (200_000, 2, False)
    assert outcome.size_bytes == (tmp_path / "out.arrow").stat().st_size
    assert table.column("twice")[199_999].as_py() == 399_998


WIDE_INTEGERS_SQL = """
SELECT * FROM (VALUES
  (340282366920938463463374607431768211455::UHUGEINT,
   -170141183460469231731687303715884105727::HUGEINT,
   '-123456789012345678901234567890123456789012345'::VARINT),
  (170141183460469231731687303715884105728::UHUGEINT, 170141183460469231731687303715884105727,
   '0'::VARINT),
  (NULL, NULL, NULL),
  (0, 99999999999999999999999999999999999999, ('1' || repeat('0', 5000))::VARINT)
) AS t(u, h, v)
"""


def test_wide_integers_are_stored_exactly(datasource, tmp_path):
    """Before, DuckDB's own export stored a UHUGEINT of 2^128 - 1 as -1 and a BIGNUM as DuckDB's
    internal bytes. A HUGEINT keeps DuckDB's decimal128(38, 0), which DuckDB's and polars'
    readers read (decimal256, tried first, they read wrongly or not at all)."""
    engine.run_query(_job(datasource, WIDE_INTEGERS_SQL, tmp_path))
    table = pa.ipc.open_file(str(tmp_path / "out.arrow")).read_all()
    assert table.schema.types == [pa.string(), pa.decimal128(38, 0), pa.string()]
    with duckdb.connect() as connection:  # DuckDB's own spelling of every value
        expected = connection.execute(
            f"SELECT u::VARCHAR, h::VARCHAR, v::VARCHAR FROM ({WIDE_INTEGERS_SQL})"
        ).fetchall()
    stored = [
        tuple(None if value is None else str(value) for value in row.values())
        for row in table.to_pylist()
    ]
    assert stored == expected
    assert len(stored[3][2]) == 5001


BITS_SQL = """
SELECT * FROM (VALUES
  ('0101'::BIT, ['1'::BIT, NULL], {'b': '10000000011'::BIT}),
  ('00000000'::BIT, [], {'b': '0'::BIT}),
  (NULL, NULL, NULL)
) AS t(b, listed, structured)
"""


def test_bits_are_stored_as_duckdb_spells_them(datasource, tmp_path):
    """DuckDB exports a BIT as binary holding its own layout: ``'0101'`` went out as the bytes
    ``04 f5``, base64 ``"BPU="`` in JSON (outside probe)."""
    engine.run_query(_job(datasource, BITS_SQL, tmp_path))
    table = pa.ipc.open_file(str(tmp_path / "out.arrow")).read_all()
    assert table.schema.field("b").type == pa.string()
    assert table.to_pylist() == [
        {"b": "0101", "listed": ["1", None], "structured": {"b": "10000000011"}},
        {"b": "00000000", "listed": [], "structured": {"b": "0"}},
        {"b": None, "listed": None, "structured": None},
    ]


NESTED_WIDE_INTEGERS_SQL = """
SELECT
  [340282366920938463463374607431768211455::UHUGEINT, NULL] AS listed,
  {'u': 170141183460469231731687303715884105728::UHUGEINT,
   'v': ['-123456789012345678901234567890'::VARINT]} AS structured,
  MAP {340282366920938463463374607431768211455::UHUGEINT: '7'::VARINT} AS mapped,
  [1::UHUGEINT, 340282366920938463463374607431768211455::UHUGEINT]::UHUGEINT[2] AS fixed,
  union_value(u := 340282366920938463463374607431768211455::UHUGEINT)
    ::UNION(u UHUGEINT, s VARCHAR) AS tagged,
  [170141183460469231731687303715884105727::HUGEINT] AS signed
UNION ALL
SELECT NULL, NULL, NULL, NULL, union_value(s := 'x')::UNION(u UHUGEINT, s VARCHAR), NULL
"""


def test_wide_integers_nested_in_lists_structs_maps_and_unions_are_stored_exactly(
    datasource, tmp_path
):
    """Before, a UHUGEINT of 2^127 or more inside a list, struct, map or union was stored
    wrapped to a negative number, and a BIGNUM there as DuckDB's internal bytes."""
    engine.run_query(_job(datasource, NESTED_WIDE_INTEGERS_SQL, tmp_path))
    table = pa.ipc.open_file(str(tmp_path / "out.arrow")).read_all()
    assert table.schema.field("signed").type.value_type == pa.decimal128(38, 0)
    stored = table.to_pylist()
    assert stored[0] == {
        "listed": ["340282366920938463463374607431768211455", None],
        "structured": {
            "u": "170141183460469231731687303715884105728",
            "v": ["-123456789012345678901234567890"],
        },
        "mapped": [("340282366920938463463374607431768211455", "7")],
        "fixed": ["1", "340282366920938463463374607431768211455"],
        "tagged": "340282366920938463463374607431768211455",
        "signed": [decimal.Decimal("170141183460469231731687303715884105727")],
    }
    assert stored[1] == {
        "listed": None,
        "structured": None,
        "mapped": None,
        "fixed": None,
        "tagged": "x",
        "signed": None,
    }


def _pullers() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "batches-ahead"]


def _watch_pullers(monkeypatch) -> list[str]:
    """The names of the threads that pull batches ahead from now on (they still pull)."""
    pulled: list[str] = []
    real = engine._BatchesAhead._pull

    def pull(self, batches):
        pulled.append(threading.current_thread().name)
        real(self, batches)

    monkeypatch.setattr(engine._BatchesAhead, "_pull", pull)
    return pulled


def test_row_cap_truncates_and_says_so(datasource, tmp_path):
    limits = Limits(**{**LIMITS.__dict__, "max_result_rows": 70_000})
    outcome = engine.run_query(_job(datasource, "SELECT n FROM numbers", tmp_path, limits))
    assert (outcome.rows, outcome.truncated) == (70_000, True)
    assert pa.ipc.open_file(str(tmp_path / "out.arrow")).read_all().num_rows == 70_000
    assert not _pullers()


def test_a_cap_stops_an_endless_result_at_once(datasource, tmp_path):
    limits = Limits(**{**LIMITS.__dict__, "max_result_rows": 200_000, "timeout_seconds": 60})
    started = time.monotonic()
    outcome = engine.run_query(
        _job(datasource, "SELECT * FROM range(1000000000000)", tmp_path, limits)
    )
    assert (outcome.rows, outcome.truncated) == (200_000, True)
    assert time.monotonic() - started < 30  # not at the time limit
    assert not _pullers()


def test_an_error_in_a_later_batch_fails_the_execution(datasource, tmp_path):
    sql = "SELECT CASE WHEN n < 150000 THEN n ELSE error('boom at ' || n) END AS n FROM numbers"
    with pytest.raises(QueryFailed) as failure:
        engine.run_query(_job(datasource, sql, tmp_path))
    assert (failure.value.code, "boom at" in failure.value.message) == ("execution_error", True)
    assert not _pullers()


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELECT error(printf('bad %c value', 255))", "Invalid Input Error: bad \ufffd value"),
        (
            "SELECT printf('%c', 255)::INTEGER",
            "Conversion Error: Could not convert string '\ufffd' to INT32",
        ),
    ],
)
def test_an_error_quoting_text_that_is_not_utf8_fails_the_execution_saying_why(
    datasource, tmp_path, sql, message
):
    """The binding cannot decode such a message and raises UnicodeDecodeError instead of the
    DuckDB error (the execution failed as "UnicodeDecodeError")."""
    with pytest.raises(QueryFailed) as failure:
        engine.run_query(_job(datasource, sql, tmp_path))
    assert (failure.value.code, failure.value.message) == ("execution_error", message)


def test_a_decoding_error_that_is_no_duckdb_message_is_not_taken_for_one():
    undecodable = UnicodeDecodeError("utf-8", b"no kind \xff here", 8, 9, "invalid start byte")
    with pytest.raises(UnicodeDecodeError), duckdb_errors.undecodable_as_duckdb_error():
        raise undecodable


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("INTERRUPT Error: Interrupted!", duckdb.InterruptException),
        ("Out of Memory Error: failed to allocate", duckdb.OutOfMemoryException),
        ("IO Error: connection reset", duckdb.IOException),
        ("Something new: with no kind", duckdb.Error),
    ],
)
def test_errors_of_a_streaming_result_are_raised_as_duckdb_errors(text, kind):
    class FailingReader:
        def __iter__(self):
            raise OSError(text)

    with pytest.raises(duckdb.Error) as raised:
        list(engine._as_duckdb_errors(FailingReader()))
    assert (type(raised.value), str(raised.value)) == (kind, text)


def test_a_result_of_one_batch_starts_no_puller(datasource, tmp_path, monkeypatch):
    pulled = _watch_pullers(monkeypatch)
    outcome = engine.run_query(_job(datasource, "SELECT n FROM numbers LIMIT 1000", tmp_path))
    assert (outcome.rows, pulled) == (1000, [])


class _CountingReader:
    """Batches of ``engine.BATCH_ROWS`` rows, one of each width (bytes a row) given; notes, each
    time it makes one, how many bytes it made that the caller has not yet written, and how many
    bytes of batches are still held anywhere (Arrow's allocations since it was made)."""

    schema = pa.schema([("s", pa.binary())])

    def __init__(self, widths: list[int]) -> None:
        self.widths = widths
        self.sizes: list[int] = []
        self.written = 0
        self.unwritten_when_made: list[int] = []
        self.held_when_made: list[int] = []
        self._allocated_before = pa.total_allocated_bytes()

    def __iter__(self):
        for width in self.widths:
            self.unwritten_when_made.append(sum(self.sizes[self.written :]))
            self.held_when_made.append(pa.total_allocated_bytes() - self._allocated_before)
            values = pa.array([b"x" * width] * engine.BATCH_ROWS, pa.binary())
            batch = pa.record_batch([values], self.schema)
            self.sizes.append(batch.nbytes)
            yield batch
            del batch, values


BUDGET = 1024 * 1024  # batches of width 1 weigh ~330 KB, of width 20 ~1.6 MB


@pytest.mark.parametrize(
    "widths",
    [[1] * 12, [1] * 3 + [20] * 9, [1, 20] * 6],
    ids=["narrow", "narrow-then-wide", "alternating"],
)
def test_batches_are_made_ahead_only_within_the_byte_budget(monkeypatch, widths):
    monkeypatch.setattr(engine._BatchesAhead, "_AHEAD_BYTES", BUDGET)
    reader = _CountingReader(widths)
    with engine._BatchesAhead(reader, lambda: None) as batches:
        for batch in batches:
            time.sleep(0.01)  # a slow writer: the puller goes as far ahead as it may
            reader.written += 1
            del batch
    assert reader.written == len(widths)
    assert max(reader.unwritten_when_made) < BUDGET
    assert max(reader.unwritten_when_made) > 0  # it did make batches ahead
    # ... and held none it had handed over once written
    slack = min(reader.sizes) // 2
    assert all(
        held <= unwritten + slack
        for held, unwritten in zip(reader.held_when_made, reader.unwritten_when_made, strict=True)
    )


def test_a_result_of_wide_batches_is_read_in_turn_on_the_callers_thread(monkeypatch):
    monkeypatch.setattr(engine._BatchesAhead, "_AHEAD_BYTES", BUDGET)
    pulled = _watch_pullers(monkeypatch)
    reader = _CountingReader([20] * 6)
    with engine._BatchesAhead(reader, lambda: None) as batches:
        for batch in batches:
            reader.written += 1
            del batch
    assert (reader.written, pulled, max(reader.unwritten_when_made)) == (6, [], 0)
    assert max(reader.held_when_made) < min(reader.sizes) // 2  # none kept once written


class _StallingReader:
    """A full first batch, then a second that is made only once the query is interrupted (it
    raises as DuckDB's stream does), or after ``wait`` seconds."""

    schema = pa.schema([("n", pa.int64())])

    def __init__(self, wait: float) -> None:
        self.wait = wait
        self.making_second = threading.Event()
        self.interrupted = threading.Event()

    def __iter__(self):
        yield pa.record_batch([pa.array(range(engine.BATCH_ROWS), pa.int64())], self.schema)
        self.making_second.set()
        if self.interrupted.wait(self.wait):
            raise OSError("INTERRUPT Error: Interrupted!")
        yield pa.record_batch([pa.array([1], pa.int64())], self.schema)


def test_a_caller_that_stops_early_interrupts_the_batch_being_made():
    reader = _StallingReader(wait=30)
    with engine._BatchesAhead(reader, reader.interrupted.set) as batches:
        for _ in batches:
            assert reader.making_second.wait(30)
            break  # a cap cut the result here
    assert reader.interrupted.is_set()
    assert not _pullers()


def test_a_result_of_narrow_batches_is_pulled_ahead(datasource, tmp_path, monkeypatch):
    pulled = _watch_pullers(monkeypatch)
    outcome = engine.run_query(_job(datasource, "SELECT n FROM numbers", tmp_path))
    table = pa.ipc.open_file(str(tmp_path / "out.arrow")).read_all()
    assert (outcome.rows, pulled) == (200_000, ["batches-ahead"])
    assert table.column("n").to_pylist() == list(range(200_000))


def test_byte_cap_truncates_and_says_so(datasource, tmp_path):
    limits = Limits(**{**LIMITS.__dict__, "max_result_bytes": 100_000})
    outcome = engine.run_query(_job(datasource, "SELECT n FROM numbers", tmp_path, limits))
    assert outcome.truncated
    assert 0 < outcome.rows <= 100_000 // 8


@pytest.mark.parametrize(
    ("sql", "code"),
    [
        ("SELECT * FROM read_csv('/etc/passwd')", "forbidden_function"),
        ("SELECT * FROM read_text('/etc/passwd')", "forbidden_function"),
        ("SELECT * FROM read_blob('/etc/passwd')", "forbidden_function"),
        ("SELECT * FROM glob('/*')", "forbidden_function"),
        ("SELECT * FROM query('SELECT 1')", "forbidden_function"),
        ("SELECT * FROM query_table('numbers')", "forbidden_function"),
        ("SELECT * FROM pragma_version()", "forbidden_function"),
        ("SELECT * FROM duckdb_settings()", "forbidden_function"),
        ("SELECT (SELECT count(*) FROM read_csv('/etc/passwd'))", "forbidden_function"),
        ("WITH x AS (SELECT * FROM glob('/*')) SELECT * FROM x", "forbidden_function"),
        ("EXPLAIN SELECT * FROM read_csv('/etc/passwd')", "forbidden_function"),
        ("SELECT * FROM '/etc/passwd'", "forbidden_operation"),
        ("SELECT * FROM 'secret.csv'", "forbidden_operation"),
        ("SELECT * FROM 'https://example.com/x.parquet'", "forbidden_operation"),
        ("COPY numbers TO 'stolen.csv'", "not_a_select"),
        ("EXPORT DATABASE 'stolen'", "not_a_select"),
        ("ATTACH 'other.duckdb' AS other", "not_a_select"),
        ("DETACH ds", "not_a_select"),
        ("INSTALL httpfs", "not_a_select"),
        ("LOAD httpfs", "not_a_select"),
        ("SET enable_external_access = true", "not_a_select"),
        ("RESET lock_configuration", "not_a_select"),
        ("PRAGMA database_list", "not_a_select"),
        ("CALL pragma_version()", "not_a_select"),
        ("CREATE TABLE t AS SELECT 1", "not_a_select"),
        ("INSERT INTO numbers VALUES (1)", "not_a_select"),
        ("DELETE FROM numbers", "not_a_select"),
        ("CHECKPOINT", "not_a_select"),
        ("SELECT 1; SELECT 2", "multiple_statements"),
        ("SELECT 1; DROP TABLE numbers", "multiple_statements"),
        ("SELEC 1", "syntax_error"),
        ("", "syntax_error"),
    ],
)
def test_forbidden_sql_fails_before_running_and_changes_nothing(datasource, tmp_path, sql, code):
    data_root = Path(datasource.path).parent
    before = _digest(data_root)
    with pytest.raises(QueryFailed) as failure:
        engine.run_query(_job(datasource, sql, tmp_path))
    assert failure.value.code == code
    assert failure.value.message
    assert _digest(data_root) == before
    assert not (tmp_path / "out.arrow").exists()


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_text('secret.csv')",
        "SELECT * FROM glob('/etc/*')",
        "COPY (SELECT 1) TO '{root}/stolen.csv'",
        "EXPORT DATABASE '{root}/stolen'",
        "ATTACH '{root}/other.duckdb' AS other",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET enable_external_access = true",
        "SET memory_limit = '100GB'",
        "SET allowed_directories = ['/']",
        "SELECT * FROM read_csv('http://127.0.0.1:1/x.csv')",
        "INSERT INTO numbers VALUES (1)",
    ],
)
@pytest.mark.parametrize("through", ["instance", "session"])
def test_the_locked_instance_refuses_even_without_the_check(datasource, tmp_path, sql, through):
    """Defence in depth: what the SQL check rejects, the instance's own configuration refuses,
    on its own connection and in the per-execution session of a reused instance alike."""
    data_root = Path(datasource.path).parent
    before = _digest(data_root)
    sandbox = Sandbox(datasource, LIMITS, str(tmp_path / "scratch"))
    try:
        with sandbox.session() as session, pytest.raises(duckdb.Error):
            connection = session if through == "session" else sandbox.connection
            connection.execute(sql.format(root=data_root)).fetchall()
    finally:
        sandbox.close()
    assert _digest(data_root) == before


@pytest.mark.parametrize("kind", ["duckdb", "sqlite", "files"])
def test_a_session_sees_every_setting_of_its_instance(tmp_path, kind):
    """A reused instance runs each execution in a session of its own, which reads the global
    value of each setting: one set for the instance's own connection only would be lost."""
    root = tmp_path / "data"
    root.mkdir()
    if kind == "files":
        (root / "orders.csv").write_text("id\n1\n")
        path = root
    elif kind == "sqlite":
        path = root / "shop.sqlite"
        with sqlite3.connect(path) as connection:
            connection.execute("CREATE TABLE orders (id INTEGER)")
    else:
        path = root / "shop.duckdb"
        duckdb.connect(str(path)).close()
    spec = DatasourceSpec(kind, str(path), data_time_zone="Asia/Tokyo")
    sandbox = Sandbox(spec, LIMITS, str(tmp_path / "scratch"))
    settings = "SELECT name, value FROM duckdb_settings() ORDER BY name"
    where = "SELECT current_database(), current_schema(), getvariable('dataferry_files')"
    try:
        with sandbox.session() as session:
            assert session is not sandbox.connection
            assert (
                session.execute(settings).fetchall()
                == sandbox.connection.execute(settings).fetchall()
            )
            assert session.execute(where).fetchall() == sandbox.connection.execute(where).fetchall()
    finally:
        sandbox.close()


def test_allowed_table_functions_and_explain_run(datasource, tmp_path):
    for sql in (
        "SELECT * FROM range(3)",
        "SELECT * FROM generate_series(1, 3)",
        "SELECT unnest([1, 2, 3])",
        "EXPLAIN SELECT * FROM numbers",
        "SELECT count(*) FROM evens",
        "FROM numbers LIMIT 1",
    ):
        assert engine.run_query(_job(datasource, sql, tmp_path)).rows >= 1, sql


def test_errors_do_not_reveal_server_paths(datasource, tmp_path):
    with pytest.raises(QueryFailed) as failure:
        engine.run_query(_job(datasource, "SELECT * FROM no_such_table", tmp_path))
    assert failure.value.code == "execution_error"
    assert str(tmp_path) not in failure.value.message


def test_timeout_interrupts_the_query(datasource, tmp_path):
    limits = Limits(**{**LIMITS.__dict__, "timeout_seconds": 0.5})
    with pytest.raises(QueryFailed) as failure:
        engine.run_query(
            _job(datasource, "SELECT count(*) FROM range(1000000000000)", tmp_path, limits)
        )
    assert failure.value.code == "timeout"


def test_timeout_interrupts_a_result_still_streaming(datasource, tmp_path):
    limits = Limits(**{**LIMITS.__dict__, "timeout_seconds": 0.5, "max_result_rows": 10**12})
    sql = "SELECT range, md5(range::VARCHAR) FROM range(1000000000000)"
    with pytest.raises(QueryFailed) as failure:
        engine.run_query(_job(datasource, sql, tmp_path, limits))
    assert failure.value.code == "timeout"
    assert not _pullers()


def test_memory_limit_fails_with_out_of_memory(datasource, tmp_path):
    limits = Limits(**{**LIMITS.__dict__, "memory_limit_mb": 64, "max_temp_directory_size_mb": 1})
    with pytest.raises(QueryFailed) as failure:
        engine.run_query(
            _job(datasource, "SELECT list(range) FROM range(100000000)", tmp_path, limits)
        )
    assert failure.value.code in ("out_of_memory", "temp_space_exceeded")


def test_files_datasource_turns_files_into_views(tmp_path):
    folder = tmp_path / "files"
    folder.mkdir()
    (folder / "orders.csv").write_text("id,amount\n1,9.5\n2,3.25\n")
    with duckdb.connect() as connection:
        connection.execute(f"COPY (SELECT 7 AS x) TO '{folder / 'things.parquet'}'")
    (folder / "notes.txt").write_text("ignored")
    spec = DatasourceSpec("files", str(folder))
    outcome = engine.run_query(
        _job(spec, "SELECT sum(amount) AS total, (SELECT x FROM things) AS x FROM orders", tmp_path)
    )
    assert outcome.rows == 1
    table = pa.ipc.open_file(str(tmp_path / "out.arrow")).read_all()
    assert table.to_pylist() == [{"total": 12.75, "x": 7}]
    schema = engine.schema_of(spec, LIMITS, str(tmp_path / "scratch"))
    names = [t["name"] for t in schema["schemas"][0]["tables"]]
    assert names == ["orders", "things"]


def test_a_file_named_like_a_pattern_becomes_no_view(tmp_path):
    """DuckDB reads ``star*.csv`` as a glob: its view also read ``starZZ.csv`` (and a file named
    ``*.csv`` every CSV of the folder). Uploads refuse such names; one put there otherwise is
    skipped, and the files it would have matched keep their own views."""
    folder = tmp_path / "files"
    folder.mkdir()
    (folder / "star*.csv").write_text("c\n1\n")
    (folder / "starZZ.csv").write_text("c\n999\n")
    (folder / "{a,b}.csv").write_text("c\n2\n")
    spec = DatasourceSpec("files", str(folder))
    views, rows = _views_and_rows(spec, "SELECT c FROM starZZ", tmp_path)
    assert (views, rows) == (["starZZ"], [{"c": 999}])
    with pytest.raises(QueryFailed):
        engine.run_query(_job(spec, 'SELECT c FROM "star*"', tmp_path))


def test_a_file_whose_name_is_not_utf8_becomes_no_view_and_the_others_work(tmp_path):
    """A shared folder's file named in Latin-1 (``café.csv``) failed every query of the
    datasource, its schema and its connection test with "RuntimeError" (the outside probe)."""
    folder = tmp_path / "files"
    folder.mkdir()
    with open(os.fsencode(folder) + b"/caf\xe9.csv", "wb") as latin:
        latin.write(b"a\n1\n")
    (folder / "ok.csv").write_text("a\n2\n")
    spec = DatasourceSpec("files", str(folder))
    assert _views_and_rows(spec, "SELECT a FROM ok", tmp_path) == (["ok"], [{"a": 2}])
    engine.check_connection(spec, LIMITS, str(tmp_path / "scratch"))


def _views_and_rows(
    spec: DatasourceSpec, sql: str, tmp_path: Path
) -> tuple[list[str], list[dict[str, Any]]]:
    """The views a files datasource's schema lists, and the rows ``sql`` reads from it."""
    schema = engine.schema_of(spec, LIMITS, str(tmp_path / "scratch"))
    engine.run_query(_job(spec, sql, tmp_path))
    rows = pa.ipc.open_file(str(tmp_path / "out.arrow")).read_all().to_pylist()
    return [t["name"] for t in schema["schemas"][0]["tables"]], rows


def test_schema_lists_tables_views_columns_and_row_counts(datasource, tmp_path):
    schema = engine.schema_of(datasource, LIMITS, str(tmp_path / "scratch"))
    (main,) = schema["schemas"]
    tables = {t["name"]: t for t in main["tables"]}
    assert tables["numbers"]["row_count"] == 200_000
    assert tables["numbers"]["columns"] == [{"name": "n", "type": "BIGINT", "nullable": True}]
    assert tables["evens"]["type"] == "view"


def test_missing_datasource_is_unavailable(tmp_path):
    spec = DatasourceSpec("duckdb", str(tmp_path / "gone.duckdb"))
    with pytest.raises(QueryFailed) as failure:
        engine.check_connection(spec, LIMITS, str(tmp_path / "scratch"))
    assert failure.value.code == "datasource_unavailable"
    assert not (tmp_path / "gone.duckdb").exists()


def _rows(tmp_path: Path) -> list[dict[str, object]]:
    return pa.ipc.open_file(str(tmp_path / "out.arrow")).read_all().to_pylist()


@pytest.mark.parametrize(
    "sql",
    [
        "PIVOT numbers ON n USING count(*)",
        "SELECT * FROM (PIVOT numbers ON n USING count(*))",
        "WITH p AS (PIVOT numbers ON n USING count(*)) SELECT * FROM p",
        "EXPLAIN PIVOT numbers ON n USING count(*)",
        "PIVOT numbers ON n IN (1, 2), (n % 3) USING count(*)",
    ],
)
def test_a_pivot_without_listed_values_is_refused_with_a_hint(datasource, tmp_path, sql):
    with pytest.raises(QueryFailed) as failure:
        engine.run_query(_job(datasource, sql, tmp_path))
    assert failure.value.code == "dynamic_pivot"
    assert "IN (" in failure.value.message
    assert not (tmp_path / "out.arrow").exists()


@pytest.mark.parametrize(
    "sql",
    [
        "PIVOT (SELECT n % 3 AS k FROM numbers) ON k IN (0, 1, 2) USING count(*)",
        "FROM (SELECT n % 3 AS k FROM numbers) PIVOT (count(*) FOR k IN (0, 1, 2))",
    ],
)
def test_a_pivot_with_listed_values_runs(datasource, tmp_path, sql):
    engine.run_query(_job(datasource, sql, tmp_path))
    assert _rows(tmp_path) == [{"0": 66_667, "1": 66_667, "2": 66_666}]


@pytest.mark.parametrize(
    "sql",
    [
        'WITH "secret.csv" AS (SELECT 1 AS a) SELECT * FROM "secret.csv"',
        'WITH "SECRET.CSV" AS (SELECT 1 AS a) SELECT * FROM "secret.csv"',
        'WITH "secret.csv" AS (SELECT 1 AS a) SELECT (SELECT a FROM "secret.csv") AS a',
        'WITH "secret.csv" AS (SELECT 1 AS a), b AS (SELECT * FROM "secret.csv") SELECT * FROM b',
        'WITH "secret.csv" AS (SELECT 1 AS a) SELECT * FROM (WITH b AS (FROM "secret.csv") FROM b)',
        'SELECT * FROM (WITH "secret.csv" AS (SELECT 1 AS a) SELECT * FROM "secret.csv")',
        'WITH "secret.csv" AS (SELECT 1 AS a) (FROM "secret.csv" UNION FROM "secret.csv")',
        'WITH RECURSIVE "secret.csv" AS (SELECT 1 AS a UNION ALL '
        'SELECT a + 1 FROM "secret.csv" WHERE a < 1) SELECT * FROM "secret.csv"',
        'WITH "/etc/passwd" AS (SELECT 1 AS a) SELECT * FROM "/etc/passwd"',
    ],
)
def test_a_cte_named_like_a_file_is_not_a_file(datasource, tmp_path, sql):
    engine.run_query(_job(datasource, sql, tmp_path))
    assert _rows(tmp_path) == [{"a": 1}]


@pytest.mark.parametrize(
    "sql",
    [
        # outside the subquery that defines the CTE, the name is a file again
        'SELECT * FROM (WITH "secret.csv" AS (SELECT 1 AS a) FROM "secret.csv") UNION FROM "secret.csv"',
        'SELECT * FROM (WITH "secret.csv" AS (SELECT 1 AS a) FROM "secret.csv"), "secret.csv"',
        'SELECT (WITH "secret.csv" AS (SELECT 1) FROM "secret.csv"), (FROM "secret.csv" LIMIT 1)',
        # DuckDB does not look forward, and a CTE that is not recursive does not see itself
        'WITH b AS (SELECT * FROM "secret.csv"), "secret.csv" AS (SELECT 1 AS a) SELECT * FROM b',
        'WITH "secret.csv" AS (SELECT * FROM "secret.csv") SELECT * FROM "secret.csv"',
        # a recursive CTE's anchor part does not see the CTE either
        'WITH RECURSIVE "secret.csv" AS (SELECT password FROM "secret.csv" UNION ALL '
        'SELECT password FROM "secret.csv" WHERE false) SELECT * FROM "secret.csv"',
        # a qualified name is never a CTE
        'WITH "secret.csv" AS (SELECT 1 AS a) SELECT * FROM main."secret.csv"',
    ],
)
def test_a_file_that_shares_a_cte_name_out_of_its_scope_is_refused(datasource, tmp_path, sql):
    with pytest.raises(QueryFailed) as failure:
        engine.run_query(_job(datasource, sql, tmp_path))
    assert failure.value.code == "forbidden_operation"


def _duckdb_file(path: Path, *statements: str) -> DatasourceSpec:
    with duckdb.connect(str(path)) as connection:
        connection.execute("CREATE TABLE numbers AS SELECT range AS n FROM range(10)")
        for statement in statements:
            connection.execute(statement)
    return DatasourceSpec("duckdb", str(path))


@pytest.mark.parametrize(
    "stored",
    [
        "CREATE VIEW v AS SELECT name, value FROM duckdb_settings()",
        "CREATE VIEW v AS SELECT * FROM duckdb_databases()",
        "CREATE VIEW v AS SELECT * FROM read_csv('/etc/passwd')",
        "CREATE VIEW \"odd (name)\"(a) AS SELECT current_setting('allowed_paths')",
        "CREATE MACRO leak() AS current_setting('allowed_paths')",
        "CREATE MACRO rows_of() AS TABLE SELECT * FROM query('SELECT * FROM duckdb_settings()')",
        # Named as built-ins a query may call: the file's own take their place when queries
        # name them (found by an outside probe), so theirs are checked like any other.
        "CREATE MACRO range(n) AS TABLE SELECT * FROM read_text('/etc/hostname')",
        "CREATE MACRO version() AS current_setting('temp_directory')",
    ],
)
def test_views_and_macros_stored_in_the_file_keep_to_the_rules_of_queries(tmp_path, stored):
    """An uploaded DuckDB file's views ran SQL the query check never saw: the server's paths and
    settings came back through `SELECT * FROM v` (found by the outside probe)."""
    spec = _duckdb_file(tmp_path / "stored.duckdb", stored)
    with pytest.raises(QueryFailed) as refused:
        engine.run_query(_job(spec, "SELECT count(*) FROM numbers", tmp_path))
    assert refused.value.code == "datasource_unavailable"
    assert str(tmp_path) not in refused.value.message


def test_views_and_macros_that_keep_to_the_rules_work(tmp_path):
    spec = _duckdb_file(
        tmp_path / "kept.duckdb",
        "CREATE VIEW evens AS SELECT n FROM numbers WHERE n % 2 = 0",
        "CREATE MACRO twice(x) AS x * 2",
        "CREATE SEQUENCE ids",
        "CREATE TABLE orders (id BIGINT DEFAULT nextval('ids'), amount DECIMAL(9, 2) "
        "CHECK (amount >= 0), net DECIMAL(9, 2) AS (amount / 1.2), label VARCHAR AS "
        "(upper(left(CAST(amount AS VARCHAR), 3))), placed TIMESTAMPTZ DEFAULT current_timestamp)",
        "INSERT INTO orders (amount) VALUES (12), (6)",
    )
    outcome = engine.run_query(
        _job(spec, "SELECT sum(twice(n)) FROM evens UNION ALL SELECT count(*) FROM evens", tmp_path)
    )
    assert outcome.rows == 2
    engine.run_query(_job(spec, "SELECT sum(net), max(label), max(id) FROM orders", tmp_path))
    table = pa.ipc.open_file(str(tmp_path / "out.arrow")).read_all()
    assert list(table.to_pylist()[0].values()) == [15, "6.0", 2]


@pytest.mark.parametrize(
    "setting", ["allowed_paths", "temp_directory", "extension_directory", "secret_directory"]
)
def test_generated_columns_stored_in_the_file_keep_to_the_rules_of_queries(tmp_path, setting):
    """A generated column is computed as its table is read: `SELECT * FROM g` showed the server's
    paths through `b VARCHAR AS (current_setting(...))` (found by the outside probe)."""
    spec = _duckdb_file(
        tmp_path / "generated.duckdb",
        "CREATE TABLE kept (a INT DEFAULT 1, b INT AS (a * 2))",
        f"CREATE TABLE g (a INT, b VARCHAR AS (current_setting('{setting}')::VARCHAR))",
        "INSERT INTO g (a) VALUES (1)",
    )
    with pytest.raises(QueryFailed) as refused:
        engine.run_query(_job(spec, "SELECT * FROM g", tmp_path))
    assert refused.value.code == "datasource_unavailable"
    assert "column g.b" in refused.value.message
    assert str(tmp_path) not in refused.value.message


@pytest.mark.parametrize(
    "stored",
    [
        "CREATE TABLE t (a INT, b VARCHAR GENERATED ALWAYS AS (getvariable('dataferry_files')) "
        "VIRTUAL)",
        "CREATE TABLE t (a INT, b VARCHAR AS (CASE WHEN a > 0 THEN "
        "lower(current_setting('home_directory')) END))",
        "CREATE TABLE t (a INT, b VARCHAR DEFAULT current_setting('temp_directory'))",
    ],
)
def test_column_expressions_stored_in_the_file_are_checked(tmp_path, stored):
    """Defaults run only on inserts, which the read-only attach refuses; the catalog lists them
    with generated expressions, and both keep to the rules of queries."""
    spec = _duckdb_file(tmp_path / "columns.duckdb", stored)
    with pytest.raises(QueryFailed) as refused:
        engine.run_query(_job(spec, "SELECT count(*) FROM numbers", tmp_path))
    assert refused.value.code == "datasource_unavailable"


def test_check_constraints_and_index_expressions_never_run_on_a_read(tmp_path):
    """They run when a row is written, which the read-only attach refuses: a file whose CHECK
    constraint and index read a server setting attaches, and nothing read from it shows one."""
    spec = _duckdb_file(
        tmp_path / "writes.duckdb",
        "CREATE TABLE t (a INT CHECK (length(current_setting('temp_directory')) > a))",
        "INSERT INTO t VALUES (1)",
        "CREATE INDEX t_setting ON t ((a + length(current_setting('temp_directory'))))",
    )
    for sql in ("SELECT * FROM t", "SELECT * FROM t WHERE a = 1"):
        engine.run_query(_job(spec, sql, tmp_path))
        table = pa.ipc.open_file(str(tmp_path / "out.arrow")).read_all()
        assert table.to_pylist() == [{"a": 1}], sql


def _sqlite_file(path: Path, *views: str) -> DatasourceSpec:
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE numbers (n INTEGER)")
        connection.execute("INSERT INTO numbers VALUES (1), (2)")
        for view in views:
            connection.execute(view)
    return DatasourceSpec("sqlite", str(path))


@pytest.mark.parametrize(
    "view",
    [
        "CREATE VIEW v AS SELECT current_setting('temp_directory') AS t FROM numbers",
        "CREATE VIEW IF NOT EXISTS v AS SELECT * FROM duckdb_settings()",
        "CREATE VIEW \"odd (name)\" (a) AS SELECT getvariable('dataferry_files')",
    ],
)
def test_sqlite_views_keep_to_the_rules_of_queries(tmp_path, view):
    """DuckDB parses a SQLite file's views as DuckDB SQL and runs them itself: `SELECT * FROM v`
    showed the execution's scratch directory."""
    spec = _sqlite_file(tmp_path / "stored.sqlite", view)
    with pytest.raises(QueryFailed) as refused:
        engine.run_query(_job(spec, "SELECT count(*) FROM numbers", tmp_path))
    assert refused.value.code == "datasource_unavailable"
    assert "SQLite file's view" in refused.value.message
    assert str(tmp_path) not in refused.value.message


def test_sqlite_views_duckdb_cannot_parse_are_left_alone(tmp_path):
    spec = _sqlite_file(
        tmp_path / "dialect.sqlite",
        "CREATE VIEW doubled AS SELECT n * 2 AS twice FROM numbers",
        "CREATE VIEW indexed AS SELECT n FROM numbers NOT INDEXED",
    )
    assert engine.run_query(_job(spec, "SELECT sum(twice) FROM doubled", tmp_path)).rows == 1
    with pytest.raises(QueryFailed) as failure:
        engine.run_query(_job(spec, "SELECT * FROM indexed", tmp_path))
    assert failure.value.code == "syntax_error"
