"""Where SQL text is code and where it is a literal or a comment, for the rewriters of a query.

Snippet expansion and Cluvio parameters only ever touch code: text inside string literals
(``'…'``, ``E'…'``, ``$tag$…$tag$``), quoted identifiers (``"…"``) and comments (``-- …``,
``/* … */``, nested as DuckDB allows) is left exactly as written. An unterminated literal or
comment runs to the end of the text, as it does for DuckDB's own parser.
"""

from __future__ import annotations

import re

_LINE_END = re.compile(r"[\r\n]")
_DOLLAR_TAG = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")
_IDENTIFIER_CHAR = re.compile(r"[A-Za-z0-9_]")


def skip_protected(sql: str, index: int) -> int | None:
    """The index after the literal or comment starting at ``index``; None when it is code."""
    char = sql[index]
    if char in "'\"":
        return _skip_quoted(sql, index, char)
    if char in "eE" and sql.startswith("'", index + 1) and not _follows_identifier(sql, index):
        return _skip_escaped_string(sql, index + 1)
    if sql.startswith("--", index):
        # DuckDB ends a line comment at a carriage return as well as a line feed.
        end = _LINE_END.search(sql, index)
        return len(sql) if end is None else end.end()
    if sql.startswith("/*", index):
        return _skip_block_comment(sql, index)
    if char == "$" and not _follows_identifier(sql, index):
        tag = _DOLLAR_TAG.match(sql, index)
        if tag:
            close = sql.find(tag.group(0), tag.end())
            return len(sql) if close < 0 else close + len(tag.group(0))
    return None


def _follows_identifier(sql: str, index: int) -> bool:
    return index > 0 and _IDENTIFIER_CHAR.match(sql[index - 1]) is not None


def _skip_quoted(sql: str, start: int, quote: str) -> int:
    """A doubled quote inside stands for the quote itself."""
    index = start + 1
    while index < len(sql):
        if sql[index] == quote:
            if sql.startswith(quote * 2, index):
                index += 2
                continue
            return index + 1
        index += 1
    return len(sql)


def _skip_escaped_string(sql: str, start: int) -> int:
    """``E'…'``: a backslash escapes the next character, and ``''`` still stands for a quote."""
    index = start + 1
    while index < len(sql):
        char = sql[index]
        if char == "\\":
            index += 2
        elif char == "'":
            if sql.startswith("''", index):
                index += 2
                continue
            return index + 1
        else:
            index += 1
    return len(sql)


def _skip_block_comment(sql: str, start: int) -> int:
    depth, index = 0, start
    while index < len(sql):
        if sql.startswith("/*", index):
            depth, index = depth + 1, index + 2
        elif sql.startswith("*/", index):
            depth, index = depth - 1, index + 2
            if depth == 0:
                return index
        else:
            index += 1
    return len(sql)


def line_and_column(sql: str, index: int) -> str:
    """``line L, column C`` (both from 1) of a position, for error details."""
    line = sql.count("\n", 0, index) + 1
    column = index - (sql.rfind("\n", 0, index) + 1) + 1
    return f"line {line}, column {column}"
