"""The execution lifecycle, in one place: its statuses, types and error codes, and every
transition of an ``executions`` row, whichever server makes it.

The table is the queue. The API server enqueues, cancels and purges; data server workers claim
with a lease, renew it, complete or fail under a fence, and release on shutdown; maintenance reaps
expired leases. The attempt number is the fencing token: every write-back names the attempt it
claimed, so a worker whose lease expired (and whose execution was re-queued) can no longer change
the row. A cancel the API server accepted is part of the fence: whatever the run came to, the row
then ends ``cancelled``, and a refused completion tells the worker to delete the result it
uploaded. PostgreSQL claims with ``FOR UPDATE SKIP LOCKED`` and locks the datasource row while it
counts running executions; SQLite serialises the claim with ``BEGIN IMMEDIATE``. Either way
``max_concurrent_executions`` holds across every worker of the region.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, Result, func, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from shared.db import new_work
from shared.db.engine import database_now, write_lock_on_sqlite
from shared.db.models import Datasource, Execution, utcnow
from shared.errors import Conflict

# The vocabulary lives apart (see shared.execution_states) and is re-exported here, so that
# the lifecycle reads, and is imported, as one module.
from shared.execution_states import TERMINAL_STATUSES as TERMINAL_STATUSES
from shared.execution_states import UNFINISHED_STATUSES as UNFINISHED_STATUSES
from shared.execution_states import ErrorCode as ErrorCode
from shared.execution_states import ExecutionStatus as ExecutionStatus
from shared.execution_states import ExecutionType as ExecutionType
from shared.settings import Settings

logger = logging.getLogger(__name__)


_CANDIDATES_PER_CLAIM = 16
CANCELLED_MESSAGE = "Cancelled."


@dataclass(frozen=True)
class Claim:
    execution_id: str
    attempt: int
    organization_id: str
    execution_type: str
    sql: str
    bound_parameters: list[Any]
    datasource_id: str
    database_type: str
    database: str | None
    data_time_zone: str


def claim_next(sessions: sessionmaker[Session], worker_id: str, settings: Settings) -> Claim | None:
    """Take the oldest queued execution whose datasource has a free slot, or None."""
    try:
        with sessions.begin() as session:
            write_lock_on_sqlite(session)
            return _claim_in(session, worker_id, settings)
    except OperationalError as exc:  # SQLite busy under contention: nothing claimed, try again
        logger.debug("claim contention: %s", type(exc.orig).__name__)
        return None


def _claim_in(session: Session, worker_id: str, settings: Settings) -> Claim | None:
    candidates = session.execute(
        select(Execution.id, Execution.datasource_id)
        .where(Execution.status == ExecutionStatus.STARTING)
        .order_by(Execution.created_at, Execution.id)
        .limit(_CANDIDATES_PER_CLAIM)
        .with_for_update(skip_locked=True)
    ).all()
    full: set[str] = set()
    for execution_id, datasource_id in candidates:
        if datasource_id in full:
            continue
        datasource = session.scalar(
            select(Datasource).where(Datasource.id == datasource_id).with_for_update()
        )
        if datasource is None:
            continue
        running = session.scalar(
            select(func.count())
            .select_from(Execution)
            .where(
                Execution.datasource_id == datasource_id,
                Execution.status == ExecutionStatus.RUNNING,
            )
        )
        if (running or 0) >= datasource.max_concurrent_executions:
            full.add(datasource_id)
            continue
        now = database_now(session)
        claimed = session.execute(
            update(Execution)
            .where(Execution.id == execution_id, Execution.status == ExecutionStatus.STARTING)
            .values(
                status=ExecutionStatus.RUNNING,
                attempt=Execution.attempt + 1,
                lease_owner=worker_id,
                lease_expires_at=now + timedelta(seconds=settings.lease_seconds),
                started_at=func.coalesce(Execution.started_at, now),
                updated_at=now,
            )
            .returning(Execution)
        ).scalar_one_or_none()
        if claimed is not None:
            return Claim(
                execution_id=claimed.id,
                attempt=claimed.attempt,
                organization_id=claimed.organization_id,
                execution_type=claimed.execution_type,
                sql=claimed.expanded_sql or claimed.sql_query,
                bound_parameters=list(claimed.bound_parameters or []),
                datasource_id=datasource.id,
                database_type=datasource.database_type,
                database=datasource.database,
                data_time_zone=datasource.data_time_zone,
            )
    return None


def _fenced(claim: Claim) -> Any:
    return (
        (Execution.id == claim.execution_id)
        & (Execution.attempt == claim.attempt)
        & (Execution.status == ExecutionStatus.RUNNING)
    )


@dataclass(frozen=True)
class LeaseState:
    held: bool
    cancel_requested: bool


def renew_lease(sessions: sessionmaker[Session], claim: Claim, settings: Settings) -> LeaseState:
    """Heartbeat: extend the lease if it is still ours, and report a cancel request."""
    with sessions.begin() as session:
        now = database_now(session)
        row = session.execute(
            update(Execution)
            .where(_fenced(claim))
            .values(lease_expires_at=now + timedelta(seconds=settings.lease_seconds))
            .returning(Execution.cancel_requested)
        ).first()
    if row is None:
        return LeaseState(held=False, cancel_requested=False)
    return LeaseState(held=True, cancel_requested=bool(row[0]))


def complete(
    session: Session,
    claim: Claim,
    *,
    rows: int,
    columns: int,
    size: int,
    truncated: bool,
    data_key: str | None,
) -> bool:
    """Mark completed under the fence, in the caller's transaction; False if the lease was lost
    or a cancel (or purge) was accepted meanwhile: the row then ends ``cancelled``, and the
    caller deletes what it stored for this attempt."""
    now = database_now(session)
    ended = _finish(
        session,
        claim,
        status=ExecutionStatus.COMPLETED,
        completed_at=now,
        updated_at=now,
        result_rows=rows,
        result_columns=columns,
        result_size=size,
        result_truncated=truncated,
        data_key=data_key,
    )
    return ended == ExecutionStatus.COMPLETED


def finish_unsuccessfully(
    sessions: sessionmaker[Session], claim: Claim, code: str, message: str
) -> bool:
    """``failed`` with a stable code, or ``cancelled`` if a cancel was accepted meanwhile; False if
    the lease was lost."""
    with sessions.begin() as session:
        now = database_now(session)
        ended = _finish(
            session,
            claim,
            status=(
                ExecutionStatus.CANCELLED if code == ErrorCode.CANCELLED else ExecutionStatus.FAILED
            ),
            completed_at=now,
            updated_at=now,
            error_code=code,
            error_message=message[:2000],
        )
    return ended is not None


def _rows_changed(result: Result[Any]) -> int:
    """How many rows an UPDATE changed: the fence's verdict."""
    return cast(CursorResult[Any], result).rowcount


def _finish(session: Session, claim: Claim, **values: Any) -> str | None:
    """End the attempt; the status it ended with, or None if the fence refused it.

    An accepted cancel wins over whatever the run came to: the API server locks the row to set
    ``cancel_requested``, so either this update commits first (and the cancel is refused as too
    late) or it sees the flag and the row ends ``cancelled`` instead."""
    lease = {"lease_owner": None, "lease_expires_at": None}
    finished = _rows_changed(
        session.execute(
            update(Execution)
            .where(_fenced(claim) & Execution.cancel_requested.is_(False))
            .values(**values, **lease)
        )
    )
    status: str | None = values["status"] if finished else None
    if not finished:
        cancelled = _rows_changed(
            session.execute(
                update(Execution)
                .where(_fenced(claim) & Execution.cancel_requested.is_(True))
                .values(
                    status=ExecutionStatus.CANCELLED,
                    completed_at=values["completed_at"],
                    updated_at=values["updated_at"],
                    error_code=ErrorCode.CANCELLED,
                    error_message=CANCELLED_MESSAGE,
                    **lease,
                )
            )
        )
        status = ExecutionStatus.CANCELLED if cancelled else None
    new_work.announce(session)  # a slot of the datasource is free again
    return status


def reap_expired_leases(sessions: sessionmaker[Session], settings: Settings) -> int:
    """Re-queue executions whose worker vanished, or fail them after ``max_attempts``."""
    with sessions.begin() as session:
        now = database_now(session)
        expired = (Execution.status == ExecutionStatus.RUNNING) & (Execution.lease_expires_at < now)
        cancelled = _rows_changed(
            session.execute(
                update(Execution)
                .where(expired & Execution.cancel_requested.is_(True))
                .values(
                    status=ExecutionStatus.CANCELLED,
                    completed_at=now,
                    updated_at=now,
                    error_code=ErrorCode.CANCELLED,
                    error_message=CANCELLED_MESSAGE,
                    lease_owner=None,
                    lease_expires_at=None,
                )
            )
        )
        failed = _rows_changed(
            session.execute(
                update(Execution)
                .where(expired & (Execution.attempt >= settings.max_attempts))
                .values(
                    status=ExecutionStatus.FAILED,
                    completed_at=now,
                    updated_at=now,
                    error_code=ErrorCode.WORKER_LOST,
                    error_message=f"The data server running this execution stopped answering "
                    f"{settings.max_attempts} times.",
                    lease_owner=None,
                    lease_expires_at=None,
                )
            )
        )
        requeued = _rows_changed(
            session.execute(
                update(Execution)
                .where(expired & (Execution.attempt < settings.max_attempts))
                .values(
                    status=ExecutionStatus.STARTING,
                    updated_at=now,
                    lease_owner=None,
                    lease_expires_at=None,
                )
            )
        )
        if cancelled or failed or requeued:
            new_work.announce(session)
    if cancelled or failed or requeued:
        logger.warning(
            "reaped expired leases requeued=%d failed=%d cancelled=%d", requeued, failed, cancelled
        )
    return cancelled + failed + requeued


def release(sessions: sessionmaker[Session], claim: Claim) -> None:
    """A worker shutting down hands its running execution back to the queue (still fenced)."""
    with sessions.begin() as session:
        session.execute(
            update(Execution)
            .where(_fenced(claim))
            .values(status=ExecutionStatus.STARTING, lease_owner=None, lease_expires_at=None)
        )
        new_work.announce(session)


# ---------------------------------------------------------------------------- the API server's


def request_cancel(session: Session, execution: Execution) -> Execution:
    """Accepted (the row marked) means the execution ends ``cancelled``: a worker's completion
    after this is refused by the queue's fence and its object deleted. 409 if it already ended.
    The row is locked and read afresh first, so a completion committed a moment ago is seen."""
    _lock(session, execution)
    if execution.status in TERMINAL_STATUSES:
        raise Conflict(
            f"The execution already ended ({execution.status}).", code="execution_finished"
        )
    _mark_cancelled(execution)
    session.flush()
    return execution


def _mark_cancelled(execution: Execution) -> None:
    if execution.status == ExecutionStatus.STARTING:
        now = utcnow()
        execution.status = ExecutionStatus.CANCELLED
        execution.completed_at = now
        execution.error_code = ErrorCode.CANCELLED
        execution.error_message = "Cancelled before it started."
    execution.cancel_requested = True


def purge_result(session: Session, execution: Execution) -> str | None:
    """Forget the result now; returns the data key whose stored object the caller deletes after
    the commit (``delete_stored_data``). An unfinished execution is cancelled, so that its worker
    can never publish a result (it deletes its own upload); one that completed before the lock
    was taken returns its key here."""
    _lock(session, execution)
    if execution.status not in TERMINAL_STATUSES:
        _mark_cancelled(execution)
    execution.data_purged_at = execution.data_purged_at or utcnow()
    session.flush()
    return execution.data_key


def _lock(session: Session, execution: Execution) -> None:
    """Hold the row until commit (the database's write lock on SQLite) and re-read it."""
    write_lock_on_sqlite(session)
    session.refresh(execution, with_for_update=True)
