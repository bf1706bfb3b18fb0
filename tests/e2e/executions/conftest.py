"""The region of the execution tests (real uvicorn processes of both servers, in each tested
deployment) and its DuckDB datasource with a table of every type. One per module.
"""

from __future__ import annotations

import duckdb
import pytest

from tests.support.processes import running_region

TYPES_SQL = """
SELECT * FROM (VALUES
  (1, 9007199254740993::BIGINT, 170141183460469231731687303715884105727::HUGEINT, 12.50::DECIMAL(10,2),
   1.5::DOUBLE, 'NaN'::DOUBLE, 'héllo "wörld"'::VARCHAR, TRUE, DATE '2024-02-29', TIME '13:45:31.5',
   TIMESTAMP '2024-03-31 01:30:00.123456', TIMESTAMPTZ '2024-03-31 01:30:00+02', INTERVAL 1 MONTH + INTERVAL 2 DAY + INTERVAL 3 SECOND,
   [1, 2, NULL]::INTEGER[], {'a': 1, 'b': 'x'}, '\\x00\\xFF'::BLOB, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::UUID),
  (2, (-9223372036854775808)::BIGINT, NULL, NULL, 'Infinity'::DOUBLE, '-Infinity'::DOUBLE, NULL, NULL, NULL, NULL,
   NULL, NULL, NULL, [], NULL, NULL, NULL)
) AS t(id, big, huge, dec, dbl, special, txt, flag, day, tod, ts, tstz, span, ints, obj, raw, uid)
ORDER BY id
"""


@pytest.fixture(scope="module")
def region(tmp_path_factory, deployment):
    cwd = tmp_path_factory.mktemp("exec-region")
    env = {
        **deployment,
        "DATAFERRY_QUERY_TIMEOUT_SECONDS": "5",
        "DATAFERRY_LEASE_SECONDS": "3",
        "DATAFERRY_QUERY_MEMORY_LIMIT_MB": "256",
        "DATAFERRY_WORKER_PROCESSES": "2",
        "DATAFERRY_POLL_INTERVAL_SECONDS": "0.05",
    }
    with running_region(cwd, env) as started:
        yield started


@pytest.fixture(scope="module")
def shop(region, client):
    """A DuckDB datasource with a table of every type, created through the API."""
    path = region.area(client.organization_id) / "types.duckdb"
    with duckdb.connect(str(path)) as connection:
        connection.execute(f"CREATE TABLE everything AS {TYPES_SQL}")
        connection.execute("CREATE TABLE numbers AS SELECT range AS n FROM range(250000)")
    return client.create_duckdb_datasource("types", "types.duckdb"), path
