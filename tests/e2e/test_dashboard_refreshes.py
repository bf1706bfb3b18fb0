"""The dashboard scheduler with two data servers (real ``python -m data_server work`` processes)
on one PostgreSQL metadata DB: each due refresh of a prewarmed dashboard runs exactly once per
period, whichever server claims it, and its executions (no API key) complete.

A period is made due while both servers run, by the dashboard's anchor (a daily refresh
anchored a minute or two ago), so that the test waits for no clock boundary. Every wait is a
bounded loop that gives up by itself."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from shared.db.models import Dashboard, DashboardRefresh, Datasource, Execution, Report
from tests.support.cluster import Cluster, cluster_on_postgres
from tests.support.postgres import fresh_postgres_schema

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

INTERVAL = 0.2  # DATAFERRY_SCHEDULER_INTERVAL_SECONDS of both servers
REPORTS = 2


@pytest.fixture
def cluster(tmp_path) -> Iterator[Cluster]:
    with cluster_on_postgres(tmp_path, fresh_postgres_schema) as started:
        yield started


def _anchor(minutes_ago: int) -> tuple[str, datetime]:
    """An anchor ``HH:MM`` (UTC) that many minutes back, and its instant: a daily refresh
    anchored there is due now."""
    at = (datetime.now(UTC) - timedelta(minutes=minutes_ago)).replace(second=0, microsecond=0)
    return at.strftime("%H:%M"), at


def _claims(cluster: Cluster) -> list[DashboardRefresh]:
    with cluster.sessions() as session:
        return list(session.scalars(select(DashboardRefresh).order_by(DashboardRefresh.due_at)))


def _refresh_executions(cluster: Cluster) -> list[Execution]:
    with cluster.sessions() as session:
        return list(session.scalars(select(Execution).where(Execution.report_id.is_not(None))))


def _passes_of_both_servers() -> None:
    """Time for each server to run many more passes (each sees the claims, or races)."""
    time.sleep(10 * INTERVAL)


def test_two_data_servers_refresh_a_prewarmed_dashboard_exactly_once_per_period(cluster):
    anchor, due_at = _anchor(minutes_ago=2)
    with cluster.sessions.begin() as session:
        datasource = session.scalars(select(Datasource).limit(1)).one()
        dashboard = Dashboard(
            organization_id=datasource.organization_id,
            name="Prewarmed",
            data_refresh_rate=1440,
            data_refresh_anchor_time=anchor,
        )
        session.add(dashboard)
        session.flush()
        dashboard_id = dashboard.id
        session.add_all(
            Report(
                organization_id=datasource.organization_id,
                datasource_id=datasource.id,
                dashboard_id=dashboard_id,
                name=f"r{n}",
                sql_query=f"SELECT {n} AS n",
            )
            for n in range(REPORTS)
        )
    servers = [
        cluster.start_worker(DATAFERRY_SCHEDULER_INTERVAL_SECONDS=str(INTERVAL)) for _ in range(2)
    ]
    log = cluster.state_dir / "workers.log"
    cluster.wait_until(
        lambda: log.read_text(errors="replace").count("worker started") == 2, 60, "both servers"
    )

    # Due while both run: exactly one claims it and queues one execution per report.
    with cluster.sessions.begin() as session:
        session.get_one(Dashboard, dashboard_id).prewarm = True
    cluster.wait_until(lambda: _claims(cluster), 10, "the first refresh")
    _passes_of_both_servers()
    [claim] = _claims(cluster)
    assert (claim.due_at, claim.executions) == (due_at, REPORTS)
    server_ids = {f":{server.pid}:" for server in servers}
    assert any(pid in claim.claimed_by for pid in server_ids)
    first = _refresh_executions(cluster)
    assert len(first) == REPORTS and {e.api_key_id for e in first} == {None}
    ids = [e.id for e in first]
    cluster.wait_until(lambda: cluster.all_terminal(ids), 30, "the refresh's executions")
    assert {e.status for e in cluster.rows(ids)} == {"completed"}

    # The next period (the anchor moved a minute on; the first results dated before it, so
    # none answers it): exactly one more refresh, one more execution per report.
    anchor, next_due_at = _anchor(minutes_ago=1)
    assert next_due_at > due_at
    with cluster.sessions.begin() as session:
        session.execute(update(Execution).where(Execution.id.in_(ids)).values(created_at=due_at))
        session.get_one(Dashboard, dashboard_id).data_refresh_anchor_time = anchor
    cluster.wait_until(lambda: len(_claims(cluster)) == 2, 10, "the second refresh")
    _passes_of_both_servers()
    assert [(c.due_at, c.executions) for c in _claims(cluster)] == [
        (due_at, REPORTS),
        (next_due_at, REPORTS),
    ]
    assert len(_refresh_executions(cluster)) == 2 * REPORTS
