"""The rules filter definitions set for their variables' values (``sql_templating.rules``), as
``bind_parameters`` keeps them: All Time only where allowed, one value unless several are,
values among the options when restricted; variables without a rule stay as they were, ad hoc
(their values bind as text)."""

from __future__ import annotations

import pytest

from shared.db.models import Filter
from shared.filter_rules import rule_of
from shared.settings import Settings
from sql_templating.binding import bind_parameters
from sql_templating.parameters import parse_input_parameters
from sql_templating.rules import VariableRule, VariableRules, option_key
from tests.sql_templating.test_parameters import errors_of
from tests.support.sql_parameter_cases import pick

MAX_SQL_LENGTH = Settings().max_sql_length
AGGREGATE = "SELECT {d:period} FROM t"


def bind(sql: str, parameters: dict, rules: VariableRules):
    inputs = parse_input_parameters(parameters)
    return bind_parameters(sql, inputs, "UTC", MAX_SQL_LENGTH, rules=rules)


def test_all_time_collapses_where_the_filter_allows_it():
    bound = bind(
        AGGREGATE, pick("period", "all_time"), {"period": VariableRule(allow_all_time=True)}
    )
    assert bound.sql == (
        "SELECT CASE WHEN CAST($1 AS BOOLEAN) THEN CAST(NULL AS TIMESTAMP) "
        "ELSE date_trunc(CAST($2 AS VARCHAR), CAST((d) AS TIMESTAMP)) END FROM t"
    )
    assert bound.values == [True, "day"]
    # Another unit: the same SQL, so the SQL never depends on a value.
    month = bind(AGGREGATE, pick("period", "month"), {"period": VariableRule(allow_all_time=True)})
    assert (month.sql, month.values) == (bound.sql, [False, "month"])


@pytest.mark.parametrize("rules", [{}, {"period": VariableRule()}, {"other": VariableRule()}])
def test_all_time_is_refused_without_a_rule_allowing_it(rules):
    errors = errors_of(lambda: bind(AGGREGATE, pick("period", "all_time"), rules))
    assert [(e["code"], e["source"]["pointer"]) for e in errors] == [
        ("all_time_not_allowed", "/parameters/filters/0/selected_values/0")
    ]


def test_an_aggregation_without_all_time_allowed_renders_as_before():
    bound = bind(AGGREGATE, pick("period", "week"), {"period": VariableRule()})
    assert bound.sql == "SELECT date_trunc(CAST($1 AS VARCHAR), CAST((d) AS TIMESTAMP)) FROM t"


def test_values_outside_the_options_are_422_each_at_its_place():
    rule = VariableRule.restricted_to(["de", "fr", 1])
    parameters = pick("country", "de", "es", 1.0, "1", True)
    errors = errors_of(lambda: bind("SELECT {c=country}", parameters, {"country": rule}))
    assert [(e["code"], e["source"]["pointer"]) for e in errors] == [
        ("value_not_in_options", "/parameters/filters/0/selected_values/1"),
        ("value_not_in_options", "/parameters/filters/0/selected_values/3"),
        ("value_not_in_options", "/parameters/filters/0/selected_values/4"),
    ]


def test_a_text_filter_compares_its_selection_with_its_options_as_the_text_it_binds():
    """Cluvio's sample selection ``[0]`` is the option ``"0"`` of a text filter (found by this
    stop's outside probe: it was a 422 although the value binds as '0')."""
    rule = VariableRule(values_as_text=True).with_options(["0", "DE", "true"])
    bound = bind("SELECT {c=v}", pick("v", 0, "DE", True), {"v": rule})
    assert bound.values == ["0", "DE", "true"]
    errors = errors_of(lambda: bind("SELECT {c=v}", pick("v", 1, 0.0), {"v": rule}))
    assert [(e["code"], e["source"]["pointer"]) for e in errors] == [
        ("value_not_in_options", "/parameters/filters/0/selected_values/0"),
        ("value_not_in_options", "/parameters/filters/0/selected_values/1"),  # '0.0' is not '0'
    ]


def test_a_restricted_variable_is_checked_even_where_the_sql_does_not_use_it():
    rule = VariableRule.restricted_to(["de"])
    parameters = {"filters": [{"variable_name": "country", "selected_values": ["es"]}]}
    inputs = parse_input_parameters(parameters)
    errors = errors_of(
        lambda: bind_parameters(
            "SELECT 1", inputs, "UTC", MAX_SQL_LENGTH, every_filter_used=False,
            rules={"country": rule},
        )
    )  # fmt: skip
    assert [e["code"] for e in errors] == ["value_not_in_options"]


def test_one_value_unless_the_filter_takes_several():
    single = {"country": VariableRule(multiple=False)}
    errors = errors_of(lambda: bind("SELECT {c=country}", pick("country", "a", "b"), single))
    assert [(e["code"], e["source"]["pointer"]) for e in errors] == [
        ("multiple_values_not_allowed", "/parameters/filters/0/selected_values")
    ]
    assert bind("SELECT {c=country}", pick("country", "a"), single).values == ["a"]


def test_a_variable_with_a_filter_keeps_its_values_json_types_unless_it_is_text():
    """An ad hoc variable (no rule) and a text filter's bind their values as text; the other
    filters' stay as sent."""
    parameters = pick("v", 0, 10.5, True, "x", None)
    with_filter = bind("SELECT 1 WHERE {c=v}", parameters, {"v": VariableRule()})
    assert with_filter.values == [0, 10.5, True, "x"]
    ad_hoc = bind("SELECT 1 WHERE {c=v}", parameters, {"w": VariableRule()})
    text = bind("SELECT 1 WHERE {c=v}", parameters, {"v": VariableRule(values_as_text=True)})
    assert ad_hoc.values == text.values == ["0", "10.5", "true", "x"]
    assert ad_hoc.sql == with_filter.sql == text.sql


@pytest.mark.parametrize(
    ("value_type", "as_text"),
    [("text", True), ("number", False), ("date", False), ("datetime", False), ("boolean", False)],
)
def test_a_filters_rule_binds_as_text_what_its_value_type_is_text(value_type, as_text):
    for restricted in (False, True):
        row = Filter(
            variable_name="v",
            control_type="dropdown",
            value_type=value_type,
            multiple=True,
            allow_all_time=False,
            restrict_to_options=restricted,
            options_source="manual",
            values=["a"],
        )
        assert rule_of(row).values_as_text is as_text


def test_options_compare_by_json_type():
    assert option_key(1) == option_key(1.0)
    assert option_key(1) != option_key(True) and option_key(1) != option_key("1")
