"""The text an organisation's executions keep (SQL as sent and as run, parameters as sent and as
bound) is bounded together (DATAFERRY_MAX_EXECUTION_TEXT_MB): one key at its rate limits could
otherwise store a megabyte body twice a request, once per report of a dashboard's run, in the
metadata database until retention forgets it. The budget reads a counter on the organisation's
row, kept by the run and by every deletion, each by what the execution's row holds."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import orjson
from sqlalchemy import select, update

from data_server import janitor
from shared.db.models import Execution, Organization, utcnow
from shared.results import LocalResultStore
from shared.settings import Settings
from shared.storage_quota import MIB
from tests.support.factories import Api, Org

BUDGET_MB = 1
BUDGET = BUDGET_MB * MIB
JSON = "application/json"


def _run(api: Api, org: Org, sql: str, datasource_id: str | None = None, **body: Any):
    path = f"/datasources/{datasource_id or org.sample_datasource_id}/executions"
    return api.post(path, org.key, {"sql_query": sql, **body}, JSON)


def _large_value(size: int) -> dict[str, Any]:
    """``parameters`` selecting one value of about that many bytes for ``{x.value}``."""
    return {"filters": [{"variable_name": "x", "selected_values": ["v" * size]}]}


def _kept(api: Api, org: Org) -> int:
    with api.app.state.sessions() as session:
        return session.get_one(Organization, org.id).execution_text_bytes


def _rows(api: Api, org: Org) -> list[Execution]:
    with api.app.state.sessions() as session:
        return list(session.scalars(select(Execution).where(Execution.organization_id == org.id)))


def _held(execution: Execution) -> int:
    """What the row holds, measured from what it reads back."""
    return (
        len(execution.sql_query.encode())
        + len((execution.expanded_sql or "").encode())
        + len(orjson.dumps(execution.parameters))
        + (
            0
            if execution.bound_parameters is None
            else len(orjson.dumps(execution.bound_parameters))
        )
    )


def test_a_run_counts_its_sql_and_parameters_as_sent_and_as_run(api):
    """In UTF-8 bytes, the budget's unit ('é' is two)."""
    org = api.create_org()
    snippet = api.post(
        "/sql_snippets",
        org.key,
        {"data": {"type": "sql_snippets", "attributes": {"name": "two", "sql": "SELECT 2"}}},
    )
    assert snippet.status_code == 201, snippet.text
    assert _run(api, org, "SELECT 'é'").status_code == 200
    assert _run(api, org, "[two] UNION ALL SELECT 3").status_code == 200
    # The outside probe's case: a small SQL and a large value stored twice, counted as SQL only.
    answer = _run(api, org, "SELECT length({x.value}) AS n", parameters=_large_value(300_000))
    assert answer.status_code == 200, answer.text
    runs = [e for e in _rows(api, org) if e.execution_type == "sql_query"]
    assert [e.kept_bytes for e in runs] == [_held(e) for e in runs]
    assert _kept(api, org) == sum(_held(e) for e in runs) > 600_000


def test_a_run_past_the_budget_is_429_and_stores_nothing(settings: Settings):
    with Api.start(settings.model_copy(update={"max_execution_text_mb": BUDGET_MB})) as api:
        org, other = api.create_org("A"), api.create_org("B")
        large = _large_value(400_000)
        assert _run(api, org, "SELECT {x.value} AS v", parameters=large).status_code == 200
        kept, rows = _kept(api, org), len(_rows(api, org))
        assert BUDGET / 2 < kept < BUDGET

        refused = _run(api, org, "SELECT {x.value} AS v", parameters=large)

        assert refused.status_code == 429
        error = refused.json()["errors"][0]
        assert error["code"] == "execution_text_quota_exceeded"
        assert "1 MB" in error["detail"]
        retry = int(refused.headers["retry-after"])  # until its oldest execution is forgotten
        hours = settings.execution_retention_hours
        assert hours * 3600 - 60 <= retry <= hours * 3600 + 60
        assert len(_rows(api, org)) == rows and _kept(api, org) == kept
        assert _run(api, other, "SELECT {x.value} AS v", parameters=large).status_code == 200
        # What is left fits exactly: a run of that many bytes passes, one more does not.
        with api.app.state.sessions.begin() as session:
            session.get_one(Organization, org.id).execution_text_bytes = BUDGET - _held(
                _rows(api, org)[-1]
            )
        assert _run(api, org, "SELECT {x.value} AS v", parameters=large).status_code == 200
        assert _kept(api, org) == BUDGET
        assert _run(api, org, "SELECT 1").status_code == 429


def test_deleting_executions_gives_their_room_back(api, tmp_path):
    org = api.create_org()
    duck = api.create_datasource(org.key)["id"]
    for parameters in ({}, _large_value(1000)):
        for datasource_id in (org.sample_datasource_id, duck):
            sql = "SELECT {x.value} AS v" if parameters else "SELECT 1"
            answer = _run(api, org, sql, datasource_id, parameters=parameters)
            assert answer.status_code == 200, answer.text
    runs = [e for e in _rows(api, org) if e.execution_type == "sql_query"]  # not the refreshes
    held = {e.id: (e.datasource_id, _held(e)) for e in runs}
    assert _kept(api, org) == sum(weight for _, weight in held.values())

    # Retention: the sample datasource's executions, once ended and over a day old.
    long_ago = utcnow() - timedelta(hours=api.settings.execution_retention_hours + 1)
    with api.app.state.sessions.begin() as session:
        session.execute(
            update(Execution)
            .where(Execution.datasource_id == org.sample_datasource_id)
            .values(status="completed", created_at=long_ago)
        )
    janitor.sweep(api.app.state.sessions, LocalResultStore(tmp_path / "results"), api.settings)
    assert _kept(api, org) == sum(w for ds, w in held.values() if ds == duck)

    # The datasource's deletion takes its executions with it.
    assert api.delete(f"/datasources/{duck}", org.key).status_code == 204
    assert _kept(api, org) == 0


def test_a_run_keeping_more_than_the_whole_budget_is_413_not_a_429_no_wait_cures(
    settings: Settings,
):
    with Api.start(settings.model_copy(update={"max_execution_text_mb": BUDGET_MB})) as api:
        org = api.create_org()
        rows = len(_rows(api, org))
        answer = _run(api, org, "SELECT {x.value} AS v", parameters=_large_value(600_000))
        assert answer.status_code == 413
        assert answer.json()["errors"][0]["code"] == "execution_text_too_large"
        assert len(_rows(api, org)) == rows and _kept(api, org) == 0


def _count_is_its_rows(api: Api, org: Org) -> None:
    """The organisation's count equals what its executions keep, whatever was refused."""
    assert _kept(api, org) == sum(e.kept_bytes for e in _rows(api, org))


def test_the_count_stays_the_sum_of_its_rows_through_every_way_a_run_stores_nothing(api):
    """The run counts its text in the statement that locks the organisation and takes it off
    again wherever it stores nothing: a replayed Idempotency-Key, a reused execution, the cap's
    429, a dashboard refused part of the way."""
    org = api.create_org()
    path = f"/datasources/{org.sample_datasource_id}/executions"
    for _ in range(2):
        answer = api.post(path, org.key, {"sql_query": "SELECT 1"}, JSON, {"Idempotency-Key": "k"})
        assert answer.status_code == 200, answer.text
    _count_is_its_rows(api, org)

    sqls = [f"SELECT {index} AS n" for index in range(3)]
    dashboard_id, (report_id, *_) = api.create_dashboard(org, sqls, data_refresh_rate=15)
    run_report = f"/reports/{report_id}/executions"
    for _ in range(2):  # the second answers the first's execution
        assert api.post(run_report, org.key, {}, JSON).status_code == 200
    _count_is_its_rows(api, org)

    with api.app.state.sessions.begin() as session:
        session.get_one(Organization, org.id).max_running_executions = 3
    refused = api.post(f"/dashboards/{dashboard_id}/executions", org.key, {"refresh": True}, JSON)
    assert refused.status_code in (409, 429), refused.text  # the cap, part of the way
    _count_is_its_rows(api, org)
    with api.app.state.sessions.begin() as session:  # the two it runs fill it
        session.get_one(Organization, org.id).max_running_executions = 2
    assert _run(api, org, "SELECT 2").status_code == 429
    _count_is_its_rows(api, org)
