"""One claimed execution run to its end, and its outcome recorded under the fence.

A SQL query's result is written by the sandbox child, published to the result store and only
then marked completed; a refresh publishes the datasource's schema; a connection test records
only whether it connected. A write-back the fence refuses (the lease was lost, or a cancel or
purge was accepted meanwhile) deletes what this attempt stored. Failures end the execution with
a stable error code, and a bound parameter's value never reaches the error message.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from data_server.datasource_specs import DatasourceSpecs
from data_server.engine import DatasourceSpec, Limits, QueryFailed, QueryJob
from data_server.sandbox_pool import SandboxPool
from shared import lifecycle
from shared.db.models import Datasource, utcnow
from shared.lifecycle import ErrorCode, ExecutionStatus, ExecutionType
from shared.organization_rows import count_stored_bytes
from shared.results import ResultStore, delete_stored_data, result_object_key, schema_object_key
from shared.settings import Settings
from shared.storage_quota import (
    AREA_WALK_MAX_AGE_SECONDS,
    AreaWalk,
    StorageUsage,
    locked_storage_usage,
    usage_and_walk_as_read,
    walk_again,
    walk_area,
)
from shared.tokens import Scope, new_data_key

logger = logging.getLogger(__name__)

# The outcome of a run whose metadata connection was lost, or whose data server stops: back in
# the queue, not ended.
HANDED_BACK = "handed_back"
# The outcome of a run whose lease was lost (its row re-queued, cancelled or deleted meanwhile).
LEASE_LOST = "lease_lost"


@dataclass
class Job:
    """A claimed execution while it runs here. The heartbeat sets ``cancel`` when a cancel was
    requested or the lease was lost (then also ``lease_lost``: the row is no longer ours)."""

    claim: lifecycle.Claim
    cancel: threading.Event = field(default_factory=threading.Event)
    lease_lost: bool = False


class ExecutionRunner:
    """Runs jobs of one data server; thread-safe (each executor thread runs one job at a time).
    ``stopping`` is the data server's shutdown: its running executions were handed back to the
    queue, so their outcomes are not recorded."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        store: ResultStore,
        pool: SandboxPool,
        stopping: threading.Event,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.store = store
        self.pool = pool
        self.specs = DatasourceSpecs(settings, sessions)
        self._stopping = stopping

    def run(self, job: Job) -> str:
        """Run and record the job; its outcome, ``completed``, an error code or ``HANDED_BACK``.
        Never raises."""
        claim = job.claim
        try:
            if not claim.enabled:
                raise QueryFailed(
                    ErrorCode.DATASOURCE_DISABLED,
                    "The datasource was disabled after this execution was queued.",
                )
            spec = self.specs.for_claim(claim)
            if claim.execution_type == ExecutionType.SQL_QUERY:
                self._run_query(job, spec)
            elif claim.execution_type == ExecutionType.DATASOURCE_REFRESH:
                self._run_refresh(job, spec)
            else:
                self.pool.check_connection(spec, self._limits(), cancel_event=job.cancel)
                self._complete_without_result(job)
        except QueryFailed as failure:
            if self._abandoned(job):  # ended because it is another's now, not failed
                outcome, why = (
                    (LEASE_LOST, "its lease was lost")
                    if job.lease_lost
                    else (HANDED_BACK, "handed back: this data server stops")
                )
                logger.info("execution given up id=%s (%s)", claim.execution_id, why)
                return outcome
            message = without_bound_values(failure.message, claim.bound_parameters)
            lifecycle.finish_unsuccessfully(self.sessions, claim, failure.code, message)
            logger.info("execution failed id=%s code=%s", claim.execution_id, failure.code)
            return failure.code
        except Exception as error:
            lost_connection = isinstance(error, DBAPIError) and error.connection_invalidated
            if lost_connection and claim.attempt < self.settings.max_attempts:
                return self._hand_back(claim)
            logger.exception("execution crashed id=%s", claim.execution_id)
            lifecycle.finish_unsuccessfully(
                self.sessions,
                claim,
                ErrorCode.INTERNAL_ERROR,
                "The data server failed to run this execution.",
            )
            return ErrorCode.INTERNAL_ERROR
        return ExecutionStatus.COMPLETED

    def _limits(self) -> Limits:
        s = self.settings
        return Limits(
            timeout_seconds=s.query_timeout_seconds,
            memory_limit_mb=s.query_memory_limit_mb,
            threads=s.query_threads,
            max_temp_directory_size_mb=s.query_temp_space_mb,
            max_result_rows=s.max_result_rows,
            max_result_bytes=s.max_result_bytes,
        )

    def _hand_back(self, claim: lifecycle.Claim) -> str:
        """The metadata database dropped a connection mid-run (a restart, a failover, an operator
        terminating backends): nothing is wrong with the execution, so it goes back to the queue
        for another attempt instead of failing, within ``max_attempts`` as the reaper's re-queues
        are (a database that keeps dropping connections fails it after that). If the database
        cannot take even the hand-back, the lease runs out and the reaper re-queues it."""
        logger.warning("database connection lost; execution handed back id=%s", claim.execution_id)
        try:
            lifecycle.release(self.sessions, claim)
        except Exception:
            logger.exception("could not hand back id=%s", claim.execution_id)
        return HANDED_BACK

    def _abandoned(self, job: Job) -> bool:
        """The row is no longer this attempt's to write: its lease was lost, or it was handed
        back to the queue because this data server stops."""
        return job.lease_lost or self._stopping.is_set()

    def _run_query(self, job: Job, spec: DatasourceSpec) -> None:
        claim = job.claim
        # The instance that runs it makes its scratch directory (a warm one has its own), and it
        # is removed whichever way the run ends.
        scratch = self.store.temp_path(f"{claim.execution_id}-{claim.attempt}")
        result_path = scratch.with_suffix(".arrow")
        try:
            limits, usage, before_run = self._limits_within_quota(claim)
            checked_at = time.monotonic()
            query = QueryJob(
                datasource=spec,
                sql=claim.sql,
                parameters=claim.bound_parameters,
                limits=limits,
                result_path=str(result_path),
                temp_dir=str(scratch),
            )
            outcome = self.pool.run(query, cancel_event=job.cancel)
            if self._abandoned(job):
                return
            cut_by_quota = limits.max_result_bytes < self.settings.max_result_bytes
            if outcome.truncated and cut_by_quota and outcome.rows < limits.max_result_rows:
                raise QueryFailed(ErrorCode.STORAGE_QUOTA_EXCEEDED, usage.exceeded_message())
            data_key = new_data_key(Scope.EXECUTION_RESULT)
            # The sandbox child wrote it and called fsync before it answered (engine).
            self.store.publish(result_path, result_object_key(data_key), synced=True)
            walked = self._walk_before_storing(claim, before_run, checked_at)
            with self.sessions.begin() as session:
                # Checked again under the organisation's lock: executions that ran side by side
                # were each capped at the same remaining bytes, and only one may take them. The
                # lock counts the result's bytes; they are taken off if it is not recorded.
                usage = locked_storage_usage(
                    session,
                    self.settings,
                    claim.organization_id,
                    walked,
                    storing=outcome.size_bytes,
                )
                fits = outcome.size_bytes <= usage.remaining_bytes
                published = fits and lifecycle.complete(
                    session,
                    claim,
                    rows=outcome.rows,
                    columns=outcome.columns,
                    size=outcome.size_bytes,
                    truncated=outcome.truncated,
                    data_key=data_key,
                )
                if not published:
                    count_stored_bytes(session, claim.organization_id, -outcome.size_bytes)
            if not published:  # fenced off: cancelled, purged, deleted or owned by a newer attempt
                delete_stored_data(self.store, results=[data_key])
            if not fits:
                raise QueryFailed(ErrorCode.STORAGE_QUOTA_EXCEEDED, usage.exceeded_message())
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            result_path.unlink(missing_ok=True)

    def _limits_within_quota(self, claim: lifecycle.Claim) -> tuple[Limits, StorageUsage, AreaWalk]:
        """A result may take only what the organisation's storage quota leaves; none left fails
        the execution before it runs, and a result cut short by the quota fails it after. What
        it stores is as its claim read it; its files are counted by a recent walk of its area
        (returned), as they are again when the result is stored (under the organisation's lock,
        walked again only if the API changed the area)."""
        usage, walked = usage_and_walk_as_read(
            self.settings,
            claim.organization_id,
            claim.stored_results_bytes,
            claim.area_generation,
            max_age=AREA_WALK_MAX_AGE_SECONDS,
        )
        if usage.remaining_bytes <= 0:
            raise QueryFailed(ErrorCode.STORAGE_QUOTA_EXCEEDED, usage.exceeded_message())
        limits = self._limits()
        cap = min(limits.max_result_bytes, usage.remaining_bytes)
        return replace(limits, max_result_bytes=cap), usage, walked

    def _walk_before_storing(
        self, claim: lifecycle.Claim, before_run: AreaWalk, checked_at: float
    ) -> AreaWalk:
        """The walk the result's check counts files by: the one before the run, for its
        generation, after a quick run; after a long one, with the generation read again (an
        upload during the run would otherwise make the check walk under the lock)."""
        if time.monotonic() - checked_at < AREA_WALK_MAX_AGE_SECONDS:
            return walk_again(
                self.settings, claim.organization_id, before_run, max_age=AREA_WALK_MAX_AGE_SECONDS
            )
        return walk_area(
            self.sessions, self.settings, claim.organization_id, max_age=AREA_WALK_MAX_AGE_SECONDS
        )

    def _run_refresh(self, job: Job, spec: DatasourceSpec) -> None:
        claim = job.claim
        schema = self.pool.schema_of(spec, self._limits(), cancel_event=job.cancel)
        exact = bool(schema.pop("row_counts_exact", True))  # recorded, not part of the schema
        if self._abandoned(job):
            return
        data_key = new_data_key(Scope.DATASOURCE_SCHEMA)
        payload = orjson.dumps(schema)
        self.store.put_bytes(schema_object_key(data_key), payload)
        previous: str | None = None
        with self.sessions.begin() as session:
            published = lifecycle.complete(
                session, claim, rows=0, columns=0, size=len(payload), truncated=False, data_key=None
            )
            datasource = session.get(Datasource, claim.datasource_id)
            if published and datasource is not None:
                previous = datasource.schema_data_key
                datasource.schema_data_key = data_key
                datasource.schema_names = [s["name"] for s in schema.get("schemas", [])]
                datasource.schema_updated_at = utcnow()
                datasource.total_row_count = _total_rows(schema)
                datasource.total_row_count_exact = exact
                datasource.server_version = schema.get("server_version")
        delete_stored_data(self.store, schemas=[previous if published else data_key])

    def _complete_without_result(self, job: Job) -> None:
        if self._abandoned(job):
            return
        with self.sessions.begin() as session:
            lifecycle.complete(
                session, job.claim, rows=0, columns=0, size=0, truncated=False, data_key=None
            )


def _total_rows(schema: dict) -> int | None:
    counts = [t.get("row_count") for s in schema.get("schemas", []) for t in s.get("tables", [])]
    known = [c for c in counts if isinstance(c, int)]
    return sum(known) if known else None


def without_bound_values(message: str, values: list[Any]) -> str:
    """DuckDB quotes a value it could not convert; only the key that ran it may see values."""
    for position, value in enumerate(values, 1):
        if isinstance(value, str) and value:
            message = message.replace(f"'{value}'", f"(the value of ${position})")
            if len(value) >= 8:
                message = message.replace(value, f"(the value of ${position})")
    return message
