"""Fair scheduling: a free worker serves the least-served organisation (then datasource) first,
never idles while claimable work waits behind full datasources, and the per-organisation and
per-datasource caps hold with concurrent claimers. Lifecycle-level tests on SQLite and PostgreSQL;
one end-to-end test per configuration with real servers."""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from api_server.services import executions
from shared import lifecycle
from shared.db.models import Datasource, Execution, Organization
from shared.lifecycle import ExecutionStatus, ExecutionType
from tests.support.processes import running_region

# Every queued execution is a second younger than the one queued before it: "oldest first" is
# then decided by the order a test queues in, never by clock resolution or by random ids.
_QUEUED_AT = itertools.count()
_EPOCH = datetime(2025, 1, 1, tzinfo=UTC)


def _queue(api, datasource_id: str, count: int = 1) -> list[str]:
    ids = []
    with api.app.state.sessions.begin() as session:
        datasource = session.get_one(Datasource, datasource_id)
        for _ in range(count):
            execution = executions.create_system_execution(
                session, datasource, ExecutionType.SQL_QUERY
            )
            execution.created_at = _EPOCH + timedelta(seconds=next(_QUEUED_AT))
            ids.append(execution.id)
    return ids


def _claim(api, settings=None):
    return lifecycle.claim_next(api.app.state.sessions, "worker", settings or api.settings)


def _empty_queue(api) -> None:
    """Organisation and datasource creation queue refreshes: take them out of the way."""
    with api.app.state.sessions.begin() as session:
        session.execute(
            update(Execution)
            .where(Execution.status == ExecutionStatus.STARTING)
            .values(status=ExecutionStatus.COMPLETED)
        )


def _set(api, model, id_: str, **values) -> None:
    with api.app.state.sessions.begin() as session:
        row = session.get_one(model, id_)
        for name, value in values.items():
            setattr(row, name, value)


def test_a_free_worker_serves_the_organisation_with_fewest_running(api):
    a, b = api.create_org("A"), api.create_org("B")
    _empty_queue(api)
    queued_by_a = _queue(api, a.sample_datasource_id, 20)
    assert [_claim(api).execution_id for _ in range(2)] == queued_by_a[:2]
    [queued_by_b] = _queue(api, b.sample_datasource_id)
    # B has none running, A two: B's execution goes first although A's twenty are older.
    assert _claim(api).execution_id == queued_by_b
    # Then A (two running) against B (one running, nothing queued): A's next oldest.
    assert _claim(api).execution_id == queued_by_a[2]
    later_by_b = _queue(api, b.sample_datasource_id, 2)
    # A three running, B one: B's twice; then three each, and the older queued execution (A's).
    assert [_claim(api).execution_id for _ in range(3)] == [*later_by_b, queued_by_a[3]]


def test_claims_within_an_organisation_and_datasource_stay_oldest_first(api):
    a = api.create_org("A")
    _empty_queue(api)
    queued = _queue(api, a.sample_datasource_id, 6)
    with api.app.state.sessions.begin() as session:  # the first inserted is the youngest
        for age, execution_id in enumerate(queued):
            session.get_one(Execution, execution_id).created_at = _EPOCH - timedelta(hours=age)
    assert [_claim(api).execution_id for _ in range(6)] == list(reversed(queued))
    assert _claim(api) is None


def test_datasources_of_one_organisation_take_turns(api):
    a = api.create_org("A")
    second = api.create_datasource(a.key, name="Second")["id"]
    _empty_queue(api)
    on_sample = _queue(api, a.sample_datasource_id, 3)
    [on_second] = _queue(api, second)
    claimed = [_claim(api).execution_id for _ in range(3)]
    assert claimed == [on_sample[0], on_second, on_sample[1]]


@pytest.mark.parametrize("full", ["datasource", "organisation"])
def test_claimable_work_behind_fifty_blocked_executions_is_claimed(api, full):
    """No look-ahead window: however many queued executions wait for a full datasource (or
    organisation), one that may start is found."""
    a, b = api.create_org("A"), api.create_org("B")
    second = api.create_datasource(a.key, name="Second")["id"]
    _empty_queue(api)
    if full == "datasource":
        _set(api, Datasource, a.sample_datasource_id, max_concurrent_executions=1)
        claimable_at = second  # the same organisation, another datasource
    else:
        _set(api, Organization, a.id, max_running_executions=1)
        claimable_at = b.sample_datasource_id  # another organisation
    [running] = _queue(api, a.sample_datasource_id)
    assert _claim(api).execution_id == running
    _queue(api, a.sample_datasource_id, 50)
    [claimable] = _queue(api, claimable_at)
    assert _claim(api).execution_id == claimable
    assert _claim(api) is None  # and the fifty stay queued until a slot frees


def test_the_organisation_cap_counts_its_running_executions_of_every_datasource(api):
    a = api.create_org("A")
    second = api.create_datasource(a.key, name="Second")["id"]
    _empty_queue(api)
    _set(api, Organization, a.id, max_running_executions=3)
    _queue(api, a.sample_datasource_id, 5)
    _queue(api, second, 5)
    claims = [_claim(api) for _ in range(4)]
    assert [claim is not None for claim in claims] == [True, True, True, False]
    # The deployment's default applies when the organisation has no cap of its own.
    _set(api, Organization, a.id, max_running_executions=None)
    assert _claim(api, api.settings.with_overrides(max_running_executions=3)) is None
    assert _claim(api, api.settings.with_overrides(max_running_executions=4)) is not None


def test_caps_hold_with_concurrent_claimers(api):
    """Eight claimers at once, two organisations: exactly the caps run, never more."""
    a, b = api.create_org("A"), api.create_org("B")
    second = api.create_datasource(a.key, name="Second")["id"]
    _empty_queue(api)
    _set(api, Organization, a.id, max_running_executions=3)
    _set(api, Datasource, a.sample_datasource_id, max_concurrent_executions=2)
    _set(api, Datasource, second, max_concurrent_executions=2)
    _set(api, Datasource, b.sample_datasource_id, max_concurrent_executions=2)
    _queue(api, a.sample_datasource_id, 6)
    _queue(api, second, 6)
    _queue(api, b.sample_datasource_id, 6)
    claims, lock = [], threading.Lock()
    barrier = threading.Barrier(8)

    def claimer() -> None:
        barrier.wait(timeout=30)
        for _ in range(6):
            claim = _claim(api)
            if claim is not None:
                with lock:
                    claims.append(claim)

    threads = [threading.Thread(target=claimer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len({claim.execution_id for claim in claims}) == len(claims)
    by_organization = Counter(claim.organization_id for claim in claims)
    by_datasource = Counter(claim.datasource_id for claim in claims)
    assert by_organization == {a.id: 3, b.id: 2}
    assert max(by_datasource.values()) <= 2
    with api.app.state.sessions() as session:
        running = session.query(Execution).filter_by(status=ExecutionStatus.RUNNING).count()
    assert running == 5


@pytest.mark.parametrize("b_queued", [True, False], ids=["skips-to-another", "waits"])
def test_an_organisation_another_worker_is_claiming_for(api, b_queued):
    """PostgreSQL: a claim moves on to the next organisation rather than wait for a busy one;
    with nothing else to claim it waits for that organisation instead of coming back empty."""
    if not api.settings.database_url.startswith("postgresql"):
        pytest.skip("SQLite serialises whole claims: no organisation is ever busy")
    a, b = api.create_org("A"), api.create_org("B")
    _empty_queue(api)
    [queued_by_a] = _queue(api, a.sample_datasource_id)
    queued_by_b = _queue(api, b.sample_datasource_id) if b_queued else []
    claimed = []
    with api.app.state.sessions.begin() as other_worker:
        lifecycle._lock_organization(other_worker, a.id, wait=True)
        claimer = threading.Thread(target=lambda: claimed.append(_claim(api)))
        claimer.start()
        if b_queued:
            claimer.join(timeout=30)
        else:
            threading.Event().wait(0.5)  # let it reach the lock; a claim that gave up is None
    claimer.join(timeout=30)
    expected = queued_by_b if b_queued else [queued_by_a]
    assert [claim.execution_id for claim in claimed] == expected


# ------------------------------------------------------------------------------- end to end

SLOW_SQL = "SELECT sum(hash(range)) AS h FROM range(20000000)"  # a second or less


@pytest.fixture(scope="module")
def region(tmp_path_factory, deployment):
    env = {**deployment, "DATAFERRY_WORKER_PROCESSES": "2"}
    with running_region(tmp_path_factory.mktemp("fair-region"), env) as started:
        yield started


def _started(attributes) -> datetime:
    return datetime.fromisoformat(attributes["started_at"])


@pytest.mark.e2e
def test_another_organisations_query_overtakes_twenty_queued_slow_ones(region):
    """A queues twenty slow queries on two workers; B's one-row query, run next, is started by
    the first worker that frees up: none of A's queued executions starts before it."""
    with region.organization_client("A") as a, region.organization_client("B") as b:
        a_datasource = a.http.get(f"{a.api_url}/datasources", headers=a.headers).json()["data"]
        b_datasource = b.http.get(f"{b.api_url}/datasources", headers=b.headers).json()["data"]
        slow = [a.run(a_datasource[0]["id"], SLOW_SQL)["execution_id"] for _ in range(20)]
        quick = b.run(b_datasource[0]["id"], "SELECT 1 AS one")
        done = b.wait_until_done(quick["execution_id"], timeout=120)
        assert done["execution_status"] == "completed", done
        arrived = datetime.fromisoformat(quick["created_at"])
        overtaken = [a.execution(execution_id) for execution_id in slow]
    # The test means something only if A still had a queue when B's execution arrived.
    queued_on_arrival = [e for e in overtaken if not e["started_at"] or _started(e) > arrived]
    assert len(queued_on_arrival) >= 5, "A's queries ran too fast to queue"
    # A worker could have claimed one of A's between B's timestamp and B's commit: at most one
    # per worker, where first-come-first-served would start all of A's queue first.
    started_meanwhile = [
        e for e in queued_on_arrival if e["started_at"] and _started(e) < _started(done)
    ]
    assert len(started_meanwhile) <= 2, started_meanwhile
