"""Cluvio parameters in process: the SQL they bind to, what bad input gets, who sees the values.

The rows each form returns are checked end to end in tests/e2e/test_sql_parameters.py.
"""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import update

from api_server.permissions import Permission
from api_server.serializers import WITHHELD_ERROR_MESSAGE
from api_server.services.sql_parameters import (
    MAX_INTEGER,
    MIN_INTEGER,
    InputParameters,
    bind_parameters,
    parse_input_parameters,
)
from api_server.services.sql_text import skip_protected
from shared.db.models import Execution
from shared.errors import AppError, ValidationErrors
from shared.settings import Settings
from tests.support.factories import dump_tables

MAX_SQL_LENGTH = Settings().max_sql_length


def bind(sql: str, parameters: dict | None = None, zone: str = "UTC"):
    return bind_parameters(sql, parse_input_parameters(parameters or {}), zone, MAX_SQL_LENGTH)


def errors_of(call) -> list[dict]:
    with pytest.raises(AppError) as raised:
        call()
    found = raised.value.errors if isinstance(raised.value, ValidationErrors) else [raised.value]
    return [error.to_error_object() for error in found]


def pick(name, *values):
    return {"filters": [{"variable_name": name, "selected_values": list(values)}]}


# ---------------------------------------------------------------------------- literals, comments


@pytest.mark.parametrize(
    ("sql", "end"),
    [
        ("'it''s' x", 7),
        ('"a ""b""" x', 9),
        ("E'it\\'s' x", 8),
        ("$$ a ' b $$ x", 11),
        ("$tag$ $$ $tag$ x", 14),
        ("-- c {x=y}\nx", 11),
        ("/* a /* b */ c */ x", 17),
        ("'never closed", 13),
    ],
)
def test_literals_and_comments_are_skipped_whole(sql, end):
    assert skip_protected(sql, 0) == end


@pytest.mark.parametrize("sql", ["x", "price$usd", "e", "$1", "{a=b}"])
def test_code_is_not_skipped(sql):
    assert skip_protected(sql, len(sql) - 1 if sql == "price$usd" else 0) is None


# ---------------------------------------------------------------------------- bound SQL


def test_each_form_binds_its_values_as_parameters():
    bound = bind(
        "SELECT {d:aggregation}, {c.value} FROM t WHERE {ts=timerange} AND {[lower(c)]=c}",
        {"timerange": "0~60", "aggregation": "month", **pick("c", "x")},
    )
    assert bound.sql == (
        "SELECT CASE WHEN CAST($1 AS BOOLEAN) THEN CAST(NULL AS TIMESTAMP) "
        "ELSE date_trunc(CAST($2 AS VARCHAR), CAST((d) AS TIMESTAMP)) END, $3 FROM t WHERE "
        "((ts) >= CAST($4 AS TIMESTAMPTZ) AND (ts) < CAST($5 AS TIMESTAMPTZ)) "
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
    assert bound.sql == "WHERE ((t) >= CAST($1 AS TIMESTAMPTZ) AND (t) < CAST($2 AS TIMESTAMPTZ))"
    assert bound.values == ["2024-04-04T12:18:10+00:00", "2024-04-04T13:24:50+00:00"]


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
        *values,
        "1970-01-01T00:00:00+00:00",
        "1970-01-01T00:00:01+00:00",
    ]


# ---------------------------------------------------------------------------- bad input


BAD_INPUT = [
    # (case, sql, parameters, pointer, code)
    ("timerange-not-two-integers", "{t=timerange}", {"timerange": "yesterday~today"}, "/parameters/timerange", "invalid_timerange"),
    ("timerange-one-integer", "{t=timerange}", {"timerange": "1712233090"}, "/parameters/timerange", "invalid_timerange"),
    ("timerange-fraction", "{t=timerange}", {"timerange": "1.5~3"}, "/parameters/timerange", "invalid_timerange"),
    ("timerange-end-before-start", "{t=timerange}", {"timerange": "200~100"}, "/parameters/timerange", "invalid_timerange"),
    ("timerange-empty", "{t=timerange}", {"timerange": "100~100"}, "/parameters/timerange", "invalid_timerange"),
    ("timerange-beyond-9999", "{t=timerange}", {"timerange": "0~999999999999999"}, "/parameters/timerange", "invalid_timerange"),
    ("timerange-next-beyond-9999", "{t=timerange.next}", {"timerange": "0~253402300000"}, "/parameters/timerange", "invalid_timerange"),
    ("timerange-number", "{t=timerange}", {"timerange": 5}, "/parameters/timerange", "invalid_timerange"),
    ("timerange-injection", "{t=timerange}", {"timerange": "1~2'; DROP TABLE x; --"}, "/parameters/timerange", "invalid_timerange"),
    ("timerange-arabic-indic-digits", "{t=timerange}", {"timerange": "\u0661~\u0662"}, "/parameters/timerange", "invalid_timerange"),
    ("timerange-fullwidth-digits", "{t=timerange}", {"timerange": "\uff11~\uff12"}, "/parameters/timerange", "invalid_timerange"),
    ("timerange-unicode-space", "{t=timerange}", {"timerange": "1\u2003~2"}, "/parameters/timerange", "invalid_timerange"),
    ("timerange-trailing-text", "{t=timerange}", {"timerange": "1~2 x"}, "/parameters/timerange", "invalid_timerange"),
    ("aggregation-unknown", "{d:aggregation}", {"aggregation": "decade"}, "/parameters/aggregation", "invalid_aggregation"),
    ("aggregation-case", "{d:aggregation}", {"aggregation": "Day"}, "/parameters/aggregation", "invalid_aggregation"),
    ("aggregation-injection", "{d:aggregation}", {"aggregation": "day') OR 1=1 --"}, "/parameters/aggregation", "invalid_aggregation"),
    ("all-time-on-custom-filter", "{d:grain}", pick("grain", "all_time"), "/parameters/filters/0/selected_values/0", "all_time_not_allowed"),
    ("custom-aggregation-unknown", "{d:grain}", pick("grain", "fortnight"), "/parameters/filters/0/selected_values/0", "invalid_aggregation"),
    ("custom-aggregation-two", "{d:grain}", pick("grain", "day", "week"), "/parameters/filters/0/selected_values", "invalid_parameter"),
    ("zone-unknown", "{d:tz}", {"tz": "Mars/Olympus"}, "/parameters/tz", "invalid_time_zone"),
    ("zone-path", "{d:tz}", {"tz": "../../etc/passwd"}, "/parameters/tz", "invalid_time_zone"),
    ("zone-localtime", "{d:tz}", {"tz": "localtime"}, "/parameters/tz", "invalid_time_zone"),
    ("zone-injection", "{d:tz}", {"tz": "UTC'; DROP TABLE x; --"}, "/parameters/tz", "invalid_time_zone"),
    ("unknown-parameter", "SELECT 1", {"region": "eu"}, "/parameters/region", "unknown_parameter"),
    ("filters-not-array", "{c=v}", {"filters": {"v": 1}}, "/parameters/filters", "invalid_type"),
    ("filter-not-object", "{c=v}", {"filters": ["v"]}, "/parameters/filters/0", "invalid_type"),
    ("filter-unused", "SELECT 1", pick("v", 1), "/parameters/filters/0/variable_name", "unused_filter"),
    ("filter-used-only-in-literal", "SELECT '{c=v}'", pick("v", 1), "/parameters/filters/0/variable_name", "unused_filter"),
    ("filter-name-injection", "{c=v}", pick("v}; DROP TABLE x; --", 1), "/parameters/filters/0/variable_name", "invalid_variable_name"),
    ("filter-built-in-name", "{c=timerange}", pick("timerange", 1), "/parameters/filters/0/variable_name", "built_in_variable"),
    ("filter-twice", "{c=v}", {"filters": pick("v", 1)["filters"] * 2}, "/parameters/filters/1/variable_name", "duplicate_filter"),
    ("filter-values-not-array", "{c=v}", {"filters": [{"variable_name": "v", "selected_values": "a"}]}, "/parameters/filters/0/selected_values", "invalid_type"),
    ("filter-nested-value", "{c=v}", pick("v", "a", ["b"]), "/parameters/filters/0/selected_values/1", "invalid_type"),
    ("filter-huge-integer", "{c=v}", pick("v", 2**200), "/parameters/filters/0/selected_values/0", "number_out_of_range"),
    ("filter-integer-beyond-bigint", "{c=v}", pick("v", 1, -(2**63) - 1), "/parameters/filters/0/selected_values/1", "number_out_of_range"),
    ("placeholders-eleven-deep", "SELECT " + "{[" * 11 + "x" + "]:aggregation}" * 11, {}, "/sql_query", "placeholders_too_deep"),
    ("placeholders-a-thousand-deep", "SELECT " + "{[" * 1000 + "x" + "]:aggregation}" * 1000, {}, "/sql_query", "placeholders_too_deep"),
    ("ranges-doubling-past-the-limit", "SELECT 1 WHERE " + "{[" * 10 + "x" * 500 + "]=timerange}" * 10, {"timerange": "1~2"}, "/sql_query", "too_long"),
    ("filter-unknown-member", "{c=v}", {"filters": [{"variable_name": "v", "selected_values": [], "x": 1}]}, "/parameters/filters/0/x", "unknown_attribute"),
    ("filter-bad-range", "{c=v}", pick("v", "9~1"), "/parameters/filters/0/selected_values/0", "invalid_timerange"),
    ("value-of-several", "SELECT {v.value}", pick("v", 1, 2), "/parameters/filters/0/selected_values", "invalid_parameter"),
    ("next-on-a-list", "{c=v.next}", pick("v", 1), "/parameters/filters/0", "invalid_parameter"),
    ("too-many-values", "{c=v}", pick("v", *range(10_001)), "/parameters/filters", "too_many"),
    ("unbalanced-brace", "SELECT {'a': 1 FROM t", {}, "/sql_query", "invalid_placeholder"),
    ("unbalanced-close-brace", "SELECT 1 }", {}, "/sql_query", "invalid_placeholder"),
    ("unbalanced-bracket-in-placeholder", "SELECT {[lower(c)=v}", {}, "/sql_query", "invalid_placeholder"),
    ("unbalanced-bracket", "SELECT [1, 2 FROM t", {}, "/sql_query", "invalid_placeholder"),
    ("crossed-marks", "SELECT {[1}]", {}, "/sql_query", "invalid_placeholder"),
    ("half-a-condition", "SELECT 1 WHERE {c=}", {}, "/sql_query", "invalid_placeholder"),
    ("bracket-without-variable", "SELECT {[c]}", {}, "/sql_query", "invalid_placeholder"),
    ("unknown-selector", "SELECT {v.last}", {}, "/sql_query", "unknown_selector"),
    ("range-has-no-value", "SELECT {timerange.value}", {}, "/sql_query", "unknown_selector"),
    ("condition-selector", "{c=v.value}", {}, "/sql_query", "unknown_selector"),
    ("transformation-selector", "{c:aggregation.value}", {}, "/sql_query", "unknown_selector"),
    ("condition-on-aggregation", "{c=aggregation}", {}, "/sql_query", "conflicting_variable_use"),
    ("transformation-by-range", "{c:timerange}", {}, "/sql_query", "conflicting_variable_use"),
    ("variable-in-two-roles", "{c=v} {d:v}", {}, "/sql_query", "conflicting_variable_use"),
    ("positional-parameter", "SELECT $1", {}, "/sql_query", "bind_marker_in_sql"),
    ("question-mark-parameter", "SELECT * FROM t WHERE a = ?", {}, "/sql_query", "bind_marker_in_sql"),
    ("named-parameter", "SELECT $name", {}, "/sql_query", "bind_marker_in_sql"),
]  # fmt: skip


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


# ---------------------------------------------------------------------------- through the API


def _run(api, key, datasource_id, body):
    return api.client.post(
        f"/datasources/{datasource_id}/executions",
        content=orjson.dumps(body),
        headers={"Authorization": f"Api {key}", "Content-Type": "application/json"},
    )


@pytest.mark.parametrize(
    ("sql", "parameters", "pointer", "code"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_INPUT[::4]],
)
def test_the_api_answers_422_and_stores_nothing(api, sql, parameters, pointer, code):
    org = api.create_org()
    before = dump_tables(api.app)
    response = _run(
        api, org.key, org.sample_datasource_id, {"sql_query": sql, "parameters": parameters}
    )
    assert response.status_code == 422, response.text
    assert {"pointer": pointer} in [error.get("source") for error in response.json()["errors"]]
    assert dump_tables(api.app) == before


@pytest.mark.parametrize("digits", ["12345678901234567890123", "-9223372036854775809"])
def test_an_integer_beyond_bigint_is_refused_not_rounded(api, digits):
    """Over HTTP, not only in process: a JSON parser that reads it as a double would match
    other rows than the one asked for."""
    org = api.create_org()
    body = (
        '{"sql_query": "SELECT * FROM orders WHERE {order_id=v}", "parameters": {"filters": '
        f'[{{"variable_name": "v", "selected_values": ["x", {digits}]}}]}}}}'
    )
    response = api.client.post(
        f"/datasources/{org.sample_datasource_id}/executions",
        content=body.encode(),
        headers={"Authorization": f"Api {org.key}", "Content-Type": "application/json"},
    )
    assert response.status_code == 422, response.text
    error = response.json()["errors"][0]
    assert error["code"] == "number_out_of_range"
    assert error["source"] == {"pointer": "/parameters/filters/0/selected_values/1"}


def test_the_largest_bigint_is_bound_exactly(api):
    org = api.create_org()
    body = (
        '{"sql_query": "SELECT {v.value} AS v", "parameters": {"filters": '
        '[{"variable_name": "v", "selected_values": [9223372036854775807]}]}}'
    )
    response = api.client.post(
        f"/datasources/{org.sample_datasource_id}/executions",
        content=body.encode(),
        headers={"Authorization": f"Api {org.key}", "Content-Type": "application/json"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["data"]["attributes"]["bound_parameters"] == [2**63 - 1]


def test_only_the_key_that_ran_it_sees_the_bound_values(api):
    org = api.create_org()
    other_key = api.create_key(org, [Permission.MANAGE_DATASOURCES, Permission.VIEW_DATASOURCES])
    body = {"sql_query": "SELECT * FROM orders WHERE {status=s}", "parameters": pick("s", "paid")}
    created = _run(api, org.key, org.sample_datasource_id, body)
    assert created.status_code == 200, created.text
    attributes = created.json()["data"]["attributes"]
    assert attributes["expanded_sql"] == "SELECT * FROM orders WHERE ((status) = $1)"
    assert attributes["bound_parameters"] == ["paid"]

    path = f"/executions/{created.json()['data']['id']}"
    assert api.get(path, org.key).json()["data"]["attributes"]["bound_parameters"] == ["paid"]
    seen_by_other = api.get(path, other_key)
    assert seen_by_other.status_code == 200
    assert "bound_parameters" not in seen_by_other.json()["data"]["attributes"]
    assert "expanded_sql" not in seen_by_other.json()["data"]["attributes"]
    assert "paid" not in seen_by_other.text


def test_only_the_key_that_ran_it_sees_an_error_message_that_may_quote_values(api):
    """DuckDB quotes values in some messages (``invalid date field format: "pin42"``)."""
    org = api.create_org()
    other_key = api.create_key(org, [Permission.VIEW_DATASOURCES])
    body = {"sql_query": "SELECT CAST({d.value} AS DATE)", "parameters": pick("d", "pin42")}
    created = _run(api, org.key, org.sample_datasource_id, body)
    execution_id = created.json()["data"]["id"]
    message = 'Conversion Error: invalid date field format: "pin42"'
    with api.app.state.sessions.begin() as session:
        session.execute(
            update(Execution)
            .where(Execution.id == execution_id)
            .values(status="failed", error_code="execution_error", error_message=message)
        )
    path = f"/executions/{execution_id}"
    assert api.get(path, org.key).json()["data"]["attributes"]["error_message"] == message
    seen_by_other = api.get(path, other_key)
    assert seen_by_other.json()["data"]["attributes"]["error_code"] == "execution_error"
    assert seen_by_other.json()["data"]["attributes"]["error_message"] == WITHHELD_ERROR_MESSAGE
    assert "pin42" not in seen_by_other.text


def test_the_same_idempotency_key_with_other_parameters_is_refused(api):
    org = api.create_org()
    headers = {"Idempotency-Key": "k1"}
    sql = "SELECT * FROM orders WHERE {status=s}"
    first = api.client.post(
        f"/datasources/{org.sample_datasource_id}/executions",
        content=orjson.dumps({"sql_query": sql, "parameters": pick("s", "paid")}),
        headers={"Authorization": f"Api {org.key}", "Content-Type": "application/json", **headers},
    )
    second = api.client.post(
        f"/datasources/{org.sample_datasource_id}/executions",
        content=orjson.dumps({"sql_query": sql, "parameters": pick("s", "open")}),
        headers={"Authorization": f"Api {org.key}", "Content-Type": "application/json", **headers},
    )
    assert first.status_code == 200 and second.status_code == 422
    assert second.json()["errors"][0]["code"] == "idempotency_key_reused"
