"""Every transition of an ``executions`` row after its claim, whichever server makes it.

Data server workers renew their lease, complete or fail under a fence, and release on shutdown;
maintenance reaps expired leases and applies retention; the API server cancels and purges. The attempt number is the
fencing token: every write-back names the attempt it claimed, so a worker whose lease expired
(and whose execution was re-queued) can no longer change the row. A cancel the API server
accepted is part of the fence: whatever the run came to, the row then ends ``cancelled``, and a
refused completion tells the worker to delete the result it uploaded. Each terminal transition
announces "execution X ended", and each freed slot "new work" while work is queued
(shared.notifications).
"""

from __future__ import annotations

import functools
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar, cast

from sqlalchemy import (
    ColumnElement,
    CursorResult,
    Result,
    Row,
    Update,
    bindparam,
    delete,
    select,
    update,
)
from sqlalchemy.orm import Session, sessionmaker

from shared.db.engine import database_now, write_lock_on_sqlite
from shared.db.models import Execution, UTCDateTime, table_of, utcnow
from shared.errors import Conflict
from shared.execution_states import TERMINAL_STATUSES, ErrorCode, ExecutionStatus
from shared.lifecycle.claims import Claim
from shared.notifications import announce_cancel_requested, announce_ended, announce_new_work
from shared.organization_rows import (
    RESULT_STORED,
    count_execution_text,
    count_stored_bytes,
    lock_organization,
    result_bytes,
)
from shared.settings import Settings

logger = logging.getLogger(__name__)

CANCELLED_MESSAGE = "Cancelled."
# How often every data server with workers runs its retention sweep (data_server.janitor): what
# retention forgets is gone, and its room freed, at most this long after it expired.
RETENTION_SWEEP_SECONDS = 60.0


_EXECUTIONS = table_of(Execution)
# The fence of every write-back of a claimed execution: its row, the attempt it claimed, still
# running. Bound per call by ``_fence_of``.
_FENCE = (
    (_EXECUTIONS.c.id == bindparam("fence_id"))
    & (_EXECUTIONS.c.attempt == bindparam("fence_attempt"))
    & (_EXECUTIONS.c.status == ExecutionStatus.RUNNING)
)


def _fence_of(claim: Claim) -> dict[str, Any]:
    return {"fence_id": claim.execution_id, "fence_attempt": claim.attempt}


def _fenced_write(
    session: Session, claim: Claim, *, cancel_requested: bool | None = None, **values: Any
) -> int:
    """Set ``values`` on the claimed row if the fence (and ``cancel_requested``, unless None)
    still holds; how many rows changed (0 or 1)."""
    statement = _fenced_update(frozenset(values), cancel_requested)
    bound = {f"set_{name}": value for name, value in values.items()}
    return _rows_changed(session.execute(statement, {**_fence_of(claim), **bound}))


@functools.cache
def _fenced_update(names: frozenset[str], cancel_requested: bool | None) -> Update:
    """Every execution's end writes back through one of a handful of these (completion,
    failure, cancellation, release): each is built once and bound per call."""
    fence = _FENCE
    if cancel_requested is not None:
        fence = fence & _EXECUTIONS.c.cancel_requested.is_(cancel_requested)
    return (
        update(_EXECUTIONS)
        .where(fence)
        .values({name: bindparam(f"set_{name}", type_=_EXECUTIONS.c[name].type) for name in names})
    )


# A heartbeat of every running execution, every few seconds.
_RENEW_LEASE = (
    update(_EXECUTIONS)
    .where(_FENCE)
    .values(lease_expires_at=bindparam("renewed_until", type_=UTCDateTime()))
    .returning(_EXECUTIONS.c.cancel_requested)
)


@dataclass(frozen=True)
class LeaseState:
    held: bool
    cancel_requested: bool


def renew_lease(sessions: sessionmaker[Session], claim: Claim, settings: Settings) -> LeaseState:
    """Heartbeat: extend the lease if it is still ours, and report a cancel request."""
    with sessions.begin() as session:
        now = database_now(session)
        renewed_until = now + timedelta(seconds=settings.lease_seconds)
        row = session.execute(
            _RENEW_LEASE, {**_fence_of(claim), "renewed_until": renewed_until}
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
    caller deletes what it stored for this attempt. A stored result's (``data_key``) bytes are
    the caller's to count in its organisation's stored bytes, under the organisation's lock it
    took first (``locked_storage_usage``, which counts them as it locks)."""
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
    finished = _fenced_write(session, claim, cancel_requested=False, **values, **lease)
    status: str | None = values["status"] if finished else None
    if not finished:
        cancelled = _fenced_write(
            session,
            claim,
            cancel_requested=True,
            status=ExecutionStatus.CANCELLED,
            completed_at=values["completed_at"],
            updated_at=values["updated_at"],
            error_code=ErrorCode.CANCELLED,
            error_message=CANCELLED_MESSAGE,
            **lease,
        )
        status = ExecutionStatus.CANCELLED if cancelled else None
    if status is not None:
        announce_ended(session, [claim.execution_id])
    # The slot it frees is announced by the executor once this commits (announce_if_work_waits).
    return status


def reap_expired_leases(sessions: sessionmaker[Session], settings: Settings) -> int:
    """Re-queue executions whose worker vanished, or fail them after ``max_attempts``."""
    with sessions.begin() as session:
        now = database_now(session)
        expired = (Execution.status == ExecutionStatus.RUNNING) & (Execution.lease_expires_at < now)
        cancelled = _ended_ids(
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
                .returning(Execution.id)
            )
        )
        failed = _ended_ids(
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
                .returning(Execution.id)
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
        if cancelled or failed:
            announce_ended(session, cancelled + failed)
        if cancelled or failed or requeued:
            announce_new_work(session)
    if cancelled or failed or requeued:
        logger.warning(
            "reaped expired leases requeued=%d failed=%d cancelled=%d",
            requeued,
            len(failed),
            len(cancelled),
        )
    return len(cancelled) + len(failed) + requeued


def _ended_ids(result: Result[Any]) -> list[str]:
    """The ids an ``UPDATE … RETURNING id`` ended: their waiters are told."""
    return [row[0] for row in result]


def expire_results(sessions: sessionmaker[Session], settings: Settings, batch: int) -> list[str]:
    """Retention: mark up to ``batch`` results completed longer ago than
    ``result_retention_hours`` purged; their data keys, whose objects the caller deletes once
    this committed (``delete_stored_data``)."""
    with sessions() as session:
        cutoff = database_now(session) - timedelta(hours=settings.result_retention_hours)
        due = session.execute(
            select(Execution.organization_id, Execution.id)
            .where(RESULT_STORED, Execution.completed_at < cutoff)
            .limit(batch)
        ).all()
    return _by_organization(sessions, due, purge_stored_results)


def delete_expired_executions(
    sessions: sessionmaker[Session], settings: Settings, batch: int
) -> list[str | None]:
    """Retention: delete up to ``batch`` ended executions created longer ago than
    ``execution_retention_hours``; their data keys (None where they had no result), whose
    objects the caller deletes once this committed."""
    with sessions() as session:
        cutoff = database_now(session) - timedelta(hours=settings.execution_retention_hours)
        due = session.execute(
            select(Execution.organization_id, Execution.id)
            .where(Execution.created_at < cutoff, Execution.status.in_(TERMINAL_STATUSES))
            .limit(batch)
        ).all()
    return _by_organization(sessions, due, delete_executions)


_Key = TypeVar("_Key", str, str | None)


def _by_organization(
    sessions: sessionmaker[Session],
    due: Sequence[Row[str, str]],
    forget: Callable[[Session, str, ColumnElement[bool]], list[_Key]],
) -> list[_Key]:
    """``forget`` the executions of the (organisation id, execution id) rows ``due``, in one
    transaction per organisation with its row locked first, so that each organisation's runs wait
    only for its own share of the batch; the data keys it returned. A row that changed meanwhile
    is left as ``forget``'s conditions find it."""
    executions: defaultdict[str, list[str]] = defaultdict(list)
    for organization_id, execution_id in due:
        executions[organization_id].append(execution_id)
    data_keys: list[_Key] = []
    for organization_id, ids in executions.items():
        with sessions.begin() as session:
            lock_organization(session, organization_id)
            data_keys += forget(session, organization_id, Execution.id.in_(ids))
    return data_keys


def purge_stored_results(
    session: Session, organization_id: str, which: ColumnElement[bool]
) -> list[str]:
    """Mark the results of this organisation's executions ``which`` purged, those still stored,
    and take their bytes off its counter; the caller locked the organisation first
    (``lock_organization``) and deletes the objects of the data keys returned once this
    committed."""
    purged = session.execute(
        update(Execution)
        .where(which, RESULT_STORED, Execution.organization_id == organization_id)
        .values(data_purged_at=utcnow())
        .returning(Execution.data_key, Execution.result_size, Execution.variants_size)
    ).all()
    count_stored_bytes(session, organization_id, -sum(result_bytes(r, v) for _, r, v in purged))
    return [data_key for data_key, _, _ in purged if data_key is not None]


def delete_executions(
    session: Session, organization_id: str, which: ColumnElement[bool]
) -> list[str | None]:
    """Delete this organisation's executions ``which`` and take the bytes of their results still
    stored, and the bytes of text they keep, off its counters; the caller locked the
    organisation first (``lock_organization``) and deletes the objects of the data keys
    returned, one per execution deleted (None: it had no result, or its result was purged, whose
    objects went then), once this committed. The waiters of those still unfinished are told they
    ended (they read, and answer 404): as many as the caps let queue or run; the workers of those
    running, to stop them.

    Plain columns come back and Python adds them up: SQLite 3.40 answers ``x IS NULL``
    wrongly in a DELETE's RETURNING clause (false for a NULL)."""
    deleted = session.execute(
        delete(Execution)
        .where(which, Execution.organization_id == organization_id)
        .returning(
            Execution.id,
            Execution.status,
            Execution.data_key,
            Execution.data_purged_at,
            Execution.result_size,
            Execution.variants_size,
            Execution.kept_bytes,
        )
    ).all()
    still_stored = sum(
        result_bytes(row.result_size, row.variants_size)
        for row in deleted
        if row.data_key is not None and row.data_purged_at is None
    )
    count_stored_bytes(session, organization_id, -still_stored)
    count_execution_text(session, organization_id, -sum(row.kept_bytes for row in deleted))
    unfinished = [row.id for row in deleted if row.status not in TERMINAL_STATUSES]
    if unfinished:
        announce_ended(session, unfinished)
    running = [row.id for row in deleted if row.status == ExecutionStatus.RUNNING]
    if running:  # their workers find their leases gone and stop them at once
        announce_cancel_requested(session, running)
    return [row.data_key if row.data_purged_at is None else None for row in deleted]


def release(sessions: sessionmaker[Session], claim: Claim) -> None:
    """A worker shutting down hands its running execution back to the queue (still fenced)."""
    with sessions.begin() as session:
        _fenced_write(
            session, claim, status=ExecutionStatus.STARTING, lease_owner=None, lease_expires_at=None
        )
        announce_new_work(session)


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
    _mark_cancelled(session, execution)
    session.flush()
    return execution


def _mark_cancelled(session: Session, execution: Execution) -> None:
    if execution.status == ExecutionStatus.STARTING:
        now = utcnow()
        execution.status = ExecutionStatus.CANCELLED
        execution.completed_at = now
        execution.error_code = ErrorCode.CANCELLED
        execution.error_message = "Cancelled before it started."
        announce_ended(session, [execution.id])
    else:  # its worker stops it
        announce_cancel_requested(session, [execution.id])
    execution.cancel_requested = True


def purge_result(session: Session, execution: Execution) -> str | None:
    """Forget the result now; returns the data key whose stored object the caller deletes after
    the commit (``delete_stored_data``). An unfinished execution is cancelled, so that its worker
    can never publish a result (it deletes its own upload); one that completed before the lock
    was taken returns its key here. The organisation is locked first, as a worker completing
    there locks it before the execution."""
    lock_organization(session, execution.organization_id)
    _lock(session, execution)
    if execution.status not in TERMINAL_STATUSES:
        _mark_cancelled(session, execution)
    if execution.data_purged_at is None:  # also without a result: Get Execution Data says gone
        if execution.data_key is not None:
            stored = result_bytes(execution.result_size, execution.variants_size)
            count_stored_bytes(session, execution.organization_id, -stored)
        execution.data_purged_at = utcnow()
    session.flush()
    return execution.data_key


def _lock(session: Session, execution: Execution) -> None:
    """Hold the row until commit (the database's write lock on SQLite) and re-read it."""
    write_lock_on_sqlite(session)
    session.refresh(execution, with_for_update=True)
