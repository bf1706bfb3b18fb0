"""``[name]`` expansion in process: which brackets are references, the size cap, positions."""

from __future__ import annotations

import pytest

from shared.errors import Unprocessable
from sql_templating.snippets import expand_snippets, snippet_references


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT [x]", "SELECT X"),
        ("SELECT [ x ] AS a", "SELECT X AS a"),
        ("SELECT '[x]', \"[x]\" FROM t", "SELECT '[x]', \"[x]\" FROM t"),
        ("SELECT 'it''s [x]'", "SELECT 'it''s [x]'"),
        ("SELECT 1 -- [x]\n, [x]", "SELECT 1 -- [x]\n, X"),
        ("SELECT /* [x] */ [x]", "SELECT /* [x] */ X"),
        ("SELECT arr[x], ARRAY[x], (a)[x], m['k']", "SELECT arr[x], ARRAY[x], (a)[x], m['k']"),
        ("SELECT [1, 2], [x, y]", "SELECT [1, 2], [x, y]"),
        ("WHERE {[x]=region} AND {x=timerange}", "WHERE {[x]=region} AND {x=timerange}"),
        (
            "SELECT [CLUVIO_USER_EMAIL], [CLUVIO_DASHBOARD_ID]",
            "SELECT CAST(NULL AS VARCHAR), CAST(NULL AS VARCHAR)",
        ),
    ],
)
def test_references_outside_literals_comments_and_placeholders(sql, expected):
    assert expand_snippets(sql, {"x": "X"}.get, 10_000) == expected


def test_expansion_size_is_capped():
    lookup = {"a": "[b] [b] [b] [b]", "b": "[c] [c] [c] [c]", "c": "x" * 1000}.get
    with pytest.raises(Unprocessable) as error:
        expand_snippets("[a] [a] [a]", lookup, 20_000)
    assert error.value.code == "too_long"


def test_references_report_positions():
    assert list(snippet_references("a [b] c")) == [(2, 5, "b")]
