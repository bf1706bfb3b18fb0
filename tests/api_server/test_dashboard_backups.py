"""Dashboard backups and their restore: backup → restore → backup is equal but for ids, in the same
organisation and in another one through a datasource map; no credential in a backup; each refusal
(an incomplete map, another version, an invalid entry, a differing snippet) a JSON:API error with
a pointer into the request that creates nothing; tenancy and the datasource scope of restricted
keys."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
from sqlalchemy import select

from api_server.permissions import Permission
from api_server.resources import dashboard_backups as backups_resource
from api_server.services import dashboard_backups, reports
from shared.db.models import Filter
from shared.errors import Unprocessable
from tests.support.factories import POSTGRES_DATASOURCE, dump_tables, resource
from tests.support.races import while_held

RANDOM_ID = "zzzz-zzzz-zzzz"
DASHBOARD = {
    "name": "Sales",
    "description": "Orders by day",
    "time_zone_config": {"type": "fixed", "fixed_time_zone": "Europe/Berlin"},
    "prewarm": True,
    "data_refresh_rate": 60,
    "data_refresh_anchor_time": "06:30",
    "default_parameters": {"aggregation": "week", "filters": []},
    "default_page_width": 1600,
    "color_scheme": "scheme_2",
    "filters_configuration": {"apply_immediately": False, "filter_sorting": ["country"]},
}
VISUALIZATION = {"type": "line", "series": [{"x": "day", "y": ["total"]}], "legend": None}


def _post_json(api, key: str, path: str, body: Any):
    headers = {"Authorization": f"Api {key}", "Content-Type": "application/json"}
    return api.client.post(path, content=orjson.dumps(body), headers=headers)


def _backup(api, key: str, dashboard_id: str) -> dict[str, Any]:
    answer = api.client.post(
        f"/dashboards/{dashboard_id}/backup", headers={"Authorization": f"Api {key}"}
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"
    return answer.json()


def _restore(api, key: str, backup: dict[str, Any], mapping: dict[str, str]):
    return _post_json(
        api, key, "/dashboards/restore", {"backup": backup, "datasource_map": mapping}
    )


def _created(api, path: str, key: str, document: dict[str, Any]) -> str:
    answer = api.post(path, key, document)
    assert answer.status_code == 201, answer.text
    return answer.json()["data"]["id"]


def _report(api, key: str, dashboard: str, datasource: str, **attributes: Any) -> str:
    document = resource("reports", **attributes)
    document["data"]["relationships"] = {
        "datasource": {"data": {"type": "datasources", "id": datasource}},
        "dashboard": {"data": {"type": "dashboards", "id": dashboard}},
    }
    return _created(api, "/reports", key, document)


def _snippet(api, key: str, name: str, sql: str, description: str | None = None) -> str:
    document = resource("sql_snippets", name=name, sql=sql, description=description)
    return _created(api, "/sql_snippets", key, document)


def _filter(api, org, datasource: str | None = None, **columns: Any) -> None:
    """Directly through the model (the filters resource is another change's): the columns its
    create would write."""
    columns = {"control_type": "dropdown", "value_type": "text", **columns}
    with api.app.state.sessions.begin() as session:
        session.add(Filter(organization_id=org.id, datasource_id=datasource, **columns))


def _sales_dashboard(api, org, datasource: str) -> str:
    """A dashboard with three reports on two datasources, placed on its layout (one left off),
    the snippets their SQL names (one naming another), the filters of its variables (one whose
    dynamic options SQL uses another's, static and cached), a snippet and a filter it does not
    use; locked."""
    _snippet(api, org.key, "paid", "status = 'paid' AND [recent] AND {city=city}", "Paid orders")
    _snippet(api, org.key, "recent", "day > DATE '2024-01-01'")
    _snippet(api, org.key, "unused", "SELECT 2")
    _filter(api, org, variable_name="country", name="Country", values=["DE", "FR"],
            value_names=["Germany", None], default_values=["DE"], restrict_to_options=True)  # fmt: skip
    _filter(api, org, datasource, variable_name="city", name="City", options_source="dynamic_sql",
            options_sql_query="SELECT city FROM t WHERE {region=region}")  # fmt: skip
    _filter(api, org, datasource, variable_name="region", name="Region", multiple=False,
            options_source="static_sql", options_sql_query="SELECT DISTINCT region FROM t",
            values=["EU"], value_names=[None], status="ready")  # fmt: skip
    _filter(api, org, variable_name="unused", name="Unused", control_type="text")
    dashboard = _created(api, "/dashboards", org.key, resource("dashboards", **DASHBOARD))
    first = _report(
        api, org.key, dashboard, datasource, name="Revenue", description="Per day",
        sql_query="SELECT day, sum(total) AS total FROM t WHERE [paid] GROUP BY day",
        visualization=VISUALIZATION,
    )  # fmt: skip
    second = _report(
        api, org.key, dashboard, org.sample_datasource_id, name="Orders",
        sql_query="SELECT count(*) FROM t WHERE {country=country} AND [CLUVIO_USER_EMAIL]",
    )  # fmt: skip
    _report(api, org.key, dashboard, datasource, name="Unplaced", sql_query="SELECT [nope]")
    layout = [
        {"type": "report", "id": second, "row": 0, "column": 0, "width": 50, "height": 4},
        {"type": "report", "id": first, "row": 0, "column": 50, "width": 50, "height": 4},
    ]
    changes = {"layout": layout, "is_locked": True}
    answer = api.patch(
        f"/dashboards/{dashboard}", org.key, resource("dashboards", dashboard, **changes)
    )
    assert answer.status_code == 200, answer.text
    return dashboard


def _without_ids(backup: dict[str, Any]) -> dict[str, Any]:
    """The backup with its time left out and its datasource refs as their places."""
    backup = copy.deepcopy(backup)
    backup.pop("created_at")
    place = {ds["ref"]: n for n, ds in enumerate(backup["datasources"])}
    for ds in backup["datasources"]:
        ds["ref"] = place[ds["ref"]]
    for entry in backup["reports"] + backup["filters"]:
        entry["datasource"] = place.get(entry["datasource"])
    return backup


def _identity(backup: dict[str, Any]) -> dict[str, str]:
    return {ds["ref"]: ds["ref"] for ds in backup["datasources"]}


def test_a_backup_holds_the_dashboard_its_reports_snippets_and_datasources(api):
    org = api.create_org()
    datasource = api.create_datasource(org.key, name="Shop")["id"]
    dashboard = _sales_dashboard(api, org, datasource)
    backup = _backup(api, org.key, dashboard)
    assert (backup["format"], backup["version"]) == ("dataferry.dashboard-backup", 1)
    assert backup["dashboard"] == {
        **DASHBOARD,
        "time_zone_config": {**DASHBOARD["time_zone_config"], "allowed_time_zones": None},
        "filters_configuration": {
            **DASHBOARD["filters_configuration"],
            "aggregation_options": None,
            "hidden_parameters": [],
        },
        "automatic_update_enabled": False,
        "thumbnail_enabled": False,
        "is_locked": True,
        "layout": [
            {"type": "report", "id": "report-2", "row": 0, "column": 0, "width": 50, "height": 4},
            {"type": "report", "id": "report-1", "row": 0, "column": 50, "width": 50, "height": 4},
        ],
    }
    assert [(r["key"], r["name"], r["datasource"]) for r in backup["reports"]] == [
        ("report-1", "Revenue", datasource),
        ("report-2", "Orders", org.sample_datasource_id),
        ("report-3", "Unplaced", datasource),
    ]
    assert backup["reports"][0]["visualization"] == VISUALIZATION
    assert set(backup["reports"][0]) == {
        "key", "datasource", "name", "description", "sql_query", "visualization",
    }  # fmt: skip
    # Named by the SQL, and named by those (unknown names and built-ins name nothing).
    assert backup["sql_snippets"] == [
        {
            "name": "paid",
            "description": "Paid orders",
            "sql": "status = 'paid' AND [recent] AND {city=city}",
        },
        {"name": "recent", "description": None, "sql": "day > DATE '2024-01-01'"},
    ]
    # Used by the SQL, snippets and options SQL included; a static filter's options left out.
    assert [(f["variable_name"], f["datasource"], f["values"]) for f in backup["filters"]] == [
        ("city", datasource, None),
        ("country", None, ["DE", "FR"]),
        ("region", datasource, None),
    ]
    assert backup["filters"][1] == {
        "datasource": None, "name": "Country", "variable_name": "country", "description": None,
        "control_type": "dropdown", "value_type": "text", "multiple": True,
        "default_values": ["DE"], "options_source": "manual", "options_sql_query": None,
        "values": ["DE", "FR"], "value_names": ["Germany", None], "allow_all_time": False,
        "aggregation_options": None, "restrict_to_options": True,
    }  # fmt: skip
    assert [ds["ref"] for ds in backup["datasources"]] == [datasource, org.sample_datasource_id]


def test_a_backup_holds_no_connection_attribute(api):
    org = api.create_org()
    remote = api.create_datasource(
        org.key, name="Warehouse", password="s3cret-pass", **POSTGRES_DATASOURCE
    )["id"]
    dashboard = _created(api, "/dashboards", org.key, resource("dashboards", name="d"))
    _report(api, org.key, dashboard, remote, name="r", sql_query="SELECT 1")
    backup = _backup(api, org.key, dashboard)
    assert backup["datasources"] == [
        {"ref": remote, "name": "Warehouse", "database_type": "postgres"}
    ]
    text = orjson.dumps(backup).decode()
    for secret in ("s3cret-pass", "reader", "127.0.0.1", "15432"):
        assert secret not in text


def test_backup_restore_backup_round_trips_in_the_same_organisation(api):
    org = api.create_org()
    datasource = api.create_datasource(org.key, name="Shop")["id"]
    original = _sales_dashboard(api, org, datasource)
    backup = _backup(api, org.key, original)
    snippets_before = api.get("/sql_snippets", org.key).json()["meta"]["total"]
    answer = _restore(api, org.key, backup, _identity(backup))
    assert answer.status_code == 201, answer.text
    restored = answer.json()["data"]
    assert restored["id"] != original
    assert answer.headers["location"] == f"/dashboards/{restored['id']}"
    assert restored["attributes"]["is_locked"] is True
    new_reports = restored["relationships"]["reports"]["data"]
    old_reports = api.get(f"/dashboards/{original}", org.key).json()["data"]["relationships"]
    assert len(new_reports) == 3
    assert not {r["id"] for r in new_reports} & {r["id"] for r in old_reports["reports"]["data"]}
    # The identical snippets are reused, not copied.
    assert api.get("/sql_snippets", org.key).json()["meta"]["total"] == snippets_before
    again = _backup(api, org.key, restored["id"])
    assert {**again, "created_at": None} == {**backup, "created_at": None}


def test_two_identical_restores_at_once_both_reuse_what_the_first_created(api, monkeypatch):
    """Restored into an organisation that lacks the backup's snippets and filters, twice at
    once: the second waits for the first and reuses what it created. Before, on PostgreSQL, it
    collided with the first's snippet and answered 409 calling an identical snippet different."""
    source, target = api.create_org("Source"), api.create_org("Target")
    shop = api.create_datasource(source.key, name="Shop")["id"]
    backup = _backup(api, source.key, _sales_dashboard(api, source, shop))
    their_shop = api.create_datasource(target.key, name="Shop")["id"]
    mapping = {shop: their_shop, source.sample_datasource_id: target.sample_datasource_id}
    earlier, later = while_held(
        monkeypatch,
        dashboard_backups,
        "_create_filters",
        lambda: _restore(api, target.key, backup, mapping),
        lambda: _restore(api, target.key, backup, mapping),
    )
    assert (earlier.status_code, later.status_code) == (201, 201), (earlier.text, later.text)
    snippets = api.get("/sql_snippets", target.key).json()["data"]
    assert sorted(s["attributes"]["name"] for s in snippets) == ["paid", "recent"]
    with api.app.state.sessions() as session:
        variables = session.scalars(
            select(Filter.variable_name).where(Filter.organization_id == target.id)
        )
        assert sorted(variables) == ["city", "country", "region"]


def test_restore_into_another_organisation_maps_its_datasources(api):
    source, target = api.create_org("Source"), api.create_org("Target")
    shop = api.create_datasource(source.key, name="Shop")["id"]
    backup = _backup(api, source.key, _sales_dashboard(api, source, shop))
    their_shop = api.create_datasource(target.key, name="Shop")["id"]
    mapping = {shop: their_shop, source.sample_datasource_id: target.sample_datasource_id}
    answer = _restore(api, target.key, backup, mapping)
    assert answer.status_code == 201, answer.text
    restored = answer.json()["data"]["id"]
    shown = api.get(f"/reports?filter[dashboard]={restored}&sort=name", target.key).json()
    assert [
        (r["attributes"]["name"], r["relationships"]["datasource"]["data"]["id"])
        for r in shown["data"]
    ] == [
        ("Orders", target.sample_datasource_id),
        ("Revenue", their_shop),
        ("Unplaced", their_shop),
    ]
    names = {s["attributes"]["name"] for s in api.get("/sql_snippets", target.key).json()["data"]}
    assert names == {"paid", "recent"}
    with api.app.state.sessions() as session:
        filters = session.scalars(select(Filter).where(Filter.organization_id == target.id))
        assert sorted((f.variable_name, f.datasource_id, f.values) for f in filters) == [
            ("city", their_shop, None),
            ("country", None, ["DE", "FR"]),
            ("region", their_shop, None),  # its options are computed again, not copied
        ]
        region = session.scalar(
            select(Filter).where(
                Filter.variable_name == "region", Filter.organization_id == target.id
            )
        )
        assert (region.status, region.options_execution_id is not None) == ("pending", True)
    again = _backup(api, target.key, restored)
    assert again["datasources"][0]["ref"] == their_shop
    assert _without_ids(again) == _without_ids(backup)


def test_an_incomplete_or_foreign_datasource_map_is_422_and_creates_nothing(api):
    org, other = api.create_org("Mine"), api.create_org("Other")
    datasource = api.create_datasource(org.key, name="Shop")["id"]
    backup = _backup(api, org.key, _sales_dashboard(api, org, datasource))
    before = dump_tables(api.app)
    answer = _restore(api, org.key, backup, {datasource: other.sample_datasource_id, "x/y": "z"})
    assert answer.status_code == 422, answer.text
    assert {(e["code"], e["source"]["pointer"]) for e in answer.json()["errors"]} == {
        ("datasource_not_found", f"/datasource_map/{datasource}"),
        ("datasource_map_incomplete", f"/datasource_map/{org.sample_datasource_id}"),
        ("unknown_datasource_ref", "/datasource_map/x~1y"),
    }
    # The same answer for a foreign id as for one that never existed.
    unknown = _restore(api, org.key, backup, {**_identity(backup), datasource: RANDOM_ID})
    foreign = _restore(
        api, org.key, backup, {**_identity(backup), datasource: other.sample_datasource_id}
    )
    assert unknown.status_code == 422 and unknown.content == foreign.content
    assert dump_tables(api.app) == before


def test_a_backup_of_another_format_or_version_is_422(api):
    org = api.create_org()
    dashboard = _created(api, "/dashboards", org.key, resource("dashboards", name="d"))
    backup = _backup(api, org.key, dashboard)
    for member, value in (
        ("version", 2),
        ("format", "cluvio"),
        ("version", "1"),
        ("version", True),  # pydantic's lax Literal[1] took true and 1.0 (the outside probe)
        ("version", 1.0),
    ):
        answer = _restore(api, org.key, {**backup, member: value}, {})
        assert answer.status_code == 422, answer.text
        [error] = answer.json()["errors"]
        assert (error["code"], error["source"]) == (
            "unsupported_backup_version",
            {"pointer": f"/backup/{member}"},
        )


def test_each_invalid_entry_is_refused_where_it_is_and_creates_nothing(api):
    org = api.create_org()
    datasource = api.create_datasource(org.key, name="Shop")["id"]
    backup = _backup(api, org.key, _sales_dashboard(api, org, datasource))
    broken = copy.deepcopy(backup)
    broken["dashboard"]["data_refresh_rate"] = 1
    broken["dashboard"]["layout"][0]["id"] = "report-9"
    broken["reports"][1]["sql_query"] = "   "
    broken["reports"][2]["key"] = "report-1"
    del broken["reports"][0]["name"]
    broken["reports"][0]["datasource"] = "elsewhere"
    broken["sql_snippets"][1]["name"] = "CLUVIO_X"
    broken["filters"][0]["control_type"] = "slider"
    broken["filters"][2]["variable_name"] = "country"
    broken["filters"][1]["datasource"] = "nowhere"
    broken["datasources"].append(broken["datasources"][0])
    before = dump_tables(api.app)
    answer = _restore(api, org.key, broken, _identity(backup))
    assert answer.status_code == 422, answer.text
    assert {(e["code"], e["source"]["pointer"]) for e in answer.json()["errors"]} == {
        ("duplicate_datasource_ref", "/backup/datasources/2/ref"),
    }  # the envelope first: its problems make the entries' references meaningless
    del broken["datasources"][2]
    answer = _restore(api, org.key, broken, _identity(backup))
    assert {(e["code"], e["source"]["pointer"]) for e in answer.json()["errors"]} == {
        ("invalid_attribute", "/backup/dashboard/data_refresh_rate"),
        ("missing_attribute", "/backup/reports/0/name"),
        ("invalid_sql_query", "/backup/reports/1/sql_query"),
        ("invalid_attribute", "/backup/sql_snippets/1/name"),
        ("invalid_attribute", "/backup/filters/0/control_type"),
    }
    broken["filters"][0]["control_type"] = "dropdown"
    broken["dashboard"]["data_refresh_rate"] = 60
    broken["reports"][0]["name"] = "Revenue"
    broken["reports"][1]["sql_query"] = "SELECT 1"
    broken["sql_snippets"][1]["name"] = "recent"
    answer = _restore(api, org.key, broken, _identity(backup))
    assert {(e["code"], e["source"]["pointer"]) for e in answer.json()["errors"]} == {
        ("unknown_datasource_ref", "/backup/reports/0/datasource"),
        ("duplicate_report_key", "/backup/reports/2/key"),
        ("layout_report_unknown", "/backup/dashboard/layout/0/id"),
        ("unknown_datasource_ref", "/backup/filters/1/datasource"),
        ("duplicate_filter", "/backup/filters/2/variable_name"),
    }
    assert dump_tables(api.app) == before


def test_a_differing_snippet_is_409_and_an_identical_one_is_reused(api):
    source, target = api.create_org("Source"), api.create_org("Target")
    shop = api.create_datasource(source.key, name="Shop")["id"]
    backup = _backup(api, source.key, _sales_dashboard(api, source, shop))
    mapping = {
        shop: target.sample_datasource_id,
        source.sample_datasource_id: target.sample_datasource_id,
    }
    _snippet(api, target.key, "recent", "day > DATE '2024-01-01'")  # identical: reused
    differing = _snippet(api, target.key, "paid", "status = 'settled'", "Paid orders")
    before = dump_tables(api.app)
    answer = _restore(api, target.key, backup, mapping)
    assert answer.status_code == 409, answer.text
    [error] = answer.json()["errors"]
    assert (error["code"], error["source"]) == (
        "sql_snippet_conflict",
        {"pointer": "/backup/sql_snippets/0"},
    )
    assert dump_tables(api.app) == before
    fixed = resource("sql_snippets", differing, sql="status = 'paid' AND [recent] AND {city=city}")
    assert api.patch(f"/sql_snippets/{differing}", target.key, fixed).status_code == 200
    assert _restore(api, target.key, backup, mapping).status_code == 201
    assert api.get("/sql_snippets", target.key).json()["meta"]["total"] == 2


def test_a_backup_whose_snippets_form_a_cycle_is_422_at_the_snippet(api):
    source, target = api.create_org("Source"), api.create_org("Target")
    shop = api.create_datasource(source.key, name="Shop")["id"]
    backup = _backup(api, source.key, _sales_dashboard(api, source, shop))
    names = [snippet["name"] for snippet in backup["sql_snippets"]]
    assert set(names) == {"paid", "recent"}
    backup["sql_snippets"][names.index("recent")]["sql"] = "day > DATE '2024-01-01' AND [paid]"
    mapping = {
        shop: target.sample_datasource_id,
        source.sample_datasource_id: target.sample_datasource_id,
    }
    before = dump_tables(api.app)
    answer = _restore(api, target.key, backup, mapping)
    assert answer.status_code == 422, answer.text
    [error] = answer.json()["errors"]
    assert error["code"] == "sql_snippet_cycle"
    assert error["source"]["pointer"] in {f"/backup/sql_snippets/{i}/sql" for i in range(2)}
    assert dump_tables(api.app) == before


def test_a_differing_filter_is_409_and_an_identical_one_is_reused(api):
    source, target = api.create_org("Source"), api.create_org("Target")
    shop = api.create_datasource(source.key, name="Shop")["id"]
    backup = _backup(api, source.key, _sales_dashboard(api, source, shop))
    their_shop = api.create_datasource(target.key, name="Shop")["id"]
    mapping = {shop: their_shop, source.sample_datasource_id: target.sample_datasource_id}
    # The same definition, whatever options its static SQL last gave: reused.
    _filter(api, target, their_shop, variable_name="region", name="Region", multiple=False,
            options_source="static_sql", options_sql_query="SELECT DISTINCT region FROM t",
            values=["US"], value_names=["United States"])  # fmt: skip
    # The same, but on another datasource: a conflict.
    _filter(api, target, target.sample_datasource_id, variable_name="city", name="City",
            options_source="dynamic_sql", options_sql_query="SELECT city FROM t WHERE {region=region}")  # fmt: skip
    before = dump_tables(api.app)
    answer = _restore(api, target.key, backup, mapping)
    assert answer.status_code == 409, answer.text
    [error] = answer.json()["errors"]
    assert (error["code"], error["source"]) == ("filter_conflict", {"pointer": "/backup/filters/0"})
    assert dump_tables(api.app) == before
    with api.app.state.sessions.begin() as session:
        city = session.scalar(
            select(Filter).where(
                Filter.organization_id == target.id, Filter.variable_name == "city"
            )
        )
        city.datasource_id = their_shop
    assert _restore(api, target.key, backup, mapping).status_code == 201
    with api.app.state.sessions() as session:
        rows = session.scalars(select(Filter).where(Filter.organization_id == target.id))
        assert sorted((f.variable_name, f.values) for f in rows) == [
            ("city", None), ("country", ["DE", "FR"]), ("region", ["US"]),
        ]  # fmt: skip


def test_a_filter_is_checked_as_its_create_checks_it(api):
    source, target = api.create_org("Source"), api.create_org("Target")
    shop = api.create_datasource(source.key, name="Shop")["id"]
    backup = _backup(api, source.key, _sales_dashboard(api, source, shop))
    mapping = {ref: target.sample_datasource_id for ref in _identity(backup)}
    backup["filters"][1]["allow_all_time"] = True  # only an aggregation filter allows it
    before = dump_tables(api.app)
    answer = _restore(api, target.key, backup, mapping)
    assert answer.status_code == 422, answer.text
    [error] = answer.json()["errors"]
    assert (error["code"], error["source"]) == (
        "aggregation_only",
        {"pointer": "/backup/filters/1/allow_all_time"},
    )
    assert dump_tables(api.app) == before


def test_a_failure_midway_leaves_no_row(api, monkeypatch):
    source, target = api.create_org("Source"), api.create_org("Target")
    shop = api.create_datasource(source.key, name="Shop")["id"]
    backup = _backup(api, source.key, _sales_dashboard(api, source, shop))
    mapping = {
        shop: target.sample_datasource_id,
        source.sample_datasource_id: target.sample_datasource_id,
    }
    created = reports.create_report

    def failing_third(session, principal, values, related, settings):
        if values["name"] == "Unplaced":
            raise Unprocessable("refused late", code="late")
        return created(session, principal, values, related, settings)

    monkeypatch.setattr(dashboard_backups.reports, "create_report", failing_third)
    before = dump_tables(api.app)
    answer = _restore(api, target.key, backup, mapping)
    assert (answer.status_code, answer.json()["errors"][0]["code"]) == (422, "late")
    assert dump_tables(api.app) == before  # snippets, dashboard and two reports rolled back


def test_another_organisations_dashboard_backs_up_as_a_random_id(api):
    mine, theirs = api.create_org("Mine"), api.create_org("Theirs")
    foreign = _created(api, "/dashboards", theirs.key, resource("dashboards", name="d"))
    answers = [
        api.client.post(f"/dashboards/{ident}/backup", headers={"Authorization": f"Api {mine.key}"})
        for ident in (foreign, RANDOM_ID)
    ]
    assert answers[0].status_code == 404
    assert answers[0].content == answers[1].content


def test_a_restricted_key_backs_up_and_restores_within_its_scope(api):
    org = api.create_org()
    shop = api.create_datasource(org.key, name="Shop")["id"]
    dashboard = _sales_dashboard(api, org, shop)
    scoped = api.create_key(org, [Permission.MANAGE_DASHBOARDS], [shop])
    answer = api.client.post(
        f"/dashboards/{dashboard}/backup", headers={"Authorization": f"Api {scoped}"}
    )
    assert answer.status_code == 404  # a report runs on the sample datasource, outside its scope
    backup = _backup(api, org.key, dashboard)
    refused = _restore(api, scoped, backup, _identity(backup))
    [error] = refused.json()["errors"]
    assert (error["code"], error["source"]["pointer"]) == (
        "datasource_not_found",
        f"/datasource_map/{org.sample_datasource_id}",
    )
    mapping = {ref: shop for ref in _identity(backup)}
    restored = _restore(api, scoped, backup, mapping)
    assert restored.status_code == 201, restored.text
    assert _backup(api, scoped, restored.json()["data"]["id"])["datasources"][0]["ref"] == shop


def test_viewers_neither_back_up_nor_restore(api):
    org = api.create_org()
    dashboard = _created(api, "/dashboards", org.key, resource("dashboards", name="d"))
    viewer = api.create_key(org, [Permission.VIEW_DASHBOARDS])
    backup = _backup(api, org.key, dashboard)
    headers = {"Authorization": f"Api {viewer}"}
    assert api.client.post(f"/dashboards/{dashboard}/backup", headers=headers).status_code == 403
    assert _restore(api, viewer, backup, {}).status_code == 403


def test_a_restore_body_over_its_bound_is_413(api):
    org = api.create_org()
    body = b'{"backup": "' + b"x" * backups_resource.MAX_RESTORE_BYTES + b'"}'
    answer = api.post("/dashboards/restore", org.key, body, content_type="application/json")
    assert answer.status_code == 413, answer.text


def test_a_backup_no_restore_could_take_is_409(api, monkeypatch):
    org = api.create_org()
    dashboard = _created(api, "/dashboards", org.key, resource("dashboards", name="d"))
    monkeypatch.setattr(backups_resource, "MAX_RESTORE_BYTES", 100)
    answer = api.client.post(
        f"/dashboards/{dashboard}/backup", headers={"Authorization": f"Api {org.key}"}
    )
    assert answer.status_code == 409, answer.text
    assert answer.json()["errors"][0]["code"] == "backup_too_large"


@pytest.mark.parametrize("body", [[], {"backup": []}, {"backup": {}, "extra": 1}])
def test_a_malformed_restore_request_is_422(api, body):
    org = api.create_org()
    answer = _post_json(api, org.key, "/dashboards/restore", body)
    assert answer.status_code == 422, answer.text


@pytest.mark.parametrize(
    ("member", "code"),
    [
        ("reports", "invalid_type"),
        ("sql_snippets", "invalid_type"),
        ("filters", "invalid_type"),
        ("datasources", "invalid_attribute"),
    ],
)
def test_more_entries_of_a_kind_than_one_restore_takes_is_422_and_creates_nothing(
    api, member, code
):
    """The bound each kind is documented with (maxItems): at it, the entries are read one by one
    (here they repeat, which is another error); past it, the array is refused as a whole."""
    org = api.create_org()
    datasource = api.create_datasource(org.key, name="Shop")["id"]
    backup = _backup(api, org.key, _sales_dashboard(api, org, datasource))
    before = dump_tables(api.app)
    whole_array_refused = (code, f"/backup/{member}")
    for count in (backups_resource.MAX_ENTRIES, backups_resource.MAX_ENTRIES + 1):
        repeated = copy.deepcopy(backup)
        repeated[member] = [backup[member][0]] * count
        answer = _restore(api, org.key, repeated, _identity(backup))
        assert answer.status_code == 422, answer.text
        errors = answer.json()["errors"]  # at the bound, more than listed: one counts the rest
        problems = {(e["code"], e["source"]["pointer"]) for e in errors if "source" in e}
        past_the_bound = count > backups_resource.MAX_ENTRIES
        assert (whole_array_refused in problems) is past_the_bound, problems
    assert dump_tables(api.app) == before


def test_a_datasource_map_longer_than_one_restore_takes_is_422(api):
    org = api.create_org()
    datasource = api.create_datasource(org.key, name="Shop")["id"]
    backup = _backup(api, org.key, _sales_dashboard(api, org, datasource))
    mapping = {f"ref-{n}": datasource for n in range(backups_resource.MAX_ENTRIES + 1)}
    answer = _restore(api, org.key, backup, mapping)
    assert answer.status_code == 422, answer.text
    assert [(e["code"], e["source"]["pointer"]) for e in answer.json()["errors"]] == [
        ("invalid_type", "/datasource_map")
    ]
