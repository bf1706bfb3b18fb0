"""Who and where an upload may write: another organisation's datasource is 404, links out of the
folder are not followed, a key without manage_datasources is 403 before its body is read, and a
shared folder is read-only.
"""

from __future__ import annotations

import shutil

from api_server.permissions import Permission
from shared.shared_folders import grant_shared_folder
from tests.support.factories import resource
from tests.support.uploads import ORDERS_CSV, SQLITE_ONLY, error_of, files_datasource, put, snapshot


@SQLITE_ONLY
def test_another_organisations_datasource_is_404(api):
    org, other = api.create_org("A"), api.create_org("B")
    ds, folder = files_datasource(api, org)
    before = snapshot(folder)
    for url in (f"/datasources/{ds}/files/x.csv", f"/datasources/{ds}/files"):
        method = "PUT" if url.endswith(".csv") else "GET"
        answer = api.client.request(
            method,
            url,
            content=ORDERS_CSV if method == "PUT" else None,
            headers={"Authorization": f"Api {other.key}", "Content-Type": "text/csv"},
        )
        assert error_of(answer, 404)["code"] == "not_found"
    assert error_of(api.delete(f"/datasources/{ds}/files/orders.csv", other.key), 404)
    restricted = api.create_key(org, list(Permission), datasource_ids=[org.sample_datasource_id])
    assert error_of(put(api, restricted, f"/datasources/{ds}/files/x.csv", ORDERS_CSV), 404)
    assert snapshot(folder) == before
    assert not (api.area(other) / "shop").exists()


@SQLITE_ONLY
def test_a_folder_swapped_for_a_link_into_another_area_is_not_followed(api):
    """The folder is checked again on every request, as the data server checks it on every run."""
    org, other = api.create_org("A"), api.create_org("B")
    ds, folder = files_datasource(api, org)
    victim = api.area(other) / "victim"
    victim.mkdir()
    (victim / "v.csv").write_bytes(ORDERS_CSV)
    shutil.rmtree(folder)
    folder.symlink_to(victim)
    answer = put(api, org.key, f"/datasources/{ds}/files/x.csv", ORDERS_CSV)
    assert error_of(answer, 409)["code"] == "datasource_unavailable"
    assert error_of(api.delete(f"/datasources/{ds}/files/v.csv", org.key), 409)
    assert error_of(api.get(f"/datasources/{ds}/files", org.key), 409)
    assert snapshot(victim) == {"v.csv": ORDERS_CSV}


def test_a_link_out_of_the_folder_is_no_file_of_the_datasource(api):
    """Neither listed nor shown: its target's size and time would describe another
    organisation's file (the engine makes no view of it either)."""
    org, other = api.create_org("A"), api.create_org("B")
    ds, folder = files_datasource(api, org)
    secret = api.area(other) / "secret.csv"
    secret.write_bytes(b"s\n" + b"x" * 12345 + b"\n")
    (folder / "leak.csv").symlink_to(secret)
    (folder / "inside.csv").symlink_to(folder / "orders.csv")  # within the folder: a file
    listed = api.get(f"/datasources/{ds}/files", org.key).json()["data"]
    assert sorted(item["id"].rsplit("/", 1)[-1] for item in listed) == ["inside.csv", "orders.csv"]
    assert error_of(api.get(f"/datasources/{ds}/files/leak.csv", org.key), 404)
    assert "12347" not in api.get(f"/datasources/{ds}/files", org.key).text

    created = api.post(
        "/datasources", org.key, resource("datasources", name="duck", database_type="duckdb")
    )
    duck, attributes = created.json()["data"]["id"], created.json()["data"]["attributes"]
    (api.area(org) / attributes["database"]).symlink_to(secret)  # where an upload would go
    assert error_of(api.get(f"/datasources/{duck}/database_file", org.key), 404)


@SQLITE_ONLY
def test_a_key_without_manage_datasources_is_403_before_its_body_is_read(api):
    org = api.create_org()
    ds, folder = files_datasource(api, org)
    viewer = api.create_key(org, [Permission.VIEW_DATASOURCES])
    before = snapshot(folder)
    answer = put(api, viewer, f"/datasources/{ds}/files/x.csv", ORDERS_CSV)
    assert error_of(answer, 403)["code"] == "permission_denied"
    assert error_of(api.delete(f"/datasources/{ds}/files/orders.csv", viewer), 403)
    assert api.get(f"/datasources/{ds}/files", viewer).status_code == 200
    assert snapshot(folder) == before


@SQLITE_ONLY
def test_a_shared_folder_is_read_only(api, tmp_path):
    org = api.create_org()
    granted = tmp_path / "granted"
    granted.mkdir()
    (granted / "rates.csv").write_text("currency,rate\nEUR,1\n")
    with api.app.state.sessions.begin() as session:
        grant_shared_folder(session, api.settings, org.id, "rates", str(granted))
    ds = api.create_datasource(org.key, name="r", database_type="files", database="shared/rates")[
        "id"
    ]
    assert [f["id"] for f in api.get(f"/datasources/{ds}/files", org.key).json()["data"]] == [
        "rates.csv"
    ]
    answer = put(api, org.key, f"/datasources/{ds}/files/x.csv", ORDERS_CSV)
    assert error_of(answer, 409)["code"] == "datasource_read_only"
    assert (
        error_of(api.delete(f"/datasources/{ds}/files/rates.csv", org.key), 409)["code"]
        == "datasource_read_only"
    )
    assert sorted(p.name for p in granted.iterdir()) == ["rates.csv"]
