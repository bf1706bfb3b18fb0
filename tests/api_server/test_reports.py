"""Reports (``/reports``), running a report and running a dashboard: the resource, its bounds, the
key's datasource scope and tenancy, locked dashboards and layouts, and the executions runs create
(queued only: no data server runs here, so every execution stays ``starting``)."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from sqlalchemy import select

from api_server.permissions import Permission
from api_server.resources.reports import MAX_VISUALIZATION_BYTES, MAX_VISUALIZATION_DEPTH
from api_server.services import reports as report_services
from shared.db.models import Dashboard, Execution, Organization, Report
from shared.execution_states import ExecutionType
from shared.storage_quota import MIB
from tests.support.factories import Api, dump_tables, resource

RANDOM_ID = "zzzz-zzzz-zzzz"
TIMERANGE = "1712188800~1712448000"


def _document(datasource: str | None, dashboard: str | None = None, **attributes: Any) -> dict:
    relationships: dict[str, Any] = {}
    if datasource is not None:
        relationships["datasource"] = {"data": {"type": "datasources", "id": datasource}}
    if dashboard is not None:
        relationships["dashboard"] = {"data": {"type": "dashboards", "id": dashboard}}
    attributes.setdefault("name", "Revenue")
    return {"data": {"type": "reports", "attributes": attributes, "relationships": relationships}}


def _create(api, key, datasource, dashboard=None, **attributes):
    attributes.setdefault("sql_query", "SELECT 1")
    return api.post("/reports", key, _document(datasource, dashboard, **attributes))


def _report(api, org, dashboard=None, **attributes) -> str:
    created = _create(api, org.key, org.sample_datasource_id, dashboard, **attributes)
    assert created.status_code == 201, created.text
    return created.json()["data"]["id"]


def _dashboard(api, org, **values) -> str:
    """Directly through the model: the dashboards resource is not what these tests are about."""
    with api.app.state.sessions.begin() as session:
        dashboard = Dashboard(organization_id=org.id, name="Sales", **values)
        session.add(dashboard)
        session.flush()
        return dashboard.id


def _dashboard_row(api, dashboard_id) -> Dashboard:
    with api.app.state.sessions() as session:
        return session.get(Dashboard, dashboard_id)


def _lock(api, dashboard_id, locked=True):
    with api.app.state.sessions.begin() as session:
        session.get(Dashboard, dashboard_id).is_locked = locked


def _post_json(api, key, path, body, headers=None):
    return api.post(path, key, body, "application/json", headers)


def _executions(api) -> list[Execution]:
    """The SQL executions (not the refresh that creating a datasource queues)."""
    with api.app.state.sessions() as session:
        return list(
            session.scalars(
                select(Execution)
                .where(Execution.execution_type == ExecutionType.SQL_QUERY)
                .order_by(Execution.created_at)
            )
        )


def _move(api, key, report_id, dashboard_id):
    linkage = {"type": "dashboards", "id": dashboard_id} if dashboard_id else None
    document = {
        "data": {
            "type": "reports",
            "id": report_id,
            "relationships": {"dashboard": {"data": linkage}},
        }
    }
    return api.patch(f"/reports/{report_id}", key, document)


# ---------------------------------------------------------------------------- the resource


def test_create_read_update_list_and_delete_round_trip_every_attribute(api):
    org = api.create_org()
    dashboard = _dashboard(api, org)
    chart = {"type": "line", "series": [{"column": "day", "colour": "#123456"}], "stacked": False}
    created = _create(
        api, org.key, org.sample_datasource_id, sql_query="SELECT 2", description="d",
        visualization=chart, name="  Revenue  ",
    )  # fmt: skip
    assert created.status_code == 201, created.text
    data = created.json()["data"]
    assert created.headers["location"] == f"/reports/{data['id']}"
    assert data["attributes"] | {"created_at": None, "updated_at": None} == {
        "name": "Revenue",
        "description": "d",
        "sql_query": "SELECT 2",
        "visualization": chart,
        "created_at": None,
        "updated_at": None,
    }
    assert data["relationships"] == {
        "datasource": {"data": {"type": "datasources", "id": org.sample_datasource_id}},
        "dashboard": {"data": None},
        "filters": {"data": []},
        "sql_snippets": {"data": []},
    }
    assert api.get(f"/reports/{data['id']}", org.key).json()["data"] == data

    patched = api.patch(
        f"/reports/{data['id']}",
        org.key,
        {
            "data": {
                "type": "reports",
                "id": data["id"],
                "attributes": {"description": None, "visualization": None},
                "relationships": {"dashboard": {"data": {"type": "dashboards", "id": dashboard}}},
            }
        },
    )
    assert patched.status_code == 200, patched.text
    now = patched.json()["data"]
    assert now["attributes"]["description"] is None and now["attributes"]["visualization"] is None
    assert now["attributes"]["sql_query"] == "SELECT 2"  # not sent: unchanged
    assert now["relationships"]["dashboard"]["data"] == {"type": "dashboards", "id": dashboard}

    _report(api, org, name="Another")
    listed = api.get(f"/reports?filter[dashboard]={dashboard}&sort=-name", org.key).json()
    assert [r["id"] for r in listed["data"]] == [data["id"]] and listed["meta"]["total"] == 1
    by_name = api.get("/reports?sort=-name&fields[reports]=name", org.key).json()["data"]
    assert [r["attributes"] for r in by_name] == [{"name": "Revenue"}, {"name": "Another"}]
    second = api.get("/reports?sort=created_at&page[size]=1&page[number]=2", org.key).json()
    assert [r["attributes"]["name"] for r in second["data"]] == ["Another"]
    assert second["meta"]["total"] == 2 and second["links"]["next"] is None
    assert api.delete(f"/reports/{data['id']}", org.key).status_code == 204
    assert api.get(f"/reports/{data['id']}", org.key).status_code == 404


def test_query_is_read_as_sql_query_and_never_returned(api):
    org = api.create_org()
    created = _create(api, org.key, org.sample_datasource_id, sql_query=None, query="SELECT 7")
    assert created.status_code == 422  # null is no SQL, whatever the name
    document = _document(org.sample_datasource_id, query="SELECT 7")
    created = api.post("/reports", org.key, document)
    assert created.status_code == 201, created.text
    attributes = created.json()["data"]["attributes"]
    assert attributes["sql_query"] == "SELECT 7" and "query" not in attributes
    report_id = created.json()["data"]["id"]
    same = resource("reports", report_id, query="SELECT 8", sql_query="SELECT 8")
    assert api.patch(f"/reports/{report_id}", org.key, same).status_code == 200
    different = resource("reports", report_id, query="SELECT 9", sql_query="SELECT 8")
    refused = api.patch(f"/reports/{report_id}", org.key, different)
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["code"] == "conflicting_attributes"
    assert refused.json()["errors"][0]["source"] == {"pointer": "/data/attributes/query"}
    shown = api.get(f"/reports/{report_id}", org.key).json()["data"]["attributes"]
    assert shown["sql_query"] == "SELECT 8"


def _sized_visualization(size: int) -> dict:
    """A visualization of exactly ``size`` bytes as compact JSON."""
    overhead = len(orjson.dumps({"p": ""}))
    return {"p": "x" * (size - overhead)}


def _nested(depth: int) -> list:
    """``depth`` arrays, each inside the next: [[[…]]]."""
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


# (attributes over a valid report's, its relationships if not the valid ones, pointer, code)
INVALID_REPORTS = [
    ({"r_query": "x <- 1"}, None, "/data/attributes/r_query", "r_query_not_supported"),
    ({"sql_query": "   "}, None, "/data/attributes/sql_query", "invalid_sql_query"),
    ({"sql_query": "S" * 100_001}, None, "/data/attributes/sql_query", "too_long"),
    ({"sql_query": 5}, None, "/data/attributes/sql_query", "invalid_sql_query"),
    ({"sql_query": None}, None, "/data/attributes/sql_query", "missing_attribute"),
    ({"name": "   "}, None, "/data/attributes/name", "too_short"),
    ({"description": "d" * 2001}, None, "/data/attributes/description", "too_long"),
    ({"visualization": [1]}, None, "/data/attributes/visualization", "invalid_type"),
    (
        {"visualization": _sized_visualization(MAX_VISUALIZATION_BYTES + 1)},
        None,
        "/data/attributes/visualization",
        "too_large",
    ),
    ({"visualization": {"n": 2**64}}, None, "/data/attributes/visualization",
     "number_out_of_range"),
    ({"visualization": {"a": _nested(MAX_VISUALIZATION_DEPTH)}}, None,
     "/data/attributes/visualization", "too_deep"),
    ({"created_at": "2024-01-01"}, None, "/data/attributes/created_at", "read_only_attribute"),
    ({}, {}, "/data/relationships/datasource", "missing_relationship"),
    ({}, {"datasource": {"data": None}}, "/data/relationships/datasource/data",
     "invalid_relationship"),
    ({}, {"datasource": {"data": {"type": "dashboards", "id": "x"}}},
     "/data/relationships/datasource/data", "invalid_relationship"),
    ({}, {"datasource": {"data": {"type": "datasources", "id": RANDOM_ID}}},
     "/data/relationships/datasource", "datasource_not_found"),
    ({}, {"filters": {"data": []}}, "/data/relationships/filters",
     "relationship_not_settable"),
]  # fmt: skip


def test_invalid_reports_are_422_with_a_pointer_and_store_nothing(api):
    """One app for every case (the cases are many, an app per case slow): each alone is a 422."""
    org = api.create_org()
    before = dump_tables(api.app)
    for attributes, relationships, pointer, code in INVALID_REPORTS:
        document = _document(org.sample_datasource_id, sql_query="SELECT 1")
        document["data"]["attributes"].update(attributes)
        if attributes.get("sql_query", "") is None:
            del document["data"]["attributes"]["sql_query"]
        if relationships is not None:
            document["data"]["relationships"] = relationships
        answer = api.post("/reports", org.key, json.dumps(document))  # orjson: no 2**64
        assert answer.status_code == 422, (code, answer.text)
        found = [(e["code"], e["source"]["pointer"]) for e in answer.json()["errors"]]
        assert (code, pointer) in found, found
    assert dump_tables(api.app) == before


def test_a_visualization_of_exactly_the_bounds_is_kept(api):
    org = api.create_org()
    deepest = {"a": _nested(MAX_VISUALIZATION_DEPTH - 1)}  # the object is one level too
    for chart in (_sized_visualization(MAX_VISUALIZATION_BYTES), deepest):
        created = _create(api, org.key, org.sample_datasource_id, visualization=chart)
        assert created.status_code == 201, created.text
        assert created.json()["data"]["attributes"]["visualization"] == chart


def test_sql_snippets_are_those_the_sql_names(api):
    org = api.create_org()
    ids = {
        name: api.post(
            "/sql_snippets", org.key, resource("sql_snippets", name=name, sql="SELECT 1")
        ).json()["data"]["id"]
        for name in ("beta", "alpha", "unused")
    }
    sql = (
        "SELECT * FROM [beta] JOIN [alpha] USING (a) WHERE b = '[unused]' -- [unused]\n AND [nope]"
    )
    report_id = _report(api, org, sql_query=sql)
    linked = api.get(f"/reports/{report_id}", org.key).json()["data"]["relationships"]
    assert linked["sql_snippets"]["data"] == [
        {"type": "sql_snippets", "id": ids["alpha"]},
        {"type": "sql_snippets", "id": ids["beta"]},
    ]


# ---------------------------------------------------------------------------- scope and tenancy


def test_another_organisations_ids_answer_as_random_ids(api):
    ours, theirs = api.create_org("ours"), api.create_org("theirs")
    their_report = _report(api, theirs, _dashboard(api, theirs))
    their_dashboard = _dashboard(api, theirs)
    for method, path, body in [
        ("GET", "/reports/{}", None),
        ("PATCH", "/reports/{}", lambda i: resource("reports", i, name="x")),
        ("DELETE", "/reports/{}", None),
    ]:
        answers = [
            api.client.request(
                method,
                path.format(i),
                content=orjson.dumps(body(i)) if body else None,
                headers={
                    "Authorization": f"Api {ours.key}",
                    "Content-Type": "application/vnd.api+json",
                },
            )
            for i in (their_report, RANDOM_ID)
        ]
        assert answers[0].status_code == 404 and answers[0].content == answers[1].content
    runs = [
        _post_json(api, ours.key, path.format(i), {})
        for path, i in [("/reports/{}/executions", their_report), ("/reports/{}/executions", RANDOM_ID),
                        ("/dashboards/{}/executions", their_dashboard),
                        ("/dashboards/{}/executions", RANDOM_ID)]
    ]  # fmt: skip
    assert {r.status_code for r in runs} == {404}
    assert runs[0].content == runs[1].content and runs[2].content == runs[3].content
    for relationship, their_id in (
        ("datasource", theirs.sample_datasource_id),
        ("dashboard", their_dashboard),
    ):
        answers = []
        for target in (their_id, RANDOM_ID):
            document = _document(ours.sample_datasource_id, sql_query="SELECT 1")
            document["data"]["relationships"][relationship] = {
                "data": {"type": f"{relationship}s", "id": target}
            }
            answers.append(api.post("/reports", ours.key, document))
        assert answers[0].status_code == 422 and answers[0].content == answers[1].content
    assert api.get("/reports", ours.key).json()["meta"]["total"] == 0


def test_a_restricted_key_reaches_only_reports_on_its_datasources(api):
    org = api.create_org()
    other = api.create_datasource(org.key, name="D1")["id"]
    inside = _report(api, org, name="inside")
    outside = _create(api, org.key, other, name="outside").json()["data"]["id"]
    restricted = api.create_key(
        org, [Permission.MANAGE_DASHBOARDS], datasource_ids=[org.sample_datasource_id]
    )
    listed = api.get("/reports", restricted).json()
    assert [r["id"] for r in listed["data"]] == [inside] and listed["meta"]["total"] == 1
    assert api.get(f"/reports?filter[datasource]={other}", restricted).json()["data"] == []
    for path in (f"/reports/{outside}", f"/reports/{RANDOM_ID}"):
        assert api.get(path, restricted).status_code == 404
    assert (
        api.get(f"/reports/{outside}", restricted).content
        == api.get(f"/reports/{RANDOM_ID}", restricted).content
    )
    assert api.delete(f"/reports/{outside}", restricted).status_code == 404
    run = _post_json(api, restricted, f"/reports/{outside}/executions", {})
    assert run.status_code == 404
    # Naming a datasource outside its scope is the answer a random id gets: 422, same body.
    created = [_create(api, restricted, target) for target in (other, RANDOM_ID)]
    assert created[0].status_code == 422 and created[0].content == created[1].content
    move = {
        "data": {
            "type": "reports",
            "id": inside,
            "relationships": {"datasource": {"data": {"type": "datasources", "id": other}}},
        }
    }
    assert api.patch(f"/reports/{inside}", restricted, move).status_code == 422
    assert api.get(f"/reports/{outside}", org.key).json()["data"]["attributes"]["name"] == "outside"


def test_a_report_on_a_dashboard_hidden_from_a_restricted_key_is_hidden_too(api):
    """Its dashboard link, the dashboard's lock and the default values a run merges in would
    reveal a dashboard the key may not see."""
    org = api.create_org()
    other = api.create_datasource(org.key, name="D1")["id"]
    dashboard = _dashboard(
        api,
        org,
        default_parameters={"filters": [{"variable_name": "v", "selected_values": ["secret"]}]},
    )
    _create(api, org.key, other, dashboard)
    inside = _report(api, org, dashboard, sql_query="SELECT {v.value}")
    restricted = api.create_key(
        org, [Permission.MANAGE_DASHBOARDS], datasource_ids=[org.sample_datasource_id]
    )
    for path in (f"/reports/{inside}", f"/reports/{RANDOM_ID}"):
        assert api.get(path, restricted).status_code == 404
    assert (
        api.get(f"/reports/{inside}", restricted).content
        == api.get(f"/reports/{RANDOM_ID}", restricted).content
    )
    listed = api.get(f"/reports?filter[dashboard]={dashboard}", restricted).json()
    assert listed["data"] == [] and listed["meta"]["total"] == 0
    assert _post_json(api, restricted, f"/reports/{inside}/executions", {}).status_code == 404
    _lock(api, dashboard)
    assert api.delete(f"/reports/{inside}", restricted).status_code == 404
    assert api.get(f"/reports/{inside}", org.key).status_code == 200
    # An execution of the hidden report, on a datasource the key reaches (found by reusing it),
    # does not name the report to that key; the key's own runs name theirs.
    _lock(api, dashboard, locked=False)
    ran = _post_json(api, org.key, f"/reports/{inside}/executions", {})
    execution = ran.json()["data"]["id"]
    for caller, linked in ((org.key, {"type": "reports", "id": inside}), (restricted, None)):
        shown = api.get(f"/executions/{execution}", caller).json()["data"]
        assert shown["relationships"]["report"]["data"] == linked
    own = _report(api, org, None, name="own")
    mine = _post_json(api, restricted, f"/reports/{own}/executions", {}).json()["data"]
    assert mine["relationships"]["report"]["data"] == {"type": "reports", "id": own}


# ---------------------------------------------------------------------------- dashboards


def test_a_locked_dashboard_refuses_reports_being_added_changed_moved_or_deleted(api):
    org = api.create_org()
    locked, other = _dashboard(api, org), _dashboard(api, org)
    on_it = _report(api, org, locked)
    elsewhere = _report(api, org, other)
    _lock(api, locked)
    before = dump_tables(api.app)
    answers = {
        "add": _create(api, org.key, org.sample_datasource_id, locked),
        "change": api.patch(f"/reports/{on_it}", org.key, resource("reports", on_it, name="x")),
        "move away": _move(api, org.key, on_it, other),
        "take off": _move(api, org.key, on_it, None),
        "move onto": _move(api, org.key, elsewhere, locked),
        "delete": api.delete(f"/reports/{on_it}", org.key),
    }
    for name, answer in answers.items():
        assert answer.status_code == 409, (name, answer.text)
        assert answer.json()["errors"][0]["code"] == "dashboard_locked", name
    assert answers["add"].json()["errors"][0]["source"] == {
        "pointer": "/data/relationships/dashboard"
    }
    assert dump_tables(api.app) == before
    # Reading and running stay open; unlocked, the change goes through.
    assert _post_json(api, org.key, f"/reports/{on_it}/executions", {}).status_code == 200
    _lock(api, locked, False)
    assert api.delete(f"/reports/{on_it}", org.key).status_code == 204


def test_a_report_leaving_its_dashboard_leaves_the_layout(api):
    org = api.create_org()
    first, second = _dashboard(api, org), _dashboard(api, org)
    kept, moved, deleted = (_report(api, org, first, name=n) for n in ("kept", "moved", "deleted"))
    layout = [
        {"type": "report", "id": report, "row": row, "column": 0, "width": 6, "height": 4}
        for row, report in enumerate((kept, moved, deleted))
    ]
    with api.app.state.sessions.begin() as session:
        session.get(Dashboard, first).layout = layout
    assert api.delete(f"/reports/{deleted}", org.key).status_code == 204
    assert [item["id"] for item in _dashboard_row(api, first).layout] == [kept, moved]
    assert _move(api, org.key, moved, second).status_code == 200
    assert _dashboard_row(api, first).layout == layout[:1]
    renamed = api.patch(f"/reports/{kept}", org.key, resource("reports", kept, name="renamed"))
    assert renamed.status_code == 200
    assert _dashboard_row(api, first).layout == layout[:1]  # staying on it keeps its place


# ---------------------------------------------------------------------------- running


def test_running_a_report_merges_the_parameters_over_the_dashboard_defaults(api):
    org = api.create_org()
    defaults = {
        "timerange": TIMERANGE,
        "aggregation": "month",
        "filters": [
            {"variable_name": "country", "selected_values": ["DE"]},
            {"variable_name": "plan", "selected_values": ["pro"]},
            {"variable_name": "unused", "selected_values": ["left out"]},
        ],
    }
    dashboard = _dashboard(api, org, default_parameters=defaults)
    sql = "SELECT {ordered_at:aggregation} FROM orders WHERE {country=country} AND {plan=plan}"
    report = _report(api, org, dashboard, sql_query=sql)
    given = {
        "aggregation": "year",
        "filters": [{"variable_name": "plan", "selected_values": ["free"]}],
    }
    run = _post_json(api, org.key, f"/reports/{report}/executions", {"parameters": given})
    assert run.status_code == 200, run.text
    data = run.json()["data"]
    assert data["relationships"]["report"]["data"] == {"type": "reports", "id": report}
    bound = data["attributes"]["bound_parameters"]
    assert {"year", "DE", "free"} <= set(bound) and not {"month", "pro", "left out"} & set(bound)
    (execution,) = _executions(api)
    assert execution.report_id == report
    assert execution.parameters == {
        "timerange": TIMERANGE,
        "aggregation": "year",
        "filters": [*defaults["filters"][:1], given["filters"][0], defaults["filters"][2]],
    }
    shown = api.get(f"/executions/{data['id']}", org.key).json()["data"]
    assert shown["relationships"]["report"]["data"]["id"] == report
    # Its executions stay when it goes: their report turns null.
    assert api.delete(f"/reports/{report}", org.key).status_code == 204
    shown = api.get(f"/executions/{data['id']}", org.key).json()["data"]
    assert shown["relationships"]["report"]["data"] is None


def _number_filter(api, org, variable: str) -> None:
    attributes = {"name": variable, "variable_name": variable, "control_type": "text",
                  "value_type": "number"}  # fmt: skip
    created = api.post("/filters", org.key, {"data": {"type": "filters", "attributes": attributes}})
    assert created.status_code == 201, created.text


def test_a_problem_of_a_stored_default_names_the_dashboard_and_one_of_the_run_points_into_its_body(
    api,
):
    """A default that no longer suits its filter (here: saved before the filter took numbers)
    was a 422 pointing at the merged list, as if the request had sent it; a problem of the
    request's own values pointed at their place in that list too, not in the body."""
    org = api.create_org()
    defaults = {
        "aggregation": "month",
        "filters": [
            {"variable_name": "first", "selected_values": [1]},
            {"variable_name": "stale", "selected_values": ["abc"]},
        ],
    }
    dashboard = _dashboard(api, org, default_parameters=defaults)
    for variable in ("stale", "given"):
        _number_filter(api, org, variable)
    report = _report(api, org, dashboard, sql_query="SELECT {a=first}, {b=stale}, {c=given}")
    given = {"filters": [{"variable_name": "given", "selected_values": [2, "no number"]}]}
    before = dump_tables(api.app)
    run = _post_json(api, org.key, f"/reports/{report}/executions", {"parameters": given})
    assert run.status_code == 422, run.text
    by_pointer = {e.get("source", {}).get("pointer"): e for e in run.json()["errors"]}
    assert set(by_pointer) == {None, "/parameters/filters/0/selected_values/1"}
    stale = by_pointer[None]
    assert stale["code"] == "invalid_value"
    assert stale["detail"].startswith(
        f"The default parameters of dashboard {dashboard} ('Sales'): "
    )
    assert "'stale'" in stale["detail"] and "source" not in stale
    assert dump_tables(api.app) == before
    # Given over the stale default, the run goes through; so does a run of the whole dashboard.
    given["filters"] = [{"variable_name": "stale", "selected_values": [3]}]
    run = _post_json(api, org.key, f"/reports/{report}/executions", {"parameters": given})
    assert run.status_code == 200, run.text
    whole = _post_json(api, org.key, f"/dashboards/{dashboard}/executions", {})
    assert whole.status_code == 422, whole.text
    assert whole.json()["errors"][0]["detail"].startswith("The default parameters of dashboard")
    # A member given replaces the default's: its problem points into the body.
    run = _post_json(
        api, org.key, f"/reports/{report}/executions", {"parameters": {"aggregation": "eon"}}
    )
    assert run.status_code == 422, run.text
    assert run.json()["errors"][0]["source"] == {"pointer": "/parameters/aggregation"}


@pytest.mark.parametrize(
    ("pointer", "in_request"),
    [
        ("/parameters/aggregation", "/parameters/aggregation"),  # given: replaces the default
        ("/parameters/timerange", None),  # the default's
        ("/parameters/tz", None),
        ("/parameters/filters/0/selected_values/0", None),  # "kept", the default's
        ("/parameters/filters/1/selected_values/2", "/parameters/filters/0/selected_values/2"),
        ("/parameters/filters/1/variable_name", "/parameters/filters/0/variable_name"),
        ("/parameters/filters/2", "/parameters/filters/1"),  # "new", given second
        ("/parameters/filters/9/selected_values/0", "/parameters/filters/9/selected_values/0"),
        ("/parameters/filters", "/parameters/filters"),
        ("/parameters", "/parameters"),
        ("/sql_query", "/sql_query"),
    ],
)
def test_a_pointer_into_the_merged_parameters_is_read_back_into_the_request(pointer, in_request):
    dashboard = Dashboard(
        id="d", name="D", default_parameters={
            "timerange": TIMERANGE, "tz": "UTC", "aggregation": "month",
            "filters": [{"variable_name": "kept", "selected_values": [1]},
                        {"variable_name": "replaced", "selected_values": [2]}],
        },
    )  # fmt: skip
    given = {
        "aggregation": "year",
        "filters": [
            {"variable_name": "replaced", "selected_values": [3]},
            {"variable_name": "new", "selected_values": [4]},
        ],
    }
    merged = report_services.MergedParameters.merged(dashboard, given)
    assert [f["variable_name"] for f in merged.values["filters"]] == ["kept", "replaced", "new"]
    assert merged.pointer_in_request(pointer) == in_request


def test_running_a_report_honours_idempotency_keys_and_wait_as_run_execution(api):
    org = api.create_org()
    report = _report(api, org, sql_query="SELECT {a=a}")
    viewer = api.create_key(org, [Permission.VIEW_DASHBOARDS])
    body = {"parameters": {"filters": [{"variable_name": "a", "selected_values": [1]}]}}
    path = f"/reports/{report}/executions"
    first = _post_json(api, viewer, path, body, {"Idempotency-Key": "k"})
    again = _post_json(api, viewer, f"{path}?wait=0", body, {"Idempotency-Key": "k"})
    assert first.status_code == again.status_code == 200, first.text
    assert first.json()["data"]["id"] == again.json()["data"]["id"]
    # The report edited meanwhile: the retry is the same request, answered as the first was.
    edited = api.patch(
        f"/reports/{report}", org.key, resource("reports", report, sql_query="SELECT 2 WHERE {a=a}")
    )
    assert edited.status_code == 200, edited.text
    retried = _post_json(api, viewer, path, body, {"Idempotency-Key": "k"})
    assert retried.status_code == 200, retried.text
    assert retried.json()["data"]["id"] == first.json()["data"]["id"]
    body["parameters"]["filters"][0]["selected_values"] = [2]
    reused = _post_json(api, viewer, path, body, {"Idempotency-Key": "k"})
    assert reused.status_code == 422
    assert reused.json()["errors"][0]["code"] == "idempotency_key_reused"
    assert _post_json(api, viewer, f"{path}?wait=31", body).status_code == 400
    bad = _post_json(api, viewer, path, {"parameters": {"aggregation": "fortnight"}})
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["source"] == {"pointer": "/parameters/aggregation"}
    assert len(_executions(api)) == 1


def test_running_a_dashboard_runs_each_of_its_reports_once(api):
    org = api.create_org()
    dashboard = _dashboard(api, org, default_parameters={"aggregation": "week"})
    reports = [
        _report(api, org, dashboard, name=f"r{i}", sql_query=f"SELECT {i}") for i in range(3)
    ]
    _report(api, org, _dashboard(api, org), name="elsewhere")
    run = _post_json(api, org.key, f"/dashboards/{dashboard}/executions", {"parameters": {}})
    assert run.status_code == 200, run.text
    document = run.json()
    assert document["meta"] == {"total": 3}
    assert [e["relationships"]["report"]["data"]["id"] for e in document["data"]] == reports
    executions = _executions(api)
    assert sorted(e.report_id for e in executions) == sorted(reports)
    assert all(e.parameters == {"aggregation": "week"} for e in executions)
    empty = _post_json(api, org.key, f"/dashboards/{_dashboard(api, org)}/executions", {})
    assert empty.status_code == 200 and empty.json() == {"data": [], "meta": {"total": 0}}
    # An Idempotency-Key is refused, not ignored: two such requests ran twice.
    keyed = _post_json(
        api, org.key, f"/dashboards/{dashboard}/executions", {}, {"Idempotency-Key": "k"}
    )
    assert keyed.status_code == 400
    assert keyed.json()["errors"][0]["code"] == "idempotency_key_not_supported"
    assert len(_executions(api)) == 3


# A budget of executions' text of 1 MiB, and SQL long enough to fill much of it.
TEXT_BUDGET = 1 * MIB
_SMALL_TEXT_BUDGET = {"max_execution_text_mb": 1, "max_sql_length": TEXT_BUDGET // 2}


def _refused_run(api, org, dashboard: str, status: int, code: str) -> None:
    """Running the dashboard is refused with ``status`` and ``code``, and queues nothing."""
    before = len(_executions(api))
    run = _post_json(api, org.key, f"/dashboards/{dashboard}/executions", {})
    assert run.status_code == status, run.text
    assert run.json()["errors"][0]["code"] == code
    assert len(_executions(api)) == before


def _keeping_text(api, org, text_bytes: int) -> None:
    """The organisation's executions keep ``text_bytes`` (others', or none once forgotten)."""
    with api.app.state.sessions.begin() as session:
        session.get_one(Organization, org.id).execution_text_bytes = text_bytes


def test_a_dashboard_needing_more_executions_than_the_cap_is_409_not_a_retryable_429(api):
    """The outside probe's case: 21 reports under a cap of 20 were a 429 that no retry cured."""
    org = api.create_org()
    with api.app.state.sessions.begin() as session:
        session.get_one(Organization, org.id).max_running_executions = 2
    dashboard = _dashboard(api, org)
    for i in range(3):
        _report(api, org, dashboard, name=f"r{i}", sql_query=f"SELECT {i}")
    _refused_run(api, org, dashboard, 409, "dashboard_exceeds_execution_cap")
    two = _dashboard(api, org)
    for i in range(2):
        _report(api, org, two, name=f"s{i}", sql_query=f"SELECT {i}")
    _post_json(api, org.key, f"/reports/{_report(api, org, None)}/executions", {})
    busy = _post_json(api, org.key, f"/dashboards/{two}/executions", {})
    assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
    # Out of room for SQL (not the cap): the 429 as it is, though the dashboard needs more
    # executions than the cap.
    _keeping_text(api, org, 10**12)
    _refused_run(api, org, dashboard, 429, "execution_text_quota_exceeded")


def test_a_dashboard_keeping_more_text_than_the_budget_is_409_not_a_retryable_429(settings):
    """Each report fits the budget of executions' text, their sum does not: no wait makes room
    for it, so a retry (as a 429 invites) never runs it. One that fits is still a 429 while the
    organisation's other executions keep too much."""
    with Api.start(settings.model_copy(update=_SMALL_TEXT_BUDGET)) as api:
        org = api.create_org()
        dashboard = _dashboard(api, org)
        # A report's SQL, as sent and as run: four fifths of the budget.
        filler = "x" * int(TEXT_BUDGET / 2.5)
        for i in range(2):
            _report(api, org, dashboard, name=f"r{i}", sql_query=f"SELECT '{filler}' AS r{i}")
        _refused_run(api, org, dashboard, 409, "dashboard_exceeds_execution_text_budget")
        small = _dashboard(api, org)
        _report(api, org, small, name="s", sql_query="SELECT 1")
        _keeping_text(api, org, TEXT_BUDGET)
        _refused_run(api, org, small, 429, "execution_text_quota_exceeded")


def test_identical_reports_that_reuse_one_execution_are_not_counted_twice(settings):
    """Found by the review: three identical reports of a dashboard with a refresh window share
    one execution; out of room now, the run is a 429 that a retry cures, not a 409."""
    with Api.start(settings.model_copy(update=_SMALL_TEXT_BUDGET)) as api:
        org = api.create_org()
        dashboard = _dashboard(api, org, data_refresh_rate=60)
        filler = "x" * int(TEXT_BUDGET * 0.35)  # each run keeps 0.7 of the budget; three, 2.1
        for i in range(3):
            _report(api, org, dashboard, name=f"r{i}", sql_query=f"SELECT '{filler}' AS r")
        _keeping_text(api, org, TEXT_BUDGET // 2)
        _refused_run(api, org, dashboard, 429, "execution_text_quota_exceeded")
        _keeping_text(api, org, 0)  # forgotten
        again = _post_json(api, org.key, f"/dashboards/{dashboard}/executions", {})
        assert again.status_code == 200, again.text
        assert len({e["id"] for e in again.json()["data"]}) == 1


def test_a_restricted_key_cannot_run_a_dashboard_with_a_report_beyond_its_scope(api):
    org = api.create_org()
    other = api.create_datasource(org.key, name="D1")["id"]
    dashboard = _dashboard(api, org)
    _report(api, org, dashboard)
    _create(api, org.key, other, dashboard)
    restricted = api.create_key(
        org, [Permission.VIEW_DASHBOARDS], datasource_ids=[org.sample_datasource_id]
    )
    answers = [
        _post_json(api, restricted, f"/dashboards/{target}/executions", {})
        for target in (dashboard, RANDOM_ID)
    ]
    assert answers[0].status_code == 404 and answers[0].content == answers[1].content
    assert _executions(api) == []


def test_a_failing_report_queues_none_of_the_dashboards_executions(api):
    org = api.create_org()
    dashboard = _dashboard(api, org)
    _report(api, org, dashboard, name="fine")
    broken = _report(api, org, dashboard, name="broken", sql_query="SELECT * FROM [missing]")
    before = dump_tables(api.app)
    run = _post_json(api, org.key, f"/dashboards/{dashboard}/executions", {})
    assert run.status_code == 422, run.text
    error = run.json()["errors"][0]
    assert error["code"] == "unknown_sql_snippet" and "source" not in error
    assert broken in error["detail"]
    assert dump_tables(api.app) == before


def test_a_datasource_with_reports_cannot_be_deleted(api):
    org = api.create_org()
    datasource = api.create_datasource(org.key, name="D1")["id"]
    reports = [_create(api, org.key, datasource).json()["data"]["id"] for _ in range(2)]
    before = dump_tables(api.app)
    refused = api.delete(f"/datasources/{datasource}", org.key)
    assert refused.status_code == 409
    error = refused.json()["errors"][0]
    assert error["code"] == "datasource_in_use" and error["detail"].startswith("2 report")
    assert dump_tables(api.app) == before
    for report in reports:
        api.delete(f"/reports/{report}", org.key)
    assert api.delete(f"/datasources/{datasource}", org.key).status_code == 204


def test_a_report_created_after_the_deletes_check_makes_it_a_409_not_a_500(api, monkeypatch):
    """The race a concurrent create wins (it commits after the delete counted the datasource's
    reports): the database's foreign key refuses the delete, answered as the check would."""
    from api_server.services import datasources as datasource_service

    org = api.create_org()
    datasource = api.create_datasource(org.key, name="D1")["id"]
    _create(api, org.key, datasource)
    monkeypatch.setattr(datasource_service, "_refuse_if_reports_use", lambda *args: None)
    before = dump_tables(api.app)
    refused = api.delete(f"/datasources/{datasource}", org.key)
    assert refused.status_code == 409, refused.text
    assert refused.json()["errors"][0]["code"] == "datasource_in_use"
    assert dump_tables(api.app) == before


def test_a_report_deleted_while_its_dashboard_is_run_is_a_retryable_409(api, monkeypatch):
    """The outside probe's race: a report deleted between the run's reading the dashboard's
    reports and queueing them answered 404 'No report with this id exists.', which tells a
    client the dashboard is gone. Nothing is queued (all or none), and a run again works."""
    org = api.create_org()
    dashboard = _dashboard(api, org)
    doomed, kept = (
        _report(api, org, dashboard, name=f"r{i}", sql_query=f"SELECT {i}") for i in range(2)
    )
    real_run = report_services._run
    deleted = []

    def run_after_a_delete(session, principal, report, *args):
        if not deleted:  # another request deletes a report of the dashboard meanwhile
            with api.app.state.sessions.begin() as other:
                other.delete(other.get(Report, doomed))
            deleted.append(doomed)
        return real_run(session, principal, report, *args)

    monkeypatch.setattr(report_services, "_run", run_after_a_delete)
    before = len(_executions(api))
    run = _post_json(api, org.key, f"/dashboards/{dashboard}/executions", {})
    assert run.status_code == 409, run.text
    assert run.json()["errors"][0]["code"] == "dashboard_changed"
    assert len(_executions(api)) == before
    again = _post_json(api, org.key, f"/dashboards/{dashboard}/executions", {})
    assert again.status_code == 200, again.text
    assert [e["relationships"]["report"]["data"]["id"] for e in again.json()["data"]] == [kept]
