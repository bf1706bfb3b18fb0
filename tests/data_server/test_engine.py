"""The engine in-process: the SQL check, the locked DuckDB instance behind it, and result caps."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from data_server import engine
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


def test_row_cap_truncates_and_says_so(datasource, tmp_path):
    limits = Limits(**{**LIMITS.__dict__, "max_result_rows": 70_000})
    outcome = engine.run_query(_job(datasource, "SELECT n FROM numbers", tmp_path, limits))
    assert (outcome.rows, outcome.truncated) == (70_000, True)
    assert pa.ipc.open_file(str(tmp_path / "out.arrow")).read_all().num_rows == 70_000


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
def test_the_locked_instance_refuses_even_without_the_check(datasource, tmp_path, sql):
    """Defence in depth: what the SQL check rejects, the instance's own configuration refuses."""
    data_root = Path(datasource.path).parent
    before = _digest(data_root)
    sandbox = Sandbox(datasource, LIMITS, str(tmp_path / "scratch"))
    try:
        with pytest.raises(duckdb.Error):
            sandbox.connection.execute(sql.format(root=data_root)).fetchall()
    finally:
        sandbox.close()
    assert _digest(data_root) == before


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
    )
    outcome = engine.run_query(
        _job(spec, "SELECT sum(twice(n)) FROM evens UNION ALL SELECT count(*) FROM evens", tmp_path)
    )
    assert outcome.rows == 2
