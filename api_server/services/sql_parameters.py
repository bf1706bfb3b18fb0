"""Cluvio parameters: Run Execution's ``parameters`` checked, and ``{…}`` placeholders bound.

Every placeholder becomes fixed SQL around positional parameters (``$1``, ``$2``, …) whose values
travel beside the query: no value is ever spliced into the text, so none can change what the
query does (DESIGN §6). The fixed SQL depends only on the placeholder, the variable's kind and how
many values are selected. docs/sql-parameters.md describes each form for users.

Forms: ``{col=var}`` / ``{[expr]=var}`` conditions (``.next`` for the range after a range),
``{col:var}`` / ``{[expr]:var}`` transformations (date truncation, or ``tz`` conversion) and
``{var.selector}`` values. ``[expr]`` may itself hold placeholders.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from api_server.schemas import known_time_zones
from api_server.services.sql_text import line_and_column, skip_protected
from shared.errors import AppError, Unprocessable, ValidationErrors

Scalar = str | int | float | bool | None

AGGREGATIONS = ("second", "minute", "hour", "day", "week", "month", "quarter", "year", "all_time")
TRUNCATION_UNITS = AGGREGATIONS[:-1]
DEFAULT_AGGREGATION = "day"
BUILT_IN_VARIABLES = ("timerange", "aggregation", "tz")
MAX_FILTERS = 100
MAX_SELECTED_VALUES = 10_000
# Unix seconds of 0001-01-01 and 9999-12-31T23:59:59 UTC: the instants a TIMESTAMPTZ can carry.
MIN_UNIX_SECONDS, MAX_UNIX_SECONDS = -62_135_596_800, 253_402_300_799
# BIGINT: an integer is compared exactly (as it would not be as a double) and echoed exactly.
MIN_INTEGER, MAX_INTEGER = -(2**63), 2**63 - 1
# A bracketed expression may hold placeholders of its own, this deep at most: each level can
# repeat its expression (a range writes it twice), so depth is what bounds the work.
MAX_PLACEHOLDER_NESTING = 10
# The SQL that runs, placeholders rendered, may be this many times DATAFERRY_MAX_SQL_LENGTH.
BOUND_SQL_GROWTH = 4

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_VARIABLE = re.compile(rf"{_NAME}\Z")
# ASCII digits and blanks only: \d would read Arabic-Indic "\u0661~\u0662" as 1~2. One pattern for
# the parser and the OpenAPI document, so it is written in syntax Python and ECMA-262 read alike.
_BLANKS = r"[ \t\n\r\f\v]*"
TIMERANGE_PATTERN = rf"^{_BLANKS}(-?[0-9]{{1,15}}){_BLANKS}~{_BLANKS}(-?[0-9]{{1,15}}){_BLANKS}$"
_TIMERANGE = re.compile(TIMERANGE_PATTERN)
_VALUE_FORM = re.compile(rf"\{{\s*({_NAME})\.({_NAME})\s*\}}")
_SIMPLE_FORM = re.compile(
    rf"\{{\s*({_NAME}(?:\.{_NAME})*)\s*([=:])\s*({_NAME})(?:\.({_NAME}))?\s*\}}"
)
_BRACKET_OPEN = re.compile(r"\{\s*\[")
_BRACKET_TAIL = re.compile(rf"\s*([=:])\s*({_NAME})(?:\.({_NAME}))?\s*\}}")
_CONDITION_START = re.compile(rf"\{{\s*{_NAME}(?:\.{_NAME})*\s*=")
_BIND_MARKER = re.compile(rf"[?]|\$(?:\d|{_NAME})")
_CLOSING = {"}": "{", "]": "["}


# ---------------------------------------------------------------------------- input


@dataclass(frozen=True)
class TimeRange:
    """A half-open range of unix seconds: ``start`` belongs to it, ``end`` does not."""

    start: int
    end: int

    def following(self) -> TimeRange:
        """Cluvio's ``.next``: the range of equal length that starts where this one ends."""
        return TimeRange(self.end, self.end + (self.end - self.start))

    def bounds(self) -> tuple[str | None, str | None]:
        return _iso_instant(self.start), _iso_instant(self.end)


@dataclass(frozen=True)
class Filter:
    index: int
    values: tuple[Scalar, ...] = ()
    range: TimeRange | None = None


@dataclass(frozen=True)
class InputParameters:
    timerange: TimeRange | None = None
    aggregation: str | None = None
    tz: str | None = None
    filters: dict[str, Filter] = field(default_factory=dict)


def parse_input_parameters(raw: dict[str, Any]) -> InputParameters:
    """Cluvio's InputParameters, each problem a 422 pointing at the member that has it."""
    errors: list[AppError] = []
    unknown = sorted(set(raw) - {"timerange", "aggregation", "tz", "filters"})
    errors += [
        _invalid(f"Unknown parameter '{name}'.", f"/parameters/{name}", "unknown_parameter")
        for name in unknown
    ]
    timerange = _collect(errors, _parse_timerange, raw.get("timerange"))
    aggregation = _collect(errors, _parse_aggregation, raw.get("aggregation"))
    tz = _collect(errors, _parse_tz, raw.get("tz"))
    filters = _collect(errors, _parse_filters, raw.get("filters")) or {}
    if errors:
        raise ValidationErrors(errors)
    return InputParameters(timerange, aggregation, tz, filters)


def _collect(errors: list[AppError], parse: Any, value: Any) -> Any:
    try:
        return parse(value)
    except ValidationErrors as exc:
        errors.extend(exc.errors)
    except AppError as exc:
        errors.append(exc)
    return None


def _invalid(detail: str, pointer: str, code: str = "invalid_parameter") -> Unprocessable:
    return Unprocessable(detail, pointer=pointer, code=code)


def _parse_timerange(value: Any, pointer: str = "/parameters/timerange") -> TimeRange | None:
    if value is None:
        return None
    match = _TIMERANGE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise _invalid(
            "A time range is '<start>~<end>', two whole unix seconds, e.g. "
            "'1712233090~1712237090'.",
            pointer,
            "invalid_timerange",
        )
    start, end = int(match.group(1)), int(match.group(2))
    for bound in (start, end):
        if not MIN_UNIX_SECONDS <= bound <= MAX_UNIX_SECONDS:
            raise _invalid(
                f"{bound} is outside the years 1 to 9999 that a timestamp can hold.",
                pointer,
                "invalid_timerange",
            )
    if end <= start:
        raise _invalid(
            f"The time range ends ({end}) before it starts ({start}); the end is exclusive "
            "and must come after the start.",
            pointer,
            "invalid_timerange",
        )
    return TimeRange(start, end)


def _parse_aggregation(value: Any) -> str | None:
    if value is None:
        return None
    if value not in AGGREGATIONS:
        raise _invalid(
            f"aggregation must be one of {', '.join(AGGREGATIONS)}.",
            "/parameters/aggregation",
            "invalid_aggregation",
        )
    return value


def _parse_tz(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or value not in known_time_zones():
        raise _invalid(
            "tz must be an IANA time zone name such as 'Europe/Berlin'.",
            "/parameters/tz",
            "invalid_time_zone",
        )
    return value


def _parse_filters(value: Any) -> dict[str, Filter]:
    if value is None:
        return {}
    if not isinstance(value, list):
        raise _invalid("filters must be an array.", "/parameters/filters", "invalid_type")
    if len(value) > MAX_FILTERS:
        raise _invalid(
            f"At most {MAX_FILTERS} filters may be given.", "/parameters/filters", "too_many"
        )
    errors: list[AppError] = []
    filters: dict[str, Filter] = {}
    selected_total = 0
    for index, item in enumerate(value):
        try:
            name, parsed = _parse_filter(index, item)
        except AppError as exc:
            errors.append(exc)
            continue
        if name in filters:
            errors.append(
                _invalid(
                    f"The variable '{name}' is given twice (also filters/{filters[name].index}).",
                    f"/parameters/filters/{index}/variable_name",
                    "duplicate_filter",
                )
            )
        filters[name] = parsed
        selected_total += len(parsed.values)
    if selected_total > MAX_SELECTED_VALUES:
        errors.append(
            _invalid(
                f"The filters select {selected_total} values; at most {MAX_SELECTED_VALUES} "
                "are allowed in one execution.",
                "/parameters/filters",
                "too_many",
            )
        )
    if errors:
        raise ValidationErrors(errors)
    return filters


def _parse_filter(index: int, item: Any) -> tuple[str, Filter]:
    pointer = f"/parameters/filters/{index}"
    if not isinstance(item, dict):
        raise _invalid(
            'A filter is an object {"variable_name", "selected_values"}.', pointer, "invalid_type"
        )
    unknown = sorted(set(item) - {"variable_name", "selected_values"})
    if unknown:
        raise _invalid(
            f"Unknown member '{unknown[0]}'.", f"{pointer}/{unknown[0]}", "unknown_attribute"
        )
    name = item.get("variable_name")
    if not isinstance(name, str) or not _VARIABLE.match(name):
        raise _invalid(
            "variable_name must be a name of letters, digits and underscores.",
            f"{pointer}/variable_name",
            "invalid_variable_name",
        )
    if name in BUILT_IN_VARIABLES:
        raise _invalid(
            f"'{name}' is a built-in variable: send it as parameters.{name}, not as a filter.",
            f"{pointer}/variable_name",
            "built_in_variable",
        )
    values = item.get("selected_values")
    if not isinstance(values, list):
        raise _invalid(
            "selected_values must be an array (empty for no selection).",
            f"{pointer}/selected_values",
            "invalid_type",
        )
    for position, value in enumerate(values):
        _check_scalar(value, f"{pointer}/selected_values/{position}")
    if len(values) == 1 and isinstance(values[0], str) and _TIMERANGE.match(values[0]):
        timerange = _parse_timerange(values[0], f"{pointer}/selected_values/0")
        return name, Filter(index=index, range=timerange)
    return name, Filter(index=index, values=tuple(values))


def _check_scalar(value: Any, pointer: str) -> None:
    if isinstance(value, dict | list):
        raise _invalid(
            "A selected value is a string, number, boolean or null.", pointer, "invalid_type"
        )
    if (
        isinstance(value, int)
        and not isinstance(value, bool)
        and not (MIN_INTEGER <= value <= MAX_INTEGER)
    ):
        raise _invalid(
            "Integers beyond 64 bits (BIGINT) cannot be compared exactly; send the number as a "
            "string, which DuckDB converts to the column's type.",
            pointer,
            "number_out_of_range",
        )


def _iso_instant(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat()


# ---------------------------------------------------------------------------- binding


@dataclass(frozen=True)
class BoundQuery:
    """The SQL DuckDB runs and the values of its ``$n`` parameters, in order."""

    sql: str
    values: list[Scalar]


def bind_parameters(
    sql: str, inputs: InputParameters, data_time_zone: str, max_sql_length: int
) -> BoundQuery:
    """Replace every placeholder in ``sql`` (snippets already expanded) by bound SQL, which may
    grow to ``BOUND_SQL_GROWTH`` times ``max_sql_length``."""
    binder = _Binder(sql, inputs, data_time_zone, max_sql_length * BOUND_SQL_GROWTH)
    bound_sql = binder.rewrite(0, len(sql))
    binder.check_every_filter_used()
    return BoundQuery(bound_sql, binder.values)


@dataclass
class _Placeholder:
    start: int
    end: int
    kind: str  # "condition", "transformation" or "value"
    variable: str
    selector: str | None
    expression: str = ""  # rewritten SQL of the bracketed or plain expression


class _Binder:
    def __init__(
        self, sql: str, inputs: InputParameters, data_time_zone: str, max_length: int
    ) -> None:
        self.sql = sql
        self.inputs = inputs
        self.data_time_zone = data_time_zone
        self.max_length = max_length
        self._nesting = 0
        self.values: list[Scalar] = []
        self._slots: dict[tuple[Any, ...], str] = {}
        self._roles: dict[str, tuple[str, int]] = {}
        self._used: set[str] = set()

    # --------------------------------------------------------------- scanning

    def rewrite(self, start: int, end: int) -> str:
        """``sql[start:end]`` with placeholders replaced; braces and brackets must balance."""
        sql, parts, open_marks = self.sql, [], []
        index = copied = start
        length = 0
        while index < end:
            protected_end = skip_protected(sql, index)
            if protected_end is not None:
                index = min(protected_end, end)
                continue
            char = sql[index]
            if char == "{":
                placeholder = self._placeholder_at(index, end)
                if placeholder is not None:
                    parts += [sql[copied:index], self._render(placeholder)]
                    length += len(parts[-2]) + len(parts[-1])
                    if length > self.max_length:
                        raise self._too_long()
                    index = copied = placeholder.end
                    continue
            if char in "{[":
                open_marks.append(index)
            elif char in "}]":
                if not open_marks or sql[open_marks[-1]] != _CLOSING[char]:
                    raise self._syntax_error(index, f"This '{char}' closes nothing.")
                open_marks.pop()
            elif _BIND_MARKER.match(sql, index) and not _after_name(sql, index):
                raise self._syntax_error(
                    index,
                    "Positional parameters ($1, ?) are reserved for Cluvio parameter values; "
                    "use {variable.value} and pass the value in parameters.filters.",
                    code="bind_marker_in_sql",
                )
            index += 1
        if open_marks:
            mark = open_marks[-1]
            raise self._syntax_error(mark, f"This '{sql[mark]}' is never closed.")
        parts.append(sql[copied:end])
        return "".join(parts)

    def _placeholder_at(self, start: int, end: int) -> _Placeholder | None:
        """The placeholder opening at ``start``; None for a ``{…}`` that is DuckDB's own."""
        sql = self.sql
        match = _VALUE_FORM.match(sql, start, end)
        if match:
            return _Placeholder(start, match.end(), "value", match.group(1), match.group(2))
        match = _SIMPLE_FORM.match(sql, start, end)
        if match:
            kind = "condition" if match.group(2) == "=" else "transformation"
            return _Placeholder(
                start, match.end(), kind, match.group(3), match.group(4), match.group(1)
            )
        opening = _BRACKET_OPEN.match(sql, start, end)
        if opening:
            close = self._closing_bracket(opening.end() - 1, end)
            tail = _BRACKET_TAIL.match(sql, close + 1, end)
            if tail is None:
                raise self._syntax_error(
                    start, "A placeholder {[expression]…} continues with =variable} or :variable}."
                )
            kind = "condition" if tail.group(1) == "=" else "transformation"
            if self._nesting >= MAX_PLACEHOLDER_NESTING:
                raise self._syntax_error(
                    start,
                    f"Placeholders nest at most {MAX_PLACEHOLDER_NESTING} deep inside "
                    "{[expression]…}.",
                    code="placeholders_too_deep",
                )
            self._nesting += 1
            try:
                expression = self.rewrite(opening.end(), close)
            finally:
                self._nesting -= 1
            return _Placeholder(
                start, tail.end(), kind, tail.group(2), tail.group(3), expression.strip()
            )
        if _CONDITION_START.match(sql, start, end):
            raise self._syntax_error(start, "A condition placeholder is {column=variable}.")
        return None  # a struct literal such as {'a': 1}

    def _closing_bracket(self, start: int, end: int) -> int:
        depth, index = 0, start
        while index < end:
            protected_end = skip_protected(self.sql, index)
            if protected_end is not None:
                index = protected_end
                continue
            char = self.sql[index]
            depth += {"[": 1, "]": -1}.get(char, 0)
            if depth == 0:
                return index
            index += 1
        raise self._syntax_error(start, "This '[' of a placeholder is never closed.")

    def _too_long(self) -> AppError:
        return _invalid(
            f"With its placeholders rendered the query would exceed {self.max_length} "
            "characters; repeat expressions less, or nest fewer placeholders.",
            "/sql_query",
            "too_long",
        )

    def _syntax_error(self, index: int, detail: str, code: str = "invalid_placeholder") -> AppError:
        excerpt = self.sql[index : index + 40].split("\n")[0]
        return _invalid(
            f"{detail} At {line_and_column(self.sql, index)} of the query with its snippets "
            f"expanded, near: {excerpt}",
            "/sql_query",
            code,
        )

    # --------------------------------------------------------------- rendering

    def _render(self, placeholder: _Placeholder) -> str:
        variable = placeholder.variable
        self._used.add(variable)
        if placeholder.kind != "value":
            self._claim_role(placeholder)
        if placeholder.kind == "condition":
            return self._condition(placeholder)
        if placeholder.kind == "transformation":
            return self._transformation(placeholder)
        return self._value(placeholder)

    def _claim_role(self, placeholder: _Placeholder) -> None:
        role = placeholder.kind
        seen = self._roles.setdefault(placeholder.variable, (role, placeholder.start))
        if seen[0] != role:
            raise self._syntax_error(
                placeholder.start,
                f"'{placeholder.variable}' is used both in a condition and in a transformation "
                f"(the other use is at {line_and_column(self.sql, seen[1])}); a variable is "
                "one or the other.",
                code="conflicting_variable_use",
            )

    def _condition(self, placeholder: _Placeholder) -> str:
        variable, selector = placeholder.variable, placeholder.selector
        if selector not in (None, "next"):
            raise self._syntax_error(
                placeholder.start,
                f"A condition takes no selector but .next; '.{selector}' is not one.",
                code="unknown_selector",
            )
        if variable in ("aggregation", "tz"):
            raise self._syntax_error(
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
            return f"({expression} >= {start} AND {expression} < {end})"
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

    def _transformation(self, placeholder: _Placeholder) -> str:
        variable = placeholder.variable
        if placeholder.selector is not None:
            raise self._syntax_error(
                placeholder.start,
                "A transformation takes no selector.",
                code="unknown_selector",
            )
        expression = placeholder.expression
        if variable == "tz":
            zone = self._slot(("tz",), self.inputs.tz or self.data_time_zone)
            return f"timezone(CAST({zone} AS VARCHAR), CAST(({expression}) AS TIMESTAMPTZ))"
        if variable == "timerange" or self._range_of(variable) is not None:
            raise self._syntax_error(
                placeholder.start,
                f"'{variable}' is a range and cannot transform; write {{[expression]={variable}}}.",
                code="conflicting_variable_use",
            )
        truncate = "date_trunc(CAST({unit} AS VARCHAR), CAST(({expression}) AS TIMESTAMP))"
        if variable == "aggregation":
            chosen = self.inputs.aggregation or DEFAULT_AGGREGATION
            collapse = self._slot(("all_time",), chosen == "all_time")
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
        if value == "all_time":
            raise self._filter_error(
                variable,
                "all_time is accepted only by the built-in parameters.aggregation: a custom "
                "aggregation filter must be configured to allow All Time, and an ad hoc "
                "execution has no filter configuration.",
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

    def _value(self, placeholder: _Placeholder) -> str:
        variable, selector = placeholder.variable, placeholder.selector or ""
        allowed = self._selectors_of(variable)
        if selector not in allowed:
            raise self._syntax_error(
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
        return self.inputs.filters.get(variable)

    def _range_of(self, variable: str) -> TimeRange | None:
        if variable == "timerange":
            return self.inputs.timerange
        given = self._filter(variable)
        return given.range if given else None

    def _values_of(self, variable: str) -> tuple[Scalar, ...]:
        given = self._filter(variable)
        return given.values if given else ()

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
                raise _invalid(detail, "/parameters/timerange", "invalid_timerange")
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
        given = self._filter(variable)
        index = given.index if given else 0
        return _invalid(detail, f"/parameters/filters/{index}{member}", code)

    def check_every_filter_used(self) -> None:
        unused = [
            _invalid(
                f"The query has no placeholder for the variable '{name}'.",
                f"/parameters/filters/{given.index}/variable_name",
                "unused_filter",
            )
            for name, given in self.inputs.filters.items()
            if name not in self._used
        ]
        if unused:
            raise ValidationErrors(unused)


def _after_name(sql: str, index: int) -> bool:
    """A ``$`` inside a name such as ``price$usd`` is part of the name."""
    return sql[index] == "$" and index > 0 and (sql[index - 1].isalnum() or sql[index - 1] == "_")
