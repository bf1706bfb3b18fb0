"""An organisation may have at most DATAFERRY_MAX_OBJECTS_PER_KIND objects of each kind: a create
beyond is a 409 naming the kind's limit and writes nothing, a restore that would pass a limit
creates nothing, and another organisation is not held back."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from shared.settings import Settings
from tests.support.factories import Api, Org, dump_tables

LIMIT = 3


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"max_objects_per_kind": LIMIT})


def _document(kind: str, attributes: dict[str, Any], **related: str) -> dict[str, Any]:
    data: dict[str, Any] = {"type": kind, "attributes": attributes}
    if related:
        data["relationships"] = {
            name: {"data": {"type": f"{name}s", "id": related_id}}
            for name, related_id in related.items()
        }
    return {"data": data}


def _new(kind: str, org: Org, n: int, **related: str) -> dict[str, Any]:
    """The document of the ``n``th new object of ``kind``, unique where names must be."""
    attributes: dict[str, Any] = {
        "filters": {"name": f"f{n}", "variable_name": f"v{n}", "control_type": "text",
                    "value_type": "text"},
        "sql_snippets": {"name": f"s{n}", "sql": "SELECT 1"},
        "dashboards": {"name": f"d{n}"},
        "reports": {"name": f"r{n}", "sql_query": "SELECT 1"},
        "dashboard_groups": {"name": f"g{n}"},
    }[kind]  # fmt: skip
    if kind == "reports":
        related = {"datasource": org.sample_datasource_id, **related}
    return _document(kind, attributes, **related)


@pytest.mark.parametrize(
    "kind", ["filters", "sql_snippets", "dashboards", "reports", "dashboard_groups"]
)
def test_a_create_beyond_the_kinds_limit_is_409_and_writes_nothing(api: Api, kind: str) -> None:
    org, other = api.create_org("A"), api.create_org("B")
    for n in range(LIMIT):
        created = api.post(f"/{kind}", org.key, _new(kind, org, n))
        assert created.status_code == 201, created.text
    before = dump_tables(api.app)
    refused = api.post(f"/{kind}", org.key, _new(kind, org, LIMIT))
    assert refused.status_code == 409, refused.text
    error = refused.json()["errors"][0]
    assert error["code"] == f"{kind.removesuffix('s')}_limit_reached"
    assert f"already has {LIMIT}" in error["detail"]
    assert dump_tables(api.app) == before
    assert api.post(f"/{kind}", other.key, _new(kind, other, 0)).status_code == 201
    deleted = api.get(f"/{kind}", org.key).json()["data"][0]["id"]
    assert api.delete(f"/{kind}/{deleted}", org.key).status_code == 204
    assert api.post(f"/{kind}", org.key, _new(kind, org, LIMIT)).status_code == 201


@pytest.mark.parametrize("kind", ["sql_snippets", "filters", "reports", "dashboards"])
def test_a_restore_that_would_pass_a_limit_creates_nothing(api: Api, kind: str) -> None:
    """The backup holds a dashboard, two reports, the two snippets and two filters their SQL
    names; the organisation it is restored into has room for all but one more of ``kind``."""
    source, target = api.create_org("Source"), api.create_org("Target")
    dashboard = api.post("/dashboards", source.key, _new("dashboards", source, 0))
    dashboard_id = dashboard.json()["data"]["id"]
    for n in range(2):
        snippet = _document("sql_snippets", {"name": f"s{n}", "sql": "SELECT 1 AS x"})
        assert api.post("/sql_snippets", source.key, snippet).status_code == 201
        assert api.post("/filters", source.key, _new("filters", source, n)).status_code == 201
        report = _new("reports", source, n, dashboard=dashboard_id)
        report["data"]["attributes"]["sql_query"] = f"SELECT x FROM ([s{n}]) WHERE {{[x]=v{n}}}"
        assert api.post("/reports", source.key, report).status_code == 201, report
    backup = api.client.post(
        f"/dashboards/{dashboard_id}/backup", headers={"Authorization": f"Api {source.key}"}
    ).json()
    assert (len(backup["sql_snippets"]), len(backup["filters"])) == (2, 2)
    for n in range(LIMIT if kind == "dashboards" else LIMIT - 1):
        assert api.post(f"/{kind}", target.key, _new(kind, target, 100 + n)).status_code == 201
    mapping = {source.sample_datasource_id: target.sample_datasource_id}
    before = dump_tables(api.app)
    restored = api.client.post(
        "/dashboards/restore",
        content=orjson.dumps({"backup": backup, "datasource_map": mapping}),
        headers={"Authorization": f"Api {target.key}", "Content-Type": "application/json"},
    )
    assert restored.status_code == 409, restored.text
    assert restored.json()["errors"][0]["code"] == f"{kind.removesuffix('s')}_limit_reached"
    assert dump_tables(api.app) == before
