"""A datasource's attributes validated at create and update: each bad attribute is 422 with a
pointer and changes nothing, missing ones are each reported, and paths stay inside the area.
"""

from __future__ import annotations

import os

import pytest

from tests.support.datasources import new_datasource_document
from tests.support.factories import dump_tables, resource

BAD_ATTRIBUTES = [
    ({"bogus": 1}, "unknown_attribute", "/data/attributes/bogus"),
    ({"a/b~c": 1}, "unknown_attribute", "/data/attributes/a~1b~0c"),  # RFC 6901's escapes
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
    response = api.post("/datasources", org.key, new_datasource_document(api, org, **overrides))
    assert response.status_code == 422, response.text
    errors = response.json()["errors"]
    assert {(e["code"], e["source"]["pointer"]) for e in errors} == {(code, pointer)}
    assert all(e["status"] == "422" and e["title"] and e["detail"] for e in errors)
    assert dump_tables(api.app) == before


@pytest.mark.parametrize(("overrides", "code", "pointer"), BAD_ATTRIBUTES[:15])
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
            new_datasource_document(api, org, database_type=database_type, database=database),
        )
        assert response.status_code == 422
        assert response.json()["errors"][0]["code"] == "path_outside_area"


def test_files_datasource_must_be_a_folder(api):
    org = api.create_org()
    response = api.post(
        "/datasources", org.key, new_datasource_document(api, org, database_type="files")
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["code"] == "path_not_found"
