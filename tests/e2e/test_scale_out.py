"""Scale-out on PostgreSQL: many worker processes race for one queue, and survive faults.

Workers are real ``python -m data_server work`` processes sharing one PostgreSQL schema and one
result directory, as several data server machines share a database and a bucket. Every wait is a
bounded loop on 127.0.0.1 that gives up by itself.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from shared.db.models import Execution
from tests.support.cluster import Cluster, cluster_on_postgres
from tests.support.postgres import fresh_postgres_schema

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

# Run before the worker: the process dies the moment an SQL result is uploaded, before the commit.
CRASH_AFTER_UPLOAD = """
import os
import shared.lifecycle as lifecycle
real_complete = lifecycle.complete
def crash(session, claim, **values):
    if claim.execution_type == "sql_query":
        os._exit(17)
    return real_complete(session, claim, **values)
lifecycle.complete = crash
"""
# About two seconds on 2 threads: long enough to be caught running (a poll of 0.2 s), short
# enough that its two attempts per test are not most of the module's CPU.
SLOW_SQL = "SELECT sum(hash(range)) AS h FROM range(300000000)"


@pytest.fixture
def cluster(tmp_path) -> Iterator[Cluster]:
    with cluster_on_postgres(tmp_path, fresh_postgres_schema) as started:
        yield started


RACED = 400  # a hundred claims per worker: each claim races three other workers


def test_four_workers_race_for_400_executions_and_each_finishes_once(cluster):
    ids = cluster.queue("SELECT 1 AS one", count=RACED)
    for _ in range(4):
        cluster.start_worker()
    cluster.wait_until(lambda: cluster.all_terminal(ids), 600, f"{RACED} executions to finish")
    rows = cluster.rows(ids)
    assert {row.status for row in rows} == {"completed"}
    data_keys = [row.data_key for row in rows]
    assert len(set(data_keys)) == RACED and None not in data_keys
    assert {row.attempt for row in rows} == {1}
    # Published exactly once: one stored result per execution, and each is the one recorded.
    stored = {path.stem for path in cluster.result_files()}
    assert stored == set(data_keys)


def test_new_work_is_picked_up_without_waiting_for_a_poll(cluster):
    """The poll is set to a minute: only LISTEN/NOTIFY can make this finish within 30 s."""
    cluster.start_worker(DATAFERRY_POLL_INTERVAL_SECONDS="60")
    warm = cluster.queue("SELECT 1")
    cluster.wait_until(lambda: cluster.all_terminal(warm), 60, "the first execution")
    ids = cluster.queue("SELECT 2")
    cluster.wait_until(lambda: cluster.all_terminal(ids), 30, "a notified execution")


def test_sigkill_of_a_worker_mid_query_hands_its_execution_to_another(cluster):
    """… and the killed worker's scratch directory goes at the other's next sweep, not a day
    later (shared/scratch.py)."""
    first = cluster.start_worker()
    [execution_id] = cluster.queue(SLOW_SQL)
    cluster.wait_until(lambda: cluster.holder_pid(execution_id), 60, "the query to start")
    assert cluster.holder_pid(execution_id) == first.pid
    [killed_scratch] = _scratch_directories(cluster)  # the only process so far that has one
    cluster.start_worker()
    os.kill(first.pid, signal.SIGKILL)
    cluster.wait_until(lambda: cluster.all_terminal([execution_id]), 120, "another worker")
    row = cluster.rows([execution_id])[0]
    assert (row.status, row.attempt) == ("completed", 2)
    assert [path.stem for path in cluster.result_files()] == [row.data_key]
    cluster.wait_until(lambda: not killed_scratch.exists(), 60, "the killed one's scratch to go")
    assert len(_scratch_directories(cluster)) == 1  # the live worker's


def _scratch_directories(cluster: Cluster) -> list[Path]:
    return sorted((cluster.state_dir / "results" / "tmp").glob("run-*"))


def test_a_stopped_worker_past_its_lease_cannot_publish_when_it_resumes(cluster):
    stopped = cluster.start_worker()
    [execution_id] = cluster.queue(SLOW_SQL)
    cluster.wait_until(lambda: cluster.holder_pid(execution_id), 60, "the query to start")
    os.kill(stopped.pid, signal.SIGSTOP)
    cluster.start_worker()
    cluster.wait_until(lambda: cluster.all_terminal([execution_id]), 120, "the second attempt")
    newer = cluster.rows([execution_id])[0]
    assert (newer.status, newer.attempt) == ("completed", 2)
    os.kill(stopped.pid, signal.SIGCONT)
    # The resumed worker learns its lease is gone (or is fenced off when it publishes) and ends
    # its attempt without leaving a result behind.
    finished = f"execution done id={execution_id} type=sql_query attempt=1"
    log = cluster.state_dir / "workers.log"
    cluster.wait_until(lambda: finished in log.read_text(), 120, "the stale attempt to end")
    after = cluster.rows([execution_id])[0]
    assert (after.status, after.attempt, after.data_key) == ("completed", 2, newer.data_key)
    assert [path.stem for path in cluster.result_files()] == [newer.data_key]


def test_workers_reconnect_after_their_connections_are_terminated(cluster):
    cluster.start_worker()
    cluster.start_worker()
    [running] = cluster.queue(SLOW_SQL)
    cluster.wait_until(lambda: cluster.holder_pid(running), 60, "the query to start")
    with cluster.engine.begin() as connection:
        cut = connection.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = :name"
            ),
            {"name": cluster.app_name},
        ).scalar()
    assert cut >= 2  # at least each worker's listener
    later = cluster.queue("SELECT 1", count=20)
    cluster.wait_until(lambda: cluster.all_terminal([running, *later]), 120, "work after the cut")
    rows = cluster.rows([running, *later])
    assert {row.status for row in rows} == {"completed"}
    assert len({row.data_key for row in rows}) == 21
    with cluster.sessions.begin() as session:  # nothing left half-claimed
        stuck = session.scalar(
            select(func.count()).select_from(Execution).where(Execution.status == "running")
        )
    assert stuck == 0


def test_a_crash_between_upload_and_commit_never_exposes_the_upload(cluster):
    """The worker dies (SIGKILL) right after the upload: the lease expires, the execution runs
    again, and only the second attempt's result is ever referenced."""
    crashing = cluster.start_worker(CRASH_AFTER_UPLOAD)
    [execution_id] = cluster.queue("SELECT 42 AS answer")
    cluster.wait_until(lambda: crashing.poll() is not None, 60, "the injected crash")
    row = cluster.rows([execution_id])[0]
    assert (row.status, row.data_key) == ("running", None)  # the upload exists, unreferenced
    orphan = cluster.result_files()
    assert len(orphan) == 1
    cluster.start_worker()
    cluster.wait_until(lambda: cluster.all_terminal([execution_id]), 60, "the second attempt")
    row = cluster.rows([execution_id])[0]
    assert (row.status, row.attempt) == ("completed", 2)
    assert row.data_key != orphan[0].stem
