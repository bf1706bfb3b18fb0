"""Once purged, cancelled or deleted, nothing stays stored or served: every interleaving of the API
server's purge, cancel and datasource delete with a worker's upload and commit, driven in process
at the exact point where the race happens. A worker runs with a stand-in for the sandbox pool that
writes a real Arrow file; a data server app in process serves the grants. Runs on SQLite and
PostgreSQL, with the local and the S3-compatible result store.

After every test, each organisation's stored-bytes counter must equal the sum over its stored
results (``counters_match_what_is_stored``): every interleaving here is also one for the counter."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pyarrow as pa
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.exc import OperationalError
from starlette.testclient import TestClient

from api_server.services import executions as execution_service
from data_server import janitor, representations
from data_server.app import create_app as create_data_app
from data_server.engine import QueryFailed, QueryOutcome
from data_server.worker import Worker
from shared import lifecycle, organization_rows, storage_quota
from shared.db.models import Execution, Organization, utcnow
from shared.lifecycle import transitions
from shared.storage_quota import charge_representation
from tests.support.data_http import stored_when_read
from tests.support.factories import auth

FAR_FUTURE = time.time() + 365 * 24 * 3600  # every stored object was written before this


@pytest.fixture(params=["local", "s3"])
def settings(request, settings, monkeypatch):
    """The conftest's settings, with results in a local directory or in an S3 bucket."""
    if request.param == "local":
        return settings
    object_store = request.getfixturevalue("object_store")
    env = object_store.settings_env(object_store.new_bucket_url())
    for name, value in env.items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    return settings.with_overrides(
        results_url=env["DATAFERRY_RESULTS_URL"],
        s3_endpoint_url=env["DATAFERRY_S3_ENDPOINT_URL"],
        s3_region=env["DATAFERRY_S3_REGION"],
    )


class StandInPool:
    """The sandbox pool's interface without DuckDB: a query writes one row as an Arrow file.

    ``during`` runs after the query finished and before the worker publishes: the moment a cancel
    that the heartbeat has not relayed yet, or a delete, lands. ``failure`` makes the run fail."""

    def __init__(self) -> None:
        self.during: Callable[[], None] | None = None
        self.failure: QueryFailed | None = None

    def run(self, job: Any, cancel_event: Any = None) -> QueryOutcome:
        table = pa.table({"one": [1]})
        with pa.OSFile(job.result_path, "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
            w.write_table(table)
        self._interleave()
        if self.failure is not None:
            raise self.failure
        size = os.path.getsize(job.result_path)
        return QueryOutcome(rows=1, columns=1, size_bytes=size, truncated=False)

    def schema_of(self, spec: Any, limits: Any, cancel_event: Any = None) -> dict[str, Any]:
        self._interleave()
        return {"schemas": [{"name": "main", "tables": [{"name": "t", "row_count": 1}]}]}

    def _interleave(self) -> None:
        during, self.during = self.during, None
        if during is not None:
            during()


@pytest.fixture
def pool() -> StandInPool:
    return StandInPool()


@pytest.fixture
def worker(api, pool) -> Worker:
    state = api.app.state
    return Worker(api.settings, state.sessions, state.result_store, pool)


@pytest.fixture
def data_client(api) -> Iterator[TestClient]:
    with TestClient(create_data_app(api.settings), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def org(api):
    org = api.create_org()
    _queue_nothing_else(api)
    return org


@pytest.fixture(autouse=True)
def counters_match_what_is_stored(api):
    """Every organisation's counter equals the sum it stands for, once the test is done."""
    yield
    counted, summed = _counters(api)
    assert counted == summed


def _counters(api) -> tuple[dict[str, int], dict[str, int]]:
    """Each organisation's counter, and the sum over its stored results that it stands for."""
    stored = func.coalesce(Execution.result_size, 0) + Execution.variants_size
    with api.app.state.sessions() as session:
        counted = dict(
            session.execute(select(Organization.id, Organization.stored_results_bytes)).all()
        )
        summed = dict.fromkeys(counted, 0) | dict(
            session.execute(
                select(Execution.organization_id, func.sum(stored))
                .where(Execution.data_key.is_not(None), Execution.data_purged_at.is_(None))
                .group_by(Execution.organization_id)
            ).all()
        )
    return counted, {organization: int(total) for organization, total in summed.items()}


def _queue_nothing_else(api) -> None:
    """Take queued executions (the sample's first refresh) out of the way of the next claim."""
    with api.app.state.sessions.begin() as session:
        session.execute(
            update(Execution).where(Execution.status == "starting").values(status="failed")
        )


def _stored(api) -> list[str]:
    store = api.app.state.result_store
    return store.keys_older_than("results/", FAR_FUTURE) + store.keys_older_than(
        "schemas/", FAR_FUTURE
    )


def _run_sql(api, org, datasource_id: str | None = None) -> str:
    response = api.client.post(
        f"/datasources/{datasource_id or org.sample_datasource_id}/executions",
        json={"sql_query": "SELECT 1 AS one"},
        headers=auth(org.key),
    )
    assert response.status_code == 200, response.text
    return response.json()["data"]["id"]


def _claim(api, execution_id: str) -> lifecycle.Claim:
    claim = lifecycle.claim_next(api.app.state.sessions, "test-worker", api.settings)
    assert claim is not None and claim.execution_id == execution_id
    return claim


def _row(api, execution_id: str) -> Execution | None:
    with api.app.state.sessions() as session:
        return session.get(Execution, execution_id)


def _fetch(data_client, grant: dict[str, Any]) -> Any:
    response = data_client.get(
        f"/data/{grant['data_key']}",
        headers={"Authorization": f"Data {grant['data_access_token']}"},
    )
    stored_when_read()
    return response


def test_purge_between_upload_and_commit_leaves_no_object(api, org, worker, monkeypatch):
    execution_id = _run_sql(api, org)
    claim = _claim(api, execution_id)
    store, answers = api.app.state.result_store, []
    real_publish = store.publish

    def publish_then_purge(local_path, key, **how):
        real_publish(local_path, key, **how)
        answers.append(api.delete(f"/executions/{execution_id}", org.key).status_code)

    monkeypatch.setattr(store, "publish", publish_then_purge)
    worker._run(worker._track(claim))

    assert answers == [204]
    row = _row(api, execution_id)
    assert (row.status, row.data_key) == ("cancelled", None)
    assert _stored(api) == []
    gone = api.get(f"/executions/{execution_id}/data", org.key)  # purged: never any data
    assert gone.status_code == 404 and gone.json()["errors"][0]["code"] == "result_gone"


def test_purge_of_a_row_read_as_running_deletes_what_completed_meanwhile(
    api, org, worker, monkeypatch
):
    """The worker commits after the purge read the row as running: the purge must see it."""
    execution_id = _run_sql(api, org)
    claim = _claim(api, execution_id)
    real_get = execution_service.get_execution

    def read_then_worker_completes(*args, **kwargs):
        execution = real_get(*args, **kwargs)
        assert execution.status == "running"
        monkeypatch.setattr(execution_service, "get_execution", real_get)
        worker._run(worker._track(claim))
        return execution

    monkeypatch.setattr(execution_service, "get_execution", read_then_worker_completes)
    assert api.delete(f"/executions/{execution_id}", org.key).status_code == 204

    row = _row(api, execution_id)
    assert row.status == "completed" and row.data_purged_at is not None
    assert _stored(api) == []
    response = api.get(f"/executions/{execution_id}/data", org.key)
    assert response.status_code == 404
    assert response.json()["errors"][0]["code"] == "result_gone"


@pytest.mark.parametrize(
    "failure", [None, QueryFailed("timeout", "late")], ids=["query-completed", "query-failed"]
)
def test_a_cancel_answered_200_while_running_ends_cancelled(api, org, worker, pool, failure):
    """The query ends before the heartbeat relays the cancel: the cancel still wins."""
    execution_id = _run_sql(api, org)
    claim = _claim(api, execution_id)
    answers = []
    pool.during = lambda: answers.append(
        api.client.post(f"/executions/{execution_id}/cancel", headers=auth(org.key))
    )
    pool.failure = failure
    worker._run(worker._track(claim))

    assert [a.status_code for a in answers] == [200]
    assert answers[0].json()["data"]["attributes"]["execution_status"] == "running"
    row = _row(api, execution_id)
    assert (row.status, row.error_code, row.data_key) == ("cancelled", "cancelled", None)
    assert _stored(api) == []
    assert api.get(f"/executions/{execution_id}/data", org.key).status_code == 204


def test_a_purge_before_the_result_is_stored_is_result_gone_not_not_ready(api, org, worker):
    """Found by schemathesis: a purged execution that was still queued or running is cancelled
    and will never have data; Get Execution Data said 204 ("not ready yet") for it."""
    queued, running = _run_sql(api, org), _run_sql(api, org)
    _claim(api, queued)  # the older: the second stays queued
    for execution_id in (queued, running):
        assert api.delete(f"/executions/{execution_id}", org.key).status_code == 204
        gone = api.get(f"/executions/{execution_id}/data", org.key)
        assert gone.status_code == 404, gone.text
        assert gone.json()["errors"][0]["code"] == "result_gone"
        row = _row(api, execution_id)
        assert row.status == "cancelled" or row.cancel_requested  # the worker stops it


def test_a_cancel_that_reads_running_after_the_commit_is_409(api, org, worker, monkeypatch):
    """A 200 promises ``cancelled``: a cancel too late for that is refused, the result kept."""
    execution_id = _run_sql(api, org)
    claim = _claim(api, execution_id)
    real_get = execution_service.get_execution

    def read_then_worker_completes(*args, **kwargs):
        execution = real_get(*args, **kwargs)
        monkeypatch.setattr(execution_service, "get_execution", real_get)
        worker._run(worker._track(claim))
        return execution

    monkeypatch.setattr(execution_service, "get_execution", read_then_worker_completes)
    response = api.client.post(f"/executions/{execution_id}/cancel", headers=auth(org.key))

    assert response.status_code == 409, response.text
    assert response.json()["errors"][0]["code"] == "execution_finished"
    row = _row(api, execution_id)
    assert (row.status, row.cancel_requested) == ("completed", False)
    assert api.get(f"/executions/{execution_id}/data", org.key).status_code == 200


def test_deleting_a_datasource_deletes_its_results_and_schema_and_their_tokens_find_nothing(
    api, org, worker, data_client, monkeypatch
):
    # Store even this one-row result's JSON representation, so that its deletion is seen too.
    monkeypatch.setattr(representations, "SMALL_REPRESENTATION_BYTES", 0)
    ds = api.create_datasource(org.key)
    refresh_id = _row_ids(api, ds["id"])[0]  # creating it queued a refresh
    worker._run(worker._track(_claim(api, refresh_id)))
    execution_id = _run_sql(api, org, ds["id"])
    worker._run(worker._track(_claim(api, execution_id)))
    result_grant = api.get(f"/executions/{execution_id}/data", org.key).json()
    schema_grant = api.get(f"/datasources/{ds['id']}/schema", org.key).json()
    assert _fetch(data_client, result_grant).status_code == 200
    assert _fetch(data_client, schema_grant).status_code == 200
    # The Arrow file, the JSON variant the fetch materialised beside it, the schema.
    assert len(_stored(api)) == 3

    assert api.delete(f"/datasources/{ds['id']}", org.key).status_code == 204

    assert _stored(api) == []
    for grant in (result_grant, schema_grant):
        response = _fetch(data_client, grant)
        assert response.status_code == 404, response.text
        assert response.headers["content-type"] == "application/vnd.api+json"
        (error,) = response.json()["errors"]
        assert (error["status"], error["code"]) == ("404", "result_gone")
    assert api.get(f"/executions/{execution_id}", org.key).status_code == 404


def test_deleting_a_datasource_while_its_query_runs_leaves_nothing(api, org, worker, pool):
    ds = api.create_datasource(org.key)
    _queue_nothing_else(api)
    running_id, queued_id = _run_sql(api, org, ds["id"]), _run_sql(api, org, ds["id"])
    claim = _claim(api, running_id)
    answers = []
    pool.during = lambda: answers.append(api.delete(f"/datasources/{ds['id']}", org.key))
    worker._run(worker._track(claim))

    assert [a.status_code for a in answers] == [204]
    assert _row(api, running_id) is None and _row(api, queued_id) is None
    assert _stored(api) == []
    assert lifecycle.claim_next(api.app.state.sessions, "test-worker", api.settings) is None


def _row_ids(api, datasource_id: str) -> list[str]:
    with api.app.state.sessions() as session:
        return list(
            session.scalars(select(Execution.id).where(Execution.datasource_id == datasource_id))
        )


def test_a_store_that_fails_to_delete_does_not_fail_the_purge_and_the_sweep_finishes_it(
    api, org, worker, monkeypatch
):
    execution_id = _run_sql(api, org)
    worker._run(worker._track(_claim(api, execution_id)))
    store = api.app.state.result_store

    def unreachable(key):
        raise OSError("the store is unreachable")

    with monkeypatch.context() as patch:
        patch.setattr(store, "delete", unreachable)
        assert api.delete(f"/executions/{execution_id}", org.key).status_code == 204
    assert len(_stored(api)) == 1
    assert api.get(f"/executions/{execution_id}/data", org.key).status_code == 404

    later = time.time() + 2 * janitor.ORPHAN_GRACE_SECONDS
    assert janitor.remove_orphaned_objects(api.app.state.sessions, store, now=later) == 1
    assert _stored(api) == []


def test_the_stored_bytes_counter_follows_every_way_a_result_is_stored_or_forgotten(
    api, org, worker
):
    """Completion and stored representations add; a purge, retention's expiry, retention's
    deletion and a datasource's deletion take off; another organisation's counter never moves."""
    other = api.create_org("Other")
    _queue_nothing_else(api)
    sessions = api.app.state.sessions

    def counted(organization) -> int:
        counters, sums = _counters(api)
        assert counters == sums
        return counters[organization.id]

    def completed(organization) -> Execution:
        execution_id = _run_sql(api, organization)
        worker._run(worker._track(_claim(api, execution_id)))
        row = _row(api, execution_id)
        assert row is not None and row.status == "completed" and row.result_size
        return row

    first, second, third, theirs = completed(org), completed(org), completed(org), completed(other)
    size = first.result_size
    assert counted(org) == 3 * size and counted(other) == size

    assert charge_representation(sessions, api.settings, org.id, first.data_key, "csv", 1000)
    assert not charge_representation(sessions, api.settings, org.id, "res_gone", "csv", 1000)
    assert counted(org) == 3 * size + 1000
    # Two data servers encoding one format at once: both store it, it is counted once (found
    # by the outside probe: counted twice, the next run refused storage_quota_exceeded).
    assert charge_representation(sessions, api.settings, org.id, first.data_key, "csv", 1000)
    assert counted(org) == 3 * size + 1000
    assert charge_representation(sessions, api.settings, org.id, first.data_key, "json", 700)
    assert counted(org) == 3 * size + 1700
    assert _row(api, first.id).counted_variants == ["csv", "json"]

    assert api.delete(f"/executions/{first.id}", org.key).status_code == 204
    assert api.delete(f"/executions/{first.id}", org.key).status_code == 204  # nothing twice
    assert counted(org) == 2 * size

    long_ago = utcnow() - timedelta(hours=api.settings.execution_retention_hours + 1)
    with sessions.begin() as session:
        session.execute(
            update(Execution)
            .where(Execution.id.in_([second.id, theirs.id]))
            .values(completed_at=long_ago)
        )
    janitor.purge_expired_results(sessions, api.app.state.result_store, api.settings)
    assert counted(org) == size and counted(other) == 0

    with sessions.begin() as session:
        session.execute(
            update(Execution).where(Execution.id == third.id).values(created_at=long_ago)
        )
    janitor.delete_expired_executions(sessions, api.app.state.result_store, api.settings)
    assert _row(api, third.id) is None and counted(org) == 0

    completed(org), completed(other)
    assert counted(org) == size and counted(other) == size
    assert api.delete(f"/datasources/{org.sample_datasource_id}", org.key).status_code == 204
    assert counted(org) == 0 and counted(other) == size


def test_a_purge_and_a_charge_for_the_same_result_take_the_organisation_first(
    api, org, worker, monkeypatch
):
    """A purge locks the organisation before the execution, as a charge for one of its stored
    representations does. Driven into the one interleaving where the opposite order deadlocks
    (PostgreSQL would then fail one of them): the purge holds the execution's row and lets the
    charge in, which must now wait for the organisation instead of taking it."""
    execution_id = _run_sql(api, org)
    worker._run(worker._track(_claim(api, execution_id)))
    sessions = api.app.state.sessions
    charge_holds_organisation = threading.Event()
    answers: list[object] = []

    real_lock_organization = storage_quota.lock_organization

    def lock_then_tell(session, organization_id, **counting):
        locked = real_lock_organization(session, organization_id, **counting)
        charge_holds_organisation.set()
        return locked

    def charge() -> None:
        try:
            with sessions() as session:
                data_key = session.get(Execution, execution_id).data_key
            answers.append(
                storage_quota.charge_representation(
                    sessions, api.settings, org.id, data_key, "json", 10
                )
            )
        except Exception as exc:
            answers.append(exc)

    charger = threading.Thread(target=charge)
    real_row_lock = transitions._lock

    def lock_row_then_let_the_charge_in(session, execution):
        real_row_lock(session, execution)
        charger.start()
        charge_holds_organisation.wait(timeout=1)  # only the wrong order lets it in

    monkeypatch.setattr(storage_quota, "lock_organization", lock_then_tell)
    monkeypatch.setattr(transitions, "_lock", lock_row_then_let_the_charge_in)
    with sessions.begin() as session:
        lifecycle.purge_result(session, session.get(Execution, execution_id))
    charger.join(timeout=30)

    assert answers == [False]  # it came second and found the result purged
    assert _counters(api)[0][org.id] == 0


def test_a_lost_metadata_connection_hands_the_execution_back_instead_of_failing_it(
    api, org, worker, monkeypatch
):
    """A connection the database dropped between the claim and the run (a restart, an operator
    terminating backends) is no fault of the execution: it is queued again and then completes."""
    execution_id = _run_sql(api, org)
    claim = _claim(api, execution_id)
    lost = OperationalError(
        "SELECT 1", {}, Exception("server closed the connection"), connection_invalidated=True
    )

    def drops(*args, **kwargs):
        raise lost

    for_claim = worker.runner.specs.for_claim
    monkeypatch.setattr(worker.runner.specs, "for_claim", drops)
    worker._run(worker._track(claim))
    row = _row(api, execution_id)
    assert (row.status, row.lease_owner, row.error_code) == ("starting", None, None)

    monkeypatch.setattr(worker.runner.specs, "for_claim", for_claim)
    worker._run(worker._track(_claim(api, execution_id)))
    row = _row(api, execution_id)
    assert (row.status, row.attempt) == ("completed", 2)


def test_a_connection_lost_on_the_last_attempt_fails_the_execution(api, org, worker, monkeypatch):
    """Hand-backs count against ``max_attempts`` like the reaper's re-queues: a database that
    keeps dropping connections cannot keep an execution queued for ever."""
    monkeypatch.setattr(
        worker.runner, "settings", worker.runner.settings.with_overrides(max_attempts=1)
    )
    execution_id = _run_sql(api, org)
    lost = OperationalError(
        "SELECT 1", {}, Exception("server closed the connection"), connection_invalidated=True
    )

    def drops(*args, **kwargs):
        raise lost

    monkeypatch.setattr(worker.runner.specs, "for_claim", drops)
    worker._run(worker._track(_claim(api, execution_id)))
    row = _row(api, execution_id)
    assert (row.status, row.error_code, row.attempt) == ("failed", "internal_error", 1)


def test_executions_count_files_by_one_walk_until_the_api_changes_the_area(
    api, org, worker, monkeypatch
):
    """A walk takes 44 to 65 ms per 10,000 files: each execution walked its organisation's area
    twice (before it ran, and afresh when its result was stored). Both checks now count by a
    walk up to AREA_WALK_MAX_AGE_SECONDS old of the area's current generation."""
    walked: list[object] = []
    real_walk = storage_quota.tree_bytes
    monkeypatch.setattr(storage_quota, "_area_sizes", storage_quota.AreaSizes())
    monkeypatch.setattr(
        storage_quota, "tree_bytes", lambda folder: walked.append(folder) or real_walk(folder)
    )

    def run_one() -> None:
        execution_id = _run_sql(api, org)
        worker._run(worker._track(_claim(api, execution_id)))
        assert _row(api, execution_id).status == "completed"

    run_one()
    run_one()
    assert len(walked) == 1
    with api.app.state.sessions.begin() as session:  # an upload or deletion through the API
        organization_rows.note_area_changed(session, org.id)
    run_one()
    assert len(walked) == 2


def test_a_run_its_data_server_gave_back_is_logged_as_given_up_not_failed(
    api, org, worker, pool, caplog
):
    """Found by the outside probe: each execution a stopping data server handed back to the
    queue was logged "execution failed … code=cancelled", though it ran again and completed."""
    execution_id = _run_sql(api, org)
    claim = _claim(api, execution_id)
    pool.failure = QueryFailed("cancelled", "The call was cancelled.")
    worker._stopping.set()  # as stop() does, before it hands the running ones back
    with caplog.at_level(logging.INFO, logger="data_server.execution_runs"):
        worker._run(worker._track(claim))
    assert "execution given up" in caplog.text and "data server stops" in caplog.text
    assert "execution failed" not in caplog.text
    assert _row(api, execution_id).status == "running"  # left as it was, for the hand-back


def test_a_renewal_racing_its_runs_end_is_no_lost_lease(api, org, worker, caplog):
    """The probe of this stop's changes: a cancel announced as its execution completed renewed
    a lease whose row had just ended, and the log said "lease lost" for a run that ended well."""
    claim = _claim(api, _run_sql(api, org))
    job = worker._track(claim)
    worker._run(job)  # completed, and no longer running here
    with caplog.at_level(logging.WARNING, logger="data_server.worker"):
        worker._renew([job])
    assert "lease lost" not in caplog.text and not job.lease_lost
