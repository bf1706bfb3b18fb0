"""Executions: Cluvio's Run Execution, Get Execution and Get Execution Data, plus cancel and purge.

A waiting request (``?wait``) holds no thread: its handler is a coroutine that awaits the
execution's end (``ExecutionWaits``) and runs each database read in a thread.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, TypeVar

from pydantic import Field
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from api_server import audit, jsonapi
from api_server.auth import Principal
from api_server.execution_waits import ExecutionWaits, Mark
from api_server.permissions import Permission
from api_server.resource_layer import documentation as doc
from api_server.resource_layer.operations import Body, Operations
from api_server.resource_layer.resource_types import (
    ID_SCHEMA,
    READ_ONLY,
    Attributes,
    Relationship,
    ResourceType,
)
from api_server.services import data_grants, executions
from shared import lifecycle
from shared import openapi as oa
from shared.db.models import Execution
from shared.errors import (
    InvalidQueryParameter,
    NotFound,
    ServiceUnavailable,
    Unprocessable,
    unauthorized,
)
from shared.execution_states import ExecutionStatus, ExecutionType
from shared.results import delete_stored_data
from shared.runs import QueuedRun
from shared.web.request_headers import sole_value
from sql_templating.parameters import Filter, InputParameters

# Cluvio: keys with Manage Dashboards or Manage Alerts may run SQL on (their) datasources.
RUN_PERMISSIONS = (
    Permission.MANAGE_DATASOURCES,
    Permission.MANAGE_DASHBOARDS,
    Permission.MANAGE_ALERTS,
)
READ_PERMISSIONS = (
    Permission.VIEW_DATASOURCES,
    Permission.MANAGE_DASHBOARDS,
    Permission.MANAGE_ALERTS,
)
MAX_WAIT_SECONDS = 30
# What a data grant of an execution is recorded as in the audit log, by whichever route grants it.
EXECUTION_DATA_GRANT = "data_grant.execution"
RunT = TypeVar("RunT")  # what a run's body reads as
_NUMBER_CHARACTERS = re.compile(r"[0-9.eE+-]+")
_IDEMPOTENCY_KEY_MAX = 255
# DuckDB's messages may quote a value as it saw it ("invalid date field format: …"), so with bound
# values the message is shown to the key that ran the query only, as the values themselves are.
WITHHELD_ERROR_MESSAGE = (
    "The execution failed (see error_code). Its message may quote the SQL or the parameter "
    "values the API key that ran it sent, so only that key sees the message."
)


class ExecutionAttributes(Attributes):
    execution_id: Annotated[
        str,
        READ_ONLY,
        Field(
            description="The same UUID as the resource id.", json_schema_extra={"format": "uuid"}
        ),
    ]
    execution_type: Annotated[ExecutionType, READ_ONLY]
    execution_status: Annotated[ExecutionStatus, READ_ONLY]
    result_columns: Annotated[
        int, READ_ONLY, Field(description="Columns of the result; 0 until it completed.")
    ]
    result_rows: Annotated[
        int, READ_ONLY, Field(description="Rows of the stored result; 0 until it completed.")
    ]
    result_size: Annotated[
        int, READ_ONLY, Field(description="Bytes of the stored result; 0 until it completed.")
    ]
    result_truncated: Annotated[
        bool, READ_ONLY, Field(description="The result was cut at the row or byte limit.")
    ]
    created_at: Annotated[datetime, READ_ONLY]
    updated_at: Annotated[datetime, READ_ONLY]
    started_at: Annotated[datetime | None, READ_ONLY]
    completed_at: Annotated[datetime | None, READ_ONLY]
    error_code: Annotated[
        str | None,
        READ_ONLY,
        Field(description="Once failed or cancelled: a stable code (`timeout`, …)."),
    ]
    error_message: Annotated[str | None, READ_ONLY, Field(description="Once failed or cancelled.")]
    cancel_requested: Annotated[
        bool, READ_ONLY, Field(description="Present (true) while a cancel is pending.")
    ]
    expanded_sql: Annotated[
        str,
        READ_ONLY,
        Field(
            description="Only for the key that ran it: the SQL that runs, snippets expanded, "
            "placeholders bound."
        ),
    ]
    bound_parameters: Annotated[
        list[str | float | bool | None],
        READ_ONLY,
        Field(description="Only for the key that ran it: the values of `$1`, `$2`, …."),
    ]


EXECUTIONS = ResourceType(
    type="executions",
    schema_name="Execution",
    noun="execution (a UUID)",
    attributes=ExecutionAttributes,
    path="/executions",
    relationships={
        "datasource": Relationship("datasources", linked=lambda ex: ex.datasource_id),
        "report": Relationship(
            "reports",
            linked=lambda ex: ex.report_id,
            description="The report this execution ran (`POST /reports/{id}/executions`); null "
            "when it ran SQL given directly, once the report was deleted, or, for a key "
            "restricted to listed datasources, when another key ran it.",
        ),
    },
    id_schema=oa.string(format="uuid"),
    output_refinements={
        "execution_type": oa.enum((ExecutionType.SQL_QUERY, ExecutionType.DATASOURCE_REFRESH)),
        "bound_parameters": {"items": {"type": ["string", "number", "boolean", "null"]}},
    },
)


RESULT_COUNTS = ("result_columns", "result_rows", "result_size")


def execution_attributes(ex: Execution, *, show_query: bool) -> dict[str, Any]:
    """What a caller sees: error fields once it ended badly; ``show_query`` (the key that ran
    it only): the SQL that ran, its bound values and the full error message."""
    attributes: dict[str, Any] = {
        "execution_id": ex.id,
        "execution_type": ex.execution_type,
        "execution_status": ex.status,
        # Integers, as Cluvio documents them (its sample shows 0 for a starting execution): a
        # client's typed model would refuse a null.
        **{name: getattr(ex, name) or 0 for name in RESULT_COUNTS},
        **{
            name: getattr(ex, name)
            for name in (
                "result_truncated",
                "created_at",
                "updated_at",
                "started_at",
                "completed_at",
            )
        },
    }
    if ex.status in (ExecutionStatus.FAILED, ExecutionStatus.CANCELLED):
        # Only a failure's message may come from the database, which quotes literals of the SQL
        # and values; a cancellation's is the server's. SQL not of a report is its sender's own
        # (no other key sees it: ``expanded_sql``), also once that key is deleted; a report's is
        # every reader's of the report.
        own_sql = ex.execution_type == ExecutionType.SQL_QUERY and ex.report_id is None
        private = bool(ex.bound_parameters) or own_sql
        withheld = ex.status == ExecutionStatus.FAILED and private and not show_query
        attributes["error_code"] = ex.error_code
        attributes["error_message"] = WITHHELD_ERROR_MESSAGE if withheld else ex.error_message
    elif ex.cancel_requested:
        attributes["cancel_requested"] = True
    if show_query and ex.execution_type == ExecutionType.SQL_QUERY:
        attributes["expanded_sql"] = ex.expanded_sql
        attributes["bound_parameters"] = ex.bound_parameters
    return attributes


DATA_URL = oa.string(
    "The data on the region's public data-server address with the token in its query "
    "(`?token=`), for clients that cannot send headers: it expires with the token.",
    format="uri",
)
_GRANT = oa.obj(
    {
        "data_key": oa.string("Where the data server finds the result."),
        "data_access_token": oa.string("Send as `Authorization: Data <token>`."),
        "data_timestamp": oa.integer("When the execution completed, in unix seconds."),
        "data_url": DATA_URL,
    },
    ["data_key", "data_access_token", "data_timestamp", "data_url"],
    closed=False,
)
WAIT = oa.query_parameter(
    "wait",
    "Hold the answer until the execution ends (`completed`, `failed` or `cancelled`) or this "
    "many seconds pass (a long poll; the wait holds no server thread).",
    {"type": "number", "minimum": 0, "maximum": MAX_WAIT_SECONDS},
)
IDEMPOTENCY_KEY = oa.parameter(
    "Idempotency-Key",
    "header",
    oa.string(minLength=1, maxLength=_IDEMPOTENCY_KEY_MAX),
    "Repeating a request with the same key answers the execution it created (only once per key "
    "and API key); a different body with a used key is 422 `idempotency_key_reused`.",
)


# Why a run is refused for the organisation's room, wherever a request queues executions.
NO_ROOM_TO_RUN = (
    "the organisation's running executions would exceed its most "
    "(`too_many_running_executions`, `Retry-After: 1`), or its executions keep the most SQL and "
    "parameters they may (`execution_text_quota_exceeded`, `Retry-After` until its oldest is "
    "forgotten)"
)
# Why a run is refused however long it waits, wherever a request queues executions.
TOO_LARGE_TO_RUN = (
    "the run alone would keep more SQL and parameters than the organisation's executions may "
    "keep together (`execution_text_too_large`)"
)
# What refuses a request that queues one execution (Run Execution, running a report), beside
# the 422 each words for its own body.
RUN_REFUSALS: dict[int, str | None] = {
    400: "`wait` is out of range, another query parameter was sent, or the body is not JSON "
    "(`malformed_json`); nothing is queued.",
    401: "The key is not valid, or (run-and-wait) it was deleted or disabled during the `wait`.",
    404: None,
    409: "The datasource is disabled (`datasource_disabled`).",
    413: f"The body exceeds its bound, or {TOO_LARGE_TO_RUN}.",
    429: f"The key's rate limit (`rate_limited`), or {NO_ROOM_TO_RUN}.",
}

# An execution answering a report's or a dashboard's run: whether it is an earlier one, reused.
REPORT_RUN_EXECUTION = {
    "allOf": [
        oa.ref("Execution"),
        oa.obj(
            {
                "meta": oa.obj(
                    {
                        "reused": oa.boolean(
                            "True: an earlier execution of the same query, created within the "
                            "dashboard's `data_refresh_rate`, answers this run and none was "
                            "created (docs/result-reuse.md)."
                        )
                    },
                    ["reused"],
                )
            },
            ["meta"],
            closed=False,
        ),
    ]
}


def _run_answer(execution: oa.Schema, what: str) -> dict[str, Any]:
    """What a request that queues one execution answers (Run Execution, running a report)."""
    return {
        "200": oa.response(
            f"{what}; with `wait`, as it is then, and `meta` the data grant once it completed.",
            oa.obj({"data": execution, "meta": _GRANT}, ["data"], closed=False),
            jsonapi.JSONAPI_MEDIA_TYPE,
        )
    }


RUN_ANSWER = _run_answer(oa.ref("Execution"), "The queued execution")
REPORT_RUN_ANSWER = _run_answer(REPORT_RUN_EXECUTION, "The queued execution, or one reused")


OPERATIONS = Operations(
    "Executions",
    "Run SQL on a datasource, follow it, and get a token for its data.",
    [EXECUTIONS],
    schemas=oa.model_schemas(
        {
            "RunExecutionRequest": executions.RunExecutionRequest,
            "RunParameters": InputParameters,
            "Filter": Filter,
        }
    ),
)


def _idempotency_key(request: Request) -> str | None:
    """The header's text read as UTF-8 (HTTP carries bytes; Starlette reads them as Latin-1,
    which judged a Cyrillic key by its bytes, some of them control characters)."""
    raw = sole_value(request, "Idempotency-Key")
    if raw is None:
        return None
    try:
        key = raw.encode("latin-1").decode("utf-8")
    except UnicodeDecodeError:
        key = None
    if key is None or not 1 <= len(key) <= _IDEMPOTENCY_KEY_MAX or not key.isprintable():
        raise Unprocessable(
            f"Idempotency-Key must be 1 to {_IDEMPOTENCY_KEY_MAX} printable characters of UTF-8.",
            code="invalid_idempotency_key",
        )
    return key


def _wait_seconds(request: Request) -> float:
    raw = request.query_params.get("wait")
    if raw is None:
        return 0
    try:
        # A JSON number's characters only: Python's float() also reads "1_0", padding spaces and
        # other scripts' digits (Arabic-Indic, fullwidth), which no other server would.
        seconds = float(raw) if _NUMBER_CHARACTERS.fullmatch(raw) else -1
    except ValueError:
        seconds = -1
    if not 0 <= seconds <= MAX_WAIT_SECONDS:
        raise InvalidQueryParameter(
            f"wait must be between 0 and {MAX_WAIT_SECONDS} seconds.", parameter="wait"
        )
    return seconds


@dataclass(frozen=True)
class _Linked:
    """An execution's id and relationships as the caller may see them."""

    id: str
    datasource_id: str
    report_id: str | None


def serialize_execution(execution: Execution, principal: Principal) -> dict[str, Any]:
    """Bound values may be private to the application that sent them: only its key sees them.
    A key restricted to listed datasources sees the report only of its own runs: another key's
    run (one that a report run of its own reused, say) may be of a report it does not see."""
    owner = execution.api_key_id is not None and execution.api_key_id == principal.api_key_id
    attributes = execution_attributes(execution, show_query=owner)
    report_id = execution.report_id if owner or principal.datasource_ids is None else None
    linked = _Linked(execution.id, execution.datasource_id, report_id)
    return EXECUTIONS.serialize(linked, attributes=attributes)


def serialize_run(queued: QueuedRun, principal: Principal) -> dict[str, Any]:
    """A report's or dashboard's run answers each execution with ``meta.reused`` (beyond
    Cluvio): true when it is an earlier one, reused (docs/result-reuse.md)."""
    return {
        **serialize_execution(queued.execution, principal),
        "meta": {"reused": queued.reused},
    }


def _document(
    execution: Execution,
    principal: Principal,
    meta: dict[str, Any] | None = None,
    reused: bool | None = None,
) -> Response:
    """``reused``: given (a report's run), the resource's ``meta.reused`` says it."""
    if reused is None:
        data = serialize_execution(execution, principal)
    else:
        data = serialize_run(QueuedRun(execution, reused), principal)
    document: dict[str, Any] = {"data": data}
    if meta:
        document["meta"] = meta
    return jsonapi.response(document)


@dataclass(frozen=True)
class Queued:
    """A run queued by its route's first step, in the thread of its checks, for its answer."""

    run: QueuedRun
    mark: Mark | None  # where the listener was before it was queued
    wait_seconds: float  # ?wait: how long the answer may wait for its end


def queue_to_answer(
    request: Request,
    parse: Callable[[Any], RunT],
    queue: Callable[[Session, RunT, str | None], QueuedRun],
) -> Queued:
    """The first step (``first_in_thread``) of every route that queues one execution from a
    JSON body: ``parse`` reads the body, ``queue`` queues it with the Idempotency-Key (in a
    transaction, with its audit event), once ``?wait`` was checked and the listener's mark taken
    (the answer may take the execution as queued for its first reading)."""
    wait = _wait_seconds(request)
    mark = request.app.state.execution_waits.mark_in_thread()
    run = parse(jsonapi.read_json_body(request, jsonapi.JSON_MEDIA_TYPE))
    idempotency_key = _idempotency_key(request)
    with request.app.state.sessions.begin() as session:
        queued = queue(session, run, idempotency_key)
        audit.record_in_transaction(session, request, queued.execution.id)
    return Queued(queued, mark, wait)


def _queue_execution(request: Request, principal: Principal) -> Queued:
    settings = request.app.state.settings

    def queue(
        session: Session, run: executions.RunRequest, idempotency_key: str | None
    ) -> QueuedRun:
        datasource_id = request.path_params["id"]
        return executions.queue_run(
            session, principal, datasource_id, run, idempotency_key, settings
        )

    return queue_to_answer(
        request, lambda body: executions.parse_run_request(body, settings), queue
    )


@OPERATIONS.post(
    "/datasources/{id}/executions",
    operation_id="runExecution",
    summary="Run Execution",
    description="Queues the SQL and answers at once with status `starting`; follow it with Get "
    "Execution. Snippets are expanded and parameters bound before anything is queued: a problem "
    "is a 422 and no execution is created. Run-and-wait (beyond Cluvio): with `?wait=N` the "
    "answer comes when the execution ended or N seconds passed, in whatever state it reached; a "
    "completed one carries its data grant in `meta` (as Get Execution Data hands it out), so run "
    "and fetch are two requests. Without `wait` the answer is exactly Cluvio's.",
    permissions=RUN_PERMISSIONS,
    audit="execution.run",
    path_parameters=(oa.path_parameter("id", "The id of the datasource.", ID_SCHEMA),),
    parameters=(IDEMPOTENCY_KEY, WAIT),
    body=Body.BOUNDED,
    first_in_thread=_queue_execution,
    request_body=doc.request_body(
        "RunExecutionRequest", "The SQL and its parameters.", oa.JSON_MEDIA_TYPE
    ),
    responses=RUN_ANSWER,
    errors={
        **RUN_REFUSALS,
        422: "The body or its parameters are not valid: `invalid_sql_query`, `too_long`, "
        "`r_query_not_supported`, `unknown_attribute`, the parameter codes of "
        "docs/sql-parameters.md, a snippet problem, `invalid_idempotency_key` or "
        "`idempotency_key_reused`.",
    },
)
async def run_execution(request: Request, principal: Principal, queued: Queued) -> Response:
    return await answer_run(request, principal, queued)


async def answer_run(
    request: Request, principal: Principal, queued: Queued, *, tells_reuse: bool = False
) -> Response:
    """The answer of every route that queues one execution (``queue_to_answer``). With
    ``?wait=N`` (beyond Cluvio) it waits, holding no thread, until the execution ends or N
    seconds pass; a completed one carries its data grant in ``meta``, so that run and fetch are
    two requests. ``tells_reuse``: the execution's ``meta.reused`` is in the answer (a report's
    run; Run Execution's answer stays Cluvio's)."""
    waits: ExecutionWaits = request.app.state.execution_waits
    mark = waits.on_this_loop(queued.mark)
    execution = queued.run.execution
    reused = queued.run.reused if tells_reuse else None
    if not queued.wait_seconds:
        if _worth_remembering(execution):  # for a wait that follows
            waits.remember_queued(execution.id, execution, mark)
        return _document(execution, principal, reused=reused)
    meta: dict[str, Any] | None = None

    def grant(ended: Execution) -> None:
        nonlocal meta
        meta = _grant_if_completed(request, principal, ended)

    execution = await _until_ended(
        request,
        principal,
        execution.id,
        queued.wait_seconds,
        key_rechecked=True,  # a key deleted or disabled meanwhile is a 401, as on Get Execution
        known=(execution, mark),  # as queued: read again only once it may have ended
        once_ended=grant,
    )
    return _document(execution, principal, meta, reused)


def _load(
    request: Request,
    principal: Principal,
    execution_id: str | None = None,
    *,
    recheck_key: bool = False,
) -> Execution:
    execution_id = execution_id or request.path_params["id"]
    settings = request.app.state.settings
    with request.app.state.read_engine.connect() as connection:
        if not recheck_key:
            return executions.read_execution(connection, principal, execution_id, settings)
        execution = executions.read_execution_for_enabled_key(
            connection, principal, execution_id, settings
        )
    if execution is None:
        raise unauthorized()
    return execution


async def _until_ended(
    request: Request,
    principal: Principal,
    execution_id: str,
    seconds: float,
    *,
    key_rechecked: bool = False,
    known: tuple[Execution, Mark | None] | None = None,
    once_ended: Callable[[Execution], None] | None = None,
) -> Execution:
    """The execution once it ended or ``seconds`` passed: waited for on the event loop, each
    read in a thread. ``key_rechecked``: each read after the first also asks whether the key
    is still enabled (401 if not, as its next request would be: it was deleted or disabled
    during the wait). ``known``: as ``ExecutionWaits.wait_until_ended`` takes it.
    ``once_ended``: called with the ended reading, in the thread of the read that found it
    (run-and-wait's grant: one trip to a thread fewer), or in a thread of its own when the
    ``known`` reading had ended already (a run that reused a completed execution)."""
    reads = 0
    handed_over: Execution | None = None

    def load(recheck: bool) -> Execution:
        nonlocal handed_over
        execution = _load(request, principal, execution_id, recheck_key=recheck)
        if once_ended is not None and _ended(execution):
            once_ended(execution)
            handed_over = execution
        return execution

    def read() -> Awaitable[Execution]:
        nonlocal reads
        reads += 1
        recheck = key_rechecked and (reads > 1 or known is not None)  # after some wait
        return run_in_threadpool(load, recheck)

    waits: ExecutionWaits = request.app.state.execution_waits
    last = await waits.wait_until_ended(execution_id, seconds, read, _ended, known)
    if once_ended is not None and _ended(last) and last is not handed_over:
        await run_in_threadpool(once_ended, last)
    return last


def _ended(execution: Execution) -> bool:
    return execution.status in lifecycle.TERMINAL_STATUSES


@OPERATIONS.get(
    "/executions/{id}",
    operation_id="getExecution",
    summary="Get Execution",
    description="Executions are visible for 24 hours after they started (then 404).",
    permissions=READ_PERMISSIONS,
    subject=EXECUTIONS,
    parameters=(WAIT,),
    responses={"200": doc.jsonapi_response("The execution.", "ExecutionDocument")},
    errors={
        400: "`wait` is out of range, or another parameter sent.",
        401: "The key was deleted or disabled during the `wait`.",
        404: None,
    },
)
async def show_execution(request: Request, principal: Principal) -> Response:
    """With ``?wait=N`` the answer waits, holding no thread, until the execution ends or N
    seconds pass; a key deleted or disabled meanwhile then gets a 401, as its next request
    would."""
    wait = _wait_seconds(request)
    execution_id = executions.canonical_id(request.path_params["id"])
    known = _queued_reading(request, principal, execution_id) if wait else None
    execution = await _until_ended(
        request, principal, execution_id, wait, key_rechecked=True, known=known
    )
    return _document(execution, principal)


# The longest text (an execution's ``kept_bytes``) of an execution this process remembers as it
# queued it: a thousand of them then hold at most 16 MiB.
REMEMBERED_TEXT_BYTES = 16 * 1024


def _worth_remembering(execution: Execution) -> bool:
    """Unfinished (a wait then always ends with a fresh read: on the end's notification or at
    its deadline; a reused execution that ended could be purged meanwhile, unannounced) and of
    small text."""
    return not _ended(execution) and execution.kept_bytes <= REMEMBERED_TEXT_BYTES


def _queued_reading(
    request: Request, principal: Principal, execution_id: str
) -> tuple[Execution, Mark | None] | None:
    """The execution as this process queued it moments ago, if ``principal`` may see it: the
    wait's first reading, unless it may have ended since (a client's run, then its wait)."""
    waits: ExecutionWaits = request.app.state.execution_waits
    remembered = waits.queued_reading(execution_id)
    if remembered is None:
        return None
    execution, mark = remembered
    if not executions.visible_to(principal, execution, request.app.state.settings):
        return None  # read, and answered as any other key's reading is (404)
    return execution, mark


def _grant_if_completed(
    request: Request, principal: Principal, execution: Execution
) -> dict[str, Any] | None:
    """Run-and-wait's ``meta``: the grant, or nothing (a result purged the moment it completed
    is not an error of the run; nor is a grant the audit log could not record: the execution is
    answered, and Get Execution Data hands out its grant). The read that found the execution
    ended also found its key still enabled (``key_rechecked``), or it had ended already as the
    run, just authenticated, found it."""
    state = request.app.state
    try:
        grant = data_grants.grant_execution_data(state.signing_keys, state.settings, execution)
    except NotFound:
        return None
    if grant is not None:
        try:
            audit.record_data_grant(request, EXECUTION_DATA_GRANT, execution.id)
        except ServiceUnavailable:  # not recorded, not handed out: Get Execution Data will
            return None
    return grant


@OPERATIONS.get(
    "/executions/{id}/data",
    operation_id="getExecutionData",
    summary="Get Execution Data",
    description="A data key and a fresh short-lived token for the result, to fetch from the data "
    "server. Data is kept 24 hours after completion.",
    permissions=READ_PERMISSIONS,
    audit=EXECUTION_DATA_GRANT,
    subject=EXECUTIONS,
    produces=oa.JSON_MEDIA_TYPE,
    responses={
        "200": oa.response("A data grant.", _GRANT, oa.JSON_MEDIA_TYPE),
        "204": oa.response(
            "No data: not completed yet, failed or cancelled (a purged one is a 404)."
        ),
    },
    errors={
        404: "No such execution, or its data expired or was purged (`result_gone`; also an "
        "execution purged before it completed, which never will)."
    },
)
def execution_data(request: Request, principal: Principal) -> Response:
    """Cluvio's Get Execution Data: a data key, a fresh short-lived token and ``data_url``, or
    204."""
    state = request.app.state
    execution = _load(request, principal)
    grant = data_grants.grant_execution_data(state.signing_keys, state.settings, execution)
    if grant is None:
        return Response(status_code=204)
    return jsonapi.json_response(grant)


_STOPPING_FILTER_OPTIONS = (
    "The key lacks the permission; or the execution computes a static filter's options, not yet "
    "copied, and the key lacks Manage Dashboards (`filter_options_execution`)."
)


@OPERATIONS.post(
    "/executions/{id}/cancel",
    operation_id="cancelExecution",
    summary="Cancel an execution",
    description="Beyond Cluvio: asks the worker to stop; `cancel_requested` shows until it has. A "
    "200 is final: the execution ends `cancelled` even if its query finishes meanwhile (that "
    "result is refused and deleted). 409 if it ended before the cancel reached it. Takes no body.",
    permissions=RUN_PERMISSIONS,
    audit="execution.cancel",
    subject=EXECUTIONS,
    responses={"200": doc.jsonapi_response("The execution.", "ExecutionDocument")},
    errors={
        403: _STOPPING_FILTER_OPTIONS,
        404: None,
        409: "It already ended (`execution_finished`).",
    },
)
def cancel_execution(request: Request, principal: Principal) -> Response:
    state = request.app.state
    with state.sessions.begin() as session:
        execution = executions.get_stoppable_execution(
            session, principal, request.path_params["id"], state.settings
        )
        lifecycle.request_cancel(session, execution)
        return _document(execution, principal)


@OPERATIONS.delete(
    "/executions/{id}",
    operation_id="purgeExecutionResult",
    summary="Purge an execution's result",
    description="Deletes the stored result now (beyond Cluvio); the execution stays visible and "
    "Get Execution Data answers 404 `result_gone`. An unfinished execution is cancelled as by "
    "Cancel, so it never stores a result.",
    permissions=RUN_PERMISSIONS,
    audit="execution.purge",
    subject=EXECUTIONS,
    responses=doc.DELETED,
    errors={403: _STOPPING_FILTER_OPTIONS, 404: None},
)
def delete_execution(request: Request, principal: Principal) -> Response:
    state = request.app.state
    with state.sessions.begin() as session:
        data_key = executions.purge_execution_result(
            session, principal, request.path_params["id"], state.settings
        )
    delete_stored_data(state.result_store, results=[data_key])
    return Response(status_code=204)
