"""Datasources over JSON:API: create (Cluvio's attributes, a folder for a files datasource, the path
stored normalised), read, update and delete; the password never shown and changed or cleared;
the sample datasource and the datasource limit.
"""

from __future__ import annotations

from api_server.permissions import Permission
from tests.support.datasources import new_datasource_document
from tests.support.factories import POSTGRES_DATASOURCE, dump_tables, resource


def test_create_duckdb_datasource_returns_201_with_cluvio_attributes(api):
    org = api.create_org()
    response = api.post(
        "/datasources", org.key, new_datasource_document(api, org, data_time_zone="Europe/Berlin")
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
        "/datasources",
        org.key,
        new_datasource_document(api, org, database_type="files", database="shop"),
    )
    assert response.status_code == 201, response.text
    assert response.json()["data"]["attributes"]["database"] == "shop"


def test_path_is_stored_normalised_relative_to_the_area(api):
    org = api.create_org()
    (api.area(org) / "sub").mkdir()
    api.duckdb_file(org, "sub/shop.duckdb")
    response = api.post(
        "/datasources", org.key, new_datasource_document(api, org, database="./sub//shop.duckdb/")
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


def test_a_stored_password_goes_to_no_new_destination_unless_sent_again(api):
    """A key that may manage a datasource but never knew its password must not point it at a
    server of its own and be sent the password (outside probe), nor at another account or
    database of the same server, whose refusal quotes them: a `database` of "aa <guess> bb"
    answered "database "aa <redacted> bb" does not exist" when the guess was the password (a
    later probe)."""
    org = api.create_org()
    attributes = {**POSTGRES_DATASOURCE, "require_ssl": True, "verify_ssl": True}
    created = api.create_datasource(org.key, password="first", **attributes)
    path, ds = f"/datasources/{created['id']}", created["id"]
    before = dump_tables(api.app)
    for moved in ({"host": "127.0.0.2"}, {"port": 5433}, {"require_ssl": False},
                  {"verify_ssl": False}, {"database_type": "mysql", "port": 3306},
                  {"username": "other"}, {"database": "aa first bb"}):  # fmt: skip
        refused = api.patch(path, org.key, resource("datasources", ds, **moved))
        assert refused.status_code == 422, refused.text
        error = refused.json()["errors"][0]
        assert error["code"] == "password_required"
        assert error["source"]["pointer"] == "/data/attributes/password"
    assert dump_tables(api.app) == before
    for harmless in (
        {"name": "renamed"},
        {"host": created["attributes"]["host"]},
        {"database": created["attributes"]["database"]},  # unchanged
    ):
        assert api.patch(path, org.key, resource("datasources", ds, **harmless)).status_code == 200
    sent_again = resource("datasources", ds, host="127.0.0.2", password="first")
    assert api.patch(path, org.key, sent_again).status_code == 200
    dropped = resource("datasources", ds, port=5433, password=None)
    assert api.patch(path, org.key, dropped).status_code == 200
    assert _stored_password(api, ds) is None
    assert api.patch(path, org.key, resource("datasources", ds, port=5434)).status_code == 200


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
    response = api.post("/datasources", org.key, new_datasource_document(api, org))
    assert response.status_code == 409
    assert response.json()["errors"][0]["code"] == "datasource_limit_reached"
    assert dump_tables(api.app) == before


# An s3 datasource on a MinIO-like endpoint, with AWS's documented example credentials.
S3_DATASOURCE = {
    "name": "Bucket",
    "database_type": "s3",
    "database": "s3://bucket/prefix/",
    "host": "127.0.0.1",
    "port": 9000,
    "require_ssl": False,
    "username": "AKIAIOSFODNN7EXAMPLE",
    "password": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
}


def test_an_s3_access_key_id_is_shown_only_to_keys_that_manage_datasources(api):
    """Half of an s3 datasource's credentials (Cluvio shows credentials only with Manage
    Datasources); a PostgreSQL datasource's username stays visible, as in Cluvio."""
    org = api.create_org()
    s3 = api.create_datasource(org.key, **S3_DATASOURCE)
    postgres = api.create_datasource(org.key, password="x", **POSTGRES_DATASOURCE)
    viewer = api.create_key(org, [Permission.VIEW_DATASOURCES, Permission.MANAGE_USERS])
    for path in (f"/datasources/{s3['id']}", "/datasources?filter[database_type]=s3"):
        assert "AKIAIOSFODNN7EXAMPLE" not in api.get(path, viewer).text
        assert "AKIAIOSFODNN7EXAMPLE" in api.get(path, org.key).text
    shown = api.get(f"/datasources/{s3['id']}", viewer).json()["data"]["attributes"]
    assert shown["username"] is None and shown["database"] == "s3://bucket/prefix/"
    other = api.get(f"/datasources/{postgres['id']}", viewer).json()["data"]["attributes"]
    assert other["username"] == POSTGRES_DATASOURCE["username"]


def test_an_s3_secret_signs_for_no_other_bucket_prefix_or_region_unless_sent_again(api):
    """The outside probe's case: with no host, the bucket and the region are where requests go
    (<bucket>.s3.<region>.amazonaws.com), and with one the secret was given for one bucket and
    prefix: a key that never knew it could have it sign requests for a bucket of its own."""
    org = api.create_org()
    created = api.create_datasource(org.key, **S3_DATASOURCE)
    path, ds = f"/datasources/{created['id']}", created["id"]
    before = dump_tables(api.app)
    for moved in ({"database": "s3://attacker/"}, {"database": "s3://bucket/other/"},
                  {"s3_region": "eu-west-1"}):  # fmt: skip
        refused = api.patch(path, org.key, resource("datasources", ds, **moved))
        assert refused.status_code == 422, refused.text
        assert refused.json()["errors"][0]["code"] == "password_required"
    assert dump_tables(api.app) == before
    same = resource("datasources", ds, database="bucket/prefix")  # the same place, spelt short
    assert api.patch(path, org.key, same).status_code == 200
    secret = S3_DATASOURCE["password"]
    sent_again = resource("datasources", ds, database="s3://other/", password=secret)
    assert api.patch(path, org.key, sent_again).status_code == 200
