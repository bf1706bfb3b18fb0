"""Cluvio's ``{…}`` placeholders found in a query's code, each replaced by what a renderer makes
of it.

Forms: ``{col=var}`` / ``{[expr]=var}`` conditions (``.next`` for the range after a range),
``{col:var}`` / ``{[expr]:var}`` transformations (date truncation, or ``tz`` conversion) and
``{var.selector}`` values. ``[expr]`` may itself hold placeholders, replaced first. A ``{…}``
that fits no form is DuckDB's own (a struct literal) and stays. Braces and brackets must balance,
and ``$1``, ``?`` and ``$name`` are refused: positional parameters carry the bound values only.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from shared.errors import AppError, Unprocessable
from sql_templating.parameters import NAME
from sql_templating.scanning import line_and_column, skip_protected

# A bracketed expression may hold placeholders of its own, this deep at most: each level can
# repeat its expression (a range writes it twice), so depth is what bounds the work.
MAX_PLACEHOLDER_NESTING = 10

_VALUE_FORM = re.compile(rf"\{{\s*({NAME})\.({NAME})\s*\}}")
_SIMPLE_FORM = re.compile(rf"\{{\s*({NAME}(?:\.{NAME})*)\s*([=:])\s*({NAME})(?:\.({NAME}))?\s*\}}")
_BRACKET_OPEN = re.compile(r"\{\s*\[")
_BRACKET_TAIL = re.compile(rf"\s*([=:])\s*({NAME})(?:\.({NAME}))?\s*\}}")
_CONDITION_START = re.compile(rf"\{{\s*{NAME}(?:\.{NAME})*\s*=")
_BIND_MARKER = re.compile(rf"[?]|\$(?:\d|{NAME})")
_CLOSING = {"}": "{", "]": "["}


class PlaceholderKind(StrEnum):
    CONDITION = "condition"
    TRANSFORMATION = "transformation"
    VALUE = "value"


@dataclass(frozen=True)
class Placeholder:
    start: int
    end: int
    kind: PlaceholderKind
    variable: str
    selector: str | None
    expression: str = ""  # rewritten SQL of the bracketed or plain expression


def replace_placeholders(sql: str, render: Callable[[Placeholder], str], max_length: int) -> str:
    """``sql`` with every placeholder replaced by ``render(placeholder)``, in text order (an
    expression's placeholders before their own); no level of it may exceed ``max_length``."""
    return _Scanner(sql, render, max_length).rewrite(0, len(sql))


def placeholder_variables(sql: str) -> set[str]:
    """The variables ``sql``'s placeholders name (as it is written: snippets not expanded); up
    to its first problem, if it has one (SQL that would not run still names what it names)."""
    found: set[str] = set()

    def record(placeholder: Placeholder) -> str:
        found.add(placeholder.variable)
        return ""

    with contextlib.suppress(AppError):
        replace_placeholders(sql, record, max(len(sql), 1))
    return found


def placeholder_error(
    sql: str, index: int, detail: str, code: str = "invalid_placeholder"
) -> AppError:
    """A 422 at ``/sql_query`` that says where in the query (snippets expanded) the problem is."""
    excerpt = sql[index : index + 40].split("\n")[0]
    return Unprocessable(
        f"{detail} At {line_and_column(sql, index)} of the query with its snippets "
        f"expanded, near: {excerpt}",
        pointer="/sql_query",
        code=code,
    )


class _Scanner:
    def __init__(self, sql: str, render: Callable[[Placeholder], str], max_length: int) -> None:
        self.sql = sql
        self.render = render
        self.max_length = max_length
        self._nesting = 0

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
                    parts += [sql[copied:index], self.render(placeholder)]
                    length += len(parts[-2]) + len(parts[-1])
                    if length > self.max_length:
                        raise self._too_long()
                    index = copied = placeholder.end
                    continue
            if char in "{[":
                open_marks.append(index)
            elif char in "}]":
                if not open_marks or sql[open_marks[-1]] != _CLOSING[char]:
                    raise placeholder_error(sql, index, f"This '{char}' closes nothing.")
                open_marks.pop()
            elif _BIND_MARKER.match(sql, index) and not _after_name(sql, index):
                raise placeholder_error(
                    sql,
                    index,
                    "Positional parameters ($1, ?) are reserved for Cluvio parameter values; "
                    "use {variable.value} and pass the value in parameters.filters.",
                    code="bind_marker_in_sql",
                )
            index += 1
        if open_marks:
            mark = open_marks[-1]
            raise placeholder_error(sql, mark, f"This '{sql[mark]}' is never closed.")
        parts.append(sql[copied:end])
        return "".join(parts)

    def _placeholder_at(self, start: int, end: int) -> Placeholder | None:
        """The placeholder opening at ``start``; None for a ``{…}`` that is DuckDB's own."""
        sql = self.sql
        match = _VALUE_FORM.match(sql, start, end)
        if match:
            return Placeholder(
                start, match.end(), PlaceholderKind.VALUE, match.group(1), match.group(2)
            )
        match = _SIMPLE_FORM.match(sql, start, end)
        if match:
            kind = _kind_of(match.group(2))
            return Placeholder(
                start, match.end(), kind, match.group(3), match.group(4), match.group(1)
            )
        opening = _BRACKET_OPEN.match(sql, start, end)
        if opening:
            close = self._closing_bracket(opening.end() - 1, end)
            tail = _BRACKET_TAIL.match(sql, close + 1, end)
            if tail is None:
                raise placeholder_error(
                    sql,
                    start,
                    "A placeholder {[expression]…} continues with =variable} or :variable}.",
                )
            expression = self._nested_rewrite(start, opening.end(), close)
            return Placeholder(
                start, tail.end(), _kind_of(tail.group(1)), tail.group(2), tail.group(3), expression
            )
        if _CONDITION_START.match(sql, start, end):
            raise placeholder_error(sql, start, "A condition placeholder is {column=variable}.")
        return None  # a struct literal such as {'a': 1}

    def _nested_rewrite(self, placeholder_start: int, start: int, end: int) -> str:
        """A bracketed expression, its own placeholders replaced, at most
        ``MAX_PLACEHOLDER_NESTING`` levels deep."""
        if self._nesting >= MAX_PLACEHOLDER_NESTING:
            raise placeholder_error(
                self.sql,
                placeholder_start,
                f"Placeholders nest at most {MAX_PLACEHOLDER_NESTING} deep inside "
                "{[expression]…}.",
                code="placeholders_too_deep",
            )
        self._nesting += 1
        try:
            return self.rewrite(start, end).strip()
        finally:
            self._nesting -= 1

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
        raise placeholder_error(self.sql, start, "This '[' of a placeholder is never closed.")

    def _too_long(self) -> AppError:
        return Unprocessable(
            f"With its placeholders rendered the query would exceed {self.max_length} "
            "characters; repeat expressions less, or nest fewer placeholders.",
            pointer="/sql_query",
            code="too_long",
        )


def _kind_of(operator: str) -> PlaceholderKind:
    return PlaceholderKind.CONDITION if operator == "=" else PlaceholderKind.TRANSFORMATION


def _after_name(sql: str, index: int) -> bool:
    """A ``$`` inside a name such as ``price$usd`` is part of the name."""
    return sql[index] == "$" and index > 0 and (sql[index - 1].isalnum() or sql[index - 1] == "_")
