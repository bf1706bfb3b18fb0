"""The SQL an organisation's executions keep, as sent and as run, is bounded together
(DATAFERRY_MAX_EXECUTION_SQL_MB): one key at its rate limits could otherwise store two times
100,000 characters a request in the metadata database until retention forgets them. The budget
reads a counter on the organisation's row, kept by the run and by every deletion."""

from __future__ import annotations

from datetime import timedelta

import orjson
from sqlalchemy import func, select, update

from data_server import janitor
from shared.db.models import Execution, Organization, utcnow
from shared.results import LocalResultStore
from shared.settings import Settings
from tests.support.factories import Api, Org

BUDGET_MB = 1
BUDGET = BUDGET_MB * 1024 * 1024


def _run(api: Api, org: Org, sql: str, datasource_id: str | None = None):
    return api.client.post(
        f"/datasources/{datasource_id or org.sample_datasource_id}/executions",
        content=orjson.dumps({"sql_query": sql}),
        headers={"Authorization": f"Api {org.key}", "Content-Type": "application/json"},
    )


def _kept(api: Api, org: Org) -> int:
    with api.app.state.sessions() as session:
        return session.get_one(Organization, org.id).execution_sql_characters


def _executions(api: Api, org: Org) -> int:
    with api.app.state.sessions() as session:
        return session.scalar(
            select(func.count()).select_from(Execution).where(Execution.organization_id == org.id)
        )


def test_a_run_counts_its_sql_as_sent_and_as_run(api):
    org = api.create_org()
    snippet = api.post(
        "/sql_snippets",
        org.key,
        {"data": {"type": "sql_snippets", "attributes": {"name": "two", "sql": "SELECT 2"}}},
    )
    assert snippet.status_code == 201, snippet.text
    assert _run(api, org, "SELECT 1").status_code == 200
    assert _kept(api, org) == 2 * len("SELECT 1")
    assert _run(api, org, "[two] UNION ALL SELECT 3").status_code == 200
    sent, run = "[two] UNION ALL SELECT 3", "SELECT 2 UNION ALL SELECT 3"
    assert _kept(api, org) == 2 * len("SELECT 1") + len(sent) + len(run)


def test_a_run_past_the_budget_is_429_and_stores_nothing(settings: Settings):
    with Api.start(settings.model_copy(update={"max_execution_sql_mb": BUDGET_MB})) as api:
        org, other = api.create_org("A"), api.create_org("B")
        with api.app.state.sessions.begin() as session:
            session.get_one(Organization, org.id).execution_sql_characters = BUDGET - 16
        before = _executions(api, org)

        assert _run(api, org, "SELECT 1").status_code == 200  # 16 characters: exactly the room
        assert _kept(api, org) == BUDGET
        refused = _run(api, org, "SELECT 1")

        assert refused.status_code == 429
        error = refused.json()["errors"][0]
        assert error["code"] == "execution_sql_quota_exceeded"
        assert "1 MB" in error["detail"]
        retry = int(refused.headers["retry-after"])  # until its oldest execution is forgotten
        hours = settings.execution_retention_hours
        assert hours * 3600 - 60 <= retry <= hours * 3600 + 60
        assert _executions(api, org) == before + 1 and _kept(api, org) == BUDGET
        assert _run(api, other, "SELECT 1").status_code == 200


def test_deleting_executions_gives_their_room_back(api, tmp_path):
    org = api.create_org()
    duck = api.create_datasource(org.key)["id"]
    for sql in ("SELECT 1", "SELECT 22"):
        assert _run(api, org, sql).status_code == 200
        assert _run(api, org, sql, duck).status_code == 200
    assert _kept(api, org) == 2 * 2 * (8 + 9)

    # Retention: the sample datasource's executions, once ended and over a day old.
    long_ago = utcnow() - timedelta(hours=api.settings.execution_retention_hours + 1)
    with api.app.state.sessions.begin() as session:
        session.execute(
            update(Execution)
            .where(Execution.datasource_id == org.sample_datasource_id)
            .values(status="completed", created_at=long_ago)
        )
    janitor.sweep(api.app.state.sessions, LocalResultStore(tmp_path / "results"), api.settings)
    assert _kept(api, org) == 2 * (8 + 9)

    # The datasource's deletion takes its executions with it.
    assert api.delete(f"/datasources/{duck}", org.key).status_code == 204
    assert _kept(api, org) == 0
