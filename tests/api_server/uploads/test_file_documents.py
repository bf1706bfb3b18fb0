"""The JSON:API documents of a datasource's files: each file's id is its name and its self link the
URL it is read at (not a collection path plus id), in a listing, a show and an upload's answer; a
listing's and an upload's ``meta`` carry the storage usage beside the paging or the refresh."""

from __future__ import annotations

from api_server.services.listing import DEFAULT_PAGE_SIZE
from tests.support.factories import JSONAPI
from tests.support.uploads import ORDERS_CSV, SQLITE_ONLY, files_datasource, put


@SQLITE_ONLY
def test_a_file_is_named_by_its_percent_encoded_url_everywhere(api):
    org = api.create_org()
    ds, _ = files_datasource(api, org)
    link = f"/datasources/{ds}/files/order%20list.csv"
    created = put(api, org.key, link, ORDERS_CSV)
    assert created.status_code == 201, created.text
    assert created.headers["location"] == link
    assert created.json()["data"]["id"] == "order list.csv"
    assert created.json()["data"]["links"] == {"self": link}

    listing = api.get(f"/datasources/{ds}/files?sort=name", org.key).json()
    assert [(f["id"], f["links"]["self"]) for f in listing["data"]] == [
        ("order list.csv", link),
        ("orders.csv", f"/datasources/{ds}/files/orders.csv"),
    ]
    assert "relationships" not in listing["data"][0]
    assert api.get(link, org.key).json()["data"]["links"] == {"self": link}


@SQLITE_ONLY
def test_sparse_fieldsets_keep_the_meta_of_a_listing_and_an_upload(api):
    org = api.create_org()
    ds, _ = files_datasource(api, org)
    listing = api.get(f"/datasources/{ds}/files?fields[datasource_files]=size", org.key).json()
    assert listing["data"][0]["attributes"] == {"size": len(ORDERS_CSV)}
    assert listing["meta"]["total"] == 1
    assert listing["meta"]["page"] == {"number": 1, "size": DEFAULT_PAGE_SIZE}
    assert listing["meta"]["storage"]["files_bytes"] == len(ORDERS_CSV)

    replaced = api.client.put(
        f"/datasources/{ds}/files/orders.csv?fields[datasource_files]=format",
        content=ORDERS_CSV,
        headers={"Authorization": f"Api {org.key}", "Content-Type": "text/csv", "Accept": JSONAPI},
    )
    assert replaced.status_code == 200, replaced.text
    document = replaced.json()
    assert document["data"]["attributes"] == {"format": "csv"}
    assert set(document["meta"]) == {"refresh_execution_id", "storage"}
    assert "location" not in replaced.headers


@SQLITE_ONLY
def test_the_database_file_is_linked_at_its_own_route(api):
    org = api.create_org()
    ds = api.create_datasource(org.key, name="db")["id"]
    shown = api.get(f"/datasources/{ds}/database_file", org.key)
    assert shown.status_code == 200, shown.text
    assert shown.json()["data"]["links"] == {"self": f"/datasources/{ds}/database_file"}
