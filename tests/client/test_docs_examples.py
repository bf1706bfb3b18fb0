"""docs/client.md's Python examples, executed as written against real servers."""

from __future__ import annotations

import re

import pytest

from tests.support.processes import ROOT

pytestmark = pytest.mark.e2e


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "client.md").read_text(), re.DOTALL)


def test_docs_have_polars_pandas_and_duckdb_examples():
    blocks = python_blocks()
    assert [
        any(f".{call}(" in b for b in blocks) for call in ("to_polars", "to_pandas", "to_duckdb")
    ] == [True] * 3


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_docs_example_runs(org, tmp_path, monkeypatch, capsys, index):
    monkeypatch.setenv("DATAFERRY_API_URL", org.api_url)
    monkeypatch.setenv("DATAFERRY_API_KEY", org.api_key)
    monkeypatch.setenv("DATAFERRY_DATA_URL", org.data_url)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    exec(compile(python_blocks()[index], f"docs/client.md example {index + 1}", "exec"), {})  # noqa: S102
    assert capsys.readouterr().out  # each example prints what it got
