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
from sql_templating.rules import NotOfType, VariableRule, VariableRules, option_key
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
    rule = VariableRule().with_options(["de", "fr", 1])
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
    rule = VariableRule(value_type="text").with_options(["0", "DE", "true"])
    bound = bind("SELECT {c=v}", pick("v", 0, "DE", True), {"v": rule})
    assert bound.values == ["0", "DE", "true"]
    errors = errors_of(lambda: bind("SELECT {c=v}", pick("v", 1, 0.0), {"v": rule}))
    assert [(e["code"], e["source"]["pointer"]) for e in errors] == [
        ("value_not_in_options", "/parameters/filters/0/selected_values/0"),
        ("value_not_in_options", "/parameters/filters/0/selected_values/1"),  # '0.0' is not '0'
    ]


def test_a_restricted_variable_is_checked_even_where_the_sql_does_not_use_it():
    rule = VariableRule().with_options(["de"])
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
    """An ad hoc variable (no rule) and a text filter's bind their values as text; a rule of no
    value type keeps them as sent."""
    parameters = pick("v", 0, 10.5, True, "x", None)
    with_filter = bind("SELECT 1 WHERE {c=v}", parameters, {"v": VariableRule()})
    assert with_filter.values == [0, 10.5, True, "x"]
    ad_hoc = bind("SELECT 1 WHERE {c=v}", parameters, {"w": VariableRule()})
    text = bind("SELECT 1 WHERE {c=v}", parameters, {"v": VariableRule(value_type="text")})
    assert ad_hoc.values == text.values == ["0", "10.5", "true", "x"]
    assert ad_hoc.sql == with_filter.sql == text.sql


@pytest.mark.parametrize(
    ("value_type", "bound"),
    [("text", "0"), ("number", 0), ("boolean", None), ("date", None), ("datetime", None)],
)
def test_a_filters_rule_reads_selections_by_its_value_type(value_type, bound):
    """rule_of gives the rule the filter's value type; "0" reads as its text, its number, or no
    boolean, date or datetime (refused)."""
    for restricted in (False, True):
        row = Filter(
            variable_name="v",
            control_type="dropdown",
            value_type=value_type,
            multiple=True,
            allow_all_time=False,
            restrict_to_options=restricted,
            options_source="manual",
            values=["0", 0],
        )
        rule = rule_of(row)
        if bound is None:
            with pytest.raises(NotOfType):
                rule.as_bound("0")
        else:
            assert rule.as_bound("0") == bound and type(rule.as_bound("0")) is type(bound)


def test_a_number_filter_reads_numbers_and_refuses_what_is_none_each_at_its_place():
    """Cluvio: the value type "determines how the input values are validated": a number filter
    given "abc" was bound as text and failed in DuckDB; it is a 422 now. A string that spells an
    integer within 64 bits binds as it; any other number spelled (a fraction, a larger integer)
    as its text, which DuckDB reads exactly in the column's type: a float would round it."""
    rule = {"v": VariableRule(value_type="number")}
    given = pick(
        "v", "3", 2.5, " -4 ", "1e3", "1234567890123456789.01", "18446744073709551615", None
    )
    bound = bind("SELECT {c=v}", given, rule)
    assert bound.values == [3, 2.5, -4, "1e3", "1234567890123456789.01", "18446744073709551615"]
    longest = "1" * 4301  # Python refuses to read it as an integer: a 500 once
    refused = pick("v", 1, "abc", True, "1e400", "nan", "", "\u00a03", longest, "1~2")
    errors = errors_of(lambda: bind("SELECT {c=v}", refused, rule))
    assert [(e["code"], e["source"]["pointer"]) for e in errors] == [
        ("invalid_value", f"/parameters/filters/0/selected_values/{position}")
        for position in range(1, 9)
    ]
    assert len(errors[6]["detail"]) < 300  # the value quoted shortened


def test_a_range_is_refused_by_a_number_filter():
    errors = errors_of(
        lambda: bind("SELECT {c=v}", pick("v", "1~2"), {"v": VariableRule(value_type="number")})
    )
    assert [e["code"] for e in errors] == ["invalid_value"]


def test_a_boolean_filter_reads_true_and_false_and_refuses_the_rest():
    rule = {"v": VariableRule(value_type="boolean")}
    assert bind("SELECT {c=v}", pick("v", "true", False, " FALSE "), rule).values == [
        True,
        False,
        False,
    ]
    errors = errors_of(lambda: bind("SELECT {c=v}", pick("v", 1, "yes", "0"), rule))
    assert [e["code"] for e in errors] == ["invalid_value"] * 3


def test_options_compare_with_a_selection_as_it_binds():
    """A number filter's option 1 is its selection "1"; a text filter's option "0" its 0."""
    number = VariableRule(value_type="number").with_options([1, 2, 1.5])
    bound = bind("SELECT {c=v}", pick("v", "1", 2.0, "1.5"), {"v": number})
    assert bound.values == [1, 2.0, "1.5"]
    errors = errors_of(lambda: bind("SELECT {c=v}", pick("v", "3"), {"v": number}))
    assert [e["code"] for e in errors] == ["value_not_in_options"]


@pytest.mark.parametrize(
    ("value_type", "good", "bad"),
    [
        (
            "date",
            ["2024-06-01", "2024-02-29"],
            ["2024-13-01", "2023-02-29", "2021-W01-1", "0", 20240601],
        ),
        (
            "datetime",
            [
                "2024-06-01",
                "2024-06-01 12:00",
                "2024-06-01T12:00:00Z",
                "2024-06-01T12:00:00.5+05:30",
            ],
            ["2024-06-01T25:00", "2024-06-01T12:00Z", "20240601T120000", "yesterday", True],
        ),
    ],
)
def test_date_filters_take_dates_each_refused_at_its_place(value_type, good, bad):
    """Cluvio: the value type "determines how the input values are validated". A date filter's
    "2024-13-01" was bound as sent and failed in DuckDB (or matched nothing as text); it is a 422
    at the value now, in the forms both DuckDB and the filter's own options take."""
    rule = {"v": VariableRule(value_type=value_type)}
    assert bind("SELECT {c=v}", pick("v", *good), rule).values == good
    errors = errors_of(lambda: bind("SELECT {c=v}", pick("v", *good, *bad), rule))
    assert [e["source"]["pointer"] for e in errors] == [
        f"/parameters/filters/0/selected_values/{len(good) + k}" for k in range(len(bad))
    ]
    assert {e["code"] for e in errors} == {"invalid_value"}


def test_a_range_given_to_a_date_filter_stays_a_range():
    rule = {"d": VariableRule(value_type="date")}
    bound = bind("SELECT 1 WHERE {c=d}", pick("d", "1712233090~1712237090"), rule)
    assert len(bound.values) == 2


def test_options_compare_by_json_type():
    assert option_key(1) == option_key(1.0)
    assert option_key(1) != option_key(True) and option_key(1) != option_key("1")
