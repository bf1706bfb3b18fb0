"""What a filter definition demands of an execution's value for its variable, as plain values
(``shared.filter_rules`` reads them from the database; ``sql_templating.binding`` keeps them), so
that templating stays free of the database.

Options compare by JSON type as well as value: the option ``1`` is not the selection ``"1"`` nor
``true``; ``1`` and ``1.0`` are the same number. But a variable whose values bind as text (a text
filter's) compares them by that text: its selection ``0`` is its option ``"0"``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import date, datetime
from math import isfinite
from typing import Any

from shared.errors import AppError, ValidationErrors
from sql_templating.parameters import (
    MAX_INTEGER,
    MIN_INTEGER,
    InputParameters,
    Scalar,
    as_text,
    invalid_parameter,
)

OptionKey = tuple[str, Any]
# A refused value is quoted in the error up to this many characters.
_QUOTED_AT_MOST = 200


def option_key(value: Scalar) -> OptionKey:
    """``value`` with its JSON type, so that equal keys mean the same JSON value."""
    if isinstance(value, bool):
        return ("boolean", value)
    if isinstance(value, int | float):
        return ("number", value)
    if value is None:
        return ("null", None)
    return ("string", value)


@dataclass(frozen=True)
class VariableRule:
    """``multiple``: more than one value may be selected. ``allow_all_time``: an aggregation
    variable accepts ``all_time``. ``options``: the only values a selection may hold (None: any
    value); ``options_note``: why a value outside them is refused, for the error's detail.
    ``value_type``: the filter's (Cluvio: it "determines how the input values are validated …
    and represented in SQL"): ``text`` values bind as text, as an ad hoc variable's do
    (``AD_HOC``); ``number`` and ``boolean`` ones as such, a string spelling one read as it;
    ``date`` and ``datetime`` ones as sent, once they are such (a range is read as one
    before); with none, as sent."""

    multiple: bool = True
    allow_all_time: bool = False
    options: frozenset[OptionKey] | None = None
    options_note: str = ""
    value_type: str | None = None

    def with_options(self, options: Iterable[Scalar], note: str = "") -> VariableRule:
        """This rule, restricted to ``options`` (``options_note``: ``note``)."""
        keys = frozenset(self._option_key(value) for value in options)
        return replace(self, options=keys, options_note=note)

    def key_of(self, value: Scalar) -> OptionKey:
        """How a value compares with the options: as it binds (``1`` is a text filter's option
        ``"1"``, ``"1.5"`` a number filter's ``1.5``), by its JSON type. ``NotOfType`` when it is
        no value of the value type."""
        bound = self.as_bound(value)
        return _number_key(bound) if self.value_type == "number" else option_key(bound)

    def range_key(self, selected: Scalar) -> OptionKey:
        """A range (``"<start>~<end>"``) as a selection: for a filter of no value type or of
        dates or text, kept as sent; ``NotOfType`` for a number or boolean filter."""
        if self.value_type in ("number", "boolean"):
            raise NotOfType("a range is a value of a date or datetime filter only")
        return option_key(selected)

    def _option_key(self, option: Scalar) -> OptionKey:
        try:
            return self.key_of(option)
        except NotOfType:  # an option of another type than the filter's: no selection is it
            return option_key(option)

    def as_bound(self, value: Scalar) -> Scalar:
        """``value`` as it binds, by ``value_type`` (null stays the absence of a value);
        ``NotOfType`` when it is no value of that type."""
        if value is None or self.value_type not in _READERS:
            return value
        return _READERS[self.value_type](value)


class NotOfType(ValueError):
    """A selected value that is no value of its filter's value type."""


def _number(value: Scalar) -> Scalar:
    """A number as it binds: a JSON number as sent; a string that spells one, without its ASCII
    blanks, as the integer when it is one within 64 bits, else as its text, which DuckDB reads
    exactly in the column's type (a float would round 1234567890123456789.01 and larger
    integers)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    text = value.strip(_BLANKS) if isinstance(value, str) else ""
    if len(text) <= _LONGEST_NUMBER and _DECIMAL.fullmatch(text) and isfinite(float(text)):
        if _INTEGER.fullmatch(text) and MIN_INTEGER <= int(text) <= MAX_INTEGER:
            return int(text)
        return text
    raise NotOfType("it takes numbers (its value type), and this is none")


def _boolean(value: Scalar) -> Scalar:
    if isinstance(value, bool):
        return value
    spelled = value.strip(_BLANKS).lower() if isinstance(value, str) else ""
    if spelled in ("true", "false"):
        return spelled == "true"
    raise NotOfType("it takes true or false (its value type)")


def _number_key(bound: Scalar) -> OptionKey:
    """How a number filter's value compares with its options: as a number, its text too."""
    if isinstance(bound, str):
        return option_key(int(bound) if _INTEGER.fullmatch(bound) else float(bound))
    return option_key(bound)


_BLANKS = " \t"  # ASCII only, as everywhere a value is read
# Longer than any number a column holds (a DECIMAL has at most 38 digits): refused before Python
# reads it (it refuses integers of more than 4,300 digits with an error of its own).
_LONGEST_NUMBER = 100
_INTEGER = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
# The forms DuckDB reads as a TIMESTAMP(TZ) and Python as a datetime: an offset (or Z) only after
# the seconds, where DuckDB reads one.
_DATETIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
    r"([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,9})?(Z|[+-][0-9]{2}(:?[0-5][0-9])?)?)?)?"
)


def is_date_text(value: object) -> bool:
    """A ``date`` filter's value: ``YYYY-MM-DD``, a day that exists."""
    return isinstance(value, str) and bool(_DATE.fullmatch(value)) and _parses(date, value)


def is_datetime_text(value: object) -> bool:
    """A ``datetime`` filter's value: ISO 8601 as DuckDB reads it (a date; a time of day to the
    minute, the second or below, and after seconds an offset or ``Z``); one that exists."""
    return isinstance(value, str) and bool(_DATETIME.fullmatch(value)) and _parses(datetime, value)


def _parses(kind: type[date], text: str) -> bool:
    try:
        kind.fromisoformat(text)
    except ValueError:
        return False
    return True


def _checked(is_one: Callable[[object], bool], detail: str) -> Callable[[Scalar], Scalar]:
    """A reader that binds a value as sent, once ``is_one`` says it is one."""

    def read(value: Scalar) -> Scalar:
        if is_one(value):
            return value
        raise NotOfType(detail)

    return read


_READERS = {
    "text": as_text,
    "number": _number,
    "boolean": _boolean,
    "date": _checked(is_date_text, "it takes dates, 'YYYY-MM-DD' (its value type), or a range"),
    "datetime": _checked(
        is_datetime_text,
        "it takes ISO 8601 date-times, '2024-06-01T12:00:00Z' (its value type), or a range",
    ),
}
# A variable no filter defines: Cluvio's text input.
AD_HOC = VariableRule(value_type="text")


# A rule for each variable a filter defines, even one that demands nothing; a variable without
# one is ad hoc (sql_templating.binding binds its values as text).
VariableRules = Mapping[str, VariableRule]


def check_selections(inputs: InputParameters, rules: VariableRules) -> None:
    """Each given filter that has a rule keeps it: one value unless ``multiple``, each value one
    of its value type (``VariableRule.as_bound``) and among its ``options``; every problem at
    once, each pointing at the value that has it."""
    errors: list[AppError] = []
    for index, given in enumerate(inputs.filters or ()):
        rule = rules.get(given.variable_name)
        if rule is None:
            continue
        pointer = f"/parameters/filters/{index}/selected_values"
        if not rule.multiple and len(given.selected_values) > 1:
            errors.append(
                invalid_parameter(
                    f"The filter '{given.variable_name}' takes one value, not several.",
                    pointer,
                    "multiple_values_not_allowed",
                )
            )
        for position, value in enumerate(given.selected_values):
            try:  # a range's bounds were checked as it was read
                key = rule.range_key(value) if given.range else rule.key_of(value)
            except NotOfType as exc:
                spelled = json.dumps(value)[:_QUOTED_AT_MOST]
                detail = f"The filter '{given.variable_name}' refuses {spelled}: {exc}."
                errors.append(invalid_parameter(detail, f"{pointer}/{position}", "invalid_value"))
                continue
            if rule.options is not None and key not in rule.options:
                errors.append(
                    invalid_parameter(
                        f"{json.dumps(value)[:_QUOTED_AT_MOST]} is not among the options of the filter "
                        f"'{given.variable_name}', which restricts its values to "
                        f"them{rule.options_note}.",
                        f"{pointer}/{position}",
                        "value_not_in_options",
                    )
                )
    if errors:
        raise ValidationErrors(errors)
