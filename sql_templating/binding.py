"""Cluvio placeholders rendered as fixed SQL around positional parameters (``$1``, ``$2``, …).

The values travel beside the query: no value is ever spliced into the text, so none can change
what the query does (DESIGN §6). The fixed SQL depends only on the placeholder, the variable's
kind and how many values are selected; one variable's value is bound once however often it is
used. docs/sql-parameters.md describes each form for users.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.errors import AppError, ValidationErrors
from sql_templating.parameters import (
    BUILT_IN_VARIABLES,
    DEFAULT_AGGREGATION,
    MAX_UNIX_SECONDS,
    TRUNCATION_UNITS,
    Filter,
    InputParameters,
    Scalar,
    TimeRange,
    invalid_parameter,
)
from sql_templating.placeholders import (
    Placeholder,
    PlaceholderKind,
    placeholder_error,
    replace_placeholders,
)
from sql_templating.rules import AD_HOC, VariableRules, check_selections
from sql_templating.scanning import line_and_column

# The SQL that runs, placeholders rendered, may be this many times DATAFERRY_MAX_SQL_LENGTH.
BOUND_SQL_GROWTH = 4


@dataclass(frozen=True)
class BoundQuery:
    """The SQL DuckDB runs and the values of its ``$n`` parameters, in order."""

    sql: str
    values: list[Scalar]


def bind_parameters(
    sql: str,
    inputs: InputParameters,
    data_time_zone: str,
    max_sql_length: int,
    *,
    every_filter_used: bool = True,
    rules: VariableRules | None = None,
) -> BoundQuery:
    """Replace every placeholder in ``sql`` (snippets already expanded) by bound SQL, which may
    grow to ``BOUND_SQL_GROWTH`` times ``max_sql_length``. ``every_filter_used``: a filter the SQL
    has no placeholder for is a 422 (else it is left out, as a dashboard's filters are for the
    reports that do not use them). ``rules``: what the filter definitions of the variables given
    demand of their values (``sql_templating.rules``); a variable without a rule has no filter,
    is ad hoc, and its values bind as text."""
    rules = rules or {}
    check_selections(inputs, rules)
    renderer = _Renderer(sql, inputs, data_time_zone, rules)
    bound_sql = replace_placeholders(sql, renderer.render, max_sql_length * BOUND_SQL_GROWTH)
    if every_filter_used:
        renderer.check_every_filter_used()
    return BoundQuery(bound_sql, renderer.values)


class _Renderer:
    """One query's placeholders as SQL, and the values of the ``$n`` parameters that SQL uses."""

    def __init__(
        self, sql: str, inputs: InputParameters, data_time_zone: str, rules: VariableRules
    ) -> None:
        self.sql = sql
        self.inputs = inputs
        self.data_time_zone = data_time_zone
        self.rules = rules
        self.values: list[Scalar] = []
        self._slots: dict[tuple[Any, ...], str] = {}
        self._roles: dict[str, tuple[PlaceholderKind, int]] = {}
        self._used: set[str] = set()

    def render(self, placeholder: Placeholder) -> str:
        variable = placeholder.variable
        self._used.add(variable)
        if placeholder.kind is not PlaceholderKind.VALUE:
            self._claim_role(placeholder)
        if placeholder.kind is PlaceholderKind.CONDITION:
            return self._condition(placeholder)
        if placeholder.kind is PlaceholderKind.TRANSFORMATION:
            return self._transformation(placeholder)
        return self._value(placeholder)

    def _claim_role(self, placeholder: Placeholder) -> None:
        role = placeholder.kind
        seen = self._roles.setdefault(placeholder.variable, (role, placeholder.start))
        if seen[0] != role:
            raise placeholder_error(
                self.sql,
                placeholder.start,
                f"'{placeholder.variable}' is used both in a condition and in a transformation "
                f"(the other use is at {line_and_column(self.sql, seen[1])}); a variable is "
                "one or the other.",
                code="conflicting_variable_use",
            )

    def _condition(self, placeholder: Placeholder) -> str:
        variable, selector = placeholder.variable, placeholder.selector
        if selector not in (None, "next"):
            raise placeholder_error(
                self.sql,
                placeholder.start,
                f"A condition takes no selector but .next; '.{selector}' is not one.",
                code="unknown_selector",
            )
        if variable in ("aggregation", "tz"):
            raise placeholder_error(
                self.sql,
                placeholder.start,
                f"'{variable}' is a transformation variable: write {{[expression]:{variable}}}.",
                code="conflicting_variable_use",
            )
        timerange = self._range_of(variable)
        expression = f"({placeholder.expression})"
        if selector == "next":
            if variable != "timerange" and timerange is None and self._filter(variable):
                raise self._filter_error(
                    variable, "'.next' needs a range: send '<start>~<end>' as the only value."
                )
            timerange = self._following(variable, timerange)
        if variable == "timerange" or timerange is not None:
            if timerange is None:
                return "TRUE"
            start, end = self._range_slots(variable, timerange, selector == "next")
            # The cast reads ISO 8601 text as an instant (Cluvio: text columns work) and is what
            # DuckDB does anyway to compare a DATE or TIMESTAMP with the TIMESTAMPTZ bounds.
            instant = f"CAST({expression} AS TIMESTAMPTZ)"
            return f"({instant} >= {start} AND {instant} < {end})"
        values = self._values_of(variable)
        present = [
            self._slot(("value", variable, position), value)
            for position, value in enumerate(values)
            if value is not None
        ]
        tests = []
        if len(present) == 1:
            tests.append(f"{expression} = {present[0]}")
        elif present:
            tests.append(f"{expression} IN ({', '.join(present)})")
        if None in values:
            tests.append(f"{expression} IS NULL")
        if not tests:
            return "TRUE"
        return f"({' OR '.join(tests)})"

    def _transformation(self, placeholder: Placeholder) -> str:
        variable = placeholder.variable
        if placeholder.selector is not None:
            raise placeholder_error(
                self.sql,
                placeholder.start,
                "A transformation takes no selector.",
                code="unknown_selector",
            )
        expression = placeholder.expression
        if variable == "tz":
            zone = self._slot(("tz",), self.inputs.tz or self.data_time_zone)
            return f"timezone(CAST({zone} AS VARCHAR), CAST(({expression}) AS TIMESTAMPTZ))"
        if variable == "timerange" or self._range_of(variable) is not None:
            raise placeholder_error(
                self.sql,
                placeholder.start,
                f"'{variable}' is a range and cannot transform; write {{[expression]={variable}}}.",
                code="conflicting_variable_use",
            )
        truncate = "date_trunc(CAST({unit} AS VARCHAR), CAST(({expression}) AS TIMESTAMP))"
        rule = self.rules.get(variable)
        if variable == "aggregation" or (rule is not None and rule.allow_all_time):
            # The built-in, or a filter that allows All Time: the fixed SQL can collapse.
            chosen = (
                self.inputs.aggregation or DEFAULT_AGGREGATION
                if variable == "aggregation"
                else self._custom_aggregation(variable)
            )
            collapse = self._slot(("all_time", variable), chosen == "all_time")
            unit = self._slot(
                ("unit", variable), DEFAULT_AGGREGATION if chosen == "all_time" else chosen
            )
            return (
                f"CASE WHEN CAST({collapse} AS BOOLEAN) THEN CAST(NULL AS TIMESTAMP) "
                f"ELSE {truncate.format(unit=unit, expression=expression)} END"
            )
        unit = self._slot(("unit", variable), self._custom_aggregation(variable))
        return truncate.format(unit=unit, expression=expression)

    def _custom_aggregation(self, variable: str) -> str:
        given = self._filter(variable)
        if given is None:
            # Cluvio's old fixed transforms ({saletime:week}) name the unit themselves.
            return variable if variable in TRUNCATION_UNITS else DEFAULT_AGGREGATION
        if len(given.values) > 1:
            raise self._filter_error(
                variable, "An aggregation filter takes one value.", "/selected_values"
            )
        if not given.values:
            return DEFAULT_AGGREGATION
        value = given.values[0]
        rule = self.rules.get(variable)
        if value == "all_time" and rule is not None and rule.allow_all_time:
            return "all_time"
        if value == "all_time":
            raise self._filter_error(
                variable,
                "all_time is accepted by the built-in parameters.aggregation, and by an "
                "aggregation filter only when the filter allows All Time (allow_all_time); a "
                "variable without a filter allows none.",
                "/selected_values/0",
                code="all_time_not_allowed",
            )
        if value not in TRUNCATION_UNITS:
            raise self._filter_error(
                variable,
                f"An aggregation filter's value is one of {', '.join(TRUNCATION_UNITS)}.",
                "/selected_values/0",
                code="invalid_aggregation",
            )
        return str(value)

    def _value(self, placeholder: Placeholder) -> str:
        variable, selector = placeholder.variable, placeholder.selector or ""
        allowed = self._selectors_of(variable)
        if selector not in allowed:
            raise placeholder_error(
                self.sql,
                placeholder.start,
                f"'{variable}' has the selectors {', '.join('.' + s for s in allowed)}; "
                f"'.{selector}' is not one.",
                code="unknown_selector",
            )
        if selector == "selected":
            return f"CAST({self._slot(('selected', variable), self._is_selected(variable))} AS BOOLEAN)"
        if selector in ("start", "end"):
            timerange = self._range_of(variable)
            bound = (
                dict(zip(("start", "end"), timerange.bounds(), strict=True))[selector]
                if timerange
                else None
            )
            return f"CAST({self._slot((selector, variable), bound)} AS TIMESTAMPTZ)"
        if variable == "aggregation":
            return f"CAST({self._slot(('aggregation_value',), self.inputs.aggregation)} AS VARCHAR)"
        if variable == "tz":
            zone = self.inputs.tz or self.data_time_zone
            return f"CAST({self._slot(('tz',), zone)} AS VARCHAR)"
        values = self._values_of(variable)
        if len(values) > 1:
            raise self._filter_error(
                variable,
                f"{{{variable}.value}} stands for one value but {len(values)} are selected; "
                f"test several with {{[expression]={variable}}}.",
                "/selected_values",
            )
        return self._slot(("value", variable, 0), values[0] if values else None)

    def _selectors_of(self, variable: str) -> tuple[str, ...]:
        if variable == "timerange" or self._range_of(variable) is not None:
            return ("start", "end", "selected")
        return ("value", "selected")

    # --------------------------------------------------------------- variables

    def _filter(self, variable: str) -> Filter | None:
        return self.inputs.filter_named(variable)

    def _range_of(self, variable: str) -> TimeRange | None:
        if variable == "timerange":
            return self.inputs.timerange
        given = self._filter(variable)
        return given.range if given else None

    def _values_of(self, variable: str) -> tuple[Scalar, ...]:
        given = self._filter(variable)
        if given is None:
            return ()
        # As its filter's value type has them (checked by check_selections), or as an ad hoc
        # variable's: text.
        rule = self.rules.get(variable, AD_HOC)
        return tuple(rule.as_bound(value) for value in given.values)

    def _is_selected(self, variable: str) -> bool:
        if variable in BUILT_IN_VARIABLES:
            return getattr(self.inputs, variable) is not None
        given = self._filter(variable)
        return given is not None and (given.range is not None or bool(given.values))

    def _following(self, variable: str, timerange: TimeRange | None) -> TimeRange | None:
        if timerange is None:
            return None
        following = timerange.following()
        if following.end > MAX_UNIX_SECONDS:
            detail = "The range after this one (.next) would end after the year 9999."
            if variable == "timerange":
                raise invalid_parameter(detail, "/parameters/timerange", "invalid_timerange")
            raise self._filter_error(variable, detail, "/selected_values/0", "invalid_timerange")
        return following

    def _range_slots(self, variable: str, timerange: TimeRange, following: bool) -> list[str]:
        return [
            f"CAST({self._slot(('range', variable, following, side), bound)} AS TIMESTAMPTZ)"
            for side, bound in zip(("start", "end"), timerange.bounds(), strict=True)
        ]

    def _slot(self, key: tuple[Any, ...], value: Scalar) -> str:
        """The ``$n`` holding ``value``; one variable's value is bound once however often used."""
        if key not in self._slots:
            self.values.append(value)
            self._slots[key] = f"${len(self.values)}"
        return self._slots[key]

    def _filter_error(
        self, variable: str, detail: str, member: str = "", code: str = "invalid_parameter"
    ) -> AppError:
        index = self.inputs.filter_positions.get(variable, 0)
        return invalid_parameter(detail, f"/parameters/filters/{index}{member}", code)

    def check_every_filter_used(self) -> None:
        unused = [
            invalid_parameter(
                f"The query has no placeholder for the variable '{name}'.",
                f"/parameters/filters/{index}/variable_name",
                "unused_filter",
            )
            for name, index in self.inputs.filter_positions.items()
            if name not in self._used
        ]
        if unused:
            raise ValidationErrors(unused)
