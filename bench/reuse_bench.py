"""Result reuse for `make bench`: a dashboard run inside its refresh window against a fresh one,
servers as `make run` starts them (real uvicorn processes on 127.0.0.1, the embedded
configuration; scale-out too when DATAFERRY_TEST_POSTGRES_URL is set).

A dashboard with ``data_refresh_rate`` and three reports, each an aggregate over a few tens of
millions of generated rows. Each round times, from the request to every execution completed:

- a fresh run (``{"refresh": true}``): ``POST /dashboards/{id}/executions``, then Get Execution
  with ``?wait`` for each execution;
- a run inside the window right after it (``{}``): answered by the same, completed executions,
  so it needs no wait; the executions table is counted before and after (no row is written).

Printed: medians of both and their ratio against the issue's target (reused ≥ 10 times faster).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import func, select

from bench.latency_bench import (
    in_each_configuration,
    print_raised_limits,
    region_of,
    sample_datasource,
)
from shared.db.engine import create_metadata_engine
from shared.db.models import Execution
from tests.support.client import DataferryClient
from tests.support.processes import Region

TARGET_RATIO = 10.0
REPORT_SQL = "SELECT count(*) AS n, sum(hash(range + {n})) AS h FROM range(30000000)"
REPORTS = 3
JSONAPI = "application/vnd.api+json"


def _create(client: DataferryClient, path: str, document: dict[str, Any]) -> str:
    answer = client.http.post(
        f"{client.api_url}{path}",
        json=document,
        headers={**client.headers, "Content-Type": JSONAPI},
    )
    assert answer.status_code == 201, answer.text
    return str(answer.json()["data"]["id"])


def dashboard_with_reports(client: DataferryClient, datasource_id: str) -> str:
    attributes = {"name": "Reuse bench", "data_refresh_rate": 15}
    dashboard_id = _create(
        client, "/dashboards", {"data": {"type": "dashboards", "attributes": attributes}}
    )
    for n in range(REPORTS):
        relationships = {
            "datasource": {"data": {"type": "datasources", "id": datasource_id}},
            "dashboard": {"data": {"type": "dashboards", "id": dashboard_id}},
        }
        report = {"name": f"r{n}", "sql_query": REPORT_SQL.format(n=n)}
        document = {"type": "reports", "attributes": report, "relationships": relationships}
        _create(client, "/reports", {"data": document})
    return dashboard_id


def run_until_completed(client: DataferryClient, dashboard_id: str, body: dict) -> float:
    """Seconds from the run's request to every execution completed."""
    started = time.perf_counter()
    answer = client.http.post(
        f"{client.api_url}/dashboards/{dashboard_id}/executions", json=body, headers=client.headers
    )
    assert answer.status_code == 200, answer.text
    for execution in answer.json()["data"]:
        if execution["attributes"]["execution_status"] != "completed":
            done = client.execution(execution["id"], wait=30)
            assert done["execution_status"] == "completed", done
    return time.perf_counter() - started


def execution_rows(region: Region) -> int:
    url = (
        region.env.get("DATAFERRY_DATABASE_URL")
        or f"sqlite:///{region.cwd / 'var' / 'dataferry.db'}"
    )
    engine = create_metadata_engine(url)
    try:
        with engine.connect() as connection:
            return int(connection.scalar(select(func.count()).select_from(Execution)) or 0)
    finally:
        engine.dispose()


def bench(configuration: str, rounds: int) -> None:
    with region_of(configuration) as region, region.organization_client("Bench") as client:
        dashboard_id = dashboard_with_reports(client, sample_datasource(client))
        run_until_completed(client, dashboard_id, {"refresh": True})  # warm the sandboxes
        fresh, reused = [], []
        for _ in range(rounds):
            fresh.append(run_until_completed(client, dashboard_id, {"refresh": True}))
            before = execution_rows(region)
            reused.append(run_until_completed(client, dashboard_id, {}))
            assert execution_rows(region) == before, "a reused run wrote an execution"
        ratio = statistics.median(fresh) / statistics.median(reused)
        print(
            f"{configuration:9} dashboard of {REPORTS} reports   fresh p50 "
            f"{statistics.median(fresh) * 1000:7.1f} ms   reused p50 "
            f"{statistics.median(reused) * 1000:6.1f} ms (no execution written)"
            f"   ratio {ratio:.1f} (target ≥ {TARGET_RATIO:.0f}: "
            f"{'met' if ratio >= TARGET_RATIO else 'NOT met'})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10, help="fresh and reused runs each")
    args = parser.parse_args()
    print_raised_limits()
    in_each_configuration(lambda configuration: bench(configuration, args.rounds))


if __name__ == "__main__":
    main()
