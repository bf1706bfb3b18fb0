"""A region started as ``make run`` starts it, with a DuckDB datasource holding one big table.

The benches share it so that each measures what a user gets: no tuning variable is set. The one
policy limit raised, the result-row cap (a 10M-row result exceeds the default), is printed.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.processes import Region, running_region

RESULT_SQL = (
    "SELECT range AS id, range * 0.5 AS amount, 'name' || range AS name, "
    "DATE '2024-01-01' + (range % 365)::INTEGER AS day FROM range({rows})"
)
DATABASE_FILE = "bench.duckdb"


@contextmanager
def region_with_big_table(rows: int) -> Iterator[Region]:
    """Both servers of one region; ``bench.duckdb`` holds ``big`` of ``rows`` (organisations of
    ``new_organization`` find it in their area)."""
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        with duckdb.connect(str(cwd / DATABASE_FILE)) as connection:
            connection.execute(f"CREATE TABLE big AS {RESULT_SQL.format(rows=rows)}")
        raised = {"DATAFERRY_MAX_RESULT_ROWS": str(rows * 2), "DATAFERRY_LOG_LEVEL": "WARNING"}
        print(f"policy limit raised for the bench: DATAFERRY_MAX_RESULT_ROWS={rows * 2}")
        with running_region(cwd, raised) as region:
            yield region


def new_organization(region: Region) -> dict[str, str]:
    """A new organisation of the region with the big table's file in its area (a hard link)."""
    credentials = region.create_organization()
    os.link(region.cwd / DATABASE_FILE, region.area(credentials["organization_id"]) / DATABASE_FILE)
    return credentials
