"""SQL snippets: the JSON:API resource, tenancy, permissions, and ``[name]`` expansion in an
execution. Expansion itself is tested in process in tests/sql_templating/test_snippets.py."""

from __future__ import annotations

import orjson
import pytest
from sqlalchemy import select

from api_server.permissions import Permission
from shared.db.models import Execution, SqlSnippet
from sql_templating.snippets import MAX_DEPTH
from tests.support.factories import dump_tables, resource


def _create(api, key, name, sql, **extra):
    return api.post("/sql_snippets", key, resource("sql_snippets", name=name, sql=sql, **extra))


def _run(api, key, datasource_id, sql):
    return api.client.post(
        f"/datasources/{datasource_id}/executions",
        content=orjson.dumps({"sql_query": sql, "parameters": {}}),
        headers={"Authorization": f"Api {key}", "Content-Type": "application/json"},
    )


def _expanded_sql(api, execution_id):
    with api.app.state.sessions() as session:
        return session.scalar(select(Execution.expanded_sql).where(Execution.id == execution_id))


# ---------------------------------------------------------------------------- the resource


def test_create_read_update_delete(api):
    org = api.create_org()
    created = _create(api, org.key, "active_customers", "SELECT * FROM customers", description="d")
    assert created.status_code == 201, created.text
    data = created.json()["data"]
    assert data["type"] == "sql_snippets"
    assert set(data["attributes"]) == {"name", "description", "sql", "created_at", "updated_at"}
    assert data["relationships"]["sql_snippet"]["data"] == {
        "type": "sql_snippets",
        "id": data["id"],
    }
    assert created.headers["location"] == f"/sql_snippets/{data['id']}"

    shown = api.get(f"/sql_snippets/{data['id']}", org.key).json()["data"]
    assert shown["attributes"]["sql"] == "SELECT * FROM customers"

    patched = api.patch(
        f"/sql_snippets/{data['id']}",
        org.key,
        resource("sql_snippets", data["id"], sql="SELECT 1"),
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["data"]["attributes"]["name"] == "active_customers"
    assert patched.json()["data"]["attributes"]["sql"] == "SELECT 1"

    listed = api.get("/sql_snippets?filter[name]=active_customers", org.key).json()
    assert listed["meta"]["total"] == 1
    assert api.delete(f"/sql_snippets/{data['id']}", org.key).status_code == 204
    assert api.get(f"/sql_snippets/{data['id']}", org.key).status_code == 404


@pytest.mark.parametrize(
    ("attributes", "pointer"),
    [
        ({"name": "bad name", "sql": "1"}, "/data/attributes/name"),
        ({"name": "1abc", "sql": "1"}, "/data/attributes/name"),
        ({"name": "CLUVIO_USER_EMAIL", "sql": "1"}, "/data/attributes/name"),
        ({"name": "ok", "sql": "   "}, "/data/attributes/sql"),
        ({"name": "ok"}, "/data/attributes/sql"),
        ({"name": "ok", "sql": 5}, "/data/attributes/sql"),
        ({"name": "ok", "sql": "1", "created_at": "x"}, "/data/attributes/created_at"),
        ({"name": "ok", "sql": "1", "colour": "red"}, "/data/attributes/colour"),
    ],
)
def test_invalid_snippets_are_422_with_a_pointer_and_store_nothing(api, attributes, pointer):
    org = api.create_org()
    before = dump_tables(api.app)
    response = api.post(
        "/sql_snippets", org.key, {"data": {"type": "sql_snippets", "attributes": attributes}}
    )
    assert response.status_code == 422, response.text
    assert pointer in [e["source"]["pointer"] for e in response.json()["errors"]]
    assert dump_tables(api.app) == before


def test_duplicate_name_is_409_and_the_first_survives(api):
    org = api.create_org()
    first = _create(api, org.key, "x", "SELECT 1").json()["data"]
    duplicate = _create(api, org.key, "x", "SELECT 2")
    assert duplicate.status_code == 409
    assert duplicate.json()["errors"][0]["code"] == "sql_snippet_name_taken"
    assert (
        api.get(f"/sql_snippets/{first['id']}", org.key).json()["data"]["attributes"]["sql"]
        == "SELECT 1"
    )


def test_snippets_of_another_organisation_are_invisible_and_never_expanded(api):
    ours, theirs = api.create_org("ours"), api.create_org("theirs")
    secret = _create(api, theirs.key, "secret", "SELECT 'their secret'").json()["data"]
    assert api.get(f"/sql_snippets/{secret['id']}", ours.key).status_code == 404
    assert api.get("/sql_snippets", ours.key).json()["meta"]["total"] == 0
    patch = resource("sql_snippets", secret["id"], sql="SELECT 'hijacked'")
    assert api.patch(f"/sql_snippets/{secret['id']}", ours.key, patch).status_code == 404
    assert api.delete(f"/sql_snippets/{secret['id']}", ours.key).status_code == 404
    run = _run(api, ours.key, ours.sample_datasource_id, "SELECT * FROM ([secret])")
    assert run.status_code == 422
    assert run.json()["errors"][0]["code"] == "unknown_sql_snippet"
    shown = api.get(f"/sql_snippets/{secret['id']}", theirs.key).json()["data"]
    assert shown["attributes"]["sql"] == "SELECT 'their secret'"


def test_managing_needs_manage_dashboards_and_reading_view_dashboards(api):
    org = api.create_org()
    snippet = _create(api, org.key, "s", "SELECT 1").json()["data"]
    viewer = api.create_key(org, [Permission.VIEW_DASHBOARDS])
    datasources_only = api.create_key(org, [Permission.MANAGE_DATASOURCES])
    assert api.get(f"/sql_snippets/{snippet['id']}", viewer).status_code == 200
    assert _create(api, viewer, "t", "SELECT 2").status_code == 403
    patch = resource("sql_snippets", snippet["id"], sql="SELECT 3")
    assert api.patch(f"/sql_snippets/{snippet['id']}", viewer, patch).status_code == 403
    assert api.delete(f"/sql_snippets/{snippet['id']}", viewer).status_code == 403
    assert api.get("/sql_snippets", datasources_only).status_code == 403
    assert api.get(f"/sql_snippets/{snippet['id']}", None).status_code == 401


# ---------------------------------------------------------------------------- expansion


def test_execution_records_the_expanded_sql(api):
    org = api.create_org()
    _create(api, org.key, "big_orders", "SELECT * FROM orders WHERE amount > 100")
    _create(api, org.key, "counted", "SELECT count(*) FROM ([big_orders])")
    run = _run(api, org.key, org.sample_datasource_id, "[counted] -- [not_a_snippet]")
    assert run.status_code == 200, run.text
    assert _expanded_sql(api, run.json()["data"]["id"]) == (
        "SELECT count(*) FROM (SELECT * FROM orders WHERE amount > 100) -- [not_a_snippet]"
    )


def _chain(api, key, depth):
    """Snippets s1 → s2 → … → s<depth>, the last one plain SQL."""
    for level in range(depth, 0, -1):
        sql = "SELECT 1" if level == depth else f"SELECT * FROM ([s{level + 1}])"
        assert _create(api, key, f"s{level}", sql).status_code == 201


def test_nesting_ten_deep_works_and_eleven_is_422(api):
    org = api.create_org()
    _chain(api, org.key, MAX_DEPTH + 1)
    ok = _run(api, org.key, org.sample_datasource_id, "SELECT * FROM ([s2])")  # 10 levels
    assert ok.status_code == 200, ok.text
    assert _expanded_sql(api, ok.json()["data"]["id"]).count("SELECT") == MAX_DEPTH + 1
    before = dump_tables(api.app)["executions"]
    too_deep = _run(api, org.key, org.sample_datasource_id, "SELECT * FROM ([s1])")  # 11 levels
    assert too_deep.status_code == 422
    error = too_deep.json()["errors"][0]
    assert (error["code"], error["source"]["pointer"]) == ("sql_snippet_too_deep", "/sql_query")
    assert dump_tables(api.app)["executions"] == before


def test_a_snippet_that_would_refer_to_itself_is_not_saved(api):
    """The outside probe's case: the cycle was saved, and every SQL naming it failed after."""
    org = api.create_org()
    _create(api, org.key, "a", "SELECT * FROM ([b])")  # b unknown yet: a query would say so
    c = _create(api, org.key, "c", "SELECT [current_date], * FROM ([a])").json()["data"]["id"]
    _create(api, org.key, "d", "SELECT * FROM ([c])")
    before = dump_tables(api.app)
    for name, sql, path in (
        ("b", "SELECT * FROM ([a])", "b → a → b"),
        ("self", "SELECT [self]", "self → self"),
    ):
        refused = api.post("/sql_snippets", org.key, resource("sql_snippets", name=name, sql=sql))
        assert refused.status_code == 422, refused.text
        error = refused.json()["errors"][0]
        assert (error["code"], error["source"]["pointer"]) == (
            "sql_snippet_cycle",
            "/data/attributes/sql",
        )
        assert path in error["detail"]
    # Through a change of its SQL, or of its name (a renamed c is the b that a names): the
    # error points at what the change sent (a rename pointed at the SQL it did not send).
    for changes, path, attribute in (
        ({"sql": "[d]"}, "c → d → c", "sql"),
        ({"name": "b"}, "b → a → b", "name"),
        ({"name": "b", "sql": "[a]"}, "b → a → b", "sql"),
    ):
        changed = api.patch(f"/sql_snippets/{c}", org.key, resource("sql_snippets", c, **changes))
        assert changed.status_code == 422, changed.text
        error = changed.json()["errors"][0]
        assert path in error["detail"]
        assert error["source"]["pointer"] == f"/data/attributes/{attribute}"
    # A taken name is the 409 it is, whatever the SQL would name.
    taken = _create(api, org.key, "a", "SELECT [a]")
    assert (taken.status_code, taken.json()["errors"][0]["code"]) == (409, "sql_snippet_name_taken")
    assert dump_tables(api.app) == before
    assert _create(api, org.key, "b", "SELECT 2").status_code == 201  # no cycle: saved


def test_a_cycle_stored_before_is_422_naming_it(api):
    """Stored by an earlier version, which did not refuse it: expansion names it."""
    org = api.create_org()
    _create(api, org.key, "a", "SELECT * FROM ([b])")
    b = _create(api, org.key, "b", "SELECT 1").json()["data"]["id"]
    with api.app.state.sessions.begin() as session:
        session.get_one(SqlSnippet, b).sql = "SELECT * FROM ([a])"
    response = _run(api, org.key, org.sample_datasource_id, "[a]")
    assert response.status_code == 422
    error = response.json()["errors"][0]
    assert error["code"] == "sql_snippet_cycle"
    assert "[a]" in error["detail"] and "a → b → a" in error["detail"]


def test_unknown_snippet_is_422_naming_it(api):
    org = api.create_org()
    response = _run(api, org.key, org.sample_datasource_id, "SELECT * FROM [nowhere]")
    assert response.status_code == 422
    assert "[nowhere]" in response.json()["errors"][0]["detail"]


def test_a_restricted_key_reads_snippets_but_never_writes_them(api):
    """Snippets serve every datasource's SQL: a key restricted to some, changing one, would
    change what runs on the others (and break their reports by deleting it)."""
    org = api.create_org()
    restricted = api.create_key(
        org, [Permission.MANAGE_DASHBOARDS], datasource_ids=[org.sample_datasource_id]
    )
    created = api.post("/sql_snippets", org.key, resource("sql_snippets", name="s", sql="1=1"))
    snippet = created.json()["data"]["id"]
    assert api.get(f"/sql_snippets/{snippet}", restricted).status_code == 200
    before = dump_tables(api.app)
    for answer in (
        api.post("/sql_snippets", restricted, resource("sql_snippets", name="t", sql="1=0")),
        api.patch(
            f"/sql_snippets/{snippet}", restricted, resource("sql_snippets", snippet, sql="1=0")
        ),
        api.delete(f"/sql_snippets/{snippet}", restricted),
    ):
        assert answer.status_code == 403, answer.text
        assert answer.json()["errors"][0]["code"] == "datasource_scope_restricted"
    assert dump_tables(api.app) == before
