"""Result reuse on the run routes (``POST /reports/{id}/executions``, ``POST
/dashboards/{id}/executions``): within the dashboard's ``data_refresh_rate`` an execution of the
same query answers and no row is written; ``"refresh": true`` refuses it; outside the window,
failed, cancelled or purged executions, other organisations' executions and dashboards without a
refresh rate never answer. No data server runs here: executions stay ``starting`` unless a test
records what a worker would."""

from __future__ import annotations

from datetime import timedelta

import orjson
from sqlalchemy import func, select, update

from shared.db.models import Execution, Report, utcnow
from shared.execution_states import ExecutionType
from tests.support.factories import resource

WINDOW_MINUTES = 15


def _dashboard(api, org, reports=("SELECT 1 AS n",), **values) -> tuple[str, list[str]]:
    values.setdefault("data_refresh_rate", WINDOW_MINUTES)
    return api.create_dashboard(org, reports, **values)


def _post(api, key, path, body=None, headers=None):
    return api.client.post(
        path,
        content=orjson.dumps(body or {}),
        headers={
            "Authorization": f"Api {key}",
            "Content-Type": "application/json",
            **(headers or {}),
        },
    )


def _run_report(api, key, report_id, body=None, headers=None) -> dict:
    answer = _post(api, key, f"/reports/{report_id}/executions", body, headers)
    assert answer.status_code == 200, answer.text
    return answer.json()["data"]


def _sql_executions(api) -> int:
    with api.app.state.sessions() as session:
        return session.scalar(
            select(func.count())
            .select_from(Execution)
            .where(Execution.execution_type == ExecutionType.SQL_QUERY)
        )


def _set(api, execution_id, **values) -> None:
    with api.app.state.sessions.begin() as session:
        session.execute(update(Execution).where(Execution.id == execution_id).values(**values))


def _complete(api, execution_id, data_key="k" * 32) -> None:
    """Record what a worker would on completion."""
    _set(api, execution_id, status="completed", data_key=data_key, completed_at=utcnow())


def test_a_second_run_inside_the_window_answers_the_first_execution(api):
    org = api.create_org()
    _, (report,) = _dashboard(api, org)
    first = _run_report(api, org.key, report)
    assert first["meta"] == {"reused": False}
    queued = _run_report(api, org.key, report)  # still queued: the runs coalesce
    assert (queued["id"], queued["meta"]) == (first["id"], {"reused": True})
    _complete(api, first["id"])
    completed = _run_report(api, org.key, report)
    assert (completed["id"], completed["meta"]) == (first["id"], {"reused": True})
    assert completed["attributes"]["execution_status"] == "completed"
    assert _sql_executions(api) == 1
    with api.app.state.sessions() as session:
        assert len(session.get(Execution, first["id"]).reuse_key) == 64


def test_run_and_wait_answering_a_completed_execution_carries_its_grant(api):
    """The reused execution had ended when the run read it: nothing is waited for or read
    again, and the answer still hands out its data, as a fresh run's would."""
    org = api.create_org()
    _, (report,) = _dashboard(api, org)
    first = _run_report(api, org.key, report)
    data_key = api.complete_by_hand(first["id"])
    answer = _post(api, org.key, f"/reports/{report}/executions?wait=5")
    assert answer.status_code == 200, answer.text
    document = answer.json()
    assert (document["data"]["id"], document["data"]["meta"]) == (first["id"], {"reused": True})
    assert document["meta"]["data_key"] == data_key


def test_refresh_true_runs_afresh_and_later_runs_reuse_the_newest(api):
    org = api.create_org()
    _, (report,) = _dashboard(api, org)
    first = _run_report(api, org.key, report)
    _complete(api, first["id"])
    fresh = _run_report(api, org.key, report, {"refresh": True})
    assert fresh["id"] != first["id"] and fresh["meta"] == {"reused": False}
    # A completed one answers before a newer one still running.
    assert _run_report(api, org.key, report)["id"] == first["id"]
    _complete(api, fresh["id"], "j" * 32)
    assert _run_report(api, org.key, report)["id"] == fresh["id"]
    assert _sql_executions(api) == 2
    bad = _post(api, org.key, f"/reports/{report}/executions", {"refresh": "yes"})
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["source"] == {"pointer": "/refresh"}


def test_outside_the_window_or_without_a_refresh_rate_a_run_queues_anew(api):
    org = api.create_org()
    _, (report,) = _dashboard(api, org)
    first = _run_report(api, org.key, report)
    _complete(api, first["id"])
    _set(api, first["id"], created_at=utcnow() - timedelta(minutes=WINDOW_MINUTES, seconds=1))
    assert _run_report(api, org.key, report)["meta"] == {"reused": False}
    _, (unrated,) = _dashboard(api, org, data_refresh_rate=None)
    assert _run_report(api, org.key, unrated)["meta"] == {"reused": False}
    assert _run_report(api, org.key, unrated)["meta"] == {"reused": False}
    assert _sql_executions(api) == 4


def test_a_result_made_before_its_datasource_changed_is_not_reused(api):
    """Its data time zone or the folder it reads changed: the same SQL now reads other data, and
    the old result answered for up to the window (found by the outside probe)."""
    org = api.create_org()
    datasource = api.create_datasource(org.key, name="Shop")["id"]
    dashboard_id, _ = _dashboard(api, org, ())
    with api.app.state.sessions.begin() as session:
        report = Report(
            organization_id=org.id,
            datasource_id=datasource,
            dashboard_id=dashboard_id,
            name="r",
            sql_query="SELECT current_setting('TimeZone') AS zone",
        )
        session.add(report)
        session.flush()
        report_id = report.id
    first = _run_report(api, org.key, report_id)
    _complete(api, first["id"])
    assert _run_report(api, org.key, report_id)["id"] == first["id"]
    changed = api.patch(
        f"/datasources/{datasource}",
        org.key,
        resource("datasources", datasource, data_time_zone="America/New_York"),
    )
    assert changed.status_code == 200, changed.text
    after = _run_report(api, org.key, report_id)
    assert after["id"] != first["id"] and after["meta"] == {"reused": False}
    assert _run_report(api, org.key, report_id)["id"] == after["id"]  # reused from then on


def test_failed_cancelled_and_purged_executions_are_never_reused(api):
    org = api.create_org()
    _, (report,) = _dashboard(api, org)
    for spoil in (
        {"status": "failed", "completed_at": utcnow()},
        {"cancel_requested": True},
        {
            "status": "completed",
            "data_key": "p" * 32,
            "completed_at": utcnow(),
            "data_purged_at": utcnow(),
        },
    ):
        run = _run_report(api, org.key, report)
        assert run["meta"] == {"reused": False}
        _set(api, run["id"], **spoil)
    assert _sql_executions(api) == 3


def test_another_organisations_identical_query_is_never_reused(api):
    ours, theirs = api.create_org("Ours"), api.create_org("Theirs")
    _, (their_report,) = _dashboard(api, theirs)
    _, (our_report,) = _dashboard(api, ours)
    their_run = _run_report(api, theirs.key, their_report)
    _complete(api, their_run["id"])
    our_run = _run_report(api, ours.key, our_report)
    assert our_run["id"] != their_run["id"] and our_run["meta"] == {"reused": False}
    # Even their completed execution carrying our very key (their datasource differs, so it
    # cannot) never answers us.
    with api.app.state.sessions.begin() as session:
        our_row = session.get(Execution, our_run["id"])
        our_key = our_row.reuse_key
        session.delete(our_row)
        session.execute(
            update(Execution).where(Execution.id == their_run["id"]).values(reuse_key=our_key)
        )
    again = _run_report(api, ours.key, our_report)
    assert again["id"] != their_run["id"] and again["meta"] == {"reused": False}


def test_a_second_dashboard_run_inside_the_window_creates_no_execution(api):
    org = api.create_org()
    dashboard, reports = _dashboard(api, org, reports=("SELECT 1 AS a", "SELECT 2 AS b"))
    path = f"/dashboards/{dashboard}/executions"
    first = _post(api, org.key, path).json()
    assert [e["meta"] for e in first["data"]] == [{"reused": False}] * 2
    assert first["meta"] == {"total": 2}
    again = _post(api, org.key, path).json()
    assert [e["id"] for e in again["data"]] == [e["id"] for e in first["data"]]
    assert [e["meta"] for e in again["data"]] == [{"reused": True}] * 2
    assert _sql_executions(api) == 2
    # A report's run of the same query is answered by the dashboard's execution, and back.
    assert _run_report(api, org.key, reports[0])["id"] == first["data"][0]["id"]
    refreshed = _post(api, org.key, path, {"refresh": True}).json()
    assert [e["meta"] for e in refreshed["data"]] == [{"reused": False}] * 2
    assert _sql_executions(api) == 4


def test_an_idempotency_key_answers_the_same_execution_whether_it_was_reused_or_not(api):
    org = api.create_org()
    _, (report,) = _dashboard(api, org)
    first = _run_report(api, org.key, report)
    reused = _run_report(api, org.key, report, headers={"Idempotency-Key": "k"})
    retried = _run_report(api, org.key, report, headers={"Idempotency-Key": "k"})
    assert first["id"] == reused["id"] == retried["id"]
    # Nothing was recorded for the key: a fresh run may still take it, once.
    created = _run_report(api, org.key, report, {"refresh": True}, {"Idempotency-Key": "k"})
    assert created["id"] != first["id"] and created["meta"] == {"reused": False}
    again = _run_report(api, org.key, report, {"refresh": True}, {"Idempotency-Key": "k"})
    assert again["id"] == created["id"]
    # refresh is not compared: the retry answers what the key created (it was a 422).
    without = _run_report(api, org.key, report, {"refresh": False}, {"Idempotency-Key": "k"})
    assert without["id"] == created["id"]
    assert _sql_executions(api) == 2


def test_run_execution_never_reuses_and_answers_as_cluvio(api):
    org = api.create_org()
    path = f"/datasources/{org.sample_datasource_id}/executions"
    answers = [_post(api, org.key, path, {"sql_query": "SELECT 1 AS n"}).json() for _ in range(2)]
    assert answers[0]["data"]["id"] != answers[1]["data"]["id"]
    assert "meta" not in answers[0]["data"]
    with api.app.state.sessions() as session:
        assert (
            session.scalar(
                select(Execution.reuse_key).where(Execution.id == answers[0]["data"]["id"])
            )
            is None
        )
