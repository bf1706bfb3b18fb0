"""The audit log: every write and data grant recorded, readable with Manage Users, never a secret."""

from __future__ import annotations

from types import SimpleNamespace

import orjson
import pytest
from sqlalchemy.exc import OperationalError

from api_server import audit
from api_server.permissions import Permission
from tests.support.factories import dump_tables, resource

WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


def _events(api, key, query=""):
    answer = api.get(f"/audit_events{query}", key)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_every_write_route_has_an_audit_action(api):
    """Read from the routes as the audit middleware reads them (declared with each operation)."""
    actions = {
        (method, route.path): action
        for route in api.app.routes
        for method, action in getattr(route, "audit_actions", {}).items()
    }
    handled = {
        (method, route.path)
        for route in api.app.routes
        for method in getattr(route, "handled_methods", ())
    }
    writes = {(method, path) for method, path in handled if method in WRITE_METHODS}
    assert len(writes) >= 10, "few write routes found: the route walk is broken"
    assert writes <= set(actions), sorted(writes - set(actions))
    assert len(set(actions.values())) == len(actions), "two operations share an audit action"


def test_a_head_is_recorded_as_its_get(api):
    """The outside probe's case: HEAD runs GET's handler (a dynamic filter's options start a run,
    a grant mints a token), and went unrecorded: the audit actions are GET's."""
    principal = SimpleNamespace(organization_id="an-organisation", api_key_id="a-key")
    audited_gets = [
        route for route in api.app.routes if "GET" in getattr(route, "audit_actions", {})
    ]
    assert len(audited_gets) >= 3, "few audited GET routes found: the route walk is broken"
    for route in audited_gets:
        assert "HEAD" in route.handled_methods
        scope = {"route": route, "method": "HEAD", "state": {"principal": principal}}
        event = audit._event(scope, 200, None, "an-id")
        assert event is not None, route.path
        assert (event["action"], event["method"]) == (route.audit_actions["GET"], "HEAD")


def test_writes_and_data_grants_are_recorded_with_who_what_where(api):
    org = api.create_org()
    key_id = api.get("/api_key", org.key).json()["data"]["id"]
    created = api.post(
        "/sql_snippets", org.key, resource("sql_snippets", name="s", sql="SELECT 1")
    ).json()["data"]["id"]
    api.get("/sql_snippets", org.key)  # reads are not recorded
    run = api.client.post(
        f"/datasources/{org.sample_datasource_id}/executions",
        content=orjson.dumps({"sql_query": "SELECT 1"}),
        headers={"Authorization": f"Api {org.key}", "Content-Type": "application/json"},
    )
    execution_id = run.json()["data"]["id"]
    api.get(f"/executions/{execution_id}/data", org.key)  # 204, not ready: no grant
    api.delete(f"/sql_snippets/{created}", org.key)

    events = _events(api, org.key)["data"]
    assert [e["attributes"]["action"] for e in events] == [
        "sql_snippet.delete",
        "execution.run",
        "sql_snippet.create",
    ]
    run_event = events[1]["attributes"]
    assert run_event["resource_id"] == execution_id
    assert run_event["api_key_id"] == key_id
    assert run_event["path"] == "/datasources/{id}/executions"
    assert run_event["remote_addr"] == "testclient"
    assert run_event["request_id"] == run.headers["x-request-id"]
    assert events[2]["attributes"]["resource_id"] == created
    assert org.key not in str(events)


def test_failed_writes_are_not_recorded_and_change_nothing(api):
    org = api.create_org()
    before = dump_tables(api.app)
    assert api.post("/sql_snippets", org.key, resource("sql_snippets", name="")).status_code == 422
    assert dump_tables(api.app) == before


def test_filters_and_paging(api):
    org = api.create_org()
    for name in ("a", "b", "c"):
        api.post("/sql_snippets", org.key, resource("sql_snippets", name=name, sql="SELECT 1"))
    page = _events(api, org.key, "?page[size]=2&filter[action]=sql_snippet.create")
    assert page["meta"]["total"] == 3 and len(page["data"]) == 2
    assert page["links"]["next"]
    oldest_first = _events(api, org.key, "?sort=created_at")["data"]
    assert (
        oldest_first[0]["attributes"]["created_at"] <= oldest_first[-1]["attributes"]["created_at"]
    )
    assert _events(api, org.key, "?filter[since]=2999-01-01T00:00:00%2B00:00")["data"] == []
    assert len(_events(api, org.key, "?filter[until]=2999-01-01T00:00:00%2B00:00")["data"]) == 3


@pytest.mark.parametrize("query", ["?filter[since]=yesterday", "?filter[until]=2026-01-01", "?x=1"])
def test_bad_filters_are_400(api, query):
    org = api.create_org()
    assert api.get(f"/audit_events{query}", org.key).status_code == 400


def test_only_manage_users_reads_and_only_its_organisation(api):
    org, other = api.create_org("A"), api.create_org("B")
    api.post("/sql_snippets", other.key, resource("sql_snippets", name="x", sql="SELECT 1"))
    reader = api.create_key(org, [Permission.VIEW_USERS, Permission.MANAGE_DASHBOARDS])
    assert api.get("/audit_events", reader).status_code == 403
    assert _events(api, org.key)["data"] == []


def test_a_manage_users_key_lacking_another_permission_reads_no_audit_event(api):
    """It administers only keys whose permissions it holds (api_keys.within_scope): the log would
    show it the actions of the others (their ids, what they ran and granted, from where)."""
    org = api.create_org()
    analyst = api.create_key(org, [Permission.MANAGE_DATASOURCES])
    analyst_id = api.get("/api_key", analyst).json()["data"]["id"]
    run = api.client.post(
        f"/datasources/{org.sample_datasource_id}/executions",
        content=orjson.dumps({"sql_query": "SELECT 1"}),
        headers={"Authorization": f"Api {analyst}", "Content-Type": "application/json"},
    )
    execution = run.json()["data"]["id"]
    assert {e["attributes"]["api_key_id"] for e in _events(api, org.key)["data"]} == {analyst_id}
    every_other = [p for p in Permission if p is not Permission.MANAGE_DATASOURCES]
    admin = api.create_key(org, every_other)
    assert api.get(f"/api_keys/{analyst_id}", admin).status_code == 404  # beyond its scope
    for query in ("", f"?filter[api_key_id]={analyst_id}", f"?filter[resource_id]={execution}"):
        answer = api.get(f"/audit_events{query}", admin)
        assert answer.status_code == 403, (query, answer.text)
        error = answer.json()["errors"][0]
        assert error["code"] == "permission_scope_restricted"
        assert "lacks 'Manage Datasources'." in error["detail"]
        assert analyst_id not in answer.text and execution not in answer.text
    assert _events(api, api.create_key(org, list(Permission)))["data"]  # every permission reads


def test_a_key_restricted_to_datasources_reads_no_audit_event(api):
    org = api.create_org()
    outside = api.create_datasource(org.key, name="Outside")["id"]
    run = api.client.post(
        f"/datasources/{outside}/executions",
        content=orjson.dumps({"sql_query": "SELECT 1"}),
        headers={"Authorization": f"Api {org.key}", "Content-Type": "application/json"},
    )
    execution = run.json()["data"]["id"]
    restricted = api.create_key(org, list(Permission), [org.sample_datasource_id])
    assert {e["attributes"]["resource_id"] for e in _events(api, org.key)["data"]} >= {
        outside,
        execution,
    }
    for query in ("", f"?filter[resource_id]={outside}", f"?filter[resource_id]={execution}"):
        answer = api.get(f"/audit_events{query}", restricted)
        assert answer.status_code == 403, (query, answer.text)
        assert answer.json()["errors"][0]["code"] == "datasource_scope_restricted"
        assert outside not in answer.text and execution not in answer.text


def test_a_run_records_its_event_in_the_transaction_that_queues_it(api, monkeypatch):
    """A worker claims the execution as soon as it commits: an event written after would wait
    for the claim's lock (or make the claim wait). The event is written by the session that
    holds the new execution, before it commits; and the request writes no event after."""
    from sqlalchemy import select

    from api_server import audit
    from shared.db.models import Execution

    org = api.create_org()
    seen_at_record: list[int] = []
    original = audit.record_event

    runs = select(Execution.id).where(Execution.execution_type == "sql_query")

    def record(session, **event):
        in_transaction = session.in_transaction()
        seen_at_record.append(len(session.scalars(runs).all()) if in_transaction else -1)
        original(session, **event)

    monkeypatch.setattr(audit, "record_event", record)
    run = api.client.post(
        f"/datasources/{org.sample_datasource_id}/executions",
        content=orjson.dumps({"sql_query": "SELECT 1"}),
        headers={"Authorization": f"Api {org.key}", "Content-Type": "application/json"},
    )
    assert run.status_code == 200, run.text
    assert seen_at_record == [1]  # one event, in the transaction that holds the execution
    monkeypatch.undo()
    events = _events(api, org.key)["data"]
    assert [e["attributes"]["action"] for e in events] == ["execution.run"]
    assert events[0]["attributes"]["resource_id"] == run.json()["data"]["id"]
    assert events[0]["attributes"]["status"] == 200


def test_a_handlers_answer_is_recorded_once_in_the_thread_it_ran_in(api, trips_to_threads):
    """No trip to a thread of its own for the record: a create that is recorded takes as many as
    one refused (422, nothing recorded), and its event is written once."""
    org = api.create_org()
    trips_to_threads.clear()
    refused = api.post("/sql_snippets", org.key, resource("sql_snippets", name=""))
    assert refused.status_code == 422
    trips_refused = len(trips_to_threads)
    trips_to_threads.clear()
    created = api.post("/sql_snippets", org.key, resource("sql_snippets", name="s", sql="SELECT 1"))
    assert created.status_code == 201
    assert len(trips_to_threads) == trips_refused
    events = _events(api, org.key)["data"]
    assert [e["attributes"]["action"] for e in events] == ["sql_snippet.create"]
    assert events[0]["attributes"]["resource_id"] == created.json()["data"]["id"]


def test_a_data_grant_is_recorded_in_the_thread_that_handed_it_out(api, trips_to_threads):
    """Get Execution Data takes one trip to a thread, whether it hands out a grant (recorded)
    or answers 204 (not ready: nothing recorded)."""
    org = api.create_org()
    run = api.client.post(
        f"/datasources/{org.sample_datasource_id}/executions",
        content=orjson.dumps({"sql_query": "SELECT 1"}),
        headers={"Authorization": f"Api {org.key}", "Content-Type": "application/json"},
    )
    execution_id = run.json()["data"]["id"]
    trips_to_threads.clear()
    assert api.get(f"/executions/{execution_id}/data", org.key).status_code == 204
    assert len(trips_to_threads) == 1
    api.complete_by_hand(execution_id)
    trips_to_threads.clear()
    granted = api.get(f"/executions/{execution_id}/data", org.key)
    assert "data_access_token" in granted.json(), granted.text
    assert len(trips_to_threads) == 1
    actions = [e["attributes"]["action"] for e in _events(api, org.key)["data"]]
    assert actions == ["data_grant.execution", "execution.run"]


def _failing_grant_records(monkeypatch) -> None:
    """The audit log refuses data grants' records (the metadata database failing them)."""
    original = audit.record_event

    def record(transaction, **event):
        if event["action"].startswith(audit.GRANT_ACTIONS):
            raise OperationalError("INSERT INTO audit_events", {}, Exception("disk I/O error"))
        original(transaction, **event)

    monkeypatch.setattr(audit, "record_event", record)


def _completed_run(api, org) -> str:
    run = api.client.post(
        f"/datasources/{org.sample_datasource_id}/executions",
        content=orjson.dumps({"sql_query": "SELECT 1"}),
        headers={"Authorization": f"Api {org.key}", "Content-Type": "application/json"},
    )
    execution_id = run.json()["data"]["id"]
    api.complete_by_hand(execution_id)
    return execution_id


def test_a_data_grant_the_audit_log_cannot_record_is_not_handed_out(api, monkeypatch):
    """Whoever reviews data_grant.* sees every token handed out: the grant used to go out with
    its record's failure only logged."""
    org = api.create_org()
    execution_id = _completed_run(api, org)
    _failing_grant_records(monkeypatch)
    refused = api.get(f"/executions/{execution_id}/data", org.key)
    assert refused.status_code == 503, refused.text
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["errors"][0]["code"] == "service_unavailable"
    assert "data_access_token" not in refused.text and "data_key" not in refused.text
    monkeypatch.undo()
    assert "data_access_token" in api.get(f"/executions/{execution_id}/data", org.key).json()
    actions = [e["attributes"]["action"] for e in _events(api, org.key)["data"]]
    assert actions == ["data_grant.execution", "execution.run"]  # the one handed out, once


def test_run_and_wait_answers_without_a_grant_the_audit_log_cannot_record(api, monkeypatch):
    from api_server.resources import executions as execution_resources
    from shared.db.models import ApiKey, Execution
    from shared.errors import ServiceUnavailable

    org = api.create_org()
    execution_id = _completed_run(api, org)
    with api.app.state.sessions() as session:
        execution = session.get(Execution, execution_id)
        key_id = session.query(ApiKey.id).filter_by(organization_id=org.id).scalar()
    request = SimpleNamespace(app=api.app)
    principal = SimpleNamespace(api_key_id=key_id)
    recorded: list[str] = []

    def record(request, action, resource_id):
        recorded.append(action)

    monkeypatch.setattr(audit, "record_data_grant", record)
    assert execution_resources._grant_if_completed(request, principal, execution) is not None
    assert recorded == ["data_grant.execution"]

    def unrecorded(request, action, resource_id):
        raise ServiceUnavailable("the audit log failed")

    monkeypatch.setattr(audit, "record_data_grant", unrecorded)
    assert execution_resources._grant_if_completed(request, principal, execution) is None
