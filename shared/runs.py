"""Creating a SQL execution: the one code path, whoever asks — an API key (Run Execution, running
a report or a dashboard) or a data server's dashboard scheduler, which has no principal.

Snippets are expanded and placeholders bound before anything is written (a problem is a 422 and
no row exists); then the organisation's row is locked, a reusable execution looked for, the
organisation's cap checked, and one ``executions`` row written with status ``starting`` for a
worker to claim. The callers check who may run what; this module decides nothing about keys.

**Result reuse** (docs/result-reuse.md): a report's run carries a ``reuse_key``, a SHA-256 over
the datasource, the SQL that runs and its bound values (canonical JSON). A run given a
``reuse_since`` instant answers, instead of a new row, the newest execution of the same
organisation and key created since then that is either completed with its result still stored,
or still queued or running and not being cancelled (coalescing: concurrent viewers of one
dashboard share one run). Measured on ``created_at`` because the data were read after it: a
reused result is never older than the window.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Select, and_, bindparam, case, func, or_, select, true
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.database_types import refuse_ssh_tunnel
from shared.db.engine import held_against_delete, one_of
from shared.db.models import (
    ApiKey,
    Dashboard,
    Datasource,
    Execution,
    Organization,
    Report,
    SqlSnippet,
    insert_new,
    table_of,
    text_bytes,
    utcnow,
)
from shared.errors import (
    AppError,
    Conflict,
    NotFound,
    PayloadTooLarge,
    TooManyRequests,
    unauthorized,
)
from shared.filter_rules import variable_rules
from shared.lifecycle import (
    ORGANIZATION_CAP_COUNTS,
    RETENTION_SWEEP_SECONDS,
    UNFINISHED_STATUSES,
    ExecutionStatus,
    ExecutionType,
)
from shared.notifications import announce_new_work
from shared.organization_rows import (
    HeldOrganization,
    count_execution_text,
    lock_organization,
)
from shared.settings import Settings
from shared.storage_quota import MIB
from sql_templating.binding import BoundQuery, bind_parameters
from sql_templating.parameters import InputParameters
from sql_templating.snippets import expand_snippets


@dataclass(frozen=True)
class SqlRun:
    """What one SQL execution is created from. ``parameters``: Run Execution's as sent (the
    execution's record); ``inputs``: the same, validated. ``every_filter_used``: False for a
    report's run (a dashboard's filters apply to the reports whose SQL uses them).
    ``reuse_since``: answer a reusable execution created since then, if there is one (None:
    never reuse); ``reuse_completed_since``: a completed one only if it completed since then
    (None: as ``reuse_since`` says). ``api_key_id`` is None for the scheduler's runs."""

    datasource: Datasource
    sql_query: str
    parameters: dict[str, Any]
    inputs: InputParameters
    every_filter_used: bool = True
    api_key_id: str | None = None
    idempotency_key: str | None = None
    request_fingerprint: str | None = None
    report_id: str | None = None
    reuse_since: datetime | None = None
    reuse_completed_since: datetime | None = None
    # A run nobody waits for (the scheduler's): it may take only BACKGROUND_CAP_SHARE of the
    # organisation's cap, so that its own interactive runs still find room.
    background: bool = False


BACKGROUND_CAP_SHARE = 0.5


@dataclass(frozen=True)
class QueuedRun:
    """The execution that answers a run, and whether it is an earlier one reused."""

    execution: Execution
    reused: bool = False


def queue_sql_execution(session: Session, run: SqlRun, settings: Settings) -> QueuedRun:
    """Bind ``run``, then reuse an execution or queue a new one (in the caller's transaction,
    workers told once it commits). An Idempotency-Key already used by the key raises the
    ``IntegrityError`` of its insert, inside a savepoint: the caller answers the earlier one."""
    datasource = run.datasource
    require_enabled(datasource)
    bound = bind_run(session, run, settings)
    reusable_run = run.report_id is not None or run.reuse_since is not None
    key = reuse_key(datasource.id, bound) if reusable_run else None
    weight = text_bytes(run.sql_query, bound.sql, run.parameters, bound.values)
    require_text_fits(weight, settings)
    organization = lock_organization(
        session, datasource.organization_id, adding=("execution_text_bytes", weight)
    )
    try:
        queued = _queue_locked(session, run, bound, key, organization, weight, settings)
    except (AppError, IntegrityError):
        # Refused, or an Idempotency-Key's insert collided in its savepoint: nothing kept. (An
        # insert that failed without a savepoint ended the transaction, and the count with it.)
        if session.is_active:
            count_execution_text(session, organization.id, -weight)
        raise
    if queued.reused:  # nothing new kept
        count_execution_text(session, organization.id, -weight)
    else:
        announce_new_work(session)
    return queued


def _queue_locked(
    session: Session,
    run: SqlRun,
    bound: BoundQuery,
    key: str | None,
    organization: HeldOrganization,
    weight: int,
    settings: Settings,
) -> QueuedRun:
    """``queue_sql_execution``'s steps under the organisation's lock, whose count of its
    executions' text already holds ``weight``."""
    datasource = run.datasource
    require_still_there(session, datasource.id, run.report_id, run.api_key_id)
    if key is not None and run.reuse_since is not None:
        reusable = find_reusable(
            session, datasource, key, run.reuse_since, settings, run.reuse_completed_since
        )
        if reusable is not None:
            return QueuedRun(reusable, reused=True)
    require_capacity(session, organization, settings, background=run.background)
    require_text_room(session, organization, weight, settings)
    fields = dict(
        id=str(uuid.uuid4()),
        organization_id=datasource.organization_id,
        datasource_id=datasource.id,
        api_key_id=run.api_key_id,
        execution_type=ExecutionType.SQL_QUERY,
        sql_query=run.sql_query,
        parameters=run.parameters,
        expanded_sql=bound.sql,
        bound_parameters=bound.values,
        idempotency_key=run.idempotency_key,
        request_fingerprint=run.request_fingerprint,
        report_id=run.report_id,
        reuse_key=key,
        kept_bytes=weight,
    )
    if run.idempotency_key is None:  # nothing it could collide with: no savepoint to pay for
        return QueuedRun(insert_new(session, Execution, **fields))
    with session.begin_nested():
        return QueuedRun(insert_new(session, Execution, **fields))


class ReportGone(NotFound):
    """The report a run was read with was deleted before its execution was queued."""


def require_still_there(
    session: Session, datasource_id: str, report_id: str | None, api_key_id: str | None = None
) -> None:
    """The datasource (and report, and the key that runs it) an execution about to be inserted
    was read with still exist, held against a delete (a key-share lock) until it is committed:
    one racing a delete of either is a 404 (``ReportGone`` for the report), or the one 401 for a
    key deleted or disabled since the request began, not the insert failing its foreign key (a
    500). The key is held in the datasource's statement: no round trip more. (On SQLite the
    caller holds the database's write lock, which already orders them.)"""
    held = {"row_id": datasource_id, "key_id": api_key_id}
    enabled = None if api_key_id is None else session.scalar(_DATASOURCE_AND_KEY_HELD, held)
    if enabled is None:  # no key to hold, or one of the two is gone: which?
        if session.scalar(_DATASOURCE_HELD, {"row_id": datasource_id}) is None:
            raise NotFound("No datasource with this id exists.")
        if api_key_id is not None:
            raise unauthorized()
    elif not enabled:
        raise unauthorized()
    if report_id is not None and session.scalar(_REPORT_HELD, {"row_id": report_id}) is None:
        raise ReportGone("No report with this id exists.")


def _held(model: type[Datasource] | type[Report]) -> Select[str]:
    """Built once, on the table (every run asks): an ORM-enabled select, built per call, cost
    three times as much."""
    rows = table_of(model)
    return held_against_delete(select(rows.c.id).where(rows.c.id == bindparam("row_id")))


_DATASOURCE_HELD = _held(Datasource)
_REPORT_HELD = _held(Report)
_KEYS, _DATASOURCES = table_of(ApiKey), table_of(Datasource)
# Whether the key is enabled, both rows held; no row when either is gone. (Two rows of unrelated
# tables: joined on nothing but their ids' conditions.)
_DATASOURCE_AND_KEY_HELD = held_against_delete(
    select(_KEYS.c.enabled)
    .select_from(_DATASOURCES.join(_KEYS, true()))
    .where(_DATASOURCES.c.id == bindparam("row_id"), _KEYS.c.id == bindparam("key_id"))
)


def bind_run(session: Session, run: SqlRun, settings: Settings) -> BoundQuery:
    """The SQL that runs: snippets of the run's organisation expanded, placeholders bound."""
    datasource = run.datasource
    lookup = snippet_lookup(session, datasource.organization_id)
    expanded_sql = expand_snippets(run.sql_query, lookup, settings.max_sql_length)
    return bind_parameters(
        expanded_sql,
        run.inputs,
        datasource.data_time_zone,
        settings.max_sql_length,
        every_filter_used=run.every_filter_used,
        rules=variable_rules(
            session, datasource.organization_id, datasource.id, run.inputs, settings
        ),
    )


def snippet_lookup(session: Session, organization_id: str) -> Callable[[str], str | None]:
    """Name → SQL for one organisation only, each name read at most once per expansion."""
    cache: dict[str, str | None] = {}

    def lookup(name: str) -> str | None:
        if name not in cache:
            cache[name] = session.scalar(
                select(SqlSnippet.sql).where(
                    SqlSnippet.organization_id == organization_id, SqlSnippet.name == name
                )
            )
        return cache[name]

    return lookup


# ---------------------------------------------------------------------------- reuse


def reuse_key(datasource_id: str, bound: BoundQuery) -> str:
    """SHA-256 (hex) of the datasource, the SQL that runs and its bound values, as canonical
    JSON: equal only when the same query would read the same data."""
    canonical = orjson.dumps(
        {"datasource": datasource_id, "sql": bound.sql, "values": bound.values},
        option=orjson.OPT_SORT_KEYS,
    )
    return hashlib.sha256(canonical).hexdigest()


def reuse_window(dashboard: Dashboard | None, now: datetime) -> datetime | None:
    """Since when a run of a report on ``dashboard`` reuses: its ``data_refresh_rate`` minutes
    back from ``now``; None (never) off a dashboard or without a refresh rate."""
    if dashboard is None or not dashboard.data_refresh_rate:
        return None
    return now - timedelta(minutes=dashboard.data_refresh_rate)


def find_reusable(
    session: Session,
    datasource: Datasource,
    key: str,
    since: datetime,
    settings: Settings,
    completed_since: datetime | None = None,
) -> Execution | None:
    """The newest execution of the organisation with ``key`` created since ``since`` (and
    still visible) that completed with its result stored (since ``completed_since``, if given),
    or is queued or running and not being cancelled; a completed one first. Failed and
    cancelled ones are never reused, nor one created before the datasource last changed: its
    settings (``data_time_zone``, the folder or server it reads) or its recorded schema, which a
    refresh after new files records (the key names the datasource, not what it was then)."""
    now = utcnow()
    visible_since = now - timedelta(hours=settings.execution_retention_hours)
    result_since = now - timedelta(hours=settings.result_retention_hours)
    completed = and_(
        Execution.status == ExecutionStatus.COMPLETED,
        Execution.data_key.is_not(None),
        Execution.data_purged_at.is_(None),
        Execution.completed_at >= max(result_since, completed_since or result_since),
    )
    unfinished = and_(
        one_of(Execution.status, UNFINISHED_STATUSES), Execution.cancel_requested.is_(False)
    )
    return session.scalar(
        select(Execution)
        .where(
            Execution.organization_id == datasource.organization_id,
            Execution.reuse_key == key,
            Execution.datasource_id == datasource.id,
            Execution.execution_type == ExecutionType.SQL_QUERY,
            Execution.created_at >= max(since, visible_since, datasource.updated_at),
            or_(completed, unfinished),
        )
        .order_by(case((completed, 0), else_=1), Execution.created_at.desc())
        .limit(1)
    )


# ---------------------------------------------------------------------------- admission


def require_enabled(datasource: Datasource) -> None:
    if not datasource.enabled:
        raise Conflict("This datasource is disabled.", code="datasource_disabled")
    refuse_ssh_tunnel(datasource.ssh_tunnel_host)


def execution_cap(organization: Organization | HeldOrganization, settings: Settings) -> int:
    """How many SQL executions the organisation may have starting or running at once."""
    return organization.max_running_executions or settings.max_running_executions


# Every run counts them: built once on the table (as a claim's statements are), bound per call.
_EXECUTIONS = table_of(Execution)
_UNFINISHED_COUNTED = (
    select(func.count())
    .select_from(_EXECUTIONS)
    .where(
        _EXECUTIONS.c.organization_id == bindparam("organization_id"),
        one_of(_EXECUTIONS.c.execution_type, ORGANIZATION_CAP_COUNTS),
        one_of(_EXECUTIONS.c.status, UNFINISHED_STATUSES),
    )
)


def require_text_fits(weight: int, settings: Settings) -> None:
    """413 for a run that alone would keep more text than its organisation's executions may keep
    together (``require_text_room``): no wait would make room for it, so it is asked before the
    cap of running executions, whose 429 a client would retry."""
    if weight > text_budget_bytes(settings):
        raise PayloadTooLarge(
            f"This run would keep {weight:,} bytes of SQL and parameters, more than the "
            f"{settings.max_execution_text_mb:,} MB an organisation's executions may keep "
            "together.",
            code="execution_text_too_large",
        )


# The refusal of a run that its organisation's executions keep no room for.
NO_TEXT_ROOM = "execution_text_quota_exceeded"


def text_budget_bytes(settings: Settings) -> int:
    """The most text an organisation's executions may keep together."""
    return settings.max_execution_text_mb * MIB


def require_text_room(
    session: Session, organization: HeldOrganization, weight: int, settings: Settings
) -> None:
    """429 unless the organisation's executions (locked by ``lock_organization``) keep room for
    ``weight`` more bytes of text: one key at its rate limits could otherwise store a megabyte
    body's SQL and parameters twice a request (a dashboard's run once per report), gigabytes an
    hour, in the region's metadata database until retention forgets them. ``Retry-After``: until
    its oldest execution that keeps any is forgotten, the earliest room may be made."""
    if organization.execution_text_bytes <= text_budget_bytes(settings):
        return  # the count holds this run's weight already (lock_organization)
    kept = organization.execution_text_bytes - weight
    oldest = session.scalar(_OLDEST_KEEPING, {"organization_id": organization.id})
    forgotten = (oldest or utcnow()) + timedelta(hours=settings.execution_retention_hours)
    wait = max(0, int((forgotten - utcnow()).total_seconds())) + int(RETENTION_SWEEP_SECONDS)
    raise TooManyRequests(
        f"This organisation's executions keep {kept:,} bytes of SQL and parameters, and "
        f"{settings.max_execution_text_mb:,} MB is the most they may keep; this one would add "
        f"{weight:,}. An execution's text is forgotten with it, "
        f"{settings.execution_retention_hours:g} hours after it started.",
        code=NO_TEXT_ROOM,
        headers={"Retry-After": str(wait)},
    )


# Read on a refusal only, under the organisation's lock: an index walk, not a scan of its rows.
_OLDEST_KEEPING = select(func.min(Execution.created_at)).where(
    Execution.organization_id == bindparam("organization_id"), Execution.kept_bytes > 0
)


# The refusal of a run at the organisation's cap of running executions.
AT_CAPACITY = "too_many_running_executions"


def require_capacity(
    session: Session,
    organization: HeldOrganization,
    settings: Settings,
    *,
    background: bool = False,
) -> None:
    """At most N unfinished executions per organisation (locked by ``lock_organization``), of
    the kinds its cap counts at claim too (``ORGANIZATION_CAP_COUNTS``: SQL queries); a
    background run only while fewer than ``BACKGROUND_CAP_SHARE`` of N are (at least one)."""
    cap = execution_cap(organization, settings)
    if background:
        cap = max(1, int(cap * BACKGROUND_CAP_SHARE))
    unfinished = session.scalar(_UNFINISHED_COUNTED, {"organization_id": organization.id})
    if (unfinished or 0) >= cap:
        raise TooManyRequests(
            f"This organisation already has {cap} executions starting or running; "
            "wait for one to finish.",
            code=AT_CAPACITY,
            headers={"Retry-After": "1"},
        )
