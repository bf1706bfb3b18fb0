"""What a filter definition demands of an execution's value for its variable, as plain values
(``shared.filter_rules`` reads them from the database; ``sql_templating.binding`` keeps them), so
that templating stays free of the database.

Options compare by JSON type as well as value: the option ``1`` is not the selection ``"1"`` nor
``true``; ``1`` and ``1.0`` are the same number. But a variable whose values bind as text (a text
filter's) compares them by that text: its selection ``0`` is its option ``"0"``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from shared.errors import AppError, ValidationErrors
from sql_templating.parameters import InputParameters, Scalar, as_text, invalid_parameter

OptionKey = tuple[str, Any]


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
    ``values_as_text``: its values bind as text (a filter of value type text), as an ad hoc
    variable's (one without a rule) do."""

    multiple: bool = True
    allow_all_time: bool = False
    options: frozenset[OptionKey] | None = None
    options_note: str = ""
    values_as_text: bool = False

    @classmethod
    def restricted_to(cls, options: Iterable[Scalar], **rule: Any) -> VariableRule:
        return cls(**rule).with_options(options)

    def with_options(self, options: Iterable[Scalar], note: str = "") -> VariableRule:
        """This rule, restricted to ``options`` (``options_note``: ``note``)."""
        keys = frozenset(self.key_of(value) for value in options)
        return replace(self, options=keys, options_note=note)

    def key_of(self, value: Scalar) -> OptionKey:
        """How a value compares with the options: by the text it binds as, if it binds as text
        (null stays null), else by its JSON type."""
        if self.values_as_text and value is not None:
            return option_key(as_text(value))
        return option_key(value)


# A rule for each variable a filter defines, even one that demands nothing; a variable without
# one is ad hoc (sql_templating.binding binds its values as text).
VariableRules = Mapping[str, VariableRule]


def check_selections(inputs: InputParameters, rules: VariableRules) -> None:
    """Each given filter that has a rule keeps it: one value unless ``multiple``, and each value
    among its ``options``; every problem at once, each pointing at the value that has it."""
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
        if rule.options is None:
            continue
        errors += [
            invalid_parameter(
                f"{value!r} is not among the options of the filter '{given.variable_name}', "
                f"which restricts its values to them{rule.options_note}.",
                f"{pointer}/{position}",
                "value_not_in_options",
            )
            for position, value in enumerate(given.selected_values)
            if rule.key_of(value) not in rule.options
        ]
    if errors:
        raise ValidationErrors(errors)
