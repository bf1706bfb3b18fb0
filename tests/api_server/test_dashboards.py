"""Dashboards and dashboard groups: every attribute round-tripped, each refusal with its pointer,
layouts of the dashboard's own reports, locking, `include`, sparse fieldsets, paging and sorting,
tenancy, the datasource scope of restricted keys, and group membership."""

from __future__ import annotations

import tracemalloc
from typing import Any

import pytest

from api_server.permissions import Permission
from api_server.resources import dashboards as dashboard_resources
from api_server.resources.dashboard_groups import MAX_GROUP_DASHBOARDS
from api_server.resources.dashboard_settings import MAX_LAYOUT_ITEMS
from api_server.services import dashboards as dashboards_service
from tests.support.factories import dump_tables, resource
from tests.support.races import while_held

FULL = {
    "name": "Sales",
    "description": "Orders by day",
    "time_zone_config": {
        "type": "selectable",
        "fixed_time_zone": "Europe/Berlin",
        "allowed_time_zones": ["Europe/Berlin", "UTC"],
    },
    "automatic_update_enabled": True,
    "thumbnail_enabled": True,
    "prewarm": True,
    "data_refresh_rate": 1440,
    "data_refresh_anchor_time": "15:42",
    "is_locked": False,
    "default_parameters": {
        "timerange": "1712233090~1712237090",
        "aggregation": "second",
        "tz": "Europe/Berlin",
        "filters": [{"variable_name": "country", "selected_values": ["DE", 7]}],
    },
    "default_page_width": 1600,
    "layout": [],
    "color_scheme": "scheme_1",
    "filters_configuration": {
        "apply_immediately": True,
        "aggregation_options": ["second", "day"],
        "filter_sorting": ["country", "timerange"],
        "hidden_parameters": ["tz"],
    },
}
READ_ONLY = {"thumbnail_created_at", "published", "floating_enabled", "created_at", "updated_at"}
RELATIONSHIPS = {
    "reports",
    "filters",
    "sql_snippets",
    "dashboard_groups",
    "dashboard_sharing_links",
    "user",
    "user_groups",
}


def _create(api, key, **attributes: Any):
    return api.post("/dashboards", key, resource("dashboards", **attributes))


def _dashboard(api, key, name="D", **attributes: Any) -> str:
    answer = _create(api, key, name=name, **attributes)
    assert answer.status_code == 201, answer.text
    return answer.json()["data"]["id"]


def _patch(api, key, dashboard_id, **attributes: Any):
    return api.patch(
        f"/dashboards/{dashboard_id}", key, resource("dashboards", dashboard_id, **attributes)
    )


def _report(api, key, datasource_id, dashboard_id=None, sql="SELECT 1") -> str:
    relationships: dict[str, Any] = {
        "datasource": {"data": {"type": "datasources", "id": datasource_id}}
    }
    if dashboard_id is not None:
        relationships["dashboard"] = {"data": {"type": "dashboards", "id": dashboard_id}}
    document = resource("reports", name="R", sql_query=sql)
    document["data"]["relationships"] = relationships
    answer = api.post("/reports", key, document)
    assert answer.status_code == 201, answer.text
    return answer.json()["data"]["id"]


def _group(api, key, dashboard_ids=None, name="G"):
    document = resource("dashboard_groups", name=name)
    if dashboard_ids is not None:
        document["data"]["relationships"] = {"dashboards": _linkage(dashboard_ids)}
    return api.post("/dashboard_groups", key, document)


def _linkage(dashboard_ids):
    return {"data": [{"type": "dashboards", "id": i} for i in dashboard_ids]}


def _linked(document, name):
    return [item["id"] for item in document["data"]["relationships"][name]["data"]]


def _item(report_id, row=0, **place):
    return {
        "type": "report",
        "id": report_id,
        "row": row,
        "column": 0,
        "width": 6,
        "height": 4,
        **place,
    }


# ---------------------------------------------------------------------------- dashboards


def test_every_attribute_round_trips_and_updates_change_only_what_is_sent(api):
    org = api.create_org()
    created = _create(api, org.key, **FULL)
    assert created.status_code == 201, created.text
    data = created.json()["data"]
    assert created.headers["location"] == f"/dashboards/{data['id']}"
    assert set(data["attributes"]) == set(FULL) | READ_ONLY
    assert {k: data["attributes"][k] for k in FULL} == FULL
    assert data["attributes"]["published"] is True
    assert data["attributes"]["floating_enabled"] is False
    assert data["attributes"]["thumbnail_created_at"] is None
    assert set(data["relationships"]) == RELATIONSHIPS
    assert data["relationships"]["user"] == {"data": None}
    assert api.get(f"/dashboards/{data['id']}", org.key).json()["data"] == data

    report = _report(api, org.key, org.sample_datasource_id, data["id"])
    changes = {
        "name": "Sales 2",
        "description": None,
        "time_zone_config": {"type": "fixed", "fixed_time_zone": "UTC"},
        "default_parameters": {},
        "layout": [_item(report, row=2, column=6)],
        "filters_configuration": None,
        "data_refresh_rate": None,
    }
    patched = _patch(api, org.key, data["id"], **changes)
    assert patched.status_code == 200, patched.text
    attributes = patched.json()["data"]["attributes"]
    assert attributes["time_zone_config"] == {
        "type": "fixed",
        "fixed_time_zone": "UTC",
        "allowed_time_zones": None,
    }
    assert {k: attributes[k] for k in changes if k != "time_zone_config"} == {
        k: v for k, v in changes.items() if k != "time_zone_config"
    }
    assert attributes["color_scheme"] == "scheme_1"  # not sent: unchanged
    assert _linked(patched.json(), "reports") == [report]
    assert api.get(f"/dashboards/{data['id']}", org.key).json()["data"]["attributes"] == attributes


def test_a_minimal_dashboard_gets_the_defaults(api):
    org = api.create_org()
    attributes = _create(api, org.key, name="  Plain  ").json()["data"]["attributes"]
    assert attributes["name"] == "Plain"
    assert attributes["default_parameters"] == {} and attributes["layout"] == []
    assert attributes["is_locked"] is False and attributes["prewarm"] is False
    assert attributes["time_zone_config"] is None and attributes["filters_configuration"] is None


@pytest.mark.parametrize(
    ("attributes", "pointer", "code"),
    [
        ({"name": "  "}, "/name", "too_short"),
        ({"time_zone_config": {"type": "local"}}, "/time_zone_config/type", "invalid_time_zone_mode"),
        ({"time_zone_config": {"type": "fixed"}}, "/time_zone_config/fixed_time_zone", "missing_time_zone"),
        (
            {"time_zone_config": {"type": "selectable", "allowed_time_zones": ["UTC", "Mars/Base"]}},
            "/time_zone_config/allowed_time_zones/1",
            "invalid_time_zone",
        ),
        (
            {"time_zone_config": {"type": "selectable", "allowed_time_zones": ["UTC", "UTC"]}},
            "/time_zone_config/allowed_time_zones/1",
            "duplicate_time_zone",
        ),
        (
            {"time_zone_config": {"type": "selectable", "fixed_time_zone": "Asia/Tokyo", "allowed_time_zones": ["UTC"]}},
            "/time_zone_config/fixed_time_zone",
            "time_zone_not_allowed",
        ),
        ({"time_zone_config": {"type": "disabled", "zone": "UTC"}}, "/time_zone_config/zone", "unknown_attribute"),
        ({"data_refresh_rate": 1}, "/data_refresh_rate", "invalid_attribute"),
        ({"data_refresh_anchor_time": "24:00"}, "/data_refresh_anchor_time", "invalid_attribute"),
        ({"default_page_width": 100_000}, "/default_page_width", "invalid_attribute"),
        ({"default_parameters": {"timerange": "later"}}, "/default_parameters/timerange", "invalid_timerange"),
        (
            {"default_parameters": {"filters": [{"variable_name": "tz", "selected_values": []}]}},
            "/default_parameters/filters/0/variable_name",
            "built_in_variable",
        ),
        ({"default_parameters": {"colour": 1}}, "/default_parameters/colour", "unknown_parameter"),
        ({"default_parameters": []}, "/default_parameters", "invalid_type"),
        ({"layout": [_item("r", row=-1)]}, "/layout/0/row", "invalid_layout_position"),
        ({"layout": [{**_item("r"), "type": "chart"}]}, "/layout/0/type", "invalid_layout_type"),
        ({"layout": [_item("r", column=90, width=20)]}, "/layout/0/width", "layout_outside_grid"),
        ({"layout": [_item("r"), _item("r", row=5)]}, "/layout/1/id", "duplicate_layout_report"),
        ({"layout": [_item(str(i)) for i in range(MAX_LAYOUT_ITEMS + 1)]}, "/layout", "too_many"),
        ({"layout": [_item("nope")]}, "/layout/0/id", "layout_report_unknown"),
        ({"color_scheme": "rainbow"}, "/color_scheme", "invalid_attribute"),
        (
            {"filters_configuration": {"aggregation_options": ["day", "fortnight"]}},
            "/filters_configuration/aggregation_options/1",
            "invalid_aggregation",
        ),
        (
            {"filters_configuration": {"hidden_parameters": ["a", "a"]}},
            "/filters_configuration/hidden_parameters/1",
            "duplicate_variable",
        ),
        ({"filters_configuration": {"filter_sorting": ["no-dash"]}}, "/filters_configuration/filter_sorting/0", "invalid_variable_name"),
        ({"published": False}, "/published", "read_only_attribute"),
        ({"owner": "me"}, "/owner", "unknown_attribute"),
    ],
)  # fmt: skip
def test_invalid_attributes_are_422_with_a_pointer_and_store_nothing(
    api, attributes, pointer, code
):
    org = api.create_org()
    before = dump_tables(api.app)
    answer = _create(api, org.key, **{"name": "D", **attributes})
    assert answer.status_code == 422, answer.text
    errors = answer.json()["errors"]
    assert {"pointer": f"/data/attributes{pointer}"} in [e.get("source") for e in errors], errors
    assert code in [e["code"] for e in errors if e["source"]["pointer"].endswith(pointer)]
    assert dump_tables(api.app) == before


def test_a_layout_places_only_the_dashboards_own_reports(api):
    org, other = api.create_org("A"), api.create_org("B")
    mine, theirs = _dashboard(api, org.key, "Mine"), _dashboard(api, org.key, "Theirs")
    own = _report(api, org.key, org.sample_datasource_id, mine)
    elsewhere = _report(api, org.key, org.sample_datasource_id, theirs)
    loose = _report(api, org.key, org.sample_datasource_id)
    foreign = _report(api, other.key, other.sample_datasource_id, _dashboard(api, other.key))
    before = dump_tables(api.app)
    details = set()
    for stranger in (elsewhere, loose, foreign, "zzzz-zzzz-zzzz"):
        answer = _patch(api, org.key, mine, layout=[_item(own), _item(stranger, row=4)])
        assert answer.status_code == 422, answer.text
        (error,) = answer.json()["errors"]
        assert error["source"] == {"pointer": "/data/attributes/layout/1/id"}
        assert error["code"] == "layout_report_unknown"
        details.add(error["detail"].replace(stranger, "<id>"))
    assert len(details) == 1  # whoever's report it is, or none: the same answer
    assert dump_tables(api.app) == before
    assert _patch(api, org.key, mine, layout=[_item(own)]).status_code == 200


def test_a_locked_dashboard_refuses_changes_and_deletion_until_unlocked(api):
    org = api.create_org()
    dashboard_id = _dashboard(api, org.key, is_locked=True)
    before = dump_tables(api.app)
    for changes in (
        {"name": "x"},
        {"is_locked": False, "name": "x"},
        {"is_locked": True, "name": "x"},
        {},
    ):
        answer = _patch(api, org.key, dashboard_id, **changes)
        assert answer.status_code == 409, answer.text
        assert answer.json()["errors"][0]["code"] == "dashboard_locked"
    deleted = api.delete(f"/dashboards/{dashboard_id}", org.key)
    assert deleted.status_code == 409 and deleted.json()["errors"][0]["code"] == "dashboard_locked"
    assert dump_tables(api.app) == before
    # Locking it again changes nothing, and is answered as done (the outside probe's case).
    again = _patch(api, org.key, dashboard_id, is_locked=True)
    assert again.status_code == 200 and again.json()["data"]["attributes"]["is_locked"] is True

    unlocked = _patch(api, org.key, dashboard_id, is_locked=False)
    assert (
        unlocked.status_code == 200 and unlocked.json()["data"]["attributes"]["is_locked"] is False
    )
    assert _patch(api, org.key, dashboard_id, name="x", is_locked=True).status_code == 200
    assert _patch(api, org.key, dashboard_id, is_locked=False).status_code == 200
    assert api.delete(f"/dashboards/{dashboard_id}", org.key).status_code == 204


def test_include_adds_each_related_resource_once(api):
    org = api.create_org()
    snippet = api.post(
        "/sql_snippets", org.key, resource("sql_snippets", name="orders", sql="SELECT 1")
    ).json()["data"]["id"]
    dashboard_id = _dashboard(api, org.key)
    reports = [
        _report(api, org.key, org.sample_datasource_id, dashboard_id, "SELECT * FROM [orders]"),
        _report(api, org.key, org.sample_datasource_id, dashboard_id, "SELECT '[x]', [orders]"),
    ]
    group = _group(api, org.key, [dashboard_id]).json()["data"]["id"]
    shown = api.get(f"/dashboards/{dashboard_id}", org.key).json()
    assert _linked(shown, "reports") == reports
    assert _linked(shown, "sql_snippets") == [snippet]
    assert _linked(shown, "dashboard_groups") == [group]
    assert "included" not in shown
    expected = {
        "reports": [("reports", r) for r in reports],
        "sql_snippets": [("sql_snippets", snippet)],
        "dashboard_groups": [("dashboard_groups", group)],
        "filters": [],
        "dashboard_sharing_links": [],
        "user": [],
        "user_groups": [],
    }
    for value, objects in expected.items():
        answer = api.get(f"/dashboards/{dashboard_id}?include={value}", org.key)
        assert answer.status_code == 200, answer.text
        included = answer.json()["included"]
        assert [(o["type"], o["id"]) for o in included] == objects, value
        for obj in included:  # full resource objects, as their own endpoints answer them
            assert obj == api.get(f"/{obj['type']}/{obj['id']}", org.key).json()["data"]
    listed = api.get("/dashboards?include=reports,sql_snippets,dashboard_groups,user", org.key)
    assert sorted((o["type"], o["id"]) for o in listed.json()["included"]) == sorted(
        expected["reports"] + expected["sql_snippets"] + expected["dashboard_groups"]
    )
    refused = api.get(f"/dashboards/{dashboard_id}?include=owner", org.key)
    assert refused.status_code == 400
    # JSON:API's sparse fieldsets name any type of the answer, the included ones too.
    sparse = api.get(
        "/dashboards?include=reports,dashboard_groups&fields[dashboards]=name"
        "&fields[reports]=name,dashboard&fields[dashboard_groups]=",
        org.key,
    ).json()
    assert (
        sparse["data"][0]["attributes"] == {"name": "D"}
        and "relationships" not in (sparse["data"][0])
    )
    for obj in sparse["included"]:
        if obj["type"] == "reports":
            assert set(obj["attributes"]) == {"name"} and set(obj["relationships"]) == {"dashboard"}
        else:
            assert "attributes" not in obj and "relationships" not in obj
    unknown = api.get(f"/dashboards/{dashboard_id}?include=reports&fields[reports]=nope", org.key)
    assert unknown.status_code == 400
    assert unknown.json()["errors"][0]["source"] == {"parameter": "fields[reports]"}
    grouped = api.get(
        f"/dashboard_groups/{group}?include=dashboards&fields[dashboards]=name", org.key
    ).json()
    assert [obj["attributes"] for obj in grouped["included"]] == [{"name": "D"}]
    for undeclared in ("fields[users]=name", "fields[datasources]=name"):
        answer = api.get(f"/dashboards/{dashboard_id}?include=user&{undeclared}", org.key)
        assert answer.status_code == 400, undeclared


def test_sparse_fieldsets_paging_sorting_and_filtering(api):
    org = api.create_org()
    for name in ("b", "a", "c"):
        _dashboard(api, org.key, name)
    first = api.get("/dashboards?sort=-name&page[size]=2", org.key).json()
    assert [d["attributes"]["name"] for d in first["data"]] == ["c", "b"]
    assert first["meta"]["total"] == 3 and first["links"]["next"] is not None
    second = api.get(first["links"]["next"], org.key).json()
    assert [d["attributes"]["name"] for d in second["data"]] == ["a"]
    by_created = api.get("/dashboards?sort=created_at", org.key).json()["data"]
    assert [d["attributes"]["name"] for d in by_created] == ["b", "a", "c"]
    sparse = api.get("/dashboards?filter[name]=a&fields[dashboards]=name,reports", org.key).json()
    (only,) = sparse["data"]
    assert only["attributes"] == {"name": "a"} and set(only["relationships"]) == {"reports"}
    assert api.get("/dashboards?sort=layout", org.key).status_code == 400


def test_another_organisations_ids_answer_as_random_ids(api):
    org, other = api.create_org("A"), api.create_org("B")
    dashboard_id = _dashboard(api, org.key)
    group_id = _group(api, org.key, [dashboard_id]).json()["data"]["id"]
    for path, kind, target in (
        ("/dashboards", "dashboards", dashboard_id),
        ("/dashboard_groups", "dashboard_groups", group_id),
    ):
        random = "zzzz-zzzz-zzzz"
        answers = {
            ident: (
                api.get(f"{path}/{ident}", other.key),
                api.patch(f"{path}/{ident}", other.key, resource(kind, ident, name="x")),
                api.delete(f"{path}/{ident}", other.key),
            )
            for ident in (target, random)
        }
        for theirs, unknown in zip(answers[target], answers[random], strict=True):
            assert theirs.status_code == unknown.status_code == 404
            assert theirs.json() == unknown.json()
        assert api.get(path, other.key).json()["meta"]["total"] == 0
    joined = _group(api, other.key, [dashboard_id])
    assert joined.status_code == 422, joined.text
    assert joined.json()["errors"][0]["source"] == {
        "pointer": "/data/relationships/dashboards/data/0"
    }
    assert api.get(f"/dashboards/{dashboard_id}", org.key).status_code == 200


def test_a_restricted_key_sees_dashboards_whose_reports_are_all_in_its_scope(api):
    org = api.create_org()
    shop = api.create_datasource(org.key)["id"]
    empty = _dashboard(api, org.key, "empty")
    inside = _dashboard(api, org.key, "inside")
    mixed = _dashboard(api, org.key, "mixed")
    in_scope = _report(api, org.key, shop, inside)
    _report(api, org.key, shop, mixed)
    _report(api, org.key, org.sample_datasource_id, mixed)
    group = _group(api, org.key, [empty, inside, mixed]).json()["data"]["id"]
    key = api.create_key(org, [Permission.MANAGE_DASHBOARDS], datasource_ids=[shop])

    listed = api.get("/dashboards", key).json()
    assert [d["id"] for d in listed["data"]] == [empty, inside] and listed["meta"]["total"] == 2
    hidden, unknown = (api.get(f"/dashboards/{i}", key) for i in (mixed, "zzzz-zzzz-zzzz"))
    assert hidden.status_code == unknown.status_code == 404 and hidden.json() == unknown.json()
    # Including reports selects reports under a scope that itself looks at reports (was a 500).
    for path in (f"/dashboards/{inside}?include=reports", "/dashboards?include=reports"):
        included = api.get(path, key)
        assert included.status_code == 200, included.text
        assert [o["id"] for o in included.json()["included"]] == [in_scope]
    assert _patch(api, key, mixed, name="x").status_code == 404
    assert api.delete(f"/dashboards/{mixed}", key).status_code == 404

    shown = api.get(f"/dashboard_groups/{group}?include=dashboards", key).json()
    assert _linked(shown, "dashboards") == [empty, inside]
    assert [o["id"] for o in shown["included"]] == [empty, inside]
    # Replacing the members the key sees leaves the one it does not see in the group.
    replaced = api.patch(
        f"/dashboard_groups/{group}",
        key,
        {
            "data": {
                "type": "dashboard_groups",
                "id": group,
                "relationships": {"dashboards": _linkage([inside])},
            }
        },
    )
    assert replaced.status_code == 200, replaced.text
    assert _linked(replaced.json(), "dashboards") == [inside]
    full = api.get(f"/dashboard_groups/{group}", org.key).json()
    assert _linked(full, "dashboards") == [inside, mixed]
    refused = _group(api, key, [inside, mixed])
    assert refused.status_code == 422
    assert (
        refused.json()["errors"][0]["source"]["pointer"] == "/data/relationships/dashboards/data/1"
    )
    # Renaming or deleting the group would change what the others file their dashboards in.
    before = dump_tables(api.app)
    renamed = {"data": {"type": "dashboard_groups", "id": group, "attributes": {"name": "x"}}}
    for answer in (
        api.patch(f"/dashboard_groups/{group}", key, renamed),
        api.delete(f"/dashboard_groups/{group}", key),
    ):
        assert answer.status_code == 403, answer.text
        assert answer.json()["errors"][0]["code"] == "datasource_scope_restricted"
    assert dump_tables(api.app) == before
    own = _group(api, key, [inside]).json()["data"]["id"]
    assert (
        api.patch(
            f"/dashboard_groups/{own}", key, renamed | {"data": {**renamed["data"], "id": own}}
        ).status_code
        == 200
    )
    assert api.delete(f"/dashboard_groups/{own}", key).status_code == 204


def test_two_membership_replacements_at_once_leave_one_whole_list(api, monkeypatch):
    """The second replacement waits for the first to commit and replaces its list whole: before,
    it merged into it (both dashboards in the group) or, sending the same list, failed with a
    500 on the members' primary key (PostgreSQL)."""
    org = api.create_org()
    first, second = _dashboard(api, org.key, "first"), _dashboard(api, org.key, "second")
    group = _group(api, org.key, []).json()["data"]["id"]

    def replace(members: list[str]) -> Any:
        return api.patch(
            f"/dashboard_groups/{group}",
            org.key,
            {
                "data": {
                    "type": "dashboard_groups",
                    "id": group,
                    "relationships": {"dashboards": _linkage(members)},
                }
            },
        )

    for later in ([second], [first]):  # another list, then the same list
        answers = while_held(
            monkeypatch,
            dashboards_service,
            "_replace_members",
            lambda: replace([first]),
            lambda members=later: replace(members),
        )
        assert [answer.status_code for answer in answers] == [200, 200], answers
        members = _linked(api.get(f"/dashboard_groups/{group}", org.key).json(), "dashboards")
        assert members == later


def _unknown_ids(count: int) -> list[str]:
    return [f"zzzz-zzzz-{n:04d}" for n in range(count)]


def test_group_membership_is_replaced_refused_whole_and_follows_deletions(api):
    org = api.create_org()
    first, second = _dashboard(api, org.key, "first"), _dashboard(api, org.key, "second")
    report = _report(api, org.key, org.sample_datasource_id, first)
    created = _group(api, org.key, [second, first], name="Team")
    assert created.status_code == 201, created.text
    group = created.json()["data"]
    assert set(group["attributes"]) == {"name", "description", "created_at", "updated_at"}
    assert _linked(created.json(), "dashboards") == [first, second]  # by name

    before = dump_tables(api.app)
    for ids, pointer, code in (
        ([first, "zzzz-zzzz-zzzz"], "/data/relationships/dashboards/data/1", "dashboard_not_found"),
        ([first, first], "/data/relationships/dashboards/data/1", "duplicate_dashboard"),
        # At the documented bound each member is read (the first does not exist); past it the
        # array is refused whole.
        (
            _unknown_ids(MAX_GROUP_DASHBOARDS),
            "/data/relationships/dashboards/data/0",
            "dashboard_not_found",
        ),
        (_unknown_ids(MAX_GROUP_DASHBOARDS + 1), "/data/relationships/dashboards/data", "too_many"),
    ):
        answer = api.patch(
            f"/dashboard_groups/{group['id']}",
            org.key,
            {
                "data": {
                    "type": "dashboard_groups",
                    "id": group["id"],
                    "attributes": {"name": "New"},
                    "relationships": {"dashboards": _linkage(ids)},
                }
            },
        )
        assert answer.status_code == 422, answer.text
        assert answer.json()["errors"][0]["source"] == {"pointer": pointer}
        assert answer.json()["errors"][0]["code"] == code
    assert dump_tables(api.app) == before

    replaced = api.patch(
        f"/dashboard_groups/{group['id']}",
        org.key,
        {
            "data": {
                "type": "dashboard_groups",
                "id": group["id"],
                "relationships": {"dashboards": _linkage([second])},
            }
        },
    )
    assert _linked(replaced.json(), "dashboards") == [second]
    assert replaced.json()["data"]["attributes"]["name"] == "Team"
    renamed = api.patch(
        f"/dashboard_groups/{group['id']}",
        org.key,
        resource("dashboard_groups", group["id"], name="Ops"),
    )
    assert _linked(renamed.json(), "dashboards") == [second]  # not sent: unchanged
    assert _linked(api.get(f"/dashboards/{second}", org.key).json(), "dashboard_groups") == [
        group["id"]
    ]

    assert api.delete(f"/dashboards/{second}", org.key).status_code == 204
    assert _linked(api.get(f"/dashboard_groups/{group['id']}", org.key).json(), "dashboards") == []
    assert api.get(f"/reports/{report}", org.key).status_code == 200
    assert api.delete(f"/dashboards/{first}", org.key).status_code == 204
    assert api.get(f"/reports/{report}", org.key).status_code == 404  # went with its dashboard
    assert api.delete(f"/dashboard_groups/{group['id']}", org.key).status_code == 204
    assert api.get("/dashboard_groups", org.key).json()["meta"]["total"] == 0


def test_groups_sort_filter_and_validate_their_attributes(api):
    org = api.create_org()
    dashboard_id = _dashboard(api, org.key)
    for name in ("b", "a"):
        assert _group(api, org.key, [dashboard_id], name=name).status_code == 201
    listed = api.get("/dashboard_groups?sort=-name&fields[dashboard_groups]=name", org.key).json()
    assert [g["attributes"] for g in listed["data"]] == [{"name": "b"}, {"name": "a"}]
    assert api.get("/dashboard_groups?filter[name]=a", org.key).json()["meta"]["total"] == 1
    paged = api.get("/dashboard_groups?page[size]=1&page[number]=2&include=dashboards", org.key)
    assert [g["attributes"]["name"] for g in paged.json()["data"]] == ["b"]
    assert [(o["type"], o["id"]) for o in paged.json()["included"]] == [
        ("dashboards", dashboard_id)
    ]
    blank = _group(api, org.key, name=" ")
    assert blank.status_code == 422
    assert blank.json()["errors"][0]["source"] == {"pointer": "/data/attributes/name"}
    before = dump_tables(api.app)
    for relationship, pointer in (
        ({"data": {"type": "dashboards", "id": "x"}}, "/data/relationships/dashboards"),
        ({"data": [], "meta": {}}, "/data/relationships/dashboards"),
        ({"data": [{"type": "reports", "id": "x"}]}, "/data/relationships/dashboards/data/0"),
        (
            {"data": [{"type": "dashboards", "id": "x", "meta": {}}]},
            "/data/relationships/dashboards/data/0",
        ),
    ):
        document = resource("dashboard_groups", name="x")
        document["data"]["relationships"] = {"dashboards": relationship}
        answer = api.post("/dashboard_groups", org.key, document)
        assert answer.status_code == 422, answer.text
        assert answer.json()["errors"][0]["source"] == {"pointer": pointer}
    for member in ("attributes", "relationships"):  # present, so an object: null is malformed
        document = resource("dashboard_groups", name="x")
        document["data"][member] = None
        answer = api.post("/dashboard_groups", org.key, document)
        assert answer.status_code == 400, answer.text
        assert answer.json()["errors"][0]["source"] == {"pointer": f"/data/{member}"}
    assert dump_tables(api.app) == before


def test_viewers_read_and_only_managers_write(api):
    org = api.create_org()
    dashboard_id = _dashboard(api, org.key)
    viewer = api.create_key(org, [Permission.VIEW_DASHBOARDS])
    assert api.get(f"/dashboards/{dashboard_id}", viewer).status_code == 200
    assert _patch(api, viewer, dashboard_id, name="x").status_code == 403
    assert _create(api, viewer, name="x").status_code == 403
    assert _group(api, viewer).status_code == 403


def test_a_dashboards_answer_reads_the_names_its_reports_keep_not_their_sql(api):
    """A dashboard's answer names the snippets and filters its reports' SQL uses: each report's
    SQL may hold DATAFERRY_MAX_SQL_LENGTH characters, a dashboard thousands of reports; all their
    SQL read at once took 100 MB for a thousand of 100,000 characters."""
    org = api.create_org()
    dashboard = _dashboard(api, org.key)
    variable = api.post("/filters", org.key, resource(
        "filters", name="V", variable_name="v3", control_type="text", value_type="text"
    )).json()["data"]["id"]  # fmt: skip
    snippet = api.post(
        "/sql_snippets", org.key, resource("sql_snippets", name="s4", sql="SELECT 1")
    )
    filler = " -- " + "x" * 90_000
    for n in range(20):
        sql = f"SELECT {n} FROM [s{n}] WHERE {{[x]=v{n}}}{filler}"
        _report(api, org.key, org.sample_datasource_id, dashboard, sql=sql)
    tracemalloc.start()
    try:
        shown = api.get(f"/dashboards/{dashboard}", org.key)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert shown.status_code == 200, shown.text
    assert len(_linked(shown.json(), "reports")) == 20
    assert _linked(shown.json(), "filters") == [variable]
    assert _linked(shown.json(), "sql_snippets") == [snippet.json()["data"]["id"]]
    assert peak < 3 * len(filler), peak  # their SQL at once: more than 20 * len(filler)


def test_including_reports_bounds_their_sql(api, monkeypatch):
    org = api.create_org()
    dashboard = _dashboard(api, org.key)
    for n in range(3):
        _report(
            api, org.key, org.sample_datasource_id, dashboard, sql=f"SELECT {n} -- " + "y" * 996
        )
    path = f"/dashboards/{dashboard}?include=reports"
    monkeypatch.setattr(dashboard_resources, "MAX_INCLUDED_SQL_CHARACTERS", 2_500)
    refused = api.get(path, org.key)
    assert refused.status_code == 400, refused.text
    error = refused.json()["errors"][0]
    assert (error["code"], error["source"]) == ("include_too_large", {"parameter": "include"})
    monkeypatch.setattr(dashboard_resources, "MAX_INCLUDED_SQL_CHARACTERS", 3_500)
    assert len(api.get(path, org.key).json()["included"]) == 3
