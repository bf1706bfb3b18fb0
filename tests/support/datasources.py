"""The document that creates a DuckDB datasource over an organisation's shop.duckdb, for the
datasource and API convention tests to vary.
"""

from __future__ import annotations

from tests.support.factories import resource


def new_datasource_document(api, org, **overrides):
    attributes = {"name": "Shop", "database_type": "duckdb", "database": api.duckdb_file(org)}
    attributes.update(overrides)
    return resource("datasources", **attributes)
