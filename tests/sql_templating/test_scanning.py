"""Telling code from literals and comments: what every rewriter of a query relies on."""

from __future__ import annotations

import pytest

from sql_templating.scanning import line_and_column, skip_protected


@pytest.mark.parametrize(
    ("sql", "end"),
    [
        ("'it''s' x", 7),
        ('"a ""b""" x', 9),
        ("E'it\\'s' x", 8),
        ("$$ a ' b $$ x", 11),
        ("$tag$ $$ $tag$ x", 14),
        ("-- c {x=y}\nx", 11),
        ("-- c {x=y}\rx", 11),  # DuckDB ends it there too: what follows is code
        ("-- c\r\nx", 5),
        ("/* a /* b */ c */ x", 17),
        ("'never closed", 13),
    ],
)
def test_literals_and_comments_are_skipped_whole(sql, end):
    assert skip_protected(sql, 0) == end


@pytest.mark.parametrize("sql", ["x", "price$usd", "e", "$1", "{a=b}"])
def test_code_is_not_skipped(sql):
    assert skip_protected(sql, len(sql) - 1 if sql == "price$usd" else 0) is None


def test_line_and_column_count_from_one():
    assert line_and_column("ab\ncd", 4) == "line 2, column 2"
