"""Executions as the control plane sees them: create (queue), read, and when data is available.
Cancel and purge are row transitions: they live in ``shared.lifecycle``.

The API server never runs tenant SQL: it writes rows that data server workers claim.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any

import orjson
from pydantic import AfterValidator, Field, ValidationInfo
from sqlalchemy import Connection, bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api_server.permissions import Permission
from api_server.principals import Principal
from api_server.services import api_keys
from api_server.services.datasources import read_datasource
from shared import lifecycle
from shared.db.engine import write_lock_on_sqlite
from shared.db.models import Datasource, Execution, Filter, Report, read_only, table_of, utcnow
from shared.errors import Forbidden, NotFound, TooManyRequests, Unprocessable
from shared.input_models import InputModel, Problem, problem, validate_input
from shared.lifecycle import ExecutionStatus, ExecutionType
from shared.notifications import announce_new_work
from shared.runs import (
    QueuedRun,
    SqlRun,
    queue_sql_execution,
    require_enabled,
    require_still_there,
)
from shared.settings import Settings
from sql_templating.parameters import InputParameters

_NOT_FOUND_DETAIL = "No execution with this id exists."


@dataclass(frozen=True)
class RunRequest:
    sql_query: str
    parameters: dict[str, Any]
    inputs: InputParameters
    # False for a report's run: its dashboard's filters apply to the reports whose SQL uses them.
    every_filter_used: bool = True
    # A report's run: its report and what its request held. Its SQL and merged parameters come
    # from the report and its dashboard as they are now, which an edit changes under a retry.
    as_sent: Mapping[str, Any] | None = None

    def fingerprint(self, datasource_id: str) -> str:
        """What the Idempotency-Key binds: a report's run as sent, else the run's datasource,
        SQL and parameters."""
        request = (
            dict(self.as_sent)
            if self.as_sent is not None
            else {
                "datasource": datasource_id,
                "sql_query": self.sql_query,
                "parameters": self.parameters,
            }
        )
        canonical = orjson.dumps(request, option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(canonical).hexdigest()


def _not_blank(text: str) -> str:
    """Its ValueError is reported as the field's ``Problem`` says (``invalid_sql_query``)."""
    if not text.strip():
        raise ValueError("blank")
    return text


def _within_max_sql_length(text: str, info: ValidationInfo) -> str:
    """``DATAFERRY_MAX_SQL_LENGTH``, a setting: given in the validation context."""
    limit: int = (info.context or {})["max_sql_length"]
    if len(text) > limit:
        raise problem("too_long", f"sql_query may have at most {limit} characters.")
    return text


# What Run Execution and a report's SQL take alike (a model that uses them validates with the
# context {"max_sql_length": settings.max_sql_length}).
SqlQuery = Annotated[
    str,
    Field(
        min_length=1,
        description="One SELECT (or EXPLAIN); `[name]` pulls in a SQL snippet and `{…}` "
        "placeholders take the parameters. At most `DATAFERRY_MAX_SQL_LENGTH` characters.",
    ),
    AfterValidator(_not_blank),
    Problem("invalid_sql_query", "sql_query must be a non-empty string."),
    AfterValidator(_within_max_sql_length),
]
RQuery = Annotated[
    str | None,
    Field(max_length=0, description="Not supported: anything but null or empty is 422."),
    Problem(
        "r_query_not_supported",
        "r_query is not supported by dataferry: post-process results in your client.",
    ),
]


class RunExecutionRequest(InputModel):
    """Cluvio's Run Execution body."""

    not_an_object = Problem("invalid_attribute", "The body must be a JSON object.")

    sql_query: SqlQuery
    r_query: RQuery = None
    parameters: InputParameters | None = None


def parse_run_request(body: Any, settings: Settings) -> RunRequest:
    """Cluvio's Run Execution body (``RunExecutionRequest``); the parameters are kept as sent,
    for the execution's record and the idempotency fingerprint."""
    context = {"max_sql_length": settings.max_sql_length}
    run = validate_input(RunExecutionRequest, body, context=context)
    return RunRequest(
        sql_query=run.sql_query,
        parameters=body.get("parameters") or {},
        inputs=run.parameters or InputParameters(),
    )


def run_execution(
    session: Session,
    principal: Principal,
    datasource_id: str,
    request: RunRequest,
    idempotency_key: str | None,
    settings: Settings,
    report: Report | None = None,
) -> Execution:
    """Queue ``request`` on the datasource (never reusing): ``queue_run``'s execution."""
    queued = queue_run(
        session, principal, datasource_id, request, idempotency_key, settings, report
    )
    return queued.execution


def queue_run(
    session: Session,
    principal: Principal,
    datasource_id: str,
    request: RunRequest,
    idempotency_key: str | None,
    settings: Settings,
    report: Report | None = None,
    reuse_since: datetime | None = None,
    reuse_completed_since: datetime | None = None,
) -> QueuedRun:
    """Queue ``request`` on the datasource through ``shared.runs`` (the one path that creates a
    SQL execution); ``report``: the report it runs (its SQL and datasource are the request's),
    recorded on the execution; ``reuse_since``: a report's run may answer an execution of the
    same query created since then instead (docs/result-reuse.md), a completed one only if it
    completed since ``reuse_completed_since`` when given.

    An Idempotency-Key the key used before answers what that request created; one whose first
    request reused an execution recorded nothing, so a retry decides again (reuse, or create
    the one execution the key then names)."""
    datasource = read_datasource(session.connection(), principal, datasource_id)
    fingerprint = request.fingerprint(datasource_id)
    if idempotency_key is not None:
        existing = _find_idempotent(session, principal, idempotency_key)
        if existing is not None:
            return QueuedRun(_same_request_or_422(existing, fingerprint))
    run = SqlRun(
        datasource=datasource,
        sql_query=request.sql_query,
        parameters=request.parameters,
        inputs=request.inputs,
        every_filter_used=request.every_filter_used,
        api_key_id=principal.api_key_id,
        idempotency_key=idempotency_key,
        request_fingerprint=fingerprint,
        report_id=report.id if report else None,
        reuse_since=reuse_since,
        reuse_completed_since=reuse_completed_since,
    )
    try:
        return queue_sql_execution(session, run, settings)
    except (IntegrityError, TooManyRequests):
        # A concurrent request with the same Idempotency-Key won: its insert collided with ours,
        # or it committed while this one waited for the organisation's lock and took the cap's
        # last slot or the budget's last room. This request is its retry: it answers what that
        # one created. (Without a key no savepoint held the insert: the transaction is gone.)
        if idempotency_key is None:
            raise
        existing = _find_idempotent(session, principal, idempotency_key)
        if existing is None:
            raise
        return QueuedRun(_same_request_or_422(existing, fingerprint))


def _find_idempotent(session: Session, principal: Principal, key: str) -> Execution | None:
    return session.scalar(
        select(Execution).where(
            Execution.organization_id == principal.organization_id,
            Execution.api_key_id == principal.api_key_id,
            Execution.idempotency_key == key,
        )
    )


def _same_request_or_422(existing: Execution, fingerprint: str) -> Execution:
    if existing.request_fingerprint != fingerprint:
        raise Unprocessable(
            "This Idempotency-Key was already used for a different request.",
            code="idempotency_key_reused",
        )
    return existing


def create_system_execution(
    session: Session, datasource: Datasource, execution_type: ExecutionType
) -> Execution:
    """A refresh or connection test: queued like any execution, run by a data server."""
    require_enabled(datasource)
    write_lock_on_sqlite(session)
    require_still_there(session, datasource.id, None)
    execution = Execution(
        id=str(uuid.uuid4()),
        organization_id=datasource.organization_id,
        datasource_id=datasource.id,
        execution_type=execution_type,
    )
    session.add(execution)
    session.flush()
    announce_new_work(session)
    return execution


_EXECUTIONS = table_of(Execution)
# Every poll, wait and grant reads it: built once, bound per call; as an object of a session to
# change it, as a read-only row to read it.
_VISIBLE = (
    _EXECUTIONS.c.id == bindparam("id"),
    _EXECUTIONS.c.organization_id == bindparam("organization_id"),
    _EXECUTIONS.c.execution_type != ExecutionType.CONNECTION_TEST,
)
_VISIBLE_EXECUTION = select(Execution).where(*_VISIBLE)
_VISIBLE_ROW = select(_EXECUTIONS).where(*_VISIBLE)
_VISIBLE_ROW_AND_KEY = select(_EXECUTIONS, api_keys.ENABLED_NOW.label("api_key_enabled")).where(
    *_VISIBLE
)


def canonical_id(execution_id: str) -> str:
    """An execution id as stored (lower case, hyphenated), whichever spelling of the UUID a
    client sent (upper case, braces, no hyphens, ``urn:uuid:``); 404 for anything else."""
    try:
        return str(uuid.UUID(execution_id))
    except ValueError:
        raise NotFound(_NOT_FOUND_DETAIL) from None


def get_execution(
    session: Session, principal: Principal, execution_id: str, settings: Settings
) -> Execution:
    """404 alike for unknown, foreign, out-of-scope and expired executions."""
    execution = session.scalar(_VISIBLE_EXECUTION, _visibility(principal, execution_id))
    return _visible_or_404(principal, execution, settings)


def read_execution(
    connection: Connection, principal: Principal, execution_id: str, settings: Settings
) -> Execution:
    """``get_execution`` for a caller that only reads it: a read-only row (``read_only``)."""
    row = connection.execute(_VISIBLE_ROW, _visibility(principal, execution_id)).first()
    return _visible_or_404(principal, None if row is None else read_only(Execution, row), settings)


def read_execution_for_enabled_key(
    connection: Connection, principal: Principal, execution_id: str, settings: Settings
) -> Execution | None:
    """``read_execution``, or None when the principal's key was deleted or disabled since it
    authenticated (during a wait): asked in the same statement, one round trip fewer on the
    path of every wait's answer. A key no longer enabled is told before a 404."""
    visibility = {**_visibility(principal, execution_id), "api_key_id": principal.api_key_id}
    row = connection.execute(_VISIBLE_ROW_AND_KEY, visibility).first()
    if row is None:
        if not api_keys.still_enabled(connection, principal.api_key_id):
            return None
        raise NotFound(_NOT_FOUND_DETAIL)
    if not row.api_key_enabled:
        return None
    return _visible_or_404(principal, read_only(Execution, row), settings)


def _visibility(principal: Principal, execution_id: str) -> dict[str, str]:
    return {"id": canonical_id(execution_id), "organization_id": principal.organization_id}


def _visible_or_404(
    principal: Principal, execution: Execution | None, settings: Settings
) -> Execution:
    if execution is None or not visible_to(principal, execution, settings):
        raise NotFound(_NOT_FOUND_DETAIL)
    return execution


def visible_to(principal: Principal, execution: Execution, settings: Settings) -> bool:
    """What Get Execution shows a key: its organisation's executions but connection tests, on
    datasources it reaches, for ``DATAFERRY_EXECUTION_RETENTION_HOURS``. Also asked of an
    execution read earlier (``ExecutionWaits.queued_reading``), whoever asks."""
    return (
        execution.organization_id == principal.organization_id
        and execution.execution_type != ExecutionType.CONNECTION_TEST
        and principal.reaches_datasource(execution.datasource_id)
        and not _older_than(execution.created_at, settings.execution_retention_hours)
    )


def data_available(execution: Execution, settings: Settings) -> bool:
    """True when a completed result can be fetched; 404 once it expired or was purged (an
    unfinished execution purged is cancelled: its data will never come, which a 204 would
    promise)."""
    completed = (
        execution.execution_type == ExecutionType.SQL_QUERY
        and execution.status == ExecutionStatus.COMPLETED
        and execution.data_key is not None
    )
    expired = completed and _older_than(execution.completed_at, settings.result_retention_hours)
    if execution.data_purged_at is not None or expired:
        raise NotFound("The data of this execution has expired or was deleted.", code="result_gone")
    return completed


def _older_than(moment: datetime | None, hours: float) -> bool:
    return moment is not None and moment + timedelta(hours=hours) < utcnow()


def purge_execution_result(
    session: Session, principal: Principal, execution_id: str, settings: Settings
) -> str | None:
    """Purge (beyond Cluvio): the execution stays, its result goes; the data key whose stored
    object the caller deletes once this transaction commits (None: nothing was stored)."""
    execution = get_stoppable_execution(session, principal, execution_id, settings)
    return lifecycle.purge_result(session, execution)


# A static filter whose options are still to be copied from this execution.
_AWAITING_FILTER = select(Filter.id).where(
    Filter.organization_id == bindparam("organization_id"),
    Filter.options_execution_id == bindparam("execution_id"),
    Filter.status == "pending",
)


def get_stoppable_execution(
    session: Session, principal: Principal, execution_id: str, settings: Settings
) -> Execution:
    """An execution the caller may cancel or purge. A static filter copies its options from its
    execution when it is next read: stopped or purged before, the filter fails and refuses every
    value until it is refreshed, so only a key that may refresh it (Manage Dashboards) may."""
    execution = get_execution(session, principal, execution_id, settings)
    if Permission.MANAGE_DASHBOARDS in principal.permissions:
        return execution
    awaiting = {"organization_id": execution.organization_id, "execution_id": execution.id}
    if session.scalar(_AWAITING_FILTER, awaiting) is not None:
        raise Forbidden(
            "The execution computes a filter's options, which are not copied yet: only a key "
            "with Manage Dashboards may cancel it or purge its result.",
            code="filter_options_execution",
        )
    return execution
