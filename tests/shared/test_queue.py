"""The queue: claims honour order and concurrency limits, the attempt fences late writers, the
reaper re-queues or fails executions whose worker vanished. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

import pytest
from sqlalchemy import update

from api_server.services import executions
from data_server.app import create_app as create_data_app
from shared import lifecycle
from shared.db import engine as engine_module
from shared.db import models as models_module
from shared.db.models import Datasource, Execution, Organization, utcnow
from shared.lifecycle import ExecutionType


@pytest.fixture
def org(api):
    return api.create_org()


def _queue_sql(api, org, n=1, datasource_id=None):
    ids = []
    with api.app.state.sessions.begin() as session:
        # Organisation creation queued a refresh of the sample datasource: take it out of the way.
        session.execute(
            update(Execution).where(Execution.status == "starting").values(status="completed")
        )
        datasource = session.get(Datasource, datasource_id or org.sample_datasource_id)
        for _ in range(n):
            execution = executions.create_system_execution(
                session, datasource, ExecutionType.SQL_QUERY
            )
            ids.append(execution.id)
    return ids


def _settings(api, **changes):
    return api.settings.with_overrides(**changes)


def _claimed_on_postgres(api, org, worker, lease_seconds, why_not_sqlite):
    """One queued execution, claimed by ``worker`` under a lease of ``lease_seconds``, and the
    settings of that lease; on PostgreSQL only (SQLite: skipped, ``why_not_sqlite``)."""
    if api.settings.database_url.startswith("sqlite"):
        pytest.skip(why_not_sqlite)
    (execution_id,) = _queue_sql(api, org)
    settings = _settings(api, lease_seconds=lease_seconds)
    assert lifecycle.claim_next(api.app.state.sessions, worker, settings) is not None
    return execution_id, settings


def test_claims_come_oldest_first_and_carry_the_attempt(api, org):
    first, second = _queue_sql(api, org, 2)
    sessions = api.app.state.sessions
    claim = lifecycle.claim_next(sessions, "w1", api.settings)
    assert (claim.execution_id, claim.attempt, claim.database_type) == (first, 1, "sample")
    assert lifecycle.claim_next(sessions, "w1", api.settings).execution_id == second
    assert lifecycle.claim_next(sessions, "w1", api.settings) is None


def test_a_claim_carries_what_its_organisation_stores_for_the_runs_storage_check(api, org):
    """The run's check before it runs takes these instead of reading them again."""
    (queued,) = _queue_sql(api, org)
    sessions = api.app.state.sessions
    with sessions.begin() as session:
        session.execute(
            update(Organization)
            .where(Organization.id == org.id)
            .values(stored_results_bytes=12345, area_generation=7)
        )
    claim = lifecycle.claim_next(sessions, "w1", api.settings)
    assert claim.execution_id == queued
    assert (claim.stored_results_bytes, claim.area_generation) == (12345, 7)


def test_max_concurrent_executions_holds_across_claimers(api, org):
    with api.app.state.sessions.begin() as session:
        session.get(Datasource, org.sample_datasource_id).max_concurrent_executions = 3
    _queue_sql(api, org, 10)
    sessions = api.app.state.sessions
    claims, lock = [], threading.Lock()

    def claimer():
        for _ in range(10):
            try:
                claim = lifecycle.claim_next(
                    sessions, threading.current_thread().name, api.settings
                )
            except lifecycle.ClaimContended:
                continue
            if claim is not None:
                with lock:
                    claims.append(claim)

    threads = [threading.Thread(target=claimer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(claims) == 3
    assert len({c.execution_id for c in claims}) == 3


def test_late_writer_is_fenced_off_after_its_lease_was_reaped(api, org):
    (execution_id,) = _queue_sql(api, org)
    sessions = api.app.state.sessions
    settings = _settings(api, max_attempts=3)
    stale = lifecycle.claim_next(sessions, "slow", settings)
    with sessions.begin() as session:  # the slow worker's lease runs out
        session.execute(update(Execution).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    assert lifecycle.reap_expired_leases(sessions, settings) == 1
    fresh = lifecycle.claim_next(sessions, "fast", settings)
    assert fresh.attempt == stale.attempt + 1
    assert not lifecycle.renew_lease(sessions, stale, settings).held
    with sessions.begin() as session:
        assert not lifecycle.complete(
            session, stale, rows=1, columns=1, size=1, truncated=False, data_key="r_stale"
        )
    assert not lifecycle.finish_unsuccessfully(sessions, stale, "execution_error", "late")
    with sessions.begin() as session:
        assert lifecycle.complete(
            session, fresh, rows=2, columns=1, size=9, truncated=False, data_key="r_fresh"
        )
    with sessions() as session:
        row = session.get(Execution, execution_id)
        assert (row.status, row.data_key, row.result_rows) == ("completed", "r_fresh", 2)


def test_reaper_fails_after_max_attempts(api, org):
    (execution_id,) = _queue_sql(api, org)
    sessions = api.app.state.sessions
    settings = _settings(api, max_attempts=2)
    for _ in range(2):
        assert lifecycle.claim_next(sessions, "dies", settings) is not None
        with sessions.begin() as session:
            session.execute(
                update(Execution).values(lease_expires_at=utcnow() - timedelta(seconds=1))
            )
        lifecycle.reap_expired_leases(sessions, settings)
    with sessions() as session:
        row = session.get(Execution, execution_id)
        assert (row.status, row.error_code, row.attempt) == ("failed", "worker_lost", 2)


def test_heartbeat_extends_the_lease_and_reports_cancel(api, org):
    (execution_id,) = _queue_sql(api, org)
    sessions = api.app.state.sessions
    claim = lifecycle.claim_next(sessions, "w", api.settings)
    state = lifecycle.renew_lease(sessions, claim, api.settings)
    assert state.held and not state.cancel_requested
    with sessions.begin() as session:
        session.get(Execution, execution_id).cancel_requested = True
    assert lifecycle.renew_lease(sessions, claim, api.settings).cancel_requested
    assert lifecycle.finish_unsuccessfully(sessions, claim, "cancelled", "Cancelled.")
    with sessions() as session:
        assert session.get(Execution, execution_id).status == "cancelled"


@pytest.mark.parametrize("outcome", ["completed", "failed"])
def test_an_accepted_cancel_fences_off_the_outcome_and_ends_cancelled(api, org, outcome):
    (execution_id,) = _queue_sql(api, org)
    sessions = api.app.state.sessions
    claim = lifecycle.claim_next(sessions, "w", api.settings)
    with sessions.begin() as session:  # the API server accepted a cancel (or a purge)
        session.get(Execution, execution_id).cancel_requested = True
    if outcome == "completed":
        with sessions.begin() as session:
            assert not lifecycle.complete(
                session, claim, rows=1, columns=1, size=1, truncated=False, data_key="r_late"
            )
    else:
        assert lifecycle.finish_unsuccessfully(sessions, claim, "timeout", "late")
    with sessions() as session:
        row = session.get(Execution, execution_id)
        assert (row.status, row.error_code, row.data_key, row.lease_owner) == (
            "cancelled",
            "cancelled",
            None,
            None,
        )


def test_a_data_server_whose_clock_runs_ahead_reaps_no_live_lease(api, org, monkeypatch):
    """Leases are stamped and compared by PostgreSQL's clock, not by each data server's."""
    execution_id, settings = _claimed_on_postgres(
        api, org, "honest", 30, "SQLite is one machine's file: there is only one clock"
    )
    sessions = api.app.state.sessions

    class AnHourAhead(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.now(tz) + timedelta(hours=1)

    monkeypatch.setattr(engine_module, "datetime", AnHourAhead)
    monkeypatch.setattr(models_module, "datetime", AnHourAhead)
    assert lifecycle.reap_expired_leases(sessions, settings) == 0
    with sessions() as session:
        assert session.get(Execution, execution_id).status == "running"


def test_a_worker_frozen_inside_a_transaction_does_not_stop_the_reaper(api, org):
    """A worker stopped (SIGSTOP, a paused VM) between an update of its execution and the
    commit holds the row's lock: the reaper's one update of every expired lease would wait for
    it as long as it stays frozen, and no execution of the region would be re-queued. Its
    session is ended by PostgreSQL once idle that long (DATAFERRY_IDLE_TRANSACTION_SECONDS)."""
    execution_id, settings = _claimed_on_postgres(
        api, org, "frozen", 1, "SQLite has no row locks: a frozen writer holds the whole file"
    )
    settings = settings.with_overrides(idle_transaction_seconds=1)
    sessions = api.app.state.sessions
    with sessions.begin() as session:  # its lease has run out
        session.execute(update(Execution).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    # The data server's own session factory, as its workers use it.
    frozen = create_data_app(settings).state.sessions()
    reaped: list[int] = []
    reaper = threading.Thread(
        target=lambda: reaped.append(lifecycle.reap_expired_leases(sessions, settings))
    )
    try:
        # a heartbeat's update, never committed: the worker froze here
        frozen.execute(update(Execution).values(lease_expires_at=utcnow()))
        reaper.start()
        reaper.join(timeout=60)  # far beyond the lease: only a lock never let go reaches it
        assert reaped == [1], "the reaper is still waiting for the frozen worker's lock"
    finally:
        frozen.invalidate()  # its session was ended under it; unblocks a reaper still waiting
        frozen.get_bind().dispose()
        if reaper.is_alive():
            reaper.join()
    with sessions() as session:
        row = session.get(Execution, execution_id)
        assert (row.status, row.lease_owner) == ("starting", None)
