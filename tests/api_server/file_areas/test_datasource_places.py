"""A key restricted to listed datasources may not point one of them into (or around) anything a
datasource beyond them reads. Found by the outside probe: a restricted key repointed its files
datasource at another's folder, then listed, read, planted and replaced that one's files."""

from __future__ import annotations

import pytest

from api_server.permissions import Permission
from api_server.services import uploads
from shared.errors import Forbidden
from tests.support.factories import dump_tables, resource
from tests.support.uploads import (
    ORDERS_CSV,
    decided_upload,
    duckdb_bytes,
    error_of,
    put,
    snapshot,
)


def _repoint(api, key: str, datasource: str, **attributes):
    document = resource("datasources", datasource, **attributes)
    return api.patch(f"/datasources/{datasource}", key, document)


def _files_datasource(api, org, name: str) -> str:
    """One with its own place (``datasources/<id>``), made by the server, holding a file."""
    created = api.post(
        "/datasources", org.key, resource("datasources", name=name, database_type="files")
    )
    assert created.status_code == 201, created.text
    datasource = created.json()["data"]["id"]
    assert (
        put(api, org.key, f"/datasources/{datasource}/files/t.csv", ORDERS_CSV).status_code == 201
    )
    return datasource


def _refused_as_missing(api, key: str, datasource: str, database: str) -> None:
    api.get("/api_key", key)  # a key's first use writes last_used_at: not part of the case
    before = dump_tables(api.app)
    refused = _repoint(api, key, datasource, database=database)
    missing = _repoint(api, key, datasource, database="datasources/zzzz-zzzz-zzzz")
    assert refused.status_code == missing.status_code == 422, refused.text
    error, nowhere = refused.json()["errors"][0], missing.json()["errors"][0]
    assert error["code"] == nowhere["code"] == "path_not_found"
    assert error["detail"] == nowhere["detail"].replace("datasources/zzzz-zzzz-zzzz", database)
    assert dump_tables(api.app) == before


def test_a_restricted_key_reaches_no_data_of_a_datasource_beyond_its_scope(api):
    org = api.create_org()
    mine, theirs = _files_datasource(api, org, "mine"), _files_datasource(api, org, "theirs")
    (api.area(org) / "their_folder").mkdir()
    (api.area(org) / "their_folder" / "secret.csv").write_bytes(ORDERS_CSV)
    assert _repoint(api, org.key, theirs, database="their_folder").status_code == 200
    key = api.create_key(org, [Permission.MANAGE_DATASOURCES], datasource_ids=[mine])
    for database in ("their_folder", f"datasources/{theirs}", "datasources"):
        _refused_as_missing(api, key, mine, database)
    listed = api.get(f"/datasources/{mine}/files", key).json()["data"]
    assert [f["id"] for f in listed] == ["t.csv"]
    # Within its scope, and for the organisation's own key, such places stay open.
    both = api.create_key(org, [Permission.MANAGE_DATASOURCES], datasource_ids=[mine, theirs])
    assert _repoint(api, both, mine, database="their_folder").status_code == 200
    assert _repoint(api, org.key, mine, database=f"datasources/{theirs}").status_code == 200


@pytest.mark.parametrize("database_type", ["duckdb", "sqlite"])
def test_a_datasource_is_kept_out_of_anothers_database_file(api, database_type):
    org = api.create_org()
    created = api.post(
        "/datasources", org.key, resource("datasources", name="db", database_type=database_type)
    )
    assert created.status_code == 201, created.text
    theirs = created.json()["data"]["id"]
    # Its own file, awaited until an upload makes it: refused whether it exists yet or not.
    own_file = f"datasources/{theirs}.{database_type}"
    mine = api.create_datasource(org.key, name="mine", database_type=database_type)["id"]
    key = api.create_key(org, [Permission.MANAGE_DATASOURCES], datasource_ids=[mine])
    _refused_as_missing_file(api, key, mine, own_file)
    (api.area(org) / own_file).write_bytes(b"")
    _refused_as_missing_file(api, key, mine, own_file)


def _refused_as_missing_file(api, key: str, datasource: str, database: str) -> None:
    refused = _repoint(api, key, datasource, database=database)
    assert refused.status_code == 422, refused.text
    assert refused.json()["errors"][0]["code"] == "path_not_found"


def test_a_restricted_key_changes_no_files_a_datasource_beyond_its_scope_reads(api, tmp_path):
    """The organisation's key pointed a datasource in the key's scope at another's folder, or
    at a database file in it: the restricted key may not upload, replace or delete there, since
    that would change what the other reads (found by the second outside probe)."""
    org = api.create_org()
    theirs = _files_datasource(api, org, "theirs")
    folder = api.area(org) / "datasources" / theirs
    (folder / "db.duckdb").write_bytes(duckdb_bytes(tmp_path, "CREATE TABLE t AS SELECT 1 AS a"))
    alias = api.create_datasource(
        org.key, name="alias", database_type="files", database=f"datasources/{theirs}"
    )["id"]
    database = api.create_datasource(
        org.key, name="db", database_type="duckdb", database=f"datasources/{theirs}/db.duckdb"
    )["id"]
    key = api.create_key(org, [Permission.MANAGE_DATASOURCES], datasource_ids=[alias, database])
    api.get("/api_key", key)  # a key's first use writes last_used_at: not part of the case
    tables, files = dump_tables(api.app), snapshot(folder)
    refusals = [
        put(api, key, f"/datasources/{alias}/files/planted.csv", ORDERS_CSV),
        put(api, key, f"/datasources/{alias}/files/t.csv", ORDERS_CSV + b"3,1.0\n"),
        api.client.delete(
            f"/datasources/{alias}/files/t.csv", headers={"Authorization": f"Api {key}"}
        ),
        put(
            api, key, f"/datasources/{database}/database_file",
            duckdb_bytes(tmp_path, "CREATE TABLE t AS SELECT 2 AS a"), "application/octet-stream",
        ),
    ]  # fmt: skip
    for refused in refusals:
        assert error_of(refused, 403)["code"] == "datasource_scope_restricted"
    assert (dump_tables(api.app), snapshot(folder)) == (tables, files)
    # Not even a key holding the folder's datasource, while the database file's is beyond it;
    # a key holding every one that reads there may, and the organisation's own key.
    most = api.create_key(org, [Permission.MANAGE_DATASOURCES], datasource_ids=[alias, theirs])
    refused = put(api, most, f"/datasources/{alias}/files/u.csv", ORDERS_CSV)
    assert error_of(refused, 403)["code"] == "datasource_scope_restricted"
    every = [alias, theirs, database]
    all_three = api.create_key(org, [Permission.MANAGE_DATASOURCES], datasource_ids=every)
    assert put(api, all_three, f"/datasources/{alias}/files/u.csv", ORDERS_CSV).status_code == 201
    assert put(api, org.key, f"/datasources/{alias}/files/v.csv", ORDERS_CSV).status_code == 201


def test_deleting_a_datasource_leaves_its_place_while_another_reads_it_through_a_link(api):
    """The organisation's key pointed B at A's own place through a link: deleting A, even with a
    key restricted to it, removed the folder B reads (found by the second outside probe)."""
    org = api.create_org()
    mine = _files_datasource(api, org, "mine")
    (api.area(org) / "alias").symlink_to(api.area(org) / "datasources" / mine)
    reader = api.create_datasource(org.key, name="reader", database_type="files", database="alias")
    key = api.create_key(org, [Permission.MANAGE_DATASOURCES], datasource_ids=[mine])
    assert api.delete(f"/datasources/{mine}", key).status_code == 204
    listed = api.get(f"/datasources/{reader['id']}/files", org.key)
    assert listed.status_code == 200, listed.text
    assert [f["id"] for f in listed.json()["data"]] == ["t.csv"]


def test_an_upload_commits_only_if_no_datasource_beyond_its_key_reads_there_by_then(api):
    """Decided, then the organisation's key pointed another datasource at the folder while the
    body streamed: the commit asks again (found by the second outside probe: 201)."""
    org = api.create_org()
    mine = _files_datasource(api, org, "mine")
    folder = api.area(org) / "datasources" / mine
    state = api.app.state
    with decided_upload(api, org, mine, ORDERS_CSV, scope=[mine]) as upload:
        api.create_datasource(
            org.key, name="reader", database_type="files", database=f"datasources/{mine}"
        )
        with pytest.raises(Forbidden):
            uploads.commit_upload(state.sessions, state.settings, upload)
    assert sorted(path.name for path in folder.iterdir()) == ["t.csv"]


def test_a_datasource_moved_off_its_own_place_takes_it_along_when_deleted(api):
    """The outside probe's case: pointed elsewhere, then deleted, a datasource left its own
    place behind, its uploads out of every listing but counted in the quota. It goes now, unless
    another datasource reads it."""
    org = api.create_org()
    area = api.area(org)
    (area / "elsewhere").mkdir()
    moved = _files_datasource(api, org, "moved")
    assert _repoint(api, org.key, moved, database="elsewhere").status_code == 200
    assert (area / "datasources" / moved / "t.csv").is_file()
    assert api.delete(f"/datasources/{moved}", org.key).status_code == 204
    assert not (area / "datasources" / moved).exists()

    kept = _files_datasource(api, org, "kept")
    assert _repoint(api, org.key, kept, database="elsewhere").status_code == 200
    reader = api.create_datasource(
        org.key, name="reader", database_type="files", database=f"datasources/{kept}"
    )
    assert api.delete(f"/datasources/{kept}", org.key).status_code == 204
    listed = api.get(f"/datasources/{reader['id']}/files", org.key).json()["data"]
    assert [f["id"] for f in listed] == ["t.csv"]
