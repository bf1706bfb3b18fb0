"""Tenant isolation: another organisation's objects answer exactly like ones that never existed."""

from __future__ import annotations

import pytest

from api_server.permissions import Permission
from shared.ids import new_resource_id
from tests.support.factories import dump_tables


def _call(api, method, key, datasource_id):
    path = f"/datasources/{datasource_id}"
    if method == "GET":
        return api.get(path, key)
    if method == "DELETE":
        return api.delete(path, key)
    body = {"data": {"type": "datasources", "id": datasource_id, "attributes": {"name": "stolen"}}}
    return api.patch(path, key, body)


@pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE"])
def test_foreign_datasource_answers_like_a_random_id(api, method):
    mine, theirs = api.create_org("Mine"), api.create_org("Theirs")
    foreign = api.create_datasource(theirs.key, name="Theirs")
    before = dump_tables(api.app)
    for foreign_id in (foreign["id"], theirs.sample_datasource_id):
        response = _call(api, method, mine.key, foreign_id)
        random_response = _call(api, method, mine.key, new_resource_id())
        assert response.status_code == 404
        assert response.content == random_response.content
    assert dump_tables(api.app) == before


def test_lists_never_show_foreign_rows(api):
    mine, theirs = api.create_org("Mine"), api.create_org("Theirs")
    api.create_datasource(theirs.key, name="Secret source")
    mine_ds = api.create_datasource(mine.key, name="Mine")
    for query in ("", "?filter[name]=Secret%20source", "?page[size]=100", "?sort=-name"):
        ids = {d["id"] for d in api.get(f"/datasources{query}", mine.key).json()["data"]}
        assert ids <= {mine_ds["id"], mine.sample_datasource_id}
    listing = api.get("/datasources", mine.key).json()
    assert listing["meta"]["total"] == 2


def test_restricted_key_neither_sees_nor_touches_other_datasources(api):
    org = api.create_org()
    allowed = api.create_datasource(org.key, name="Allowed")
    other = api.create_datasource(org.key, name="Other")
    key = api.create_key(org, [Permission.MANAGE_DATASOURCES], [allowed["id"]])
    listing = api.get("/datasources", key).json()
    assert [d["id"] for d in listing["data"]] == [allowed["id"]]
    assert listing["meta"]["total"] == 1
    before = dump_tables(api.app)
    for method in ("GET", "PATCH", "DELETE"):
        response = _call(api, method, key, other["id"])
        assert response.status_code == 404
        assert response.content == _call(api, method, key, new_resource_id()).content
    assert dump_tables(api.app) == before
    assert _call(api, "PATCH", key, allowed["id"]).status_code == 200


def test_restricted_key_cannot_create_datasources(api):
    org = api.create_org()
    key = api.create_key(org, [Permission.MANAGE_DATASOURCES], [org.sample_datasource_id])
    body = {
        "data": {
            "type": "datasources",
            "attributes": {
                "name": "n",
                "database_type": "duckdb",
                "database": api.duckdb_file(org),
            },
        }
    }
    response = api.post("/datasources", key, body)
    assert response.status_code == 403
    assert response.json()["errors"][0]["code"] == "datasource_scope_restricted"


def test_restricted_key_keeps_its_restriction_when_its_datasources_are_deleted(api):
    org = api.create_org()
    allowed = api.create_datasource(org.key, name="Allowed")
    key = api.create_key(org, [Permission.VIEW_DATASOURCES], [allowed["id"]])
    assert api.delete(f"/datasources/{allowed['id']}", org.key).status_code == 204
    assert api.get("/datasources", key).json()["data"] == []
    assert api.get(f"/datasources/{org.sample_datasource_id}", key).status_code == 404


def test_key_cannot_be_restricted_to_a_foreign_datasource(api):
    from api_server.services import api_keys
    from shared.errors import NotFound

    mine, theirs = api.create_org("Mine"), api.create_org("Theirs")
    with pytest.raises(NotFound), api.app.state.sessions.begin() as session:
        api_keys.create_api_key(
            session,
            api.app.state.secrets,
            organization_id=mine.id,
            name="sneaky",
            permissions=[Permission.VIEW_DATASOURCES],
            datasource_ids=[theirs.sample_datasource_id],
        )
