"""Filters (``/filters``) and Get Drop-Down Filter Options: the resource, how its attributes fit
together, paging/sorting/sparse fieldsets, options (manual here; static and dynamic SQL with a data
server in process, in ``TestSqlOptions``), the rules executions keep, the datasource scope, tenancy,
and the ``filters`` relationships of reports and dashboards."""

from __future__ import annotations

import time
import tracemalloc
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import orjson
import pyarrow as pa
import pytest
from sqlalchemy import delete, func, select, update
from starlette.testclient import TestClient

from api_server.permissions import Permission
from api_server.resources import filters as filter_resources
from api_server.services import filters as filters_service
from api_server.services.filters import DYNAMIC_OPTIONS_FRESH_SECONDS
from data_server.app import create_app as create_data_app
from shared import filter_options
from shared.db.engine import create_metadata_engine
from shared.db.migrate import upgrade_to_head
from shared.db.models import (
    ApiKey,
    AuditEvent,
    Dashboard,
    Execution,
    Filter,
    Organization,
    utcnow,
)
from shared.filter_options import MAX_OPTIONS_JSON_BYTES
from shared.results import LocalResultStore, result_object_key
from shared.settings import Settings
from shared.tokens import Scope, new_data_key
from tests.support.factories import Api, Org, dump_tables, resource

RANDOM_ID = "zzzz-zzzz-zzzz"


def _document(datasource: str | None = None, **attributes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"type": "filters", "attributes": attributes}
    if datasource is not None:
        data["relationships"] = {"datasource": {"data": {"type": "datasources", "id": datasource}}}
    return {"data": data}


def _dropdown(**attributes: Any) -> dict[str, Any]:
    return {
        "name": "Country",
        "variable_name": "country",
        "control_type": "dropdown",
        "value_type": "text",
        "values": ["de", "fr", "it"],
        "value_names": ["Germany", "France", "Italy"],
        **attributes,
    }


def _create(api: Api, key: str, datasource: str | None = None, **attributes: Any) -> Any:
    return api.post("/filters", key, _document(datasource, **attributes))


def _filter(api: Api, org: Org, datasource: str | None = None, **attributes: Any) -> str:
    created = _create(api, org.key, datasource, **attributes)
    assert created.status_code == 201, created.text
    return created.json()["data"]["id"]


def _static(sql: str, **attributes: Any) -> dict[str, Any]:
    """A dropdown whose options ``sql`` gives, copied once it ran (``static_sql``)."""
    return _dropdown(
        values=None, value_names=None, options_source="static_sql", options_sql_query=sql,
        **attributes,
    )  # fmt: skip


def static_filter(api: Api, org: Org) -> str:
    """A static SQL filter on the sample datasource; its options run queued."""
    return _filter(api, org, org.sample_datasource_id, **_static("SELECT 'de'"))


def _errors(answer: Any) -> list[tuple[str, str | None]]:
    return [(e["code"], e.get("source", {}).get("pointer")) for e in answer.json()["errors"]]


def _run(api: Api, key: str, datasource: str, sql: str, parameters: dict[str, Any]) -> Any:
    return api.client.post(
        f"/datasources/{datasource}/executions",
        content=orjson.dumps({"sql_query": sql, "parameters": parameters}),
        headers={"Authorization": f"Api {key}", "Content-Type": "application/json"},
    )


def _selection(variable: str, *values: Any) -> dict[str, Any]:
    return {"filters": [{"variable_name": variable, "selected_values": list(values)}]}


# ---------------------------------------------------------------------------- CRUD


def test_create_read_update_delete_round_trip(api: Api) -> None:
    org = api.create_org()
    created = _create(api, org.key, **_dropdown(default_values=["de"], restrict_to_options=True))
    assert created.status_code == 201, created.text
    body = created.json()["data"]
    filter_id = body["id"]
    assert created.headers["location"].endswith(f"/filters/{filter_id}")
    attributes = body["attributes"]
    assert attributes["values"] == ["de", "fr", "it"]
    assert attributes["options_source"] == "manual"
    assert attributes["multiple"] is True and attributes["status"] is None
    assert body["relationships"]["datasource"] == {"data": None}

    shown = api.get(f"/filters/{filter_id}", org.key)
    assert shown.status_code == 200 and shown.json()["data"]["attributes"] == attributes

    changed = api.patch(
        f"/filters/{filter_id}",
        org.key,
        {"data": {"type": "filters", "id": filter_id, "attributes": {"name": "Land"}}},
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["data"]["attributes"]["name"] == "Land"
    assert changed.json()["data"]["attributes"]["values"] == ["de", "fr", "it"]

    assert api.delete(f"/filters/{filter_id}", org.key).status_code == 204
    assert api.get(f"/filters/{filter_id}", org.key).status_code == 404


def test_list_pages_sorts_filters_and_sparse_fieldsets(api: Api) -> None:
    org = api.create_org()
    for name in ("b", "c", "a"):
        _filter(api, org, name=name, variable_name=f"v_{name}", control_type="text",
                value_type="text")  # fmt: skip
    listed = api.get("/filters?sort=-name&page[size]=2&fields[filters]=name", org.key)
    assert listed.status_code == 200, listed.text
    document = listed.json()
    assert [r["attributes"] for r in document["data"]] == [{"name": "c"}, {"name": "b"}]
    assert "relationships" not in document["data"][0]
    assert document["meta"]["total"] == 3 and "next" in document["links"]
    second = api.get("/filters?sort=-name&page[size]=2&page[number]=2", org.key).json()
    assert [r["attributes"]["name"] for r in second["data"]] == ["a"]
    only = api.get("/filters?filter[variable_name]=v_b", org.key).json()["data"]
    assert [r["attributes"]["name"] for r in only] == ["b"]
    assert api.get("/filters?sort=values", org.key).status_code == 400


def test_duplicate_variable_name_is_409_with_pointer_and_writes_nothing(api: Api) -> None:
    org = api.create_org()
    _filter(api, org, **_dropdown())
    before = dump_tables(api.app)["filters"]
    again = _create(api, org.key, **_dropdown(name="Other"))
    assert again.status_code == 409
    assert _errors(again) == [("duplicate_variable_name", "/data/attributes/variable_name")]
    assert dump_tables(api.app)["filters"] == before
    other = _filter(api, org, **_dropdown(variable_name="land"))
    renamed = api.patch(
        f"/filters/{other}",
        org.key,
        {"data": {"type": "filters", "id": other, "attributes": {"variable_name": "country"}}},
    )
    assert renamed.status_code == 409
    # Another organisation may use the same name.
    assert _create(api, api.create_org("B").key, **_dropdown()).status_code == 201


def test_a_rename_racing_another_onto_one_name_is_409(api: Api, monkeypatch) -> None:
    """The race the check before the write cannot see (two renames at once): the unique index
    decides, and the loser is a 409, not a 500 from a flush outside its savepoint."""
    from api_server.services import filters as filter_service

    org = api.create_org()
    _filter(api, org, **_dropdown())
    other = _filter(api, org, **_dropdown(variable_name="land"))
    before = dump_tables(api.app)["filters"]
    monkeypatch.setattr(filter_service, "_refuse_duplicate", lambda *args: None)
    renamed = api.patch(
        f"/filters/{other}",
        org.key,
        {"data": {"type": "filters", "id": other, "attributes": {"variable_name": "country"}}},
    )
    assert renamed.status_code == 409, renamed.text
    assert _errors(renamed) == [("duplicate_variable_name", "/data/attributes/variable_name")]
    assert "country" in renamed.json()["errors"][0]["detail"]
    assert dump_tables(api.app)["filters"] == before
    again = _create(api, org.key, **_dropdown(name="Other"))
    assert again.status_code == 409 and dump_tables(api.app)["filters"] == before


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        ({"variable_name": "timerange"}, ("built_in_variable", "variable_name")),
        ({"variable_name": "1abc"}, ("invalid_variable_name", "variable_name")),
        ({"value_names": ["a"]}, ("length_mismatch", "value_names")),
        ({"values": None, "value_names": ["a"]}, ("conflicting_attributes", "value_names")),
        ({"values": ["de", 1, "it"]}, ("invalid_value", "values/1")),
        ({"values": ["de", "de", "it"]}, ("duplicate_value", "values/1")),
        ({"values": [None, "fr", "it"]}, ("invalid_type", "values/0")),
        ({"allow_all_time": True}, ("aggregation_only", "allow_all_time")),
        ({"control_type": "date_range"}, ("invalid_value_type", "value_type")),
        ({"multiple": False, "default_values": ["de", "fr"]}, ("too_many", "default_values")),
        (
            {"restrict_to_options": True, "default_values": ["es"]},
            ("value_not_in_options", "default_values/0"),
        ),
        ({"options_sql_query": "SELECT 1"}, ("conflicting_attributes", "options_sql_query")),
        (
            {"options_source": "static_sql", "values": None, "value_names": None},
            ("missing_attribute", "options_sql_query"),
        ),
        ({"status": "ready"}, ("read_only_attribute", "status")),
    ],
)
def test_attributes_that_do_not_fit_are_422_at_their_member(
    api: Api, attributes: dict[str, Any], expected: tuple[str, str]
) -> None:
    org = api.create_org()
    answer = _create(api, org.key, **_dropdown(**attributes))
    assert answer.status_code == 422, answer.text
    code, member = expected
    assert (code, f"/data/attributes/{member}") in _errors(answer)
    assert dump_tables(api.app)["filters"] == []


def test_sql_options_need_a_datasource_and_static_sql_takes_no_placeholders(api: Api) -> None:
    org = api.create_org()
    dynamic = {**_dropdown(values=None, value_names=None), "options_source": "dynamic_sql"}
    no_source = _create(api, org.key, **dynamic, options_sql_query="SELECT 1")
    assert ("missing_relationship", "/data/relationships/datasource") in _errors(no_source)
    restricted = _create(
        api,
        org.key,
        org.sample_datasource_id,
        **dynamic,
        options_sql_query="SELECT 1",
        restrict_to_options=True,
    )
    assert _errors(restricted) == [
        ("restriction_not_supported", "/data/attributes/restrict_to_options")
    ]
    static = {**dynamic, "options_source": "static_sql"}
    placeholders = _create(
        api, org.key, org.sample_datasource_id, **static, options_sql_query="SELECT {a.value}"
    )
    assert _errors(placeholders) == [
        ("placeholders_not_allowed", "/data/attributes/options_sql_query")
    ]
    unknown = _create(api, org.key, RANDOM_ID, **static, options_sql_query="SELECT 1")
    assert _errors(unknown) == [("datasource_not_found", "/data/relationships/datasource")]


def test_changing_the_source_clears_what_belongs_to_the_old_one(api: Api) -> None:
    org = api.create_org()
    filter_id = _filter(api, org, org.sample_datasource_id, **_dropdown())
    changed = api.patch(
        f"/filters/{filter_id}",
        org.key,
        {
            "data": {
                "type": "filters",
                "id": filter_id,
                "attributes": {"options_source": "dynamic_sql", "options_sql_query": "SELECT 1"},
            }
        },
    )
    assert changed.status_code == 200, changed.text
    attributes = changed.json()["data"]["attributes"]
    assert attributes["values"] is None and attributes["value_names"] is None
    back = api.patch(
        f"/filters/{filter_id}",
        org.key,
        {"data": {"type": "filters", "id": filter_id, "attributes": {"options_source": "manual"}}},
    )
    assert back.status_code == 200, back.text
    assert back.json()["data"]["attributes"]["options_sql_query"] is None


def test_refresh_is_only_for_static_sql(api: Api) -> None:
    org = api.create_org()
    filter_id = _filter(api, org, **_dropdown())
    answer = api.client.post(
        f"/filters/{filter_id}/refresh", headers={"Authorization": f"Api {org.key}"}
    )
    assert answer.status_code == 409 and _errors(answer) == [("not_static_sql", None)]


def test_a_static_filter_written_at_the_cap_is_kept_to_refresh_later(api: Api) -> None:
    """The probe's case: a restore with more static filters than the cap was a 429 no retry
    cured. A write at the cap keeps the filter, failed with a message to refresh it; an
    explicit refresh at the cap is the retryable 429."""
    org = api.create_org()
    with api.app.state.sessions.begin() as session:
        session.get_one(Organization, org.id).max_running_executions = 1
    static = {
        **_dropdown(values=None, value_names=None),
        "options_source": "static_sql",
        "options_sql_query": "SELECT 'de'",
    }
    _filter(api, org, org.sample_datasource_id, **static)  # its run takes the one place
    second = _create(
        api, org.key, org.sample_datasource_id, **{**static, "variable_name": "region"}
    )
    assert second.status_code == 201, second.text
    attributes, filter_id = second.json()["data"]["attributes"], second.json()["data"]["id"]
    assert attributes["status"] == "failed" and attributes["options_execution_id"] is None
    assert f"POST /filters/{filter_id}/refresh" in attributes["status_message"]
    options = api.get(f"/filters/{filter_id}/options", org.key)
    assert options.status_code == 422 and _errors(options) == [("filter_options_failed", None)]
    refresh = api.client.post(
        f"/filters/{filter_id}/refresh", headers={"Authorization": f"Api {org.key}"}
    )
    assert refresh.status_code == 429 and refresh.headers["retry-after"] == "1"


def test_a_superseded_options_run_is_cancelled_and_gives_up_its_place(api: Api) -> None:
    """Changing a static filter's SQL, refreshing it, or leaving static SQL cancels the run
    still going of what it ran before: its result would be ignored, and at the cap of running
    executions it kept the new run from being queued."""
    org = api.create_org()
    with api.app.state.sessions.begin() as session:
        session.get_one(Organization, org.id).max_running_executions = 1
    filter_id = static_filter(api, org)

    def run_of(answer: Any) -> str:
        assert answer.status_code == 200, answer.text
        attributes = answer.json()["data"]["attributes"]
        assert attributes["status"] == "pending", attributes
        return attributes["options_execution_id"]

    def changed(attributes: dict[str, Any]) -> Any:
        document = {"data": {"type": "filters", "id": filter_id, "attributes": attributes}}
        return api.patch(f"/filters/{filter_id}", org.key, document)

    first = run_of(api.get(f"/filters/{filter_id}", org.key))
    second = run_of(changed({"options_sql_query": "SELECT 'fr'"}))
    third = run_of(api.post(f"/filters/{filter_id}/refresh", org.key, b""))
    label_only = changed({"name": "Country"})  # the SQL stays: its run goes on
    assert run_of(label_only) == third
    assert changed({"options_source": "manual", "values": ["de"]}).status_code == 200

    def status(execution_id: str) -> str:
        answer = api.get(f"/executions/{execution_id}", org.key)
        return answer.json()["data"]["attributes"]["execution_status"]

    assert [status(run) for run in (first, second, third)] == ["cancelled"] * 3


def test_only_a_dashboards_manager_stops_a_static_filters_pending_options_run(api: Api) -> None:
    """Cancelled or purged before the filter copied its options, the filter would fail and refuse
    every value until refreshed: a key that may run on the datasource but not manage dashboards
    (Manage Alerts) may not; once the options are copied, stopping the run harms nothing."""
    org = api.create_org()
    filter_id = static_filter(api, org)
    shown = api.get(f"/filters/{filter_id}", org.key).json()["data"]["attributes"]
    execution = f"/executions/{shown['options_execution_id']}"
    alerts = api.create_key(org, [Permission.MANAGE_ALERTS])
    headers = {"Authorization": f"Api {alerts}"}
    cancel = api.client.post(f"{execution}/cancel", headers=headers)
    purge = api.client.delete(execution, headers=headers)
    for refused in (cancel, purge):
        assert refused.status_code == 403, refused.text
        assert _errors(refused) == [("filter_options_execution", None)]
    after = api.get(f"/filters/{filter_id}", org.key).json()["data"]["attributes"]
    assert after["status"] == "pending" and after["options_execution_id"] is not None
    with api.app.state.sessions.begin() as session:  # the options were copied meanwhile
        session.get_one(Filter, filter_id).status = "ready"
    assert api.client.post(f"{execution}/cancel", headers=headers).status_code in (200, 409)
    assert api.client.delete(execution, headers=headers).status_code == 204


def test_options_parameters_must_be_an_object_whatever_the_options_source(api: Api) -> None:
    """A manual filter's options ignore the parameters, and still check them, as a dynamic
    one's do (found by the outside probe): a client's mistake shows whichever filter it asks."""
    org = api.create_org()
    dynamic = _filter(
        api,
        org,
        org.sample_datasource_id,
        **_dropdown(values=None, value_names=None),
        options_source="dynamic_sql",
        options_sql_query="SELECT 'de'",
    )
    manual = _filter(api, org, **_dropdown(variable_name="manual"))
    before = _executions_of(api, org)
    for filter_id in (dynamic, manual):
        for sent in ("null", "[]", "0", "false", '"text"', '{"filters":5}'):
            answer = api.get(f"/filters/{filter_id}/options?parameters={sent}", org.key)
            assert answer.status_code == 422, (sent, answer.text)
            pointers = [e["source"]["pointer"] for e in answer.json()["errors"]]
            assert all(p.startswith("/parameters") for p in pointers), pointers
    assert _executions_of(api, org) == before  # nothing was queued
    assert api.get(f"/filters/{manual}/options?parameters={{}}", org.key).status_code == 200


def _executions_of(api: Api, org: Org) -> int:
    with api.app.state.sessions() as session:
        where = Execution.organization_id == org.id
        return session.scalar(select(func.count()).select_from(Execution).where(where)) or 0


# ---------------------------------------------------------------------------- options


def test_manual_options_are_paged_and_searched(api: Api) -> None:
    org = api.create_org()
    values = [f"v{i:02d}" for i in range(30)]
    names = [f"Name {i}" if i % 2 else None for i in range(30)]
    filter_id = _filter(api, org, **_dropdown(values=values, value_names=names))
    first = api.get(f"/filters/{filter_id}/options?page[size]=10", org.key)
    assert first.status_code == 200, first.text
    assert first.headers["content-type"].startswith("application/json")
    assert first.json() == {
        "values": values[:10],
        "value_names": names[:10],
        "total": 30,
        "page": {"number": 1, "size": 10},
    }
    third = api.get(f"/filters/{filter_id}/options?page[size]=10&page[number]=3", org.key).json()
    assert third["values"] == values[20:]
    # Case-insensitive, on the value or the label.
    found = api.get(f"/filters/{filter_id}/options?search=NAME 1", org.key).json()
    assert found["values"] == ["v01", "v11", "v13", "v15", "v17", "v19"]
    assert api.get(f"/filters/{filter_id}/options?search=V2", org.key).json()["total"] == 10
    assert api.get(f"/filters/{filter_id}/options?page[size]=1001", org.key).status_code == 400
    for number in ("²", "9" * 5000):  # not ASCII digits; more digits than int() converts
        answer = api.get(f"/filters/{filter_id}/options?page[number]={number}", org.key)
        assert answer.status_code == 400, answer.text
        assert answer.json()["errors"][0]["source"] == {"parameter": "page[number]"}
    padded = api.get(
        f"/filters/{filter_id}/options?page[size]=10&page[number]={'0' * 5000}3", org.key
    )
    assert padded.json()["values"] == values[20:]
    assert api.get(f"/filters/{filter_id}/options?other=1", org.key).status_code == 400


def test_options_without_labels_answer_null_labels(api: Api) -> None:
    org = api.create_org()
    filter_id = _filter(
        api, org, **_dropdown(value_type="number", values=[1, 2.5], value_names=None)
    )
    assert api.get(f"/filters/{filter_id}/options", org.key).json()["value_names"] == [None, None]


# ---------------------------------------------------------------------------- rules


def test_restricted_values_must_be_among_the_options(api: Api) -> None:
    org = api.create_org()
    _filter(api, org, **_dropdown(restrict_to_options=True, multiple=False))
    sql = "SELECT 1 AS a WHERE {a=country}"
    ok = _run(api, org.key, org.sample_datasource_id, sql, _selection("country", "fr"))
    assert ok.status_code == 200, ok.text
    outside = _run(api, org.key, org.sample_datasource_id, sql, _selection("country", "es"))
    assert outside.status_code == 422
    assert _errors(outside) == [("value_not_in_options", "/parameters/filters/0/selected_values/0")]
    several = _run(api, org.key, org.sample_datasource_id, sql, _selection("country", "de", "fr"))
    assert _errors(several) == [
        ("multiple_values_not_allowed", "/parameters/filters/0/selected_values")
    ]
    # Another organisation's filter of the same variable does not bind this one.
    other = api.create_org("B")
    ok = _run(api, other.key, other.sample_datasource_id, sql, _selection("country", "es"))
    assert ok.status_code == 200, ok.text


def test_all_time_only_where_the_aggregation_filter_allows_it(api: Api) -> None:
    org = api.create_org()
    sql = "SELECT {created:period} AS p FROM (SELECT TIMESTAMP '2024-01-02' AS created)"
    refused = _run(api, org.key, org.sample_datasource_id, sql, _selection("period", "all_time"))
    assert _errors(refused) == [("all_time_not_allowed", "/parameters/filters/0/selected_values/0")]
    aggregation = {
        "name": "Period",
        "variable_name": "period",
        "control_type": "aggregation",
        "value_type": "text",
    }
    filter_id = _filter(api, org, **aggregation)
    refused = _run(api, org.key, org.sample_datasource_id, sql, _selection("period", "all_time"))
    assert _errors(refused) == [("all_time_not_allowed", "/parameters/filters/0/selected_values/0")]
    allowed = api.patch(
        f"/filters/{filter_id}",
        org.key,
        {"data": {"type": "filters", "id": filter_id, "attributes": {"allow_all_time": True}}},
    )
    assert allowed.status_code == 200, allowed.text
    ran = _run(api, org.key, org.sample_datasource_id, sql, _selection("period", "all_time"))
    assert ran.status_code == 200, ran.text
    with api.app.state.sessions() as session:
        execution = session.get(Execution, ran.json()["data"]["id"])
        assert True in execution.bound_parameters  # the collapse flag


# ---------------------------------------------------------------------------- scope


def test_other_organisations_and_out_of_scope_keys_get_404(api: Api) -> None:
    org, other = api.create_org(), api.create_org("B")
    second = api.create_datasource(org.key, name="Second")["id"]
    on_second = _filter(
        api,
        org,
        second,
        **_dropdown(
            values=None,
            value_names=None,
            options_source="dynamic_sql",
            options_sql_query="SELECT 1",
        ),
    )
    plain = _filter(api, org, **_dropdown(variable_name="plain"))
    restricted = api.create_key(
        org, [Permission.VIEW_DASHBOARDS, Permission.MANAGE_DASHBOARDS], [org.sample_datasource_id]
    )
    for path in (f"/filters/{on_second}", f"/filters/{on_second}/options"):
        assert api.get(path, other.key).status_code == 404
        assert api.get(path, restricted).status_code == 404
    assert api.get(f"/filters/{plain}", other.key).status_code == 404
    assert api.get(f"/filters/{plain}", restricted).status_code == 200
    assert [r["id"] for r in api.get("/filters", restricted).json()["data"]] == [plain]
    assert api.get("/filters", other.key).json()["data"] == []
    assert api.delete(f"/filters/{on_second}", restricted).status_code == 404
    # A filter's datasource is in use: its deletion is refused as a report's is.
    deleted = api.delete(f"/datasources/{second}", org.key)
    assert deleted.status_code == 409 and _errors(deleted) == [("datasource_in_use", None)]


def test_a_filter_out_of_a_keys_scope_neither_links_nor_shapes_runs_elsewhere(api: Api) -> None:
    """Its id answers that key 404: it must not show in a report's or dashboard's linkage, and
    its rules must not answer the key's runs (they would tell, one guess at a time, that it
    exists and which values it allows). Found by the outside probe."""
    org = api.create_org()
    second = api.create_datasource(org.key, name="Second")["id"]
    hidden = _filter(
        api,
        org,
        second,
        **_dropdown(
            variable_name="hidden", values=["alpha"], value_names=None, restrict_to_options=True
        ),
    )
    seen = _filter(
        api,
        org,
        **_dropdown(
            variable_name="seen", values=["fr"], value_names=None, restrict_to_options=True
        ),
    )
    with api.app.state.sessions.begin() as session:
        dashboard = Dashboard(organization_id=org.id, name="Sales")
        session.add(dashboard)
        session.flush()
        dashboard_id = dashboard.id
    sql = "SELECT 1 AS one WHERE {a=hidden} OR {b=seen}"
    report = resource("reports", name="R", sql_query=sql)
    report["data"]["relationships"] = {
        "datasource": {"data": {"type": "datasources", "id": org.sample_datasource_id}},
        "dashboard": {"data": {"type": "dashboards", "id": dashboard_id}},
    }
    report_id = api.post("/reports", org.key, report).json()["data"]["id"]
    key = api.create_key(
        org,
        [Permission.MANAGE_DASHBOARDS, Permission.MANAGE_DATASOURCES],
        [org.sample_datasource_id],
    )
    both = [{"type": "filters", "id": i} for i in (hidden, seen)]  # by variable name
    for caller, linked in ((org.key, both), (key, [{"type": "filters", "id": seen}])):
        shown = api.get(f"/reports/{report_id}", caller).json()["data"]
        assert shown["relationships"]["filters"]["data"] == linked
        listed = api.get("/reports", caller).json()["data"]
        assert listed[0]["relationships"]["filters"]["data"] == linked
        board = api.get(f"/dashboards/{dashboard_id}?include=filters,reports", caller).json()
        assert board["data"]["relationships"]["filters"]["data"] == linked
        included = [o for o in board["included"] if o["type"] == "reports"]
        assert included[0]["relationships"]["filters"]["data"] == linked
    # A filter's rules shape the runs on its own datasource only, whoever runs: a key that
    # reaches only that one must not restrict the runs of the others (outside probe).
    for caller in (org.key, key):
        ran = _run(api, caller, org.sample_datasource_id, sql, _selection("hidden", "zzz"))
        assert ran.status_code == 200, ran.text
    refused = _run(api, org.key, second, sql, _selection("hidden", "zzz"))
    assert _errors(refused) == [("value_not_in_options", "/parameters/filters/0/selected_values/0")]
    # A filter the key reaches still binds it.
    refused = _run(api, key, org.sample_datasource_id, sql, _selection("seen", "es"))
    assert _errors(refused) == [("value_not_in_options", "/parameters/filters/0/selected_values/0")]


# ---------------------------------------------------------------------------- relationships


def test_reports_and_dashboards_relate_the_filters_their_sql_uses(api: Api) -> None:
    org = api.create_org()
    country = _filter(api, org, **_dropdown())
    _filter(api, org, **_dropdown(variable_name="unused"))
    with api.app.state.sessions.begin() as session:
        dashboard = Dashboard(organization_id=org.id, name="Sales")
        session.add(dashboard)
        session.flush()
        dashboard_id = dashboard.id
    report = {
        "data": {
            "type": "reports",
            "attributes": {"name": "R", "sql_query": "SELECT 1 WHERE {c=country} OR {d=adhoc}"},
            "relationships": {
                "datasource": {"data": {"type": "datasources", "id": org.sample_datasource_id}},
                "dashboard": {"data": {"type": "dashboards", "id": dashboard_id}},
            },
        }
    }
    created = api.post("/reports", org.key, report)
    assert created.status_code == 201, created.text
    linkage = [{"type": "filters", "id": country}]
    assert created.json()["data"]["relationships"]["filters"]["data"] == linkage
    shown = api.get(f"/dashboards/{dashboard_id}?include=filters", org.key).json()
    assert shown["data"]["relationships"]["filters"]["data"] == linkage
    assert [(r["type"], r["id"]) for r in shown["included"]] == [("filters", country)]


def test_a_dashboard_includes_filters_with_options_only_up_to_a_bound(
    api: Api, monkeypatch
) -> None:
    """Included resources are rendered whole: a dashboard including a hundred filters of a
    megabyte each took 300 MB of the API server. Beyond the bound, 400 unless the options are
    left out (then any number, options unread)."""
    org = api.create_org()
    values = [f"{i:04d}-" + "x" * 90 for i in range(1_000)]
    names = ["a", "b", "c"]
    ids = [_filter(api, org, **_dropdown(variable_name=n, values=values, value_names=None))
           for n in names]  # fmt: skip
    dashboard = api.post("/dashboards", org.key, resource("dashboards", name="d")).json()
    report = resource(
        "reports", name="r", sql_query="SELECT 1 WHERE {[x]=a} AND {[x]=b} AND {[x]=c}"
    )
    report["data"]["relationships"] = {
        "datasource": {"data": {"type": "datasources", "id": org.sample_datasource_id}},
        "dashboard": {"data": {"type": "dashboards", "id": dashboard["data"]["id"]}},
    }
    assert api.post("/reports", org.key, report).status_code == 201
    path = f"/dashboards/{dashboard['data']['id']}?include=filters"
    weight = len(orjson.dumps(values))
    monkeypatch.setattr(filter_resources, "MAX_INCLUDED_OPTIONS_CHARACTERS", int(2.5 * weight))
    refused = api.get(path, org.key)
    assert refused.status_code == 400, refused.text
    error = refused.json()["errors"][0]
    assert (error["code"], error["source"]) == ("include_too_large", {"parameter": "include"})
    by_ids, read_with_options = filter_resources.filters.filters_by_ids, []

    def recorded(session, principal, ids, **options):
        read_with_options.append(options.get("with_options", True))
        return by_ids(session, principal, ids, **options)

    monkeypatch.setattr(filter_resources.filters, "filters_by_ids", recorded)
    light = api.get(f"{path}&fields[filters]=name,variable_name", org.key)
    assert light.status_code == 200, light.text
    assert read_with_options == [False]
    assert [r["attributes"] for r in light.json()["included"]] == [
        {"name": "Country", "variable_name": n} for n in names
    ]
    monkeypatch.setattr(filter_resources, "MAX_INCLUDED_OPTIONS_CHARACTERS", int(3.5 * weight))
    whole = api.get(path, org.key).json()["included"]
    assert [r["id"] for r in whole] == ids and all(
        r["attributes"]["values"] == values for r in whole
    )


def test_filters_options_together_stay_within_the_organisations_budget(
    settings: Settings, monkeypatch
) -> None:
    """Each filter may hold about a megabyte of options and an organisation ten thousand
    filters: DATAFERRY_MAX_FILTER_OPTIONS_MB bounds them together (here 1 MB: 1,048,576)."""
    with Api.start(settings.model_copy(update={"max_filter_options_mb": 1})) as api:
        org, other = api.create_org("A"), api.create_org("B")

        def dropdown(variable: str, count: int) -> dict[str, Any]:
            values = [f"{i:05d}-" + "x" * 94 for i in range(count)]  # about 106 characters each
            return _dropdown(variable_name=variable, values=values, value_names=None)

        def patched(filter_id: str, count: int) -> Any:
            values = dropdown("a", count)["values"]
            return api.patch(
                f"/filters/{filter_id}", org.key, resource("filters", filter_id, values=values)
            )

        first = _filter(api, org, **dropdown("a", 6_000))  # 0.64 MB
        before = dump_tables(api.app)
        refused = _create(api, org.key, **dropdown("b", 6_000))
        assert refused.status_code == 413, refused.text
        error = refused.json()["errors"][0]
        assert error["code"] == "filter_options_quota_exceeded"
        assert error["source"] == {"pointer": "/data/attributes/values"}
        assert "1,048,576" in error["detail"]
        assert dump_tables(api.app) == before
        assert _create(api, other.key, **dropdown("b", 6_000)).status_code == 201  # its own
        assert patched(first, 3_000).status_code == 200
        assert _create(api, org.key, **dropdown("b", 6_000)).status_code == 201  # 0.95 MB now
        before = dump_tables(api.app)
        grown = patched(first, 4_500)
        assert grown.status_code == 413, grown.text
        labels = [f"L{i:05d}" + "z" * 90 for i in range(3_000)]
        labelled = api.patch(
            f"/filters/{first}", org.key, resource("filters", first, value_names=labels)
        )
        assert labelled.status_code == 413, labelled.text
        assert labelled.json()["errors"][0]["source"] == {"pointer": "/data/attributes/value_names"}
        assert dump_tables(api.app) == before
        # Over the budget (as if the operator lowered it), options may still get lighter.
        monkeypatch.setattr(filters_service, "options_budget", lambda _settings: 500_000)
        assert patched(first, 3_001).status_code == 413
        assert patched(first, 2_000).status_code == 200


# ---------------------------------------------------------------------------- SQL options


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Api, Org]]:
    """Both servers in process (workers run the options SQL), on SQLite."""
    state = tmp_path_factory.mktemp("filters") / "state"
    (state / "data").mkdir(parents=True)
    settings = Settings(state_dir=state, sample_scale=0.001, poll_interval_seconds=0.05)
    engine = create_metadata_engine(settings.database_url)
    upgrade_to_head(engine)
    engine.dispose()
    with TestClient(create_data_app(settings, run_workers=True)), Api.start(settings) as api:
        org = api.create_org()
        _until(lambda: not _unfinished(api), "the refresh creating the organisation queued")
        yield api, org


def _unfinished(api: Api) -> int:
    with api.app.state.sessions() as session:
        return session.scalar(
            select(func.count())
            .select_from(Execution)
            .where(Execution.status.in_(("starting", "running")))
        )


def _options_ended(api: Api, filter_id: str) -> bool:
    """Whether a static filter's options execution ended, looked at without reading the filter
    through the API (which would copy its options)."""
    with api.app.state.sessions() as session:
        row = session.get(Filter, filter_id)
        execution = session.get(Execution, row.options_execution_id)
        return execution.status in ("completed", "failed", "cancelled")


def _ended_static(api: Api, org: Org, sql: str, variable: str, **attributes: Any) -> str:
    """A new static SQL filter whose options execution ended, never read through the API."""
    created = _create(
        api, org.key, org.sample_datasource_id, **_static(sql, variable_name=variable, **attributes)
    )
    assert created.status_code == 201, created.text
    filter_id: str = created.json()["data"]["id"]
    _until(lambda: _options_ended(api, filter_id), "the static options run")
    return filter_id


def _until(check: Any, what: str) -> Any:
    deadline = time.monotonic() + 30
    while not (found := check()):
        assert time.monotonic() < deadline, what
        time.sleep(0.05)
    return found


CITIES = (
    "SELECT * FROM (VALUES ('de', 'Berlin'), ('de', 'Bonn'), ('fr', 'Paris'), ('it', 'Rome')) "
    "AS t(country, city)"
)


class TestSqlOptions:
    def test_static_options_past_the_budget_are_not_copied(self, world, monkeypatch) -> None:
        api, _ = world
        org = api.create_org("Budgeted")  # none of the other tests' filters
        monkeypatch.setattr(filter_options, "options_budget", lambda _settings: 10)
        city = f"SELECT city FROM ({CITIES})"
        filter_id = _ended_static(api, org, city, "budgeted_city", restrict_to_options=True)
        path = f"/filters/{filter_id}"
        # Before any read, a run is held to what a copy would keep: none.
        sql = "SELECT 1 WHERE {c=budgeted_city}"
        run = _run(api, org.key, org.sample_datasource_id, sql, _selection("budgeted_city", "Rome"))
        assert _errors(run) == [("value_not_in_options", "/parameters/filters/0/selected_values/0")]

        def ended() -> Any:
            attributes = api.get(path, org.key).json()["data"]["attributes"]
            return attributes if attributes["status"] != "pending" else None

        attributes = _until(ended, "the static options run")
        assert attributes["status"] == "failed"
        assert "past the 10 characters of options" in attributes["status_message"]
        assert attributes["values"] is None

    def test_static_options_are_copied_once_the_sql_completed(self, world) -> None:
        api, org = world
        sql = f"SELECT city, upper(city) FROM ({CITIES}) ORDER BY city"
        static = _static(sql, variable_name="static_city", restrict_to_options=True)
        created = _create(api, org.key, org.sample_datasource_id, **static)
        assert created.status_code == 201, created.text
        filter_id = created.json()["data"]["id"]
        assert created.json()["data"]["attributes"]["status"] == "pending"

        def ready() -> Any:
            answer = api.get(f"/filters/{filter_id}/options?search=o&page[size]=2", org.key)
            return answer if answer.status_code == 200 else None

        options = _until(ready, "static options").json()
        assert options == {
            "values": ["Bonn", "Rome"],
            "value_names": ["BONN", "ROME"],
            "total": 2,
            "page": {"number": 1, "size": 2},
        }
        attributes = api.get(f"/filters/{filter_id}", org.key).json()["data"]["attributes"]
        assert attributes["status"] == "ready" and attributes["options_updated_at"]
        # The copy restricts executions.
        sql = "SELECT 1 WHERE {c=static_city}"
        outside = _run(api, org.key, org.sample_datasource_id, sql, _selection("static_city", "X"))
        assert _errors(outside) == [
            ("value_not_in_options", "/parameters/filters/0/selected_values/0")
        ]
        # A refresh runs it again; the old options answer meanwhile.
        refreshed = api.client.post(
            f"/filters/{filter_id}/refresh", headers={"Authorization": f"Api {org.key}"}
        )
        assert refreshed.status_code == 200, refreshed.text
        assert refreshed.json()["data"]["attributes"]["status"] == "pending"
        assert api.get(f"/filters/{filter_id}/options", org.key).json()["total"] == 4

    def test_a_run_is_checked_against_the_new_static_options_without_a_read(self, world) -> None:
        """A run was held to the last copy until someone read the filter: its new options were
        refused, its old ones taken, and a filter never read restricted to nothing (found by an
        outside probe)."""
        api, org = world
        filter_id = _ended_static(
            api, org, "SELECT 'completed'", "static_st", restrict_to_options=True
        )  # never read
        sql = "SELECT 1 WHERE {c=static_st}"

        def run(value: str) -> Any:
            return _run(api, org.key, org.sample_datasource_id, sql, _selection("static_st", value))

        assert run("completed").status_code == 200
        changed = api.patch(
            f"/filters/{filter_id}",
            org.key,
            {"data": {"type": "filters", "id": filter_id,
                      "attributes": {"options_sql_query": "SELECT 'shipped'"}}},
        )  # fmt: skip
        assert changed.status_code == 200, changed.text
        _until(lambda: _options_ended(api, filter_id), "the new options run")
        assert run("shipped").status_code == 200
        assert _errors(run("completed")) == [
            ("value_not_in_options", "/parameters/filters/0/selected_values/0")
        ]
        with api.app.state.sessions() as session:  # the runs read the options, wrote nothing
            row = session.get(Filter, filter_id)
            # The change copied the first run's options (no read had); the runs copied nothing.
            assert (row.status, row.values) == ("pending", ["completed"])

    @pytest.mark.parametrize("superseded_by", ["a new SQL that fails", "a refresh"])
    def test_a_never_read_filter_keeps_its_last_options_while_a_new_run_replaces_them(
        self, world, superseded_by
    ) -> None:
        """Runs were checked against the completed run's options only while the filter waited
        for that run: a new SQL or a refresh left them with the row's copy, none for a filter
        never read, and every value was refused (for good if the new SQL failed; an outside
        probe). The change copies the last run's options first."""
        api, org = world
        variable = "static_kept_" + superseded_by.split()[-1]
        filter_id = _ended_static(api, org, "SELECT 7", variable, value_type="number",
                                  restrict_to_options=True)  # fmt: skip
        sql = f"SELECT 1 WHERE {{x={variable}}}"
        path = f"/filters/{filter_id}"

        def run() -> Any:
            return _run(api, org.key, org.sample_datasource_id, sql, _selection(variable, 7))

        assert run().status_code == 200
        if superseded_by == "a refresh":
            changed = api.client.post(
                f"{path}/refresh", headers={"Authorization": f"Api {org.key}"}
            )
        else:
            failing = resource("filters", filter_id, options_sql_query="SELECT error('boom')")
            changed = api.patch(path, org.key, failing)
        assert changed.status_code == 200, changed.text
        assert run().status_code == 200  # while the new run is queued or running
        _until(lambda: _options_ended(api, filter_id), "the new options run")
        assert run().status_code == 200  # and after it (failed: the last options stay)

    def test_a_change_or_read_goes_through_while_the_result_store_does_not_answer(
        self, world, monkeypatch
    ) -> None:
        api, org = world
        filter_id = _ended_static(api, org, "SELECT 'a'", "static_outage", restrict_to_options=True)

        def outage(*args: Any) -> Any:
            raise OSError("AWS Error NETWORK_CONNECTION")

        monkeypatch.setattr(filter_options, "read_options", outage)
        changed = api.patch(
            f"/filters/{filter_id}", org.key, resource("filters", filter_id, name="Renamed")
        )
        assert changed.status_code == 200, changed.text
        assert changed.json()["data"]["attributes"]["status"] == "pending"  # not copied
        read = api.get(f"/filters/{filter_id}", org.key)  # a read goes through too (was a 500)
        assert read.status_code == 200, read.text
        assert read.json()["data"]["attributes"]["status"] == "pending"

    def test_runs_read_a_static_result_once_and_go_on_without_the_store(
        self, world, monkeypatch
    ) -> None:
        """Until a read copies them, each run read the options' result again (a review's
        finding); and an object store's outage while reading it was a 500 for the run."""
        api, org = world
        _ended_static(api, org, "SELECT 'kept'", "static_once", restrict_to_options=True)
        sql = "SELECT 1 WHERE {c=static_once}"
        reads, real_read = [], filter_options.read_options

        def counted(*args: Any) -> Any:
            reads.append(args)
            return real_read(*args)

        monkeypatch.setattr(filter_options, "read_options", counted)
        for _ in range(3):
            ran = _run(
                api, org.key, org.sample_datasource_id, sql, _selection("static_once", "kept")
            )
            assert ran.status_code == 200, ran.text
        assert len(reads) == 1

        def outage(*args: Any) -> Any:
            raise OSError("AWS Error NETWORK_CONNECTION")

        monkeypatch.setattr(filter_options, "read_options", outage)
        monkeypatch.setattr(filter_options, "_read_options", type(filter_options._read_options)())
        refused = _run(
            api, org.key, org.sample_datasource_id, sql, _selection("static_once", "kept")
        )
        assert _errors(refused) == [  # as before the options could be read: none copied yet
            ("value_not_in_options", "/parameters/filters/0/selected_values/0")
        ]

    def test_a_copy_answers_the_updated_at_it_wrote(self, world) -> None:
        api, org = world
        path = "/filters/" + _ended_static(api, org, "SELECT 'when'", "static_when")
        copied = api.get(path, org.key).json()["data"]["attributes"]
        assert copied["status"] == "ready"
        assert api.get(path, org.key).json()["data"]["attributes"] == copied

    def test_a_copy_does_not_overwrite_a_change_made_since_the_row_was_read(self, world) -> None:
        """A read copying the options of the execution it saw, after a change of the filter
        committed (a new SQL, its own execution), left the filter `ready` on the old SQL's
        options for good: nothing would copy the new execution's."""
        api, org = world
        filter_id = _ended_static(api, org, "SELECT 'old'", "static_race")
        state = api.app.state
        with state.sessions() as reading:
            seen = reading.get(Filter, filter_id)
            assert seen.status == "pending"
            with state.sessions.begin() as changing:  # a PATCH committing in between
                changing.execute(
                    update(Filter)
                    .where(Filter.id == filter_id)
                    .values(options_execution_id="newer-execution")
                )
            copied = filters_service.sync_static_options(
                reading, seen, state.result_store, state.settings
            )
            reading.commit()
            assert not copied
        with state.sessions() as session:
            row = session.get(Filter, filter_id)
            assert (row.status, row.values, row.options_execution_id) == (
                "pending",
                None,
                "newer-execution",
            )

    def test_a_copy_of_a_filter_deleted_since_it_was_read_changes_nothing(self, world) -> None:
        """Its update matched no row: an error (a 500 for the list that read it) before."""
        api, org = world
        filter_id = _ended_static(api, org, "SELECT 'gone'", "static_gone")
        state = api.app.state
        with state.sessions() as reading:
            seen = reading.get(Filter, filter_id)
            assert api.delete(f"/filters/{filter_id}", org.key).status_code == 204
            copied = filters_service.sync_static_options(
                reading, seen, state.result_store, state.settings
            )
            reading.commit()
            assert not copied
            assert (seen.id, seen.status) == (filter_id, "pending")  # as it was read
        with state.sessions() as session:
            assert session.get(Filter, filter_id) is None

    def test_failing_static_sql_sets_failed_with_the_error(self, world) -> None:
        api, org = world
        static = _static("SELECT * FROM no_such_table", variable_name="broken_static")
        filter_id = _filter(api, org, org.sample_datasource_id, **static)

        def failed() -> Any:
            shown = api.get(f"/filters/{filter_id}", org.key).json()["data"]["attributes"]
            return shown if shown["status"] == "failed" else None

        assert "no_such_table" in _until(failed, "failed status")["status_message"]
        options = api.get(f"/filters/{filter_id}/options", org.key)
        assert options.status_code == 422 and _errors(options) == [("filter_options_failed", None)]

    def test_dynamic_options_depend_on_another_filters_value(self, world) -> None:
        api, org = world
        dynamic = _dropdown(
            variable_name="dynamic_city",
            values=None,
            value_names=None,
            options_source="dynamic_sql",
            options_sql_query=f"SELECT city FROM ({CITIES}) WHERE {{country=country}} ORDER BY 1",
        )
        filter_id = _filter(api, org, org.sample_datasource_id, **dynamic)
        parameters = orjson.dumps(_selection("country", "de")).decode()
        answer = api.get(
            f"/filters/{filter_id}/options", org.key, params={"parameters": parameters}
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["values"] == ["Berlin", "Bonn"]
        everywhere = api.get(f"/filters/{filter_id}/options?search=ON", org.key).json()
        assert everywhere["values"] == ["Bonn"]  # no country given: every city, searched
        # A key with View Dashboards alone runs the filter's SQL.
        viewer = api.create_key(org, [Permission.VIEW_DASHBOARDS])
        assert api.get(f"/filters/{filter_id}/options", viewer).status_code == 200

    def test_failing_dynamic_sql_is_422_naming_the_error(self, world) -> None:
        api, org = world
        dynamic = _dropdown(
            variable_name="broken_dynamic",
            values=None,
            value_names=None,
            options_source="dynamic_sql",
            options_sql_query="SELECT * FROM no_such_table WHERE {a=b}",
        )
        filter_id = _filter(api, org, org.sample_datasource_id, **dynamic)
        answer = api.get(f"/filters/{filter_id}/options", org.key)
        assert answer.status_code == 422
        assert _errors(answer) == [("filter_options_failed", None)]
        assert "no_such_table" in answer.json()["errors"][0]["detail"]
        bad = api.get(f"/filters/{filter_id}/options", org.key, params={"parameters": "[1"})
        assert bad.status_code == 400
        invalid = api.get(
            f"/filters/{filter_id}/options", org.key, params={"parameters": '{"tz": "Mars"}'}
        )
        assert _errors(invalid) == [("invalid_time_zone", "/parameters/tz")]
        with api.app.state.sessions() as session:
            assert session.scalar(select(func.count()).select_from(Filter)) >= 1

    @pytest.mark.parametrize(
        ("value_type", "sql", "values", "left_out"),
        [
            # Python holds neither DuckDB's infinities nor a year before 1: no option, no 500.
            (
                "date",
                "SELECT * FROM (VALUES ('infinity'::DATE), (DATE '2024-01-01'),"
                " ((DATE '0001-01-01' - INTERVAL 1 DAY)::DATE)) t(d)",
                ["2024-01-01"],
                2,
            ),
            (
                "datetime",
                "SELECT * FROM (VALUES ('-infinity'::TIMESTAMP),"
                " (TIMESTAMP '2024-01-01 12:30:00')) t(d)",
                ["2024-01-01T12:30:00"],
                1,
            ),
            # Beyond 64 bits, or no number: not an option of a number filter.
            (
                "number",
                "SELECT * FROM (VALUES (170141183460469231731687303715884105727::HUGEINT),"
                " (5::HUGEINT), (-170141183460469231731687303715884105727::HUGEINT)) t(n)",
                [5],
                2,
            ),
            ("number", "SELECT * FROM (VALUES ('DE'), ('7')) t(c)", [], 2),
            (
                "number",
                "SELECT * FROM (VALUES (1.5::DECIMAL(4,1)), ('nan'::DOUBLE)) t(n)",
                [1.5],
                1,
            ),
            # A text filter's options are texts, as a client selects them.
            ("text", "SELECT * FROM (VALUES (1), (2)) t(n)", ["1", "2"], 0),
            ("text", "SELECT TIME '12:30:00'", ["12:30:00"], 0),
            # The end of a day, which Python's time wraps to the start of one: left out.
            (
                "text",
                "SELECT * FROM (VALUES (TIME '24:00:00'), (TIME '00:00:00')) t(t)",
                ["00:00:00"],
                1,
            ),
            ("text", "SELECT 1.50::DECIMAL(38, 10)", ["1.5000000000"], 0),
            ("text", "SELECT 0::DECIMAL(38, 10)", ["0.0000000000"], 0),  # not 0E-10
            (
                "datetime",
                "SELECT * FROM (VALUES ('infinity'::TIMESTAMP_NS),"
                " (TIMESTAMP_NS '2024-01-01 00:00:00.000000001')) t(d)",
                ["2024-01-01T00:00:00.000000001"],
                1,
            ),
            # No scalar: no option (no Python spelling of an interval or a list).
            ("text", "SELECT * FROM (VALUES (INTERVAL 1 DAY), (INTERVAL 2 DAY)) t(i)", [], 2),
            ("text", "SELECT [1, 2] UNION ALL SELECT [3]", [], 2),
            (
                "text",
                "SELECT * FROM (VALUES (repeat('x', 1001)), ('a' || chr(0)), ('ok')) t(s)",
                ["ok"],
                2,
            ),
            # Text that is not UTF-8: left out, and counted (the note says why).
            ("text", "SELECT * FROM (VALUES (printf('caf%c', 233)), ('ok')) t(s)", ["ok"], 1),
        ],
    )
    def test_a_static_copy_keeps_only_options_of_the_filters_value_type(
        self, world, value_type, sql, values, left_out
    ) -> None:
        api, org = world
        variable = f"typed_{uuid.uuid4().hex[:12]}"
        filter_id = _filter(
            api, org, org.sample_datasource_id,
            **_dropdown(variable_name=variable, value_type=value_type, values=None,
                        value_names=None, options_source="static_sql", options_sql_query=sql,
                        restrict_to_options=True),
        )  # fmt: skip

        def copied() -> Any:
            shown = api.get(f"/filters/{filter_id}", org.key)
            assert shown.status_code == 200, shown.text
            attributes = shown.json()["data"]["attributes"]
            return attributes if attributes["status"] != "pending" else None

        attributes = _until(copied, "the static options copied")
        assert attributes["status"] == "ready" and attributes["values"] == values
        note = attributes["status_message"] or ""
        assert (f"{left_out} values were left out" in note) == bool(left_out), note
        assert api.get("/filters?page[size]=100", org.key).status_code == 200
        options = api.get(f"/filters/{filter_id}/options", org.key)
        assert options.status_code == 200 and options.json()["values"] == values

    def test_a_static_filter_whose_value_type_changes_copies_its_options_again(self, world) -> None:
        """The old copy holds values of the old type: it answers no longer, and the SQL runs
        again (found by an outside probe: a number filter turned boolean kept [1, 2], and a
        run selecting 1 passed its restriction)."""
        api, org = world
        filter_id = _filter(
            api, org, org.sample_datasource_id,
            **_dropdown(variable_name="retyped", value_type="number", values=None,
                        value_names=None, options_source="static_sql", restrict_to_options=True,
                        options_sql_query="SELECT * FROM (VALUES (1, 'one'), (2, 'two')) t(v, l)"),
        )  # fmt: skip

        def ready() -> Any:
            shown = api.get(f"/filters/{filter_id}", org.key).json()["data"]["attributes"]
            return shown if shown["status"] == "ready" else None

        assert _until(ready, "the number copy")["values"] == [1, 2]
        document = {"data": {"type": "filters", "id": filter_id,
                             "attributes": {"value_type": "text"}}}  # fmt: skip
        changed = api.patch(f"/filters/{filter_id}", org.key, document)
        assert changed.status_code == 200, changed.text
        attributes = changed.json()["data"]["attributes"]
        assert attributes["status"] == "pending" and attributes["values"] is None
        assert _until(ready, "the text copy")["values"] == ["1", "2"]
        # Leaving static SQL with another type at once keeps the values the request sent.
        document["data"]["attributes"] = {
            "value_type": "number", "options_source": "manual", "values": [7], "value_names": None
        }  # fmt: skip
        manual = api.patch(f"/filters/{filter_id}", org.key, document)
        assert manual.status_code == 200, manual.text
        assert manual.json()["data"]["attributes"]["values"] == [7]

    def test_a_static_copy_is_bounded_in_json_bytes(self, world) -> None:
        """Counted as answers render it: a control character takes six bytes (\\u0001)."""
        api, org = world
        sql = "SELECT repeat(chr(1), 990) || i AS v, repeat('y', 5) AS label FROM range(3000) t(i)"
        filter_id = _filter(
            api, org, org.sample_datasource_id,
            **_dropdown(variable_name="long_options", values=None, value_names=None,
                        options_source="static_sql", options_sql_query=sql),
        )  # fmt: skip

        def copied() -> Any:
            shown = api.get(f"/filters/{filter_id}", org.key).json()["data"]["attributes"]
            return shown if shown["status"] == "ready" else None

        attributes = _until(copied, "the static options copied")
        kept = attributes["values"]
        assert 100 < len(kept) < 3000
        rendered = sum(len(orjson.dumps(value)) + len(b'"yyyyy"') for value in kept)
        assert MAX_OPTIONS_JSON_BYTES - 7000 < rendered <= MAX_OPTIONS_JSON_BYTES
        assert f"Only the first {len(kept)} values are options" in attributes["status_message"]

    def test_dynamic_options_leave_out_values_a_client_could_not_select(self, world) -> None:
        api, org = world
        sql = (
            "SELECT * FROM (VALUES ('infinity'::TIMESTAMP), (TIMESTAMP '2024-05-01 00:00:00'))"
            " t(d) WHERE {a=b}"
        )
        filter_id = _filter(
            api, org, org.sample_datasource_id,
            **_dropdown(variable_name="dynamic_instants", value_type="datetime", values=None,
                        value_names=None, options_source="dynamic_sql", options_sql_query=sql),
        )  # fmt: skip
        answer = api.get(f"/filters/{filter_id}/options", org.key)
        assert answer.status_code == 200, answer.text
        assert answer.json()["values"] == ["2024-05-01T00:00:00"]


def test_a_restricted_key_reads_but_never_writes_a_filter_on_no_datasource(api: Api) -> None:
    """Such a filter's rules apply to every datasource's runs, and taking it onto the key's own
    datasource would hide it from the others."""
    org = api.create_org()
    ours = org.sample_datasource_id
    restricted = api.create_key(org, [Permission.MANAGE_DASHBOARDS], datasource_ids=[ours])
    shared = _filter(api, org, None, **_dropdown())
    own = _create(api, restricted, ours, **_dropdown(variable_name="mine"))
    assert own.status_code == 201, own.text
    own_id = own.json()["data"]["id"]
    assert api.get(f"/filters/{shared}", restricted).status_code == 200

    def moved(filter_id: str, datasource: str | None) -> dict[str, Any]:
        target = datasource and {"type": "datasources", "id": datasource}
        relationships = {"datasource": {"data": target}}
        return {"data": {"type": "filters", "id": filter_id, "relationships": relationships}}

    def renamed(filter_id: str) -> dict[str, Any]:
        return {"data": {"type": "filters", "id": filter_id, "attributes": {"name": "x"}}}

    before = dump_tables(api.app)
    for answer in (
        _create(api, restricted, None, **_dropdown(variable_name="wide")),
        api.patch(f"/filters/{shared}", restricted, renamed(shared)),
        api.patch(f"/filters/{shared}", restricted, moved(shared, ours)),
        api.patch(f"/filters/{own_id}", restricted, moved(own_id, None)),
        api.delete(f"/filters/{shared}", restricted),
    ):
        assert answer.status_code == 403, answer.text
        assert answer.json()["errors"][0]["code"] == "datasource_scope_restricted"
    assert dump_tables(api.app) == before
    assert api.patch(f"/filters/{own_id}", restricted, renamed(own_id)).status_code == 200
    assert api.delete(f"/filters/{own_id}", restricted).status_code == 204


def test_asking_again_for_dynamic_options_joins_the_run_still_going(api: Api, monkeypatch) -> None:
    """A client that asks again after the 409 (``Retry-After: 1``) joins the run it started,
    instead of starting one more each time; a run that completed longer ago than
    ``DYNAMIC_OPTIONS_FRESH_SECONDS`` is not reused. Each request is in the audit log with the
    run it started or joined and the status it answered. (No data server runs here: runs stay
    queued.)"""
    monkeypatch.setattr(filter_resources, "DYNAMIC_OPTIONS_WAIT_SECONDS", 0.05)
    org = api.create_org()
    sql = f"SELECT city FROM ({CITIES}) WHERE {{country=country}}"
    filter_id = _filter(
        api, org, org.sample_datasource_id,
        **_dropdown(variable_name="slow_city", values=None, value_names=None,
                    options_source="dynamic_sql", options_sql_query=sql),
    )  # fmt: skip
    german = {"parameters": orjson.dumps(_selection("country", "de")).decode()}

    def ask(params: dict[str, str]) -> str:
        answer = api.get(f"/filters/{filter_id}/options", org.key, params=params)
        assert answer.status_code == 409 and _errors(answer) == [("filter_options_pending", None)]
        return answer.json()["errors"][0]["detail"].split("execution ")[1].split(")")[0]

    first = ask(german)
    assert ask(german) == first
    assert ask({}) != first  # other values: another query
    with api.app.state.sessions.begin() as session:
        ran = session.get(Execution, first)
        assert ran is not None
        ran.status, ran.data_key = "completed", "r_" + "x" * 27
        ran.completed_at = utcnow() - timedelta(seconds=DYNAMIC_OPTIONS_FRESH_SECONDS + 1)
    assert ask(german) not in (first, "")
    with api.app.state.sessions() as session:
        recorded = session.execute(
            select(AuditEvent.resource_id, AuditEvent.status).where(
                AuditEvent.organization_id == org.id, AuditEvent.action == "filter.options"
            )
        ).all()
    assert len(recorded) == 4 and recorded.count((first, 409)) == 2
    assert {status for _, status in recorded} == {409}  # as answered


def _key_disabled(session: Any, org: Org, filter_id: str) -> None:
    session.execute(update(ApiKey).where(ApiKey.organization_id == org.id).values(enabled=False))


def _filter_deleted(session: Any, org: Org, filter_id: str) -> None:
    session.delete(session.get(Filter, filter_id))


def _value_type_changed(session: Any, org: Org, filter_id: str) -> None:
    session.get(Filter, filter_id).value_type = "number"


def _sql_changed(session: Any, org: Org, filter_id: str) -> None:
    session.get(Filter, filter_id).options_sql_query = "SELECT 1 AS n"


@pytest.mark.parametrize(
    ("meanwhile", "status", "code"),
    [
        (_key_disabled, 401, "unauthorized"),
        (_filter_deleted, 404, "not_found"),
        (_value_type_changed, 409, "filter_changed"),
        (_sql_changed, 409, "filter_changed"),
    ],
)
def test_dynamic_options_are_not_answered_for_what_changed_while_their_sql_ran(
    api: Api, monkeypatch, meanwhile, status, code
) -> None:
    """The options are the data itself: a key disabled (or deleted) while the SQL ran gets
    nothing (as a run-and-wait gets no grant), nor does anyone for a filter deleted meanwhile,
    or one whose SQL, datasource or value type changed (the values would be another filter's)."""
    org = api.create_org()
    filter_id = _filter(
        api, org, org.sample_datasource_id,
        **_dropdown(variable_name="city", values=None, value_names=None,
                    options_source="dynamic_sql", options_sql_query=f"SELECT city FROM ({CITIES})"),
    )  # fmt: skip
    sessions = api.app.state.sessions

    async def ran_while_it_changed(request, principal, execution_id):
        with sessions.begin() as session:
            meanwhile(session, org, filter_id)
            execution = session.get(Execution, execution_id)
            execution.status, execution.data_key = "completed", "r_" + "x" * 27
            execution.completed_at = utcnow()
        with sessions() as session:
            return session.get(Execution, execution_id)

    monkeypatch.setattr(filter_resources, "_until_ended", ran_while_it_changed)
    answer = api.get(f"/filters/{filter_id}/options", org.key)
    assert answer.status_code == status, answer.text
    assert answer.json()["errors"][0]["code"] == code


def test_a_page_of_heavy_filters_is_read_and_sent_a_few_at_a_time(api: Api, monkeypatch) -> None:
    """Each filter may hold a megabyte of options: a page of a hundred, read and rendered at
    once, took 300 MB of the API server's memory. The page is read without options, then sent
    in batches of bounded weight, each read afresh; the document is the same."""
    org = api.create_org()
    heavy = {f"h{n}": [f"{n}-{i:04d}-" + "x" * 90 for i in range(3_000)] for n in range(12)}
    for variable, values in heavy.items():
        _filter(api, org, name=variable, variable_name=variable, control_type="dropdown",
                value_type="text", values=values)  # fmt: skip
    _filter(api, org, name="light", variable_name="light", control_type="text", value_type="text")
    read: list[list[str]] = []
    in_order = filter_resources.filters.filters_in_order

    with_options: list[bool] = []

    def recorded(session, principal, ids, **options):
        read.append(list(ids))
        with_options.append(options.get("with_options", True))
        return in_order(session, principal, ids, **options)

    monkeypatch.setattr(filter_resources.filters, "filters_in_order", recorded)
    weight = len(orjson.dumps(heavy["h0"]))  # as the row keeps it
    monkeypatch.setattr(filter_resources, "_OPTIONS_CHARACTERS_PER_READ", int(2.05 * weight))
    tracemalloc.start()
    try:
        listed = api.get("/filters?sort=name&page[size]=20", org.key)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert listed.status_code == 200, listed.text
    document = listed.json()
    names = [r["attributes"]["name"] for r in document["data"]]
    assert names == sorted([*heavy, "light"])
    assert all(r["attributes"]["values"] == heavy.get(r["attributes"]["name"])
               for r in document["data"] if r["attributes"]["name"] != "light")  # fmt: skip
    assert document["meta"] == {"total": 13, "page": {"number": 1, "size": 20}}
    ids = [r["id"] for r in document["data"]]
    assert read == [ids[n : n + 2] for n in range(0, 10, 2)] + [ids[10:]]  # "light" weighs 0
    # Held at once: the body (twice: as sent, as the test client gathers it) and a batch's
    # objects, not every filter's as well (as when the page was read whole: 3 MB more here).
    assert peak < 2 * len(listed.content) + 3 * weight, (peak, len(listed.content))
    # Without the options, the page is one batch, and the options are not read.
    read.clear()
    light = api.get("/filters?sort=name&page[size]=20&fields[filters]=name", org.key)
    assert [r["attributes"] for r in light.json()["data"]] == [{"name": n} for n in names]
    assert read == [ids] and with_options[-1] is False


def test_a_filter_deleted_while_its_page_is_sent_is_left_out(api: Api, monkeypatch) -> None:
    org = api.create_org()
    dropdown = {"control_type": "dropdown", "value_type": "text"}
    ids = [_filter(api, org, name=n, variable_name=n, values=[n], **dropdown) for n in "abc"]
    monkeypatch.setattr(filter_resources, "_OPTIONS_CHARACTERS_PER_READ", 1)  # one per batch
    in_order = filter_resources.filters.filters_in_order

    def deleting_the_last_first(session, principal, batch, **options):
        with api.app.state.sessions.begin() as other:
            other.execute(delete(Filter).where(Filter.id == ids[2]))
        return in_order(session, principal, batch, **options)

    monkeypatch.setattr(filter_resources.filters, "filters_in_order", deleting_the_last_first)
    document = api.get("/filters?sort=name", org.key).json()
    assert [r["id"] for r in document["data"]] == ids[:2]
    assert document["meta"]["total"] == 3


def test_a_static_result_is_read_for_options_up_to_its_row_bound(tmp_path, monkeypatch) -> None:
    """A result of millions of rows of which few or none are options (text for a number filter)
    was read whole: 25 s for a first run (an outside probe). Here the bound is ten rows, and
    the second distinct value comes after them."""
    monkeypatch.setattr(filter_options, "MAX_OPTION_ROWS_READ", 10)
    store = LocalResultStore(tmp_path)
    data_key = new_data_key(Scope.EXECUTION_RESULT)
    table = pa.table({"v": pa.array(["same"] * 50 + ["later"])})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        for start in range(0, table.num_rows, 4):  # batches of four rows: the bound cuts one
            writer.write_table(table.slice(start, 4))
    store.put_bytes(result_object_key(data_key), sink.getvalue().to_pybytes())
    copied = filter_options.read_options(store, data_key, "text")
    assert (copied.options.values, copied.cut_short) == (["same"], True)
    assert "from the first 10 rows" in (copied.note("text") or "")
    monkeypatch.setattr(filter_options, "MAX_OPTION_ROWS_READ", 100)
    copied = filter_options.read_options(store, data_key, "text")
    assert (copied.options.values, copied.cut_short) == (["same", "later"], False)
