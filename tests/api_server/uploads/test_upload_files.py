"""Uploading, listing, showing and deleting a datasource's files and replacing a database file: an
upload is committed whole and queues a refresh; deleting a datasource deletes its own place.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import threading
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select

from api_server.services import uploads
from shared.db.models import AuditEvent, Execution
from shared.errors import Unauthorized
from shared.lifecycle import ExecutionType
from shared.storage_quota import MIB, UPLOAD_TEMP_PREFIX, UPLOAD_TEMP_SUFFIX
from tests.support.factories import Api, Org, dump_tables, resource
from tests.support.uploads import (
    ORDERS_CSV,
    SQLITE_ONLY,
    decided_upload,
    duckdb_bytes,
    error_of,
    files_datasource,
    put,
)


def test_an_upload_creates_then_replaces_a_file_and_queues_a_refresh(api):
    org = api.create_org()
    ds, folder = files_datasource(api, org)
    created = put(api, org.key, f"/datasources/{ds}/files/items.csv", b"item,qty\nx,1\n")
    assert created.status_code == 201, created.text
    assert created.headers["location"] == f"/datasources/{ds}/files/items.csv"
    document = created.json()
    assert document["data"]["type"] == "datasource_files"
    assert document["data"]["attributes"]["size"] == 13
    assert (folder / "items.csv").read_bytes() == b"item,qty\nx,1\n"
    replaced = put(api, org.key, f"/datasources/{ds}/files/items.csv", b"item,qty\ny,2\nz,3\n")
    assert replaced.status_code == 200, replaced.text
    assert (folder / "items.csv").read_bytes() == b"item,qty\ny,2\nz,3\n"
    refresh_id = replaced.json()["meta"]["refresh_execution_id"]
    with api.app.state.sessions() as session:
        refresh = session.get(Execution, refresh_id)
        assert refresh is not None and refresh.execution_type == ExecutionType.DATASOURCE_REFRESH
        assert refresh.datasource_id == ds
    storage = replaced.json()["meta"]["storage"]
    assert storage["files_bytes"] == len(ORDERS_CSV) + 17
    assert storage["quota_bytes"] == 2 * MIB


def test_changes_while_a_refresh_waits_share_it_and_one_after_its_start_queues_another(api):
    """A queued refresh lists the folder once claimed, so it serves every change made before:
    400 uploads at once queued 400 refreshes, each listing the whole growing folder, and the
    datasource's own queries waited behind them (found by the outside probe)."""
    org = api.create_org()
    ds, _ = files_datasource(api, org)

    def refresh_of(answer) -> str:
        assert answer.status_code in (200, 201), answer.text
        return answer.json()["meta"]["refresh_execution_id"]

    first = refresh_of(put(api, org.key, f"/datasources/{ds}/files/a.csv", ORDERS_CSV))
    assert refresh_of(put(api, org.key, f"/datasources/{ds}/files/b.csv", ORDERS_CSV)) == first
    assert refresh_of(api.delete(f"/datasources/{ds}/files/a.csv", org.key)) == first
    with api.app.state.sessions.begin() as session:  # a data server claims it
        session.get(Execution, first).status = "running"
    later = refresh_of(put(api, org.key, f"/datasources/{ds}/files/c.csv", ORDERS_CSV))
    assert later != first
    with api.app.state.sessions() as session:
        queued = session.scalars(
            select(Execution.id).where(
                Execution.datasource_id == ds,
                Execution.execution_type == ExecutionType.DATASOURCE_REFRESH,
                Execution.status == "starting",
            )
        ).all()
    assert queued == [later]


@SQLITE_ONLY
def test_files_are_listed_shown_and_deleted(api):
    org = api.create_org()
    ds, folder = files_datasource(api, org)
    (folder / "notes.txt").write_text("not a view")  # not one of the datasource's files
    assert put(api, org.key, f"/datasources/{ds}/files/b.json", b'[{"a": 1}]').status_code == 415
    json_put = put(
        api, org.key, f"/datasources/{ds}/files/b.json", b'[{"a": 1}]', "application/json"
    )
    assert json_put.status_code == 201, json_put.text
    listing = api.get(f"/datasources/{ds}/files?sort=-name", org.key).json()
    assert [item["id"] for item in listing["data"]] == ["orders.csv", "b.json"]
    assert listing["meta"]["total"] == 2
    assert listing["meta"]["storage"]["files_bytes"] == len(ORDERS_CSV) + 10 + 10
    shown = api.get(f"/datasources/{ds}/files/b.json", org.key).json()["data"]
    assert shown["attributes"]["format"] == "json"
    deleted = api.delete(f"/datasources/{ds}/files/b.json", org.key)
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["meta"]["refresh_execution_id"]
    assert not (folder / "b.json").exists()
    assert error_of(api.delete(f"/datasources/{ds}/files/b.json", org.key), 404)["code"] == (
        "file_not_found"
    )
    assert error_of(api.get(f"/datasources/{ds}/files/b.json", org.key), 404)["code"] == (
        "file_not_found"
    )


@SQLITE_ONLY
def test_a_database_file_is_replaced_whole(api, tmp_path):
    org = api.create_org()
    ds = api.create_datasource(org.key, name="db")["id"]
    body = duckdb_bytes(tmp_path, "CREATE TABLE t AS SELECT 42 AS answer")
    answer = put(api, org.key, f"/datasources/{ds}/database_file", body, "application/octet-stream")
    assert answer.status_code == 200, answer.text
    assert answer.json()["data"]["attributes"]["format"] == "duckdb"
    assert (api.area(org) / "shop.duckdb").read_bytes() == body
    shown = api.get(f"/datasources/{ds}/database_file", org.key).json()["data"]
    assert shown["attributes"]["size"] == len(body)


@SQLITE_ONLY
def test_a_duckdb_file_of_every_kind_of_column_is_accepted(api, tmp_path):
    """Its check reads a row of each table as text: a TIMESTAMPTZ read as a Python object needed
    pytz, which is not installed, and the upload was refused (found by an outside probe)."""
    org = api.create_org()
    ds = api.create_datasource(org.key, name="db")["id"]
    body = duckdb_bytes(
        tmp_path,
        "CREATE TYPE mood AS ENUM ('ok', 'sad');"
        "CREATE TABLE t AS SELECT TIMESTAMPTZ '2026-12-05 01:00:00+01' AS tstz,"
        " TIMESTAMP '2026-12-05 01:00:00' AS ts, DATE '2026-12-05' AS d, TIME '01:00' AS tm,"
        " INTERVAL 3 DAY AS span, 1.25::DECIMAL(18, 3) AS money, uuid() AS id,"
        " [1, 2] AS list, {'a': 1} AS struct, MAP {'k': 'v'} AS map, 'x'::BLOB AS bytes,"
        " 'ok'::mood AS mood, 170141183460469231731687303715884105727::HUGEINT AS huge",
    )
    answer = put(api, org.key, f"/datasources/{ds}/database_file", body, "application/octet-stream")
    assert answer.status_code == 200, answer.text


def _own_datasource(api: Api, org: Org, database_type: str, **attributes: object) -> tuple:
    created = api.post(
        "/datasources",
        org.key,
        resource("datasources", name=database_type, database_type=database_type, **attributes),
    )
    assert created.status_code == 201, created.text
    data = created.json()["data"]
    return data["id"], api.area(org) / data["attributes"]["database"]


def test_deleting_a_datasource_deletes_the_files_of_its_own_place(api, tmp_path):
    """Its uploads stayed on disk, counted against the quota, reachable by nobody but a new
    datasource given the old path (found by the outside probe)."""
    org = api.create_org()
    ds, folder = _own_datasource(api, org, "files")
    assert put(api, org.key, f"/datasources/{ds}/files/o.csv", ORDERS_CSV).status_code == 201
    duck, database = _own_datasource(api, org, "duckdb")
    body = duckdb_bytes(tmp_path, "CREATE TABLE t AS SELECT 1 AS v")
    answer = put(
        api, org.key, f"/datasources/{duck}/database_file", body, "application/octet-stream"
    )
    assert answer.status_code == 201, answer.text
    assert folder.is_dir() and database.is_file()

    assert api.delete(f"/datasources/{ds}", org.key).status_code == 204
    assert api.delete(f"/datasources/{duck}", org.key).status_code == 204
    assert not folder.exists() and not database.exists()
    usage = api.get(f"/datasources/{files_datasource(api, org)[0]}/files", org.key).json()
    assert usage["meta"]["storage"]["files_bytes"] == len(ORDERS_CSV)  # the new one's file only


@pytest.mark.parametrize("deleted", ["while the file is checked", "after it is checked"])
def test_an_upload_whose_datasource_is_deleted_meanwhile_is_404_and_stores_nothing(
    api, monkeypatch, deleted
):
    """Before, an upload whose datasource (and own place) a delete removed while the file was
    being checked answered 422 file_not_parsable ("No files found that match the pattern")."""
    org = api.create_org()
    ds, folder = _own_datasource(api, org, "files")
    checking, go_on, real_check = threading.Event(), threading.Event(), uploads.check_file

    def check_file(*args, **kwargs):
        if deleted == "after it is checked":
            real_check(*args, **kwargs)
        checking.set()
        assert go_on.wait(30)
        if deleted == "while the file is checked":
            real_check(*args, **kwargs)

    monkeypatch.setattr(uploads, "check_file", check_file)
    answers = {}
    upload = threading.Thread(
        target=lambda: answers.setdefault(
            "upload", put(api, org.key, f"/datasources/{ds}/files/o.csv", ORDERS_CSV)
        )
    )
    upload.start()
    assert checking.wait(30)
    assert api.delete(f"/datasources/{ds}", org.key).status_code == 204
    go_on.set()
    upload.join(30)
    assert error_of(answers["upload"], 404)["code"] == "not_found"
    assert not folder.exists()
    assert not list(api.area(org).rglob("o.csv"))


def test_an_upload_whose_datasource_moves_meanwhile_is_409_and_stores_nothing(api, monkeypatch):
    """Found by the outside probe: a PATCH of the datasource's ``database`` while the body
    arrived, and the upload answered 201 with a Location that was a 404, its file stored in the
    old folder, out of every listing and counted in the quota."""
    org = api.create_org()
    ds, _ = files_datasource(api, org, "before")
    (api.area(org) / "after").mkdir()
    (api.area(org) / "after" / "other.csv").write_bytes(ORDERS_CSV)
    real_check = uploads.check_file

    def moved_while_checked(*args, **kwargs):
        real_check(*args, **kwargs)
        patched = api.patch(
            f"/datasources/{ds}", org.key, resource("datasources", ds, database="after")
        )
        assert patched.status_code == 200, patched.text

    monkeypatch.setattr(uploads, "check_file", moved_while_checked)
    answer = put(api, org.key, f"/datasources/{ds}/files/late.csv", ORDERS_CSV)
    assert error_of(answer, 409)["code"] == "datasource_changed"
    assert not list(api.area(org).rglob("late.csv"))


@pytest.mark.parametrize("revoked", ["deleted", "disabled"])
def test_an_upload_whose_key_is_revoked_before_it_commits_is_401_and_stores_nothing(api, revoked):
    """The key was checked when the request began only: a body trickling in at the slowest pace
    allowed (a gibibyte over days) was stored after its key was deleted or disabled (an outside
    probe)."""
    org = api.create_org()
    ds, folder = files_datasource(api, org)
    state = api.app.state
    with decided_upload(api, org, ds, b"a\n1\n") as upload:
        key_id = upload.target.writer.api_key_id
        path = f"/api_keys/{key_id}"
        if revoked == "deleted":
            assert api.delete(path, org.key).status_code == 204
        else:
            disabled = api.patch(path, org.key, resource("api_keys", key_id, enabled=False))
            assert disabled.status_code == 200, disabled.text
        with pytest.raises(Unauthorized):
            uploads.commit_upload(state.sessions, state.settings, upload)
    assert not (folder / "late.csv").exists()
    assert not [path for path in folder.iterdir() if path.name.startswith(UPLOAD_TEMP_PREFIX)]


def test_a_place_another_datasource_reads_stays(api):
    org = api.create_org()
    ds, folder = _own_datasource(api, org, "files")
    assert put(api, org.key, f"/datasources/{ds}/files/o.csv", ORDERS_CSV).status_code == 201
    relative = folder.relative_to(api.area(org)).as_posix()
    api.create_datasource(org.key, name="reader", database_type="files", database=relative)
    assert api.delete(f"/datasources/{ds}", org.key).status_code == 204
    assert (folder / "o.csv").read_bytes() == ORDERS_CSV


@SQLITE_ONLY
def test_uploads_and_deletes_are_audited_without_their_bodies(api):
    org = api.create_org()
    ds, _ = files_datasource(api, org)
    marker = f"marker-{uuid.uuid4().hex}"
    body = f"secretish\n{marker}\n".encode()
    assert put(api, org.key, f"/datasources/{ds}/files/m.csv", body).status_code == 201
    assert api.delete(f"/datasources/{ds}/files/m.csv", org.key).status_code == 200
    with api.app.state.sessions() as session:
        actions = session.scalars(
            select(AuditEvent.action).where(AuditEvent.organization_id == org.id)
        ).all()
    assert {"datasource_file.upload", "datasource_file.delete"} <= set(actions)
    assert marker not in repr(dump_tables(api.app))


def test_an_upload_whose_file_is_deleted_just_after_it_is_stored_is_answered_and_audited(
    api, monkeypatch
):
    """Found by the outside probe (PUT and DELETE of one name at once): the answer's entry was
    read by name once the lock was let go, found the file deleted, and failed (a 500), after the
    file had been stored and before the upload was audited."""
    org = api.create_org()
    ds, folder = files_datasource(api, org)
    real_note = uploads.note_area_changed

    def noted_then_deleted(session, organization_id):
        real_note(session, organization_id)
        (folder / "gone.csv").unlink()  # a DELETE of the same name, just after the rename

    monkeypatch.setattr(uploads, "note_area_changed", noted_then_deleted)
    created = put(api, org.key, f"/datasources/{ds}/files/gone.csv", b"item,qty\nx,1\n")
    assert created.status_code == 201, created.text
    assert created.json()["data"]["attributes"]["size"] == 13
    with api.app.state.sessions() as session:
        actions = session.scalars(
            select(AuditEvent.action).where(AuditEvent.organization_id == org.id)
        ).all()
    assert "datasource_file.upload" in actions


def test_the_temporary_files_of_uploads_whose_server_died_are_removed_by_the_next(api):
    """A SIGKILLed server leaves its upload's temporary file behind, holding no lock: the next
    upload into the folder removes it once it is left untouched for ORPHANED_TEMP_SECONDS. One a
    live upload holds stays, however old (a slow upload may take days), and so does a fresh one
    (its upload may have just made it, or run on a server that takes no lock)."""
    org = api.create_org()
    ds, folder = files_datasource(api, org)
    long_ago = time.time() - uploads.ORPHANED_TEMP_SECONDS - 60
    days_ago = time.time() - uploads.STALE_TEMP_SECONDS - 60

    def temporary(name: str, mtime: float) -> Path:
        path = folder / f"{UPLOAD_TEMP_PREFIX}{name}{UPLOAD_TEMP_SUFFIX}"
        path.write_bytes(b"a\n1\n")
        os.utime(path, (mtime, mtime))
        return path

    orphaned = temporary("orphaned", long_ago)
    fresh = temporary("fresh", time.time())
    held = temporary("held", days_ago)
    with open(held, "rb+") as holder:  # as a live upload holds its own
        fcntl.flock(holder, fcntl.LOCK_SH)
        assert put(api, org.key, f"/datasources/{ds}/files/next.csv", b"a\n1\n").status_code == 201
        assert not orphaned.exists()
        assert fresh.exists() and held.exists()


def test_an_upload_in_progress_is_never_taken_for_an_orphan(api):
    """Its lock is held from its temporary file's creation until it ends, through the check
    of its content: another upload into the folder leaves it, however long it was idle."""
    org = api.create_org()
    ds, folder = files_datasource(api, org)
    state = api.app.state
    with decided_upload(api, org, ds, b"a\n1\n") as upload:
        upload.finish()  # written and on disk, as before its check
        days_ago = time.time() - uploads.STALE_TEMP_SECONDS - 60
        os.utime(upload.temp_path, (days_ago, days_ago))
        assert put(api, org.key, f"/datasources/{ds}/files/next.csv", b"a\n1\n").status_code == 201
        assert upload.temp_path.exists()
        uploads.commit_upload(state.sessions, state.settings, upload)
    assert (folder / "late.csv").read_bytes() == b"a\n1\n"


def test_an_upload_is_held_by_the_server_until_its_file_is_removed_or_stored(api, monkeypatch):
    """What the server's shutdown waits for (below): each upload, from its first byte until its
    temporary file is gone or in place."""
    org = api.create_org()
    ds, _ = files_datasource(api, org)
    held_while_checked: list[int] = []
    real_check = uploads.check_file

    def counted(*args, **kwargs):
        held_while_checked.append(len(api.app.state.open_uploads))
        return real_check(*args, **kwargs)

    monkeypatch.setattr(uploads, "check_file", counted)
    assert put(api, org.key, f"/datasources/{ds}/files/h.csv", ORDERS_CSV).status_code == 201
    assert held_while_checked == [1] and not api.app.state.open_uploads


def test_the_api_servers_shutdown_waits_for_its_uploads(settings, monkeypatch):
    from starlette.testclient import TestClient

    from api_server import app as api_app

    waited: list[set] = []

    async def recorded(open_uploads: set) -> None:
        waited.append(open_uploads)

    monkeypatch.setattr(api_app, "_uploads_closed", recorded)
    app = api_app.create_app(settings)
    with TestClient(app):
        pass
    assert waited == [app.state.open_uploads]


def test_a_stopping_api_server_waits_for_its_cancelled_uploads_to_remove_their_files():
    """Found by the outside probe: uvicorn cancels the requests still running past its graceful
    time and then ends the process, before a cancelled upload's task ran again to remove its
    temporary file. The application's shutdown waits for the uploads it holds."""
    from api_server.app import _uploads_closed

    held: set[object] = {object()}

    async def stopping() -> float:
        async def removed_later() -> None:
            await asyncio.sleep(0.2)
            held.clear()

        cleanup = asyncio.create_task(removed_later())
        started = time.monotonic()
        await _uploads_closed(held)
        await cleanup
        return time.monotonic() - started

    took = asyncio.run(stopping())
    assert not held and took >= 0.2
