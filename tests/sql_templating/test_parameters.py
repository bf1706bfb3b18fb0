"""Cluvio parameters in process: the SQL they bind to, and what bad input gets.

The same bad input through the API is tests/api_server/test_sql_parameters.py; the rows each
form returns are checked end to end in tests/e2e/test_sql_parameters.py.
"""

from __future__ import annotations

import json

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.errors import AppError, ValidationErrors
from shared.settings import Settings
from sql_templating.binding import bind_parameters
from sql_templating.parameters import (
    MAX_INTEGER,
    MIN_INTEGER,
    InputParameters,
    parse_input_parameters,
)
from tests.support.sql_parameter_cases import BAD_INPUT, pick

MAX_SQL_LENGTH = Settings().max_sql_length


def bind(sql: str, parameters: dict | None = None, zone: str = "UTC"):
    return bind_parameters(sql, parse_input_parameters(parameters or {}), zone, MAX_SQL_LENGTH)


def errors_of(call) -> list[dict]:
    with pytest.raises(AppError) as raised:
        call()
    found = raised.value.errors if isinstance(raised.value, ValidationErrors) else [raised.value]
    return [error.to_error_object() for error in found]


# ---------------------------------------------------------------------------- bound SQL


def test_each_form_binds_its_values_as_parameters():
    bound = bind(
        "SELECT {d:aggregation}, {c.value} FROM t WHERE {ts=timerange} AND {[lower(c)]=c}",
        {"timerange": "0~60", "aggregation": "month", **pick("c", "x")},
    )
    assert bound.sql == (
        "SELECT CASE WHEN CAST($1 AS BOOLEAN) THEN CAST(NULL AS TIMESTAMP) "
        "ELSE date_trunc(CAST($2 AS VARCHAR), CAST((d) AS TIMESTAMP)) END, $3 FROM t WHERE "
        "(CAST((ts) AS TIMESTAMPTZ) >= CAST($4 AS TIMESTAMPTZ) "
        "AND CAST((ts) AS TIMESTAMPTZ) < CAST($5 AS TIMESTAMPTZ)) "
        "AND ((lower(c)) = $3)"
    )
    assert bound.values == [
        False,
        "month",
        "x",
        "1970-01-01T00:00:00+00:00",
        "1970-01-01T00:01:00+00:00",
    ]


def test_one_value_is_bound_once_however_often_used():
    bound = bind("SELECT {v.value}, {v.value} WHERE {a=v} AND {[b]=v}", pick("v", "only"))
    assert bound.values == ["only"]
    assert bound.sql == "SELECT $1, $1 WHERE ((a) = $1) AND ((b) = $1)"


@pytest.mark.parametrize(
    ("values", "condition"),
    [
        ((), "TRUE"),
        (("a",), "((c) = $1)"),
        (("a", "b"), "((c) IN ($1, $2))"),
        ((None,), "((c) IS NULL)"),
        (("a", None), "((c) = $1 OR (c) IS NULL)"),
    ],
)
def test_condition_shape_follows_the_number_of_values(values, condition):
    assert bind("SELECT 1 WHERE {c=v}", pick("v", *values)).sql == f"SELECT 1 WHERE {condition}"


def test_timerange_bounds_are_utc_instants_start_inclusive_end_exclusive():
    bound = bind("WHERE {t=timerange}", {"timerange": "1712233090~1712237090"})
    assert bound.sql == (
        "WHERE (CAST((t) AS TIMESTAMPTZ) >= CAST($1 AS TIMESTAMPTZ) "
        "AND CAST((t) AS TIMESTAMPTZ) < CAST($2 AS TIMESTAMPTZ))"
    )
    assert bound.values == ["2024-04-04T12:18:10+00:00", "2024-04-04T13:24:50+00:00"]


# One instant per row, kept in each column type a range may be compared with; rows 2 and 3 are
# on 31 March 2024 in Berlin (a 23-hour day), rows 1 and 4 just outside it.
TIMES_SQL = """
CREATE TABLE times AS SELECT * FROM (VALUES
  (1, TIMESTAMPTZ '2024-03-30 22:30:00+00', TIMESTAMP '2024-03-30 23:30:00', DATE '2024-03-30',
   '2024-03-30T22:30:00Z', '2024-03-30T23:30:00', '2024-03-30'),
  (2, TIMESTAMPTZ '2024-03-30 23:30:00+00', TIMESTAMP '2024-03-31 00:30:00', DATE '2024-03-31',
   '2024-03-31T00:30:00+01:00', '2024-03-31 00:30:00', '2024-03-31'),
  (3, TIMESTAMPTZ '2024-03-31 21:30:00+00', TIMESTAMP '2024-03-31 23:30:00', DATE '2024-03-31',
   '2024-03-31T23:30:00.5+02:00', '2024-03-31T23:30:00.5', '2024-03-31'),
  (4, TIMESTAMPTZ '2024-03-31 22:30:00+00', TIMESTAMP '2024-04-01 00:30:00', DATE '2024-04-01',
   '2024-03-31T22:30:00Z', '2024-04-01T00:30:00', '2024-04-01'),
  (5, NULL, NULL, NULL, NULL, NULL, NULL)
) AS v(id, instant, wall_clock, day, iso_text, wall_clock_text, day_text)
"""
BERLIN_MARCH_31 = "1711839600~1711922400"


def rows_of(bound, tables: str = TIMES_SQL, zone: str = "Europe/Berlin") -> list[tuple]:
    """``bound`` run on DuckDB after ``tables``, in ``zone`` (a datasource's data time zone)."""
    with duckdb.connect() as connection:
        connection.execute(f"SET TimeZone = '{zone}'")
        connection.execute(tables)
        return connection.execute(bound.sql, bound.values).fetchall()


@pytest.mark.parametrize(
    "column",
    ["instant", "wall_clock", "day", "iso_text", "wall_clock_text", "day_text"],
)
@pytest.mark.parametrize(
    ("condition", "parameters"),
    [
        ("{%s=timerange}", {"timerange": BERLIN_MARCH_31}),
        ("{[%s]=period}", pick("period", BERLIN_MARCH_31)),
        ("{%s=timerange.next}", {"timerange": "1711756800~1711839600"}),
    ],
)
def test_range_matches_alike_in_typed_and_iso_8601_text_columns(column, condition, parameters):
    """Cluvio: "Text columns in ISO-8601 work as well". Text without an offset, like a TIMESTAMP
    or DATE, is wall-clock time in the data time zone."""
    bound = bind(f"SELECT id FROM times WHERE {condition % column} ORDER BY id", parameters)
    assert rows_of(bound) == [(2,), (3,)]


def test_range_over_text_that_is_no_timestamp_fails_the_query():
    """Text the cast cannot read is an error, not a row silently left out."""
    bound = bind(
        "SELECT id FROM (VALUES (1, 'soon')) AS v(id, t) WHERE {t=timerange}",
        {"timerange": BERLIN_MARCH_31},
    )
    with pytest.raises(duckdb.ConversionException, match="soon"):
        rows_of(bound)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0"),
        (-7, "-7"),
        (MAX_INTEGER, "9223372036854775807"),
        (10.5, "10.5"),
        (True, "true"),
        (False, "false"),
        ("0", "0"),
    ],
)
def test_ad_hoc_values_bind_as_text(value, text):
    """A variable without a filter is Cluvio's text input: a number or boolean binds as the
    text JSON writes for it."""
    assert bind("SELECT {v.value} WHERE {c=v}", pick("v", value)).values == [text]


def test_ad_hoc_null_stays_null():
    bound = bind("SELECT 1 WHERE {c=v}", pick("v", 0, None))
    assert (bound.sql, bound.values) == ("SELECT 1 WHERE ((c) = $1 OR (c) IS NULL)", ["0"])
    assert bind("SELECT {v.value}", pick("v", None)).values == [None]


TYPED_SQL = """
CREATE TABLE typed AS SELECT * FROM (VALUES
  (1, 'DE', 3, 10.5, TRUE),
  (2, '0', 0, 0.5, FALSE),
  (3, NULL, NULL, NULL, NULL)
) AS v(id, status, qty, amount, flag)
"""


@pytest.mark.parametrize(
    ("condition", "values", "ids"),
    [
        ("{status=v}", [0], [(2,)]),  # VARCHAR = INTEGER failed on 'DE'
        ("{status=v}", [0, 1], [(2,)]),
        ("status = {v.value}", [0], [(2,)]),
        ("{qty=v}", [3], [(1,)]),
        ("{qty=v}", [0, 3], [(1,), (2,)]),
        ("qty > {v.value}", [0], [(1,)]),
        ("{amount=v}", [10.5], [(1,)]),
        ("{flag=v}", [False], [(2,)]),
        ("{flag=v}", [True, None], [(1,), (3,)]),
    ],
)
def test_ad_hoc_text_matches_text_columns_and_converts_to_typed_ones(condition, values, ids):
    bound = bind(f"SELECT id FROM typed WHERE {condition} ORDER BY id", pick("v", *values))
    assert rows_of(bound, TYPED_SQL) == ids


def test_zone_defaults_to_the_datasource_zone():
    assert bind("SELECT {t:tz}", zone="Asia/Tokyo").values == ["Asia/Tokyo"]
    assert bind("SELECT {t:tz}", {"tz": "Europe/Berlin"}, "Asia/Tokyo").values == ["Europe/Berlin"]


def test_text_outside_code_is_left_alone():
    sql = "SELECT '{a=b}', \"{c:d}\", $$ {e.f} $$, E'\\' {g=h}' -- {i=j}\n/* {k=l} */ {'m': 1}"
    assert bind(sql).sql == sql


def test_snippet_brackets_inside_a_placeholder_are_its_expression():
    assert bind("SELECT {[a[1]]:t}").sql.startswith(
        "SELECT date_trunc(CAST($1 AS VARCHAR), CAST((a[1])"
    )


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(
        st.text(max_size=40)
        | st.integers(MIN_INTEGER, MAX_INTEGER)
        | st.floats(allow_nan=False)
        | st.booleans(),
        min_size=1,
        max_size=4,
    )
)
def test_no_value_changes_the_sql_only_the_bound_values(values):
    """Whatever the values say, the SQL is the one a harmless list of equal length gives."""
    sql = "SELECT {v.selected}, {[x]:g} FROM t WHERE {c=v} AND {d=timerange}"

    def parameters(selected):
        filters = [*pick("v", *selected)["filters"], *pick("g", "day")["filters"]]
        return {"timerange": "0~1", "filters": filters}

    bound = bind(sql, parameters(values))
    assert bound.sql == bind(sql, parameters(range(len(values)))).sql
    assert bound.values == [
        True,
        "day",
        *(value if isinstance(value, str) else json.dumps(value) for value in values),
        "1970-01-01T00:00:00+00:00",
        "1970-01-01T00:00:01+00:00",
    ]


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("sql", "parameters", "pointer", "code"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_INPUT],
)
def test_bad_input_is_a_422_at_the_offending_member(sql, parameters, pointer, code):
    found = errors_of(lambda: bind(sql, parameters))
    assert {"pointer": pointer} in [error.get("source") for error in found], found
    assert code in [error["code"] for error in found]
    assert all(error["status"] == "422" for error in found)


def test_every_problem_of_the_parameters_is_reported_at_once():
    found = errors_of(
        lambda: parse_input_parameters(
            {"timerange": "x", "aggregation": "y", "tz": "z", "filters": [1], "w": 0}
        )
    )
    assert sorted(error["source"]["pointer"] for error in found) == [
        "/parameters/aggregation",
        "/parameters/filters/0",
        "/parameters/timerange",
        "/parameters/tz",
        "/parameters/w",
    ]


def test_placeholders_nest_ten_deep():
    sql = "SELECT " + "{[" * 10 + "x" + "]:aggregation}" * 10
    bound = bind(sql, {"aggregation": "week"})
    assert bound.sql.count("date_trunc") == 10
    assert bound.values == [False, "week"]


def test_no_parameters_bind_nothing():
    assert bind_parameters("SELECT 1", InputParameters(), "UTC", MAX_SQL_LENGTH).values == []
