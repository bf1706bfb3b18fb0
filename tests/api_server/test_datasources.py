"""Datasources over JSON:API: CRUD, validation with pointers, path confinement, conventions."""

from __future__ import annotations

import os

import pytest

from api_server.permissions import Permission
from tests.support.factories import POSTGRES_DATASOURCE, dump_tables, resource


def _create_body(api, org, **overrides):
    attributes = {"name": "Shop", "database_type": "duckdb", "database": api.duckdb_file(org)}
    attributes.update(overrides)
    return resource("datasources", **attributes)


def test_create_duckdb_datasource_returns_201_with_cluvio_attributes(api):
    org = api.create_org()
    response = api.post(
        "/datasources", org.key, _create_body(api, org, data_time_zone="Europe/Berlin")
    )
    assert response.status_code == 201, response.text
    assert response.headers["content-type"] == "application/vnd.api+json"
    data = response.json()["data"]
    assert response.headers["location"] == f"/datasources/{data['id']}"
    assert len(data["id"]) == 14 and data["id"].count("-") == 2
    attributes = data["attributes"]
    assert attributes["database_type"] == "duckdb"
    assert attributes["database"] == "shop.duckdb"
    assert attributes["data_time_zone"] == "Europe/Berlin"
    assert attributes["max_concurrent_executions"] == 20
    assert attributes["connection_mode"] == "direct"
    for read_only in ("created_at", "updated_at", "schema_updated_at", "default_schema_name"):
        assert read_only in attributes
    assert data["relationships"] == {"agents": {"data": []}}


def test_create_files_datasource_points_at_a_folder(api):
    org = api.create_org()
    (api.area(org) / "shop").mkdir()
    response = api.post(
        "/datasources", org.key, _create_body(api, org, database_type="files", database="shop")
    )
    assert response.status_code == 201, response.text
    assert response.json()["data"]["attributes"]["database"] == "shop"


def test_path_is_stored_normalised_relative_to_the_area(api):
    org = api.create_org()
    (api.area(org) / "sub").mkdir()
    api.duckdb_file(org, "sub/shop.duckdb")
    response = api.post(
        "/datasources", org.key, _create_body(api, org, database="./sub//shop.duckdb/")
    )
    assert response.status_code == 201, response.text
    assert response.json()["data"]["attributes"]["database"] == "sub/shop.duckdb"


def test_read_update_delete_round_trip(api):
    org = api.create_org()
    created = api.create_datasource(org.key)
    path = f"/datasources/{created['id']}"
    assert api.get(path, org.key).json()["data"]["attributes"]["name"] == "Shop"
    patch = resource("datasources", created["id"], name="Renamed", max_concurrent_executions=3)
    updated = api.patch(path, org.key, patch)
    assert updated.status_code == 200, updated.text
    attributes = updated.json()["data"]["attributes"]
    assert (attributes["name"], attributes["max_concurrent_executions"]) == ("Renamed", 3)
    assert attributes["updated_at"] >= created["attributes"]["updated_at"]
    assert api.delete(path, org.key).status_code == 204
    assert api.get(path, org.key).status_code == 404


def test_password_is_never_returned_not_even_to_the_key_that_set_it(api):
    org = api.create_org()
    created = api.create_datasource(org.key, password="hunter2-secret", **POSTGRES_DATASOURCE)
    assert "password" not in created["attributes"]
    viewer = api.create_key(org, [Permission.VIEW_DATASOURCES])
    for key in (org.key, viewer):
        for path in (f"/datasources/{created['id']}", "/datasources"):
            seen = api.get(path, key)
            assert seen.status_code == 200
            assert "hunter2-secret" not in seen.text and '"password"' not in seen.text


def _stored_password(api, datasource_id):
    from shared.db.models import Datasource

    with api.app.state.sessions() as session:
        return session.get(Datasource, datasource_id).password_encrypted


def test_password_can_be_changed_and_cleared(api):
    org = api.create_org()
    created = api.create_datasource(org.key, password="first", **POSTGRES_DATASOURCE)
    path = f"/datasources/{created['id']}"
    first = _stored_password(api, created["id"])
    changed = api.patch(path, org.key, resource("datasources", created["id"], password="second"))
    assert changed.status_code == 200 and "second" not in changed.text
    second = _stored_password(api, created["id"])
    assert first and second and second != first
    assert api.app.state.secrets.decrypt(second) == "second"
    cleared = api.patch(path, org.key, resource("datasources", created["id"], password=None))
    assert cleared.status_code == 200
    assert _stored_password(api, created["id"]) is None


BAD_ATTRIBUTES = [
    ({"bogus": 1}, "unknown_attribute", "/data/attributes/bogus"),
    ({"created_at": "2024-01-01T00:00:00Z"}, "read_only_attribute", "/data/attributes/created_at"),
    ({"server_version": "1"}, "read_only_attribute", "/data/attributes/server_version"),
    ({"name": None}, "invalid_type", "/data/attributes/name"),
    ({"name": ""}, "too_short", "/data/attributes/name"),
    ({"name": "x" * 256}, "too_long", "/data/attributes/name"),
    ({"name": 5}, "invalid_type", "/data/attributes/name"),
    ({"port": "5432"}, "invalid_type", "/data/attributes/port"),
    ({"port": 70000}, "invalid_attribute", "/data/attributes/port"),
    ({"enabled": "yes"}, "invalid_type", "/data/attributes/enabled"),
    (
        {"max_concurrent_executions": 0},
        "invalid_attribute",
        "/data/attributes/max_concurrent_executions",
    ),
    ({"data_time_zone": "Mars/Olympus"}, "invalid_attribute", "/data/attributes/data_time_zone"),
    ({"database_type": "oracle"}, "invalid_attribute", "/data/attributes/database_type"),
    ({"port": 5432}, "invalid_attribute", "/data/attributes/port"),  # a file type takes none
    ({"username": "u"}, "invalid_attribute", "/data/attributes/username"),
    ({"database_type": "sample"}, "invalid_attribute", "/data/attributes/database_type"),
    ({"connection_mode": "agent"}, "invalid_attribute", "/data/attributes/connection_mode"),
    ({"ssh_tunnel_host": "bastion"}, "invalid_attribute", "/data/attributes/ssh_tunnel_host"),
    ({"host": "h" * 300}, "too_long", "/data/attributes/host"),
    ({"password": "p" * 2000}, "too_long", "/data/attributes/password"),
    ({"database": "../outside.duckdb"}, "path_traversal", "/data/attributes/database"),
    ({"database": "/etc/passwd"}, "path_not_relative", "/data/attributes/database"),
    ({"database": "missing.duckdb"}, "path_not_found", "/data/attributes/database"),
    ({"database": ""}, "path_empty", "/data/attributes/database"),
    ({"database": "a\x00b"}, "nul_character", "/data/attributes/database"),
]


@pytest.mark.parametrize(("overrides", "code", "pointer"), BAD_ATTRIBUTES)
def test_bad_attribute_is_422_with_pointer_and_changes_nothing(api, overrides, code, pointer):
    org = api.create_org()
    before = dump_tables(api.app)
    response = api.post("/datasources", org.key, _create_body(api, org, **overrides))
    assert response.status_code == 422, response.text
    errors = response.json()["errors"]
    assert {(e["code"], e["source"]["pointer"]) for e in errors} == {(code, pointer)}
    assert all(e["status"] == "422" and e["title"] and e["detail"] for e in errors)
    assert dump_tables(api.app) == before


@pytest.mark.parametrize(("overrides", "code", "pointer"), BAD_ATTRIBUTES[:14])
def test_bad_attribute_on_update_is_422_and_changes_nothing(api, overrides, code, pointer):
    org = api.create_org()
    created = api.create_datasource(org.key)
    before = dump_tables(api.app)
    response = api.patch(
        f"/datasources/{created['id']}",
        org.key,
        resource("datasources", created["id"], **overrides),
    )
    assert response.status_code == 422, response.text
    assert {(e["code"], e["source"]["pointer"]) for e in response.json()["errors"]} == {
        (code, pointer)
    }
    assert dump_tables(api.app) == before


def test_missing_required_attributes_are_each_reported(api):
    org = api.create_org()
    response = api.post("/datasources", org.key, resource("datasources"))
    assert response.status_code == 422
    pointers = {e["source"]["pointer"] for e in response.json()["errors"]}
    assert pointers == {"/data/attributes/name", "/data/attributes/database_type"}
    assert {e["code"] for e in response.json()["errors"]} == {"missing_attribute"}


def test_symlink_leading_out_of_the_area_is_refused(api, tmp_path):
    org = api.create_org()
    outside = tmp_path / "outside.duckdb"
    outside.write_bytes(b"not really")
    os.symlink(outside, api.area(org) / "link.duckdb")
    (api.area(org) / "dirlink").symlink_to(tmp_path)
    for database_type, database in (("duckdb", "link.duckdb"), ("files", "dirlink")):
        response = api.post(
            "/datasources",
            org.key,
            _create_body(api, org, database_type=database_type, database=database),
        )
        assert response.status_code == 422
        assert response.json()["errors"][0]["code"] == "path_outside_area"


def test_files_datasource_must_be_a_folder(api):
    org = api.create_org()
    response = api.post("/datasources", org.key, _create_body(api, org, database_type="files"))
    assert response.status_code == 422
    assert response.json()["errors"][0]["code"] == "path_not_found"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "malformed_json"),
        (b"", 400, "malformed_json"),
        (b"[]", 400, "bad_request"),
        (b'{"data": []}', 400, "bad_request"),
        (b'{"data": {"attributes": {}}}', 400, "bad_request"),
        (b'{"data": {"type": "users", "attributes": {"name": "x"}}}', 409, "conflict"),
        (
            b'{"data": {"type": "datasources", "id": "abcd-abcd-abcd", "attributes": {}}}',
            403,
            "forbidden",
        ),
        (b'{"data": {"type": "datasources", "attributes": []}}', 400, "bad_request"),
        (
            b'{"data": {"type": "datasources", "attributes": {"name": "x"}, "relationships": {"agents": {"data": [{"type": "datasource_agents", "id": "a"}]}}}}',
            422,
            "invalid_attribute",
        ),
    ],
)
def test_malformed_documents_get_the_error_shape(api, body, status, code):
    org = api.create_org()
    before = dump_tables(api.app)
    response = api.post("/datasources", org.key, body)
    assert response.status_code == status, response.text
    error = response.json()["errors"][0]
    assert error["code"] == code and error["status"] == str(status)
    assert dump_tables(api.app) == before


def test_patch_with_mismatched_id_is_409(api):
    org = api.create_org()
    created = api.create_datasource(org.key)
    response = api.patch(
        f"/datasources/{created['id']}",
        org.key,
        resource("datasources", "zzzz-zzzz-zzzz", name="x"),
    )
    assert response.status_code == 409
    assert response.json()["errors"][0]["source"] == {"pointer": "/data/id"}


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "text/plain", "", "application/vnd.api+json; charset=utf-8"],
)
def test_write_without_jsonapi_content_type_is_415(api, content_type):
    org = api.create_org()
    response = api.post("/datasources", org.key, _create_body(api, org), content_type=content_type)
    assert response.status_code == 415
    assert response.json()["errors"][0]["code"] == "unsupported_media_type"


def test_jsonapi_content_type_with_profile_is_accepted(api):
    org = api.create_org()
    content_type = 'application/vnd.api+json; profile="https://example.com/p"'
    assert (
        api.post(
            "/datasources", org.key, _create_body(api, org), content_type=content_type
        ).status_code
        == 201
    )


@pytest.mark.parametrize(
    ("accept", "status"),
    [
        ("text/html", 406),
        ("application/vnd.api+json; ext=foo", 406),
        ("application/json", 406),
        ("application/vnd.api+json;q=0", 406),
        ("application/vnd.api+json", 200),
        ("*/*", 200),
        ("application/*", 200),
        ("text/html, application/vnd.api+json", 200),
    ],
)
def test_accept_is_negotiated(api, accept, status):
    org = api.create_org()
    response = api.client.get(
        "/datasources", headers={"Authorization": f"Api {org.key}", "Accept": accept}
    )
    assert response.status_code == status
    assert response.headers["content-type"] == "application/vnd.api+json"


def test_oversized_body_is_413(api):
    org = api.create_org()
    body = _create_body(api, org, description="x" * (2 * 1024 * 1024))
    response = api.post("/datasources", org.key, body)
    assert response.status_code == 413


def test_collection_pages_sorts_filters_and_sparse_fields(api):
    org = api.create_org()
    for name in ("c", "a", "b"):
        api.create_datasource(org.key, name=name)
    page = api.get("/datasources?page[size]=2&page[number]=2&sort=-name", org.key).json()
    assert page["meta"]["total"] == 4
    assert [d["attributes"]["name"] for d in page["data"]] == ["b", "a"]
    assert page["links"]["prev"] and page["links"]["next"] is None
    assert "page%5Bnumber%5D=1" in page["links"]["first"]
    first = api.get("/datasources?page[size]=2&sort=-name", org.key).json()
    assert [d["attributes"]["name"] for d in first["data"]] == ["Sample Data", "c"]
    filtered = api.get("/datasources?filter[name]=b", org.key).json()
    assert [d["attributes"]["name"] for d in filtered["data"]] == ["b"]
    by_type = api.get("/datasources?filter[database_type]=sample", org.key).json()
    assert [d["id"] for d in by_type["data"]] == [org.sample_datasource_id]
    sparse = api.get("/datasources?fields[datasources]=name", org.key).json()
    assert all(
        set(d["attributes"]) == {"name"} and "relationships" not in d for d in sparse["data"]
    )


def test_default_page_size_is_20(api):
    org = api.create_org()
    api.area(org).joinpath("many").mkdir()
    with api.app.state.sessions.begin() as session:
        from shared.db.models import Datasource

        for i in range(24):
            session.add(
                Datasource(
                    organization_id=org.id, name=f"ds{i:02}", database_type="files", database="many"
                )
            )
    listing = api.get("/datasources", org.key).json()
    assert len(listing["data"]) == 20
    assert listing["meta"]["total"] == 25
    assert "page%5Bnumber%5D=2" in listing["links"]["last"]


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("page[size]=101", "page[size]"),
        ("page[size]=0", "page[size]"),
        ("page[number]=-1", "page[number]"),
        ("page[number]=abc", "page[number]"),
        ("sort=password", "sort"),
        ("filter[password]=x", "filter[password]"),
        ("fields[datasources]=secret_stuff", "fields[datasources]"),
        ("include=owner", "include"),
        ("foo=bar", "foo"),
    ],
)
def test_bad_query_parameters_are_400_naming_the_parameter(api, query, parameter):
    org = api.create_org()
    response = api.get(f"/datasources?{query}", org.key)
    assert response.status_code == 400
    assert response.json()["errors"][0]["source"] == {"parameter": parameter}


def test_include_agents_is_accepted(api):
    org = api.create_org()
    listing = api.get("/datasources?include=agents", org.key).json()
    assert listing["included"] == []
    single = api.get(f"/datasources/{org.sample_datasource_id}?include=agents", org.key).json()
    assert single["included"] == []


def test_sample_datasource_allows_only_harmless_changes(api):
    org = api.create_org()
    path = f"/datasources/{org.sample_datasource_id}"
    renamed = api.patch(
        path, org.key, resource("datasources", org.sample_datasource_id, name="Demo data")
    )
    assert renamed.status_code == 200
    moved = api.patch(
        path, org.key, resource("datasources", org.sample_datasource_id, database="shop.duckdb")
    )
    assert moved.status_code == 409
    assert moved.json()["errors"][0]["code"] == "sample_datasource_fixed"


def test_datasource_limit_excludes_the_sample_and_is_409(api):
    org = api.create_org()
    for i in range(api.settings.max_datasources):
        api.create_datasource(org.key, name=f"ds{i}")
    before = dump_tables(api.app)
    response = api.post("/datasources", org.key, _create_body(api, org))
    assert response.status_code == 409
    assert response.json()["errors"][0]["code"] == "datasource_limit_reached"
    assert dump_tables(api.app) == before


def test_unknown_route_and_wrong_method_get_the_error_shape(api):
    missing = api.client.get("/no/such/route")
    assert missing.status_code == 404
    assert missing.json()["errors"][0]["code"] == "not_found"
    wrong = api.client.put("/datasources")
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "GET, HEAD, POST"
    assert wrong.json()["errors"][0]["code"] == "method_not_allowed"


def test_every_response_carries_a_request_id(api):
    assert len(api.client.get("/healthz").headers["x-request-id"]) == 32
    echoed = api.client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert echoed.headers["x-request-id"] == "abc-123"
    hostile = api.client.get("/healthz", headers={"X-Request-ID": "a b\tc"})
    assert hostile.headers["x-request-id"] != "a b\tc"


def test_health_and_readiness(api):
    assert api.client.get("/healthz").json() == {"status": "ok"}
    ready = api.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok"}
