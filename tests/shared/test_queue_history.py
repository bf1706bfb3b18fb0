"""The statements a claim and a run execute read an organisation's unfinished executions, never
its finished history: with thousands of finished executions they read no more than with none.
(With 50,000, a claim's slot check read all of them: 13 ms instead of 8 µs, under SQLite's write
lock; PostgreSQL's plan for a prepared queue probe scanned the table: 2.7 ms instead of 0.1.)

What a statement reads is counted, not timed: on SQLite, the virtual machine's instructions; on
PostgreSQL, the table's rows fetched in the transaction (``pg_stat_xact_user_tables``), with the
statement prepared and planned for any value (``force_generic_plan``), as psycopg prepares a
statement run five times on one connection and PostgreSQL may then keep such a plan."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, select

from shared.db.models import utcnow
from shared.lifecycle import claims
from shared.runs import _UNFINISHED_COUNTED
from tests.support.history import EXECUTIONS, add_finished_executions

FINISHED = 3000


def _statements(org: Any, worker: str, settings: Any) -> dict[str, tuple[Any, dict[str, Any]]]:
    now = utcnow()
    caps = claims._cap_parameters(worker, settings)
    pair = {"pair_organization": org.id, "pair_datasource": org.sample_datasource_id}
    start = {
        **pair,
        "under_organization_cap": True,
        "claim_worker": worker,
        "claim_now": now,
        "claim_until": now + timedelta(seconds=30),
    }
    return {
        "queue probe": (claims._QUEUE_PROBE, {}),
        "queue probe leaving out": (claims._QUEUE_PROBE_LEAVING_OUT, {"left_out": ["other"]}),
        "ranking": (claims._RANKING, caps),
        "slot": (claims._WITH_FREE_SLOT, {**pair, **caps}),
        "start oldest": (claims._START_OLDEST, start),
        "run's unfinished count": (_UNFINISHED_COUNTED, {"organization_id": org.id}),
    }


@contextmanager
def _counting_reads(connection: Connection) -> Iterator[list[int]]:
    """A one-element list that, once the block ends, holds how much of the database the
    statements executed inside it read (see the module's docstring)."""
    driver = connection.connection.driver_connection
    read = [0]
    if connection.dialect.name == "sqlite":

        def step() -> int:
            read[0] += 1
            return 0

        driver.set_progress_handler(step, 1)
        try:
            yield read
        finally:
            driver.set_progress_handler(None, 1)
        return
    fetched = (
        "SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0)"
        " FROM pg_stat_xact_user_tables"
        " WHERE relname = 'executions' AND schemaname = current_schema()"
    )
    connection.exec_driver_sql("SET LOCAL plan_cache_mode = force_generic_plan")
    threshold, driver.prepare_threshold = driver.prepare_threshold, 0  # prepare every statement
    before = connection.exec_driver_sql(fetched).scalar_one()
    try:
        yield read
    finally:
        driver.prepare_threshold = threshold
    read[0] = connection.exec_driver_sql(fetched).scalar_one() - before


def _reads(api: Any, org: Any) -> dict[str, int]:
    """What each statement reads, each in a transaction rolled back (the start changes a row)."""
    reads = {}
    with api.app.state.engine.connect() as connection:
        for name, (statement, parameters) in _statements(org, "w1", api.settings).items():
            with connection.begin() as transaction:
                with _counting_reads(connection) as read:
                    connection.execute(statement, parameters).all()
                transaction.rollback()
            reads[name] = read[0]
    return reads


def test_claims_and_runs_read_no_more_with_a_long_finished_history(api):
    org = api.create_org()  # which queued a refresh of its sample datasource: one to claim
    if api.app.state.engine.dialect.name == "postgresql":
        with api.app.state.engine.begin() as connection:
            connection.exec_driver_sql("ANALYZE executions")
    without_history = _reads(api, org)
    add_finished_executions(api.app.state.engine, org.sample_datasource_id, FINISHED)
    with_history = _reads(api, org)
    grown = {
        name: (without_history[name], read)
        for name, read in with_history.items()
        if read > 2 * without_history[name] + 100
    }
    assert not grown, f"reads (without, with {FINISHED} finished executions): {grown}"


def test_the_count_of_reads_sees_a_statement_that_reads_the_history(api):
    """The check above can fail: a statement that does read every finished execution is seen."""
    org = api.create_org()
    add_finished_executions(api.app.state.engine, org.sample_datasource_id, FINISHED)
    every = select(EXECUTIONS.c.id).where(EXECUTIONS.c.organization_id == org.id)
    engine = api.app.state.engine
    with engine.connect() as connection, connection.begin(), _counting_reads(connection) as read:
        assert len(connection.execute(every).all()) == FINISHED + 1
    assert read[0] >= FINISHED
