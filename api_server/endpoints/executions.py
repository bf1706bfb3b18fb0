"""Execution endpoints (Cluvio's Run Execution, Get Execution, Get Execution Data, and more)."""

from __future__ import annotations

import re
from collections.abc import Awaitable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from api_server import jsonapi, serializers
from api_server.auth import Principal, authenticate
from api_server.execution_waits import ExecutionWaits
from api_server.permissions import Permission, require
from api_server.services import data_grants, executions
from shared import lifecycle
from shared.db.models import Execution
from shared.errors import InvalidQueryParameter, NotFound, Unprocessable
from shared.results import delete_stored_data
from shared.tokens import Scope

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
_NUMBER_CHARACTERS = re.compile(r"[0-9.eE+-]+")
_IDEMPOTENCY_KEY_MAX = 255


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not 1 <= len(key) <= _IDEMPOTENCY_KEY_MAX or not key.isprintable():
        raise Unprocessable(
            f"Idempotency-Key must be 1 to {_IDEMPOTENCY_KEY_MAX} printable characters.",
            code="invalid_idempotency_key",
        )
    return key


@jsonapi.endpoint()
async def run_execution(request: Request) -> Response:
    """Cluvio's Run Execution. With ``?wait=N`` (beyond Cluvio) the answer waits, holding no
    thread, until the execution ends or N seconds pass; a completed one carries its data grant
    in ``meta``, so that run and fetch are two requests."""
    principal = authenticate(request)
    require(principal, *RUN_PERMISSIONS)
    jsonapi.parse_collection_query(request, collection=False, read_by_endpoint=("wait",))
    wait = _wait_seconds(request)  # checked before anything is queued
    execution = await run_in_threadpool(_queue, request, principal)
    if not wait:
        return _document(execution, principal)
    execution = await _until_ended(request, principal, execution.id, wait)
    meta = await run_in_threadpool(_grant_if_completed, request, principal, execution)
    return _document(execution, principal, meta)


def _queue(request: Request, principal: Principal) -> Execution:
    body = jsonapi.read_json_body(request, jsonapi.JSON_MEDIA_TYPE)
    state = request.app.state
    run = executions.parse_run_request(body, state.settings)
    idempotency_key = _idempotency_key(request)
    with state.sessions.begin() as session:
        execution = executions.run_execution(
            session, principal, request.path_params["id"], run, idempotency_key, state.settings
        )
        request.state.audit_resource_id = execution.id
    return execution


def _document(
    execution: Execution, principal: Principal, meta: dict[str, Any] | None = None
) -> Response:
    """Bound values may be private to the application that sent them: only its key sees them."""
    owner = execution.api_key_id is not None and execution.api_key_id == principal.api_key_id
    document: dict[str, Any] = {"data": serializers.execution(execution, show_query=owner)}
    if meta:
        document["meta"] = meta
    return jsonapi.response(document)


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


def _load(request: Request, principal: Principal, execution_id: str | None = None) -> Execution:
    with request.app.state.sessions() as session:
        return executions.get_execution(
            session,
            principal,
            execution_id or request.path_params["id"],
            request.app.state.settings,
        )


async def _until_ended(
    request: Request, principal: Principal, execution_id: str, seconds: float
) -> Execution:
    """The execution once it ended or ``seconds`` passed: waited for on the event loop, each
    read in a thread."""

    def read() -> Awaitable[Execution]:
        return run_in_threadpool(_load, request, principal, execution_id)

    waits: ExecutionWaits = request.app.state.execution_waits
    return await waits.wait_until_ended(execution_id, seconds, read, _ended)


def _ended(execution: Execution) -> bool:
    return execution.status in lifecycle.TERMINAL_STATUSES


@jsonapi.endpoint()
async def show_execution(request: Request) -> Response:
    """With ``?wait=N`` the answer waits, holding no thread, until the execution ends or N
    seconds pass."""
    principal = authenticate(request)
    require(principal, *READ_PERMISSIONS)
    jsonapi.parse_collection_query(request, collection=False, read_by_endpoint=("wait",))
    wait = _wait_seconds(request)
    execution = await _until_ended(request, principal, request.path_params["id"], wait)
    return _document(execution, principal)


def _grant(request: Request, principal: Principal, execution: Execution) -> dict[str, Any] | None:
    """Get Execution Data's grant for a completed execution; None before completion or after a
    failure; 404 ``result_gone`` once its data expired or was purged."""
    state = request.app.state
    if not executions.data_available(execution, state.settings):
        return None
    assert execution.data_key is not None and execution.completed_at is not None
    return data_grants.grant_data(
        state.signing_keys,
        state.settings,
        organization_id=principal.organization_id,
        data_key=execution.data_key,
        scope=Scope.EXECUTION_RESULT,
        data_timestamp=int(execution.completed_at.timestamp()),
    )


def _grant_if_completed(
    request: Request, principal: Principal, execution: Execution
) -> dict[str, Any] | None:
    """Run-and-wait's ``meta``: the grant, or nothing (a result purged the moment it completed
    is not an error of the run)."""
    try:
        return _grant(request, principal, execution)
    except NotFound:
        return None


@jsonapi.endpoint(jsonapi.JSON_MEDIA_TYPE)
def execution_data(request: Request) -> Response:
    """Cluvio's Get Execution Data: a data key, a fresh short-lived token and ``data_url``, or
    204."""
    principal = authenticate(request)
    require(principal, *READ_PERMISSIONS)
    grant = _grant(request, principal, _load(request, principal))
    if grant is None:
        return Response(status_code=204)
    return jsonapi.json_response(grant)


@jsonapi.endpoint()
def cancel_execution(request: Request) -> Response:
    principal = authenticate(request)
    require(principal, *RUN_PERMISSIONS)
    state = request.app.state
    with state.sessions.begin() as session:
        execution = executions.get_execution(
            session, principal, request.path_params["id"], state.settings
        )
        lifecycle.request_cancel(session, execution)
        return _document(execution, principal)


@jsonapi.endpoint()
def delete_execution(request: Request) -> Response:
    """Purge the stored result now (beyond Cluvio); the execution stays visible, its data 404s."""
    principal = authenticate(request)
    require(principal, *RUN_PERMISSIONS)
    state = request.app.state
    with state.sessions.begin() as session:
        execution = executions.get_execution(
            session, principal, request.path_params["id"], state.settings
        )
        data_key = lifecycle.purge_result(session, execution)
    delete_stored_data(state.result_store, results=[data_key])
    return Response(status_code=204)
