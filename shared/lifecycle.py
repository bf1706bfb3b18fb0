"""The execution lifecycle, in one place: its statuses, types and error codes, and every
transition of an ``executions`` row, whichever server makes it.

The table is the queue. The API server enqueues, cancels and purges; data server workers claim
with a lease, renew it, complete or fail under a fence, and release on shutdown; maintenance reaps
expired leases. The attempt number is the fencing token: every write-back names the attempt it
claimed, so a worker whose lease expired (and whose execution was re-queued) can no longer change
the row. A cancel the API server accepted is part of the fence: whatever the run came to, the row
then ends ``cancelled``, and a refused completion tells the worker to delete the result it
uploaded.

Claims are fair: a free worker takes the oldest queued execution of the (organisation,
datasource) pair that has the fewest running executions — organisation first, then datasource —
among the pairs below both caps (the datasource's ``max_concurrent_executions``, the
organisation's ``max_running_executions``). One query ranks every pair with queued work, so no
look-ahead window can hide claimable work behind a full datasource. The caps are counted again
under a lock per organisation (a datasource belongs to one organisation), so they hold across
every worker of the region: PostgreSQL takes a transaction-scoped advisory lock and the row with
``FOR UPDATE SKIP LOCKED``; SQLite serialises the whole claim with ``BEGIN IMMEDIATE``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    CursorResult,
    Integer,
    Result,
    Select,
    bindparam,
    func,
    select,
    text,
    update,
)
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, aliased, sessionmaker
from sqlalchemy.sql.dml import ReturningUpdate

from shared.db.engine import database_now, write_lock_on_sqlite
from shared.db.models import Datasource, Execution, Organization, UTCDateTime, utcnow
from shared.errors import Conflict

# The vocabulary lives apart (see shared.execution_states) and is re-exported here, so that
# the lifecycle reads, and is imported, as one module.
from shared.execution_states import TERMINAL_STATUSES as TERMINAL_STATUSES
from shared.execution_states import UNFINISHED_STATUSES as UNFINISHED_STATUSES
from shared.execution_states import ErrorCode as ErrorCode
from shared.execution_states import ExecutionStatus as ExecutionStatus
from shared.execution_states import ExecutionType as ExecutionType
from shared.notifications import announce_ended, announce_new_work
from shared.settings import Settings

logger = logging.getLogger(__name__)


# Pairs a claim tries per ranking, and rankings before it gives up: only lost races use them up
# (a pair another worker is claiming from, or that it filled meanwhile), never full datasources.
_PAIRS_PER_RANKING = 8
_RANKINGS_PER_CLAIM = 4
# PostgreSQL's two-key advisory lock of claims: "dfcl", then the organisation. A hash collision
# only makes two organisations' claims take turns.
_CLAIM_LOCK_KEY = f"{0x6466636C}, hashtext(:organization)"
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
    # How a remote datasource is reached; the password stays encrypted until the worker hands
    # it to the sandbox child that connects.
    host: str | None = None
    port: int | None = None
    username: str | None = None
    password_encrypted: str | None = None
    require_ssl: bool = True
    verify_ssl: bool = False
    s3_region: str | None = None

    def __repr__(self) -> str:  # keep even the ciphertext out of logs and tracebacks
        return f"Claim(execution_id={self.execution_id!r}, attempt={self.attempt})"


def claim_next(sessions: sessionmaker[Session], worker_id: str, settings: Settings) -> Claim | None:
    """Take the oldest queued execution of the least-served (organisation, datasource) pair that
    both caps leave a slot to, or None when no queued execution may start now."""
    try:
        with sessions.begin() as session:
            write_lock_on_sqlite(session)
            return _claim_in(session, worker_id, settings)
    except OperationalError as exc:  # SQLite busy under contention: nothing claimed, try again
        logger.debug("claim contention: %s", type(exc.orig).__name__)
        return None


def _claim_in(session: Session, worker_id: str, settings: Settings) -> Claim | None:
    started = _start_next(session, worker_id, settings)
    if started is None:
        return None
    claimed, datasource = started
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
        host=datasource.host,
        port=datasource.port,
        username=datasource.username,
        password_encrypted=datasource.password_encrypted,
        require_ssl=datasource.require_ssl,
        verify_ssl=datasource.verify_ssl,
        s3_region=datasource.s3_region,
    )


def _start_next(
    session: Session, worker_id: str, settings: Settings
) -> tuple[Execution, Datasource] | None:
    """Rank the pairs, then lock, recount and start from the first that still has a slot. A new
    ranking only after every pair of one was lost to other workers (or filled by them)."""
    holding = False  # a claim lock, which only the end of this transaction releases
    for ranking in range(_RANKINGS_PER_CLAIM):
        pairs = session.execute(_RANKING, {"default_cap": settings.max_running_executions}).all()
        if not pairs:
            return None
        for organization_id, datasource_id in pairs:
            # In the last ranking, wait for an organisation another worker is claiming for
            # rather than give up, so that a busy organisation does not idle this worker; but
            # only while holding no other claim lock, so that two waiters never deadlock.
            wait = ranking == _RANKINGS_PER_CLAIM - 1 and not holding
            if not _lock_organization(session, organization_id, wait=wait):
                continue
            holding = True
            started = _start_in(session, organization_id, datasource_id, worker_id, settings)
            if started is not None:
                return started
    return None


def _start_in(
    session: Session, organization_id: str, datasource_id: str, worker_id: str, settings: Settings
) -> tuple[Execution, Datasource] | None:
    """Under the organisation's lock: start the pair's oldest queued execution if both caps
    still leave a slot."""
    pair = {"pair_organization": organization_id, "pair_datasource": datasource_id}
    datasource = session.scalar(
        _WITH_FREE_SLOT, {**pair, "default_cap": settings.max_running_executions}
    )
    if datasource is None:
        return None
    now = database_now(session)
    claimed = session.execute(
        _START_OLDEST,
        {
            **pair,
            "claim_worker": worker_id,
            "claim_now": now,
            "claim_until": now + timedelta(seconds=settings.lease_seconds),
        },
    ).scalar_one_or_none()
    return None if claimed is None else (claimed, datasource)


def _lock_organization(session: Session, organization_id: str, *, wait: bool) -> bool:
    """Hold the organisation's claim lock until commit; False when another claim holds it and
    ``wait`` is off. On SQLite the claim already holds the database's write lock."""
    if session.get_bind().dialect.name != "postgresql":
        return True
    key = {"organization": organization_id}
    if wait:
        session.execute(text(f"SELECT pg_advisory_xact_lock({_CLAIM_LOCK_KEY})"), key)
        return True
    return bool(
        session.execute(text(f"SELECT pg_try_advisory_xact_lock({_CLAIM_LOCK_KEY})"), key).scalar()
    )


# The claim's statements are built once (a claim runs many times a second) and bound per call.


def _organization_cap() -> ColumnElement[int]:
    """An organisation's running cap: its own, or the deployment's (``default_cap``) when unset."""
    return func.coalesce(
        func.nullif(Organization.max_running_executions, 0),
        bindparam("default_cap", type_=Integer),
    )


def _ranking() -> Select[str, str]:
    """Every (organisation, datasource) pair with queued work and a slot under both caps, the
    least-served first: fewest running in the organisation, then on the datasource, then the
    oldest queued execution. Full pairs are filtered out before the limit, never after it."""
    running = Execution.status == ExecutionStatus.RUNNING
    by_organization = (
        select(Execution.organization_id.label("id"), func.count().label("running"))
        .where(running)
        .group_by(Execution.organization_id)
        .subquery()
    )
    by_datasource = (
        select(Execution.datasource_id.label("id"), func.count().label("running"))
        .where(running)
        .group_by(Execution.datasource_id)
        .subquery()
    )
    queued = (
        select(
            Execution.organization_id,
            Execution.datasource_id,
            func.min(Execution.created_at).label("oldest"),
        )
        .where(Execution.status == ExecutionStatus.STARTING)
        .group_by(Execution.organization_id, Execution.datasource_id)
        .subquery()
    )
    in_organization = func.coalesce(by_organization.c.running, 0)
    on_datasource = func.coalesce(by_datasource.c.running, 0)
    return (
        select(queued.c.organization_id, queued.c.datasource_id)
        .join(Organization, Organization.id == queued.c.organization_id)
        .join(Datasource, Datasource.id == queued.c.datasource_id)
        .outerjoin(by_organization, by_organization.c.id == queued.c.organization_id)
        .outerjoin(by_datasource, by_datasource.c.id == queued.c.datasource_id)
        .where(
            in_organization < _organization_cap(),
            on_datasource < Datasource.max_concurrent_executions,
        )
        .order_by(
            in_organization,
            on_datasource,
            queued.c.oldest,
            queued.c.organization_id,
            queued.c.datasource_id,
        )
        .limit(_PAIRS_PER_RANKING)
    )


def _with_free_slot() -> Select[Datasource]:
    """The pair's datasource, if neither its cap nor its organisation's is reached (nothing if it
    was deleted). Run under the organisation's lock, it sees every claim committed before."""
    running = Execution.status == ExecutionStatus.RUNNING
    in_organization = (
        select(func.count())
        .where(running, Execution.organization_id == bindparam("pair_organization"))
        .scalar_subquery()
    )
    on_datasource = (
        select(func.count())
        .where(running, Execution.datasource_id == bindparam("pair_datasource"))
        .scalar_subquery()
    )
    return (
        select(Datasource)
        .join(Organization, Organization.id == Datasource.organization_id)
        .where(
            Datasource.id == bindparam("pair_datasource"),
            in_organization < _organization_cap(),
            on_datasource < Datasource.max_concurrent_executions,
        )
    )


def _start_oldest() -> ReturningUpdate[Execution]:
    """Start the pair's oldest queued execution; one that another transaction holds (a cancel
    under way) is skipped. Nothing when the pair has no queued execution any more."""
    queued = aliased(Execution)
    oldest = (
        select(queued.id)
        .where(
            queued.organization_id == bindparam("pair_organization"),
            queued.datasource_id == bindparam("pair_datasource"),
            queued.status == ExecutionStatus.STARTING,
        )
        .order_by(queued.created_at, queued.id)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    now = bindparam("claim_now", type_=UTCDateTime())
    return (
        update(Execution)
        .where(Execution.id == oldest, Execution.status == ExecutionStatus.STARTING)
        .values(
            status=ExecutionStatus.RUNNING,
            attempt=Execution.attempt + 1,
            lease_owner=bindparam("claim_worker"),
            lease_expires_at=bindparam("claim_until", type_=UTCDateTime()),
            started_at=func.coalesce(Execution.started_at, now),
            updated_at=now,
        )
        .returning(Execution)
    )


_RANKING = _ranking()
_WITH_FREE_SLOT = _with_free_slot()
_START_OLDEST = _start_oldest()


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
    if status is not None:
        announce_ended(session, [claim.execution_id])
    announce_new_work(session)  # a slot of the datasource is free again
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


def release(sessions: sessionmaker[Session], claim: Claim) -> None:
    """A worker shutting down hands its running execution back to the queue (still fenced)."""
    with sessions.begin() as session:
        session.execute(
            update(Execution)
            .where(_fenced(claim))
            .values(status=ExecutionStatus.STARTING, lease_owner=None, lease_expires_at=None)
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
    execution.cancel_requested = True


def purge_result(session: Session, execution: Execution) -> str | None:
    """Forget the result now; returns the data key whose stored object the caller deletes after
    the commit (``delete_stored_data``). An unfinished execution is cancelled, so that its worker
    can never publish a result (it deletes its own upload); one that completed before the lock
    was taken returns its key here."""
    _lock(session, execution)
    if execution.status not in TERMINAL_STATUSES:
        _mark_cancelled(session, execution)
    execution.data_purged_at = execution.data_purged_at or utcnow()
    session.flush()
    return execution.data_key


def _lock(session: Session, execution: Execution) -> None:
    """Hold the row until commit (the database's write lock on SQLite) and re-read it."""
    write_lock_on_sqlite(session)
    session.refresh(execution, with_for_update=True)
