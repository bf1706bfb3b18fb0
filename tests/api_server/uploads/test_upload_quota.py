"""The organisation's storage quota at upload time: stored results and files placed in the area
count against it; an upload that does not fit is 413 and writes nothing.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from api_server.services import uploads
from shared.db.models import Execution, utcnow
from shared.lifecycle import ExecutionStatus, ExecutionType
from shared.organization_rows import (
    count_stored_bytes,
    note_area_changed,
    stored_bytes_and_area_generation,
)
from shared.storage_quota import (
    AREA_WALK_MAX_AGE_SECONDS,
    MIB,
    UPLOAD_TEMP_PREFIX,
    UPLOAD_TEMP_SUFFIX,
    StorageQuotaExceeded,
    locked_storage_usage,
    storage_usage,
    walk_area,
)
from shared.tokens import Scope, new_data_key
from tests.support.factories import Api, Org, resource
from tests.support.uploads import (
    ORDERS_CSV,
    SQLITE_ONLY,
    decided_upload,
    error_of,
    files_datasource,
    put,
    snapshot,
)


def _store_result(api: Api, org: Org, size: int) -> str:
    """A completed execution whose stored result takes ``size`` bytes, counted as a worker's
    completion counts it; its id."""
    execution_id = str(uuid.uuid4())
    with api.app.state.sessions.begin() as session:
        session.add(
            Execution(
                id=execution_id,
                organization_id=org.id,
                datasource_id=org.sample_datasource_id,
                execution_type=ExecutionType.SQL_QUERY,
                status=ExecutionStatus.COMPLETED,
                completed_at=utcnow(),
                result_size=size,
                data_key=new_data_key(Scope.EXECUTION_RESULT),
            )
        )
        session.flush()
        count_stored_bytes(session, org.id, size)
    return execution_id


def test_an_upload_over_the_quota_is_413_and_writes_nothing(api):
    """Stored results count: with 2 MiB - 1 KiB of them stored, a 2 KiB upload does not fit,
    declared or streamed; once the result is purged, it does."""
    org = api.create_org()
    other = api.create_org("Other")
    ds, folder = files_datasource(api, org)
    execution_id = _store_result(api, org, 2 * MIB - 1024 - len(ORDERS_CSV))
    _store_result(api, other, 2 * MIB)  # another organisation's results do not count here
    body = b"a\n" + b"12345\n" * 340
    before = snapshot(folder)
    for content in (body, iter([body[:10], body[10:]])):
        answer = put(api, org.key, f"/datasources/{ds}/files/more.csv", content)
        error = error_of(answer, 413)
        assert error["code"] == "storage_quota_exceeded", error
        assert snapshot(folder) == before
    listing = api.get(f"/datasources/{ds}/files", org.key).json()["meta"]["storage"]
    assert listing["results_bytes"] == 2 * MIB - 1024 - len(ORDERS_CSV)
    assert api.delete(f"/executions/{execution_id}", org.key).status_code == 204
    assert put(api, org.key, f"/datasources/{ds}/files/more.csv", body).status_code == 201


@SQLITE_ONLY
def test_files_in_the_area_count_against_the_quota(api):
    org = api.create_org()
    ds, _ = files_datasource(api, org)
    with open(api.area(org) / "filler.bin", "wb") as filler:  # sparse: it costs no disk here
        filler.truncate(2 * MIB - len(ORDERS_CSV) - 100)
    answer = put(api, org.key, f"/datasources/{ds}/files/more.csv", b"a\n" + b"1\n" * 60)
    assert error_of(answer, 413)["code"] == "storage_quota_exceeded"
    assert put(api, org.key, f"/datasources/{ds}/files/more.csv", b"a\n1\n").status_code == 201


@SQLITE_ONLY
def test_uploads_still_arriving_count_for_nothing_until_committed(api):
    """Each upload's commit counted the temporary files of the others still arriving, so of
    several at once that did not all fit, all could be refused, told of more in use than the
    quota (found by the outside probe). What is stored plus this upload decides."""
    org = api.create_org()
    ds, folder = files_datasource(api, org)
    arriving = folder / f"{UPLOAD_TEMP_PREFIX}{'0' * 24}{UPLOAD_TEMP_SUFFIX}"
    with open(arriving, "wb") as part:  # sparse: another upload, most of the quota so far
        part.truncate(2 * MIB - 100)
    body = b"a\n" + b"1\n" * 60
    answer = put(api, org.key, f"/datasources/{ds}/files/more.csv", body)
    assert answer.status_code == 201, answer.text
    assert answer.json()["meta"]["storage"]["files_bytes"] == len(ORDERS_CSV) + len(body)
    with open(api.area(org) / "filler.bin", "wb") as filler:  # sparse, stored
        filler.truncate(MIB + MIB // 2)
    too_much = put(api, org.key, f"/datasources/{ds}/files/big.csv", b"a\n" + b"1\n" * 300_000)
    stored = (MIB + MIB // 2 + len(ORDERS_CSV) + len(body)) / MIB  # the other upload not in it
    assert f"{stored:.1f} MiB of 2 MiB are in use" in error_of(too_much, 413)["detail"]
    assert arriving.exists()  # another upload's file is its own to remove


@SQLITE_ONLY
def test_the_commit_refuses_an_upload_that_no_longer_fits(api):
    """What another upload committed after this one was decided counts at this one's commit:
    stored bytes plus this upload, never past the quota."""
    org = api.create_org()
    ds, folder = files_datasource(api, org)
    state = api.app.state
    body = b"a\n" + b"1\n" * 100_000  # 0.2 MiB: fits when decided
    with decided_upload(api, org, ds, body) as upload:
        with open(api.area(org) / "committed_meanwhile.bin", "wb") as other:  # sparse
            other.truncate(2 * MIB - len(ORDERS_CSV) - len(body) + 1)
        with state.sessions.begin() as session:  # as the other upload's commit does
            note_area_changed(session, org.id)
        with pytest.raises(StorageQuotaExceeded):
            uploads.commit_upload(state.sessions, state.settings, upload)
    assert sorted(path.name for path in folder.iterdir()) == ["orders.csv"]


def test_an_upload_commit_waits_for_a_result_being_stored_and_counts_it(api):
    """A worker stores a result under the organisation's lock after checking the quota there;
    an upload's commit takes the same lock, so the two cannot each see the other's bytes
    missing and jointly pass the quota: the commit waits, then counts the result."""
    org = api.create_org()
    ds, folder = files_datasource(api, org)
    state = api.app.state
    body = b"a\n" + b"1\n" * 100_000  # 0.2 MiB: fits when decided
    # The session is the worker's transaction, still open.
    with decided_upload(api, org, ds, body) as upload, state.sessions() as session:
        walked = walk_area(state.sessions, state.settings, org.id)
        usage = locked_storage_usage(session, state.settings, org.id, walked)
        count_stored_bytes(session, org.id, usage.remaining_bytes - len(body) + 1)
        with ThreadPoolExecutor(1) as pool:
            commit = pool.submit(uploads.commit_upload, state.sessions, state.settings, upload)
            with pytest.raises(TimeoutError):
                commit.result(timeout=0.5)  # waits for the worker's lock
            session.commit()
            with pytest.raises(StorageQuotaExceeded):
                commit.result(timeout=30)
    assert sorted(path.name for path in folder.iterdir()) == ["orders.csv"]


def _area_generation(api: Api, org: Org) -> int:
    with api.app.state.sessions() as session:
        return stored_bytes_and_area_generation(session, org.id)[1]


def test_every_change_to_the_area_through_the_api_makes_the_next_check_walk_again(api):
    """The quota's checks reuse a walk of the area (up to 10 s old) only while the area's
    generation is the one it saw: each upload, file deletion and datasource deletion raises it,
    so a data server's check right after counts the change."""
    org = api.create_org()
    ds, _ = files_datasource(api, org)
    settings = api.app.state.settings

    def before_a_run() -> int:  # a worker's check, which may reuse a walk of up to 10 s
        with api.app.state.sessions() as session:
            usage = storage_usage(
                session, settings, org.id, files_max_age=AREA_WALK_MAX_AGE_SECONDS
            )
        return usage.files_bytes

    before = before_a_run()
    generation = _area_generation(api, org)
    assert put(api, org.key, f"/datasources/{ds}/files/more.csv", b"a\n1\n").status_code == 201
    assert _area_generation(api, org) > generation
    assert before_a_run() == before + len(b"a\n1\n")
    generation = _area_generation(api, org)

    assert api.delete(f"/datasources/{ds}/files/more.csv", org.key).status_code == 200
    assert _area_generation(api, org) > generation
    generation = _area_generation(api, org)

    created = api.post(
        "/datasources", org.key, resource("datasources", name="own", database_type="files")
    )
    own = created.json()["data"]["id"]  # with its own place, made by the server
    assert put(api, org.key, f"/datasources/{own}/files/x.csv", b"a\n1\n").status_code == 201
    generation = _area_generation(api, org)
    assert api.delete(f"/datasources/{own}", org.key).status_code == 204  # and its own folder
    assert _area_generation(api, org) > generation
