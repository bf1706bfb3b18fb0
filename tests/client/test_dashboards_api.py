"""The Python client's reports, dashboards, dashboard groups and filters against real servers.

One organisation of its own on the session's region, so that filter variables and listings are
this module's alone; about eight small executions (report and dashboard runs, a static filter's SQL
and its refresh, dynamic options).
"""

from __future__ import annotations

import asyncio
from datetime import datetime

import pytest
from dataferry_client import (
    AsyncClient,
    Conflict,
    Dashboard,
    ExecutionStatus,
    Filter,
    FilterOptions,
    NotFound,
    Report,
    Unprocessable,
)

from tests.client.conftest import Organization, new_organization
from tests.support.processes import Region

pytestmark = pytest.mark.e2e

PICKED = "SELECT order_id, status FROM orders WHERE {order_id=picked} ORDER BY order_id"
COUNTED = "SELECT count(*) AS n FROM ([dash_orders]) AS o WHERE {order_id=counted}"
CITIES = (
    "SELECT city FROM (VALUES ('de', 'Berlin'), ('de', 'Bonn'), ('fr', 'Paris')) AS t(country, "
    "city) WHERE {country=country} ORDER BY city"
)


@pytest.fixture(scope="module")
def org(client_region: Region) -> Organization:
    """Overrides the session's ``org`` (and so ``dataferry``'s) in this module."""
    return new_organization(client_region, "Dashboards")


def _item(report_id: str) -> dict[str, object]:
    return {"type": "report", "id": report_id, "row": 0, "column": 0, "width": 50, "height": 4}


def _picked(*order_ids: int) -> dict[str, object]:
    return {"filters": [{"variable_name": "picked", "selected_values": list(order_ids)}]}


def test_reports_every_method_with_relationships_as_ids(dataferry, org):
    snippet = dataferry.snippets.create("dash_orders", "SELECT order_id FROM orders")
    counted = dataferry.filters.create("Orders", "counted", "text", "number")
    board = dataferry.dashboards.create("Reports' board")
    report = dataferry.reports.create(
        "Counted", COUNTED, org.sample_id, dashboard_id=board.id, visualization={"t": "x"}
    )
    assert isinstance(report, Report) and report.name == "Counted"
    assert (report.sql_query, report.visualization, report.description) == (
        COUNTED,
        {"t": "x"},
        None,
    )
    assert (report.datasource_id, report.dashboard_id) == (org.sample_id, board.id)
    assert (report.filter_ids, report.sql_snippet_ids) == ([counted.id], [snippet.id])
    assert isinstance(report.created_at, datetime) and report.created_at.tzinfo is not None
    other = dataferry.reports.create("Another", "SELECT 1 AS one", org.sample_id)
    assert other.dashboard_id is None and other.filter_ids == []
    assert dataferry.reports.get(report.id) == report
    assert [r.id for r in dataferry.reports.list(sort="-name")] == [report.id, other.id]
    assert [r.id for r in dataferry.reports.list(dashboard=board.id)] == [report.id]
    assert [r.id for r in dataferry.reports.list(name="Another")] == [other.id]
    with pytest.raises(ValueError, match="dashboard is None"):
        dataferry.reports.list(dashboard=None)  # it would match nothing, not "no dashboard"
    moved = dataferry.reports.update(report.id, description="d", dashboard_id=None)
    assert (moved.description, moved.dashboard_id, moved.name) == ("d", None, "Counted")
    assert dataferry.reports.update(report.id, dashboard_id=board.id).dashboard_id == board.id
    assert dataferry.reports.update(other.id, name="Renamed").dashboard_id is None
    for report_id in (report.id, other.id):
        dataferry.reports.delete(report_id)
        with pytest.raises(NotFound):
            dataferry.reports.get(report_id)
    dataferry.dashboards.delete(board.id)
    dataferry.filters.delete(counted.id)
    dataferry.snippets.delete(snippet.id)


def test_a_report_run_answers_an_execution_whose_result_is_fetched(dataferry, org):
    board = dataferry.dashboards.create("Runs", data_refresh_rate=5)
    report = dataferry.reports.create("Run me", PICKED, org.sample_id, dashboard_id=board.id)
    run = dataferry.reports.run(report.id, _picked(1, 2, 3), wait=30)
    assert run.status is ExecutionStatus.COMPLETED and run.reused is False
    assert run.report_id == report.id and run.grant is not None  # run-and-wait's grant
    table = dataferry.result(run).to_arrow()
    assert table.column("order_id").to_pylist() == [1, 2, 3]
    assert dataferry.executions.result(run.id).to_arrow().equals(table)
    # Within data_refresh_rate the dashboard's run reuses it; refresh runs afresh.
    [reused] = dataferry.dashboards.run(board.id, _picked(1, 2, 3))
    assert (reused.id, reused.reused, reused.report_id) == (run.id, True, report.id)
    [fresh] = dataferry.dashboards.run(board.id, _picked(1, 2, 3), refresh=True)
    assert fresh.id != run.id and fresh.reused is False
    done = dataferry.executions.wait(fresh.id, timeout=30)
    assert dataferry.result(done).to_arrow().equals(table)
    dataferry.dashboards.delete(board.id)
    with pytest.raises(NotFound):  # its reports went with it
        dataferry.reports.get(report.id)


def test_dashboards_every_method_backup_and_restore(dataferry, org):
    board = dataferry.dashboards.create("Sales", description="s", default_page_width=1200)
    assert isinstance(board, Dashboard) and board.name == "Sales"
    assert (board.description, board.default_page_width, board.layout) == ("s", 1200, [])
    assert board.is_locked is False and board.default_parameters == {}
    assert board.published is True and board.thumbnail_created_at is None
    report = dataferry.reports.create(
        "Revenue", "SELECT 1 AS one", org.sample_id, dashboard_id=board.id
    )
    placed = dataferry.dashboards.update(board.id, layout=[_item(report.id)], data_refresh_rate=10)
    assert placed.layout == [_item(report.id)] and placed.data_refresh_rate == 10
    assert placed.report_ids == [report.id] and placed.updated_at >= board.updated_at
    assert dataferry.dashboards.get(board.id) == placed
    backup = dataferry.dashboards.backup(board.id)
    assert backup["format"] == "dataferry.dashboard-backup" and backup["version"] == 1
    assert [r["name"] for r in backup["reports"]] == ["Revenue"]
    assert backup["datasources"][0]["ref"] == org.sample_id
    restored = dataferry.dashboards.restore(backup)  # each datasource onto itself
    assert restored.id != board.id and restored.name == "Sales"
    [copy] = restored.report_ids
    assert dataferry.reports.get(copy).datasource_id == org.sample_id
    assert restored.layout == [_item(copy)]
    assert [d.id for d in dataferry.dashboards.list(name="Sales", sort="created_at")] == [
        board.id,
        restored.id,
    ]
    assert dataferry.dashboards.update(board.id, is_locked=True).is_locked is True
    with pytest.raises(Conflict) as locked:
        dataferry.dashboards.update(board.id, name="Changed")
    assert locked.value.status == 409 and locked.value.code == "dashboard_locked"
    dataferry.dashboards.update(board.id, is_locked=False)
    for dashboard_id in (board.id, restored.id):
        dataferry.dashboards.delete(dashboard_id)
        with pytest.raises(NotFound):
            dataferry.dashboards.get(dashboard_id)


def test_dashboard_groups_every_method(dataferry):
    first, second = (dataferry.dashboards.create(name) for name in ("First", "Second"))
    group = dataferry.dashboard_groups.create("Team", dashboard_ids=[first.id], description="t")
    assert (group.name, group.description, group.dashboard_ids) == ("Team", "t", [first.id])
    assert dataferry.dashboards.get(first.id).dashboard_group_ids == [group.id]
    other = dataferry.dashboard_groups.create("Archive")
    assert other.dashboard_ids == []
    assert dataferry.dashboard_groups.get(group.id) == group
    assert [g.id for g in dataferry.dashboard_groups.list(sort="name")] == [other.id, group.id]
    assert [g.id for g in dataferry.dashboard_groups.list(name="Team")] == [group.id]
    renamed = dataferry.dashboard_groups.update(group.id, name="Crew")
    assert (renamed.name, renamed.dashboard_ids) == ("Crew", [first.id])  # members unchanged
    moved = dataferry.dashboard_groups.update(group.id, dashboard_ids=[second.id, first.id])
    assert sorted(moved.dashboard_ids) == sorted([first.id, second.id])
    assert dataferry.dashboard_groups.update(group.id, dashboard_ids=[]).dashboard_ids == []
    for group_id in (group.id, other.id):
        dataferry.dashboard_groups.delete(group_id)
        with pytest.raises(NotFound):
            dataferry.dashboard_groups.get(group_id)
    for dashboard in (first, second):
        dataferry.dashboards.delete(dashboard.id)


def test_filters_every_method_and_their_options(dataferry, org):
    country = dataferry.filters.create(
        "Country",
        "country",
        "dropdown",
        "text",
        values=["de", "fr", "it"],
        value_names=["Germany", None, "Italy"],
    )
    assert isinstance(country, Filter) and country.variable_name == "country"
    assert (country.options_source, country.multiple, country.datasource_id) == (
        "manual",
        True,
        None,
    )
    first = dataferry.filters.options(country.id, page_size=2)
    assert first == FilterOptions(["de", "fr"], ["Germany", None], 3, {"number": 1, "size": 2})
    assert dataferry.filters.options(country.id, page=2, page_size=2).values == ["it"]
    assert dataferry.filters.options(country.id, search="ITAL").values == ["it"]
    on_sample = dataferry.filters.update(country.id, datasource_id=org.sample_id, name="Land")
    assert (on_sample.name, on_sample.datasource_id) == ("Land", org.sample_id)
    assert dataferry.filters.update(country.id, datasource_id=None).datasource_id is None
    assert dataferry.filters.update(country.id, default_values=["de"]).name == "Land"

    static = dataferry.filters.create(
        "Status",
        "status",
        "dropdown",
        "text",
        datasource_id=org.sample_id,
        options_source="static_sql",
        options_sql_query="SELECT DISTINCT status FROM orders ORDER BY 1",
    )
    assert static.status == "pending" and static.datasource_id == org.sample_id
    dataferry.executions.wait(static.options_execution_id, timeout=30)
    statuses = dataferry.filters.options(static.id)
    assert statuses.values == ["cancelled", "completed", "returned", "shipped"]
    assert dataferry.filters.get(static.id).status == "ready"
    refreshed = dataferry.filters.refresh(static.id)
    assert refreshed.status == "pending"
    assert refreshed.options_execution_id != static.options_execution_id
    dataferry.executions.wait(refreshed.options_execution_id, timeout=30)

    dynamic = dataferry.filters.create(
        "City",
        "city",
        "dropdown",
        "text",
        datasource_id=org.sample_id,
        options_source="dynamic_sql",
        options_sql_query=CITIES,
    )
    german = {"filters": [{"variable_name": "country", "selected_values": ["de"]}]}
    assert dataferry.filters.options(dynamic.id, parameters=german).values == ["Berlin", "Bonn"]
    with pytest.raises(Unprocessable) as invalid:
        dataferry.filters.options(dynamic.id, parameters={"tz": "Mars"})
    assert (invalid.value.code, invalid.value.pointer) == ("invalid_time_zone", "/parameters/tz")

    assert [f.variable_name for f in dataferry.filters.list(sort="variable_name")] == [
        "city",
        "country",
        "status",
    ]
    assert [f.id for f in dataferry.filters.list(options_source="static_sql")] == [static.id]
    with pytest.raises(Conflict) as taken:
        dataferry.filters.create("Again", "country", "text", "text")
    assert taken.value.code == "duplicate_variable_name"
    for filter_id in (country.id, static.id, dynamic.id):
        dataferry.filters.delete(filter_id)
        with pytest.raises(NotFound):
            dataferry.filters.get(filter_id)


def test_refusals_are_typed_with_code_and_pointer(dataferry):
    with pytest.raises(Unprocessable) as unknown_datasource:
        dataferry.reports.create("Nowhere", "SELECT 1", "zzzz-zzzz-zzzz")
    assert unknown_datasource.value.status == 422
    assert unknown_datasource.value.code == "datasource_not_found"
    assert unknown_datasource.value.pointer == "/data/relationships/datasource"
    with pytest.raises(NotFound) as unknown:
        dataferry.dashboards.backup("zzzz-zzzz-zzzz")
    assert unknown.value.status == 404 and unknown.value.detail
    with pytest.raises(NotFound):
        dataferry.filters.options("zzzz-zzzz-zzzz")
    with pytest.raises(Unprocessable) as unsupported:
        dataferry.dashboards.restore(
            {"format": "dataferry.dashboard-backup", "version": 2, "dashboard": {"name": "x"}}
        )
    assert unsupported.value.code == "unsupported_backup_version"
    assert unsupported.value.pointer == "/backup/version"


def test_async_client_every_namespace(org):
    async def scenario() -> None:
        async with AsyncClient(org.api_url, org.api_key, data_url=org.data_url) as client:
            board = await client.dashboards.create("Async board")
            report = await client.reports.create(
                "Async report", "SELECT 42 AS n", org.sample_id, dashboard_id=board.id
            )
            assert [r.id for r in await client.reports.list(dashboard=board.id)] == [report.id]
            assert (await client.reports.get(report.id)).sql_query == "SELECT 42 AS n"
            renamed = await client.reports.update(report.id, name="Renamed")
            assert renamed.name == "Renamed" and renamed.dashboard_id == board.id
            execution = await client.reports.run(report.id, wait=30)
            assert execution.status is ExecutionStatus.COMPLETED
            table = await (await client.result(execution)).to_arrow()
            assert table["n"].to_pylist() == [42]
            [run] = await client.dashboards.run(board.id)
            assert run.report_id == report.id
            await client.executions.wait(run.id, timeout=30)
            updated = await client.dashboards.update(board.id, description="a")
            assert updated.description == "a" and updated.report_ids == [report.id]
            assert (await client.dashboards.get(board.id)).id == board.id
            assert board.id in [d.id for d in await client.dashboards.list()]
            backup = await client.dashboards.backup(board.id)
            copy = await client.dashboards.restore(backup, {org.sample_id: org.sample_id})
            assert copy.name == "Async board" and len(copy.report_ids) == 1

            group = await client.dashboard_groups.create("Async", dashboard_ids=[board.id])
            assert (await client.dashboard_groups.get(group.id)).dashboard_ids == [board.id]
            assert [g.id for g in await client.dashboard_groups.list(name="Async")] == [group.id]
            emptied = await client.dashboard_groups.update(group.id, dashboard_ids=[])
            assert emptied.dashboard_ids == []
            await client.dashboard_groups.delete(group.id)

            region = await client.filters.create(
                "Region", "async_region", "dropdown", "text", values=["n", "s"]
            )
            assert (await client.filters.options(region.id, search="s")).values == ["s"]
            assert (await client.filters.get(region.id)).values == ["n", "s"]
            assert [f.id for f in await client.filters.list(variable_name="async_region")] == [
                region.id
            ]
            narrowed = await client.filters.update(region.id, values=["n"], value_names=["North"])
            assert (await client.filters.options(region.id)).value_names == ["North"]
            assert narrowed.values == ["n"]
            with pytest.raises(Conflict) as not_static:
                await client.filters.refresh(region.id)
            assert not_static.value.code == "not_static_sql"
            await client.filters.delete(region.id)

            await client.reports.delete(report.id)
            for dashboard_id in (board.id, copy.id):
                await client.dashboards.delete(dashboard_id)
            with pytest.raises(NotFound):
                await client.dashboards.get(board.id)

    asyncio.run(scenario())
