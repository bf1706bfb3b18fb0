"""The SQL check: what tenant SQL may contain, decided on DuckDB's own parse tree before it runs.

The policy, its reasons and the catalog objects it leaves open are written down in
docs/sql-sandbox.md; the locked instance in ``engine`` is the second line behind it. The check
walks the serialized statement: table functions, catalog views, settings and variables are each
allow-listed, and a table name that DuckDB would read as a file (a replacement scan) is refused
unless a CTE of that name is in scope there.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import duckdb
import orjson

from data_server.recent_keys import RecentKeys

# Table functions a query may call; everything else (read_csv, glob, query, pragma_*, …) is refused.
# The duckdb_* ones list the datasource's own objects by name (their ``sql`` columns hold DDL, and a
# files datasource's views name their files, not server paths: see sandbox._create_file_views).
ALLOWED_TABLE_FUNCTIONS = frozenset(
    {
        "range", "generate_series", "unnest", "json_each", "json_tree",
        "duckdb_tables", "duckdb_columns", "duckdb_views", "duckdb_schemas",
        "duckdb_constraints", "duckdb_indexes", "duckdb_types",
    }
)  # fmt: skip

# The remote-database extensions' functions that take SQL text or a connection string: they would
# run the server's own dialect with no bound parameters (postgres_query, mysql_query), write
# (postgres_execute, mysql_execute), or connect to any host or file they name (postgres_scan,
# postgres_attach, sqlite_scan, …). Refused like every function off the allow-list, but with the
# reason: a remote datasource is queried in DuckDB's dialect, through its attached tables.
PASS_THROUGH_FUNCTIONS = frozenset(
    {
        "postgres_query", "postgres_execute", "postgres_scan", "postgres_scan_pushdown",
        "postgres_attach", "postgres_configure_pool", "pg_clear_cache", "read_postgres_binary",
        "mysql_query", "mysql_execute", "mysql_clear_cache", "mysql_debug_execution_plan",
        "mysql_explain_federated", "sqlite_query", "sqlite_scan", "sqlite_attach",
    }
)  # fmt: skip

# DuckDB's built-in catalog views that show names, types and definitions only. Every other view of
# the ``system`` catalog (duckdb_databases and pragma_database_list hold the datasource's path,
# pg_settings every setting, duckdb_logs what the engine logged) is refused, and so is any view a
# later DuckDB adds, until it has been looked at and listed here.
ALLOWED_CATALOG_VIEWS = frozenset(
    {
        *(("information_schema", name) for name in (
            "character_sets", "check_constraints", "columns", "constraint_column_usage",
            "constraint_table_usage", "key_column_usage", "referential_constraints", "schemata",
            "table_constraints", "tables", "views",
        )),
        *(("main", name) for name in (
            "duckdb_columns", "duckdb_constraints", "duckdb_indexes", "duckdb_schemas",
            "duckdb_tables", "duckdb_types", "duckdb_views", "sqlite_master", "sqlite_schema",
            "sqlite_temp_master", "sqlite_temp_schema",
        )),
        *(("pg_catalog", name) for name in (
            "pg_am", "pg_attrdef", "pg_attribute", "pg_class", "pg_collation", "pg_constraint",
            "pg_database", "pg_depend", "pg_description", "pg_enum", "pg_index", "pg_indexes",
            "pg_namespace", "pg_proc", "pg_sequence", "pg_sequences", "pg_tables", "pg_tablespace",
            "pg_type", "pg_views",
        )),
    }
)  # fmt: skip

# Settings current_setting() may read, named by a literal; the others hold server paths
# (temp_directory, allowed_directories, secret_directory, extension_directory, …).
READABLE_SETTINGS = frozenset(
    {"timezone", "calendar", "threads", "memory_limit", "max_temp_directory_size", "default_order",
     "default_null_order"}
)  # fmt: skip

# What SHOW (and DESCRIBE or SUMMARIZE) may list by name: the datasource's tables, databases and
# schemas. SHOW VARIABLES would list the variable that holds a files datasource's paths.
SHOWABLE_LISTS = frozenset({"tables", "__show_tables_expanded", "databases", "schemas"})

# Scalar functions that read the process rather than the data: getvariable holds the files
# datasource's paths (sandbox._create_file_views), getenv the environment (in builds that have it),
# and json_serialize_plan binds and optimises the SQL text it is given, which the check never sees:
# the optimiser folds current_setting() and getvariable() into the plan it returns, and binding
# alone runs the remote extensions' pass-through functions (a connection to any host, a SQLite
# file's schema). Every scalar function of the pinned DuckDB and its extensions was reviewed for
# this; tests/data_server/test_sql_sandbox.py fails on one that was not.
FORBIDDEN_SCALAR_FUNCTIONS = frozenset({"getvariable", "getenv", "json_serialize_plan"})

_FILE_SUFFIXES = (
    ".csv", ".tsv", ".txt", ".parquet", ".json", ".jsonl", ".ndjson", ".arrow", ".gz", ".zst",
    ".db", ".ddb", ".duckdb", ".sqlite", ".sqlite3", ".xlsx",
)  # fmt: skip
_EXPLAIN_PREFIX = re.compile(r"^\s*EXPLAIN\s+", re.IGNORECASE)
# EXPLAIN ANALYZE (also EXPLAIN ANALYSE, EXPLAIN (ANALYZE, …)) runs the query and returns its
# profile, which names what each scan read: a files datasource's server paths, wrapped across the
# plan's box lines. Refused rather than scrubbed (docs/sql-sandbox.md). A spelling this misses
# (a comment between EXPLAIN and ANALYZE) leaves text after EXPLAIN that is no SELECT: not_a_select.
_EXPLAIN_ANALYZE = re.compile(
    r"^\s*EXPLAIN\s*(?:ANALY[SZ]E\b|\([^)]*\bANALY[SZ]E\b)", re.IGNORECASE
)
_ALLOWED_STATEMENTS = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}
# Unqualified names resolve through these schemas of the system catalog (DuckDB's search path).
_UNQUALIFIED_SYSTEM_SCHEMAS = ("main", "pg_catalog")
# Every DuckDB instance here starts with these: nothing is ever downloaded or loaded on demand.
BASE_CONFIG = {"autoinstall_known_extensions": "false", "autoload_known_extensions": "false"}


@dataclass
class QueryFailed(Exception):
    """A failure the client is told about: a stable ``code`` and a message without server paths."""

    code: str
    message: str
    extra: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def check_sql(sql: str, connection: duckdb.DuckDBPyConnection | None = None) -> None:
    """Refuse anything but one SELECT (or plain EXPLAIN of one) that keeps to the allow-lists above.

    Parsing needs a DuckDB instance; the sandbox's own is reused when given, because starting
    one costs more than the rest of a small query.
    """
    passed = hashlib.sha256(sql.encode()).digest()
    if passed in _passed:
        return
    if connection is None:
        with duckdb.connect(":memory:", config=dict(BASE_CONFIG)) as scratch:
            _check(sql, scratch)
    else:
        _check(sql, connection)
    _passed.add(passed)


def _check(sql: str, connection: duckdb.DuckDBPyConnection) -> None:
    _check_statements(sql, connection)
    if _EXPLAIN_ANALYZE.match(sql):
        raise QueryFailed(
            "explain_analyze",
            "EXPLAIN ANALYZE is not available: its profile shows where the data is read from on "
            "the server. EXPLAIN shows the plan.",
        )
    inner = _EXPLAIN_PREFIX.sub("", sql.strip().rstrip(";"), count=1)
    row = connection.execute("SELECT json_serialize_sql($1)", [inner]).fetchone()
    serialized = _parse_tree(row[0]) if row else {"error": True}
    if serialized.get("error"):
        raise QueryFailed("not_a_select", "Only SELECT (or EXPLAIN SELECT) statements may be run.")
    for node, ctes in _walk(serialized):
        _check_node(node, ctes)


def _parse_tree(text: str) -> dict[str, Any]:
    """The parse tree DuckDB serialized. A constant beyond a double's range (``1e309``) is
    written as the bare token ``Infinity``, which JSON lacks and orjson refuses; the standard
    library reads it. Either refuses a tree nested deeper than about a thousand levels."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(text)
    except (RecursionError, ValueError):
        raise QueryFailed(
            "query_too_complex",
            "The query is nested too deeply to be checked (expressions or subqueries inside "
            "one another several hundred levels deep); simplify it.",
        ) from None


# Digests of texts that passed: the check depends on the text alone, and parsing it costs more
# than running a small query (an instance's dashboards and pollers send the same SQL again).
_passed = RecentKeys(4096)


def _check_statements(sql: str, connection: duckdb.DuckDBPyConnection) -> None:
    try:
        statements = connection.extract_statements(sql)
    except duckdb.ParserException as exc:
        raise QueryFailed("syntax_error", first_line(exc)) from None
    if not statements:
        raise QueryFailed("syntax_error", "The query is empty.")
    # A PIVOT without IN (…) is expanded by DuckDB into CREATE TYPE … AS ENUM statements plus the
    # query; those generated statements carry no text of their own.
    if len(statements) > 1 and any(not statement.query.strip() for statement in statements):
        raise QueryFailed(
            "dynamic_pivot",
            "A PIVOT must list the values it turns into columns with IN (…), for example "
            "PIVOT orders ON status IN ('shipped', 'returned') USING sum(amount).",
        )
    if len(statements) > 1:
        raise QueryFailed(
            "multiple_statements", "Only a single statement may be run per execution."
        )
    if statements[0].type not in _ALLOWED_STATEMENTS:
        kind = statements[0].type.name.replace("_", " ")
        raise QueryFailed(
            "not_a_select", f"Only SELECT (or EXPLAIN) statements may be run, not {kind}."
        )


def _check_node(node: dict[str, Any], ctes: frozenset[str]) -> None:
    kind = node.get("type")
    if kind == "TABLE_FUNCTION":
        name = _folded(str((node.get("function") or {}).get("function_name", "")))
        if name in PASS_THROUGH_FUNCTIONS:
            raise QueryFailed(
                "forbidden_function",
                f"The table function {name}() is not allowed: a database's tables are read "
                "directly, in DuckDB's dialect (schema.table); no text in the server's own "
                "dialect is passed through.",
            )
        if name not in ALLOWED_TABLE_FUNCTIONS:
            allowed = ", ".join(sorted(ALLOWED_TABLE_FUNCTIONS))
            raise QueryFailed(
                "forbidden_function",
                f"The table function {name}() is not allowed; allowed are: {allowed}.",
            )
    elif kind == "BASE_TABLE":
        _check_table(node, ctes)
    elif kind == "SHOW_REF" and node.get("table_name"):
        listed = _folded(str(node["table_name"]).strip('"'))
        if listed not in SHOWABLE_LISTS:
            raise QueryFailed(
                "forbidden_catalog",
                f"SHOW {listed} is not available; SHOW TABLES, SHOW ALL TABLES, SHOW DATABASES "
                "and SHOW SCHEMAS are.",
            )
    elif node.get("class") == "FUNCTION":
        _check_scalar_function(node)


def _check_table(node: dict[str, Any], ctes: frozenset[str]) -> None:
    name = str(node.get("table_name", ""))
    lowered = _folded(name)
    qualifiers = [str(node.get(key) or "") for key in ("catalog_name", "schema_name")]
    if not any(qualifiers) and lowered in ctes:
        return
    # DuckDB joins a qualified name that is no table back into one path for its replacement
    # scan: "s3://bucket/prefix/../other/x".csv reads s3://bucket/other/x.csv, and secret.csv
    # (schema "secret", table "csv") the file secret.csv.
    dotted = ".".join(part for part in (*qualifiers, name) if part)
    if any(map(_names_a_path, (*qualifiers, name))) or _names_a_file(_folded(dotted)):
        raise QueryFailed(
            "forbidden_operation",
            f"'{dotted}' looks like a file or URL; queries may only read the datasource's tables.",
        )
    schema = _folded(str(node.get("schema_name") or ""))
    schemas = (schema,) if schema and schema != "system" else _UNQUALIFIED_SYSTEM_SCHEMAS
    if any((s, lowered) in _refused_catalog_views() for s in schemas):
        raise QueryFailed(
            "forbidden_catalog",
            f"The catalog view {name} is not available; list tables and columns with "
            "information_schema.tables, information_schema.columns or duckdb_columns().",
        )


_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def _folded(name: str) -> str:
    """A name as DuckDB compares names: blind to the case of ASCII letters only. Python's
    ``lower`` folds others too, the Kelvin sign to ``k``: a reference that DuckDB reads as a file,
    ``"/x/k.csv"``, passed as the CTE ``"/x/\u212a.csv"`` and went unchecked (outside probe)."""
    return name.translate(_ASCII_LOWER)


def _names_a_file(lowered: str) -> bool:
    """DuckDB's replacement scans read a name as a file when it ends with a file suffix, or
    holds one followed by ``?`` (a URL's query): ``"orders.csv?x"`` is a file to it."""
    return lowered.endswith(_FILE_SUFFIXES) or any(f"{s}?" in lowered for s in _FILE_SUFFIXES)


def _names_a_path(part: str) -> bool:
    return "/" in part or "\\" in part  # "://" too


def _check_scalar_function(node: dict[str, Any]) -> None:
    name = _folded(str(node.get("function_name", "")))
    if name in FORBIDDEN_SCALAR_FUNCTIONS:
        raise QueryFailed("forbidden_function", f"The function {name}() is not allowed.")
    if name != "current_setting":
        return
    arguments = node.get("children") or []
    literal = (
        arguments[0] if len(arguments) == 1 and arguments[0].get("class") == "CONSTANT" else {}
    )
    setting = (literal.get("value") or {}).get("value")
    if not isinstance(setting, str) or _folded(setting) not in READABLE_SETTINGS:
        readable = ", ".join(sorted(READABLE_SETTINGS))
        raise QueryFailed(
            "forbidden_function",
            f"current_setting() may only read one of these settings, named literally: {readable}.",
        )


@functools.cache
def _refused_catalog_views() -> frozenset[tuple[str, str]]:
    """Every view of DuckDB's system catalog that is not on ALLOWED_CATALOG_VIEWS."""
    with duckdb.connect(":memory:", config=dict(BASE_CONFIG)) as scratch:
        rows = scratch.execute(
            "SELECT lower(schema_name), lower(view_name) FROM duckdb_views() "
            "WHERE database_name = 'system'"
        ).fetchall()
    return frozenset((schema, view) for schema, view in rows) - ALLOWED_CATALOG_VIEWS


def _walk(value: Any) -> Iterator[tuple[dict[str, Any], frozenset[str]]]:
    """Every node of the tree with the CTE names in scope there.

    A WITH's names are visible in its query and in the CTEs after the one defining them (DuckDB
    does not look forward); a recursive CTE sees itself only in its recursive part. Elsewhere the
    same name is an ordinary table reference again.
    """
    stack: list[tuple[Any, frozenset[str]]] = [(value, frozenset())]
    while stack:
        item, ctes = stack.pop()
        if isinstance(item, list):
            stack.extend((child, ctes) for child in item)
        elif isinstance(item, dict):
            yield item, ctes
            stack.extend(_children(item, ctes))


def _children(node: dict[str, Any], ctes: frozenset[str]) -> Iterator[tuple[Any, frozenset[str]]]:
    entries = (node.get("cte_map") or {}).get("map") or []
    inner = ctes
    for entry in entries:
        yield entry.get("value"), inner
        inner = inner | {_folded(str(entry.get("key", "")))}
    for key, child in node.items():
        if key == "cte_map":
            continue
        if key == "right" and node.get("type") == "RECURSIVE_CTE_NODE":
            yield child, inner | {_folded(str(node.get("cte_name", "")))}
        else:
            yield child, inner


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
