"""Cluvio's datasource actions: Test Connection, Refresh Datasource, Get Datasource Schema.

Each answers plain JSON. The work itself (opening the datasource) happens on a data server: the API
server queues an execution and, for a connection test, waits for its outcome.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Awaitable

from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from api_server import jsonapi
from api_server.auth import Principal, authenticate
from api_server.execution_waits import ExecutionWaits
from api_server.permissions import Permission, require
from api_server.services import data_grants, datasources, executions
from shared import lifecycle
from shared.db.models import Execution
from shared.errors import Conflict, InvalidQueryParameter, NotFound
from shared.lifecycle import ExecutionStatus, ExecutionType
from shared.tokens import Scope

CONNECTION_TEST_TIMEOUT_SECONDS = 30
SCHEMA_NAME = re.compile(r"^[^\x00-\x1f]{1,255}$")


@jsonapi.endpoint(jsonapi.JSON_MEDIA_TYPE)
async def test_connection(request: Request) -> Response:
    """The answer waits for the test's outcome on the event loop (holding no thread), at most
    ``CONNECTION_TEST_TIMEOUT_SECONDS``; then the test is cancelled."""
    principal = authenticate(request)
    require(principal, Permission.MANAGE_DATASOURCES)
    sessions = request.app.state.sessions
    execution_id = await run_in_threadpool(_queue_connection_test, request, principal)

    def read() -> Awaitable[Execution | None]:
        return run_in_threadpool(_read_execution, sessions, execution_id)

    waits: ExecutionWaits = request.app.state.execution_waits
    execution = await waits.wait_until_ended(
        execution_id, CONNECTION_TEST_TIMEOUT_SECONDS, read, _ended_or_gone
    )
    if execution is None:  # its datasource was deleted meanwhile
        return jsonapi.json_response(
            {"status": "error", "error_message": "The datasource was deleted."}
        )
    if execution.status == ExecutionStatus.COMPLETED:
        return jsonapi.json_response({"status": "ok", "error_message": None})
    if execution.status in lifecycle.TERMINAL_STATUSES:
        return jsonapi.json_response({"status": "error", "error_message": execution.error_message})
    await run_in_threadpool(_cancel_if_unfinished, sessions, execution_id)
    message = f"No data server answered within {CONNECTION_TEST_TIMEOUT_SECONDS} s."
    return jsonapi.json_response({"status": "error", "error_message": message})


def _queue_connection_test(request: Request, principal: Principal) -> str:
    with request.app.state.sessions.begin() as session:
        datasource = datasources.get_datasource(session, principal, request.path_params["id"])
        return executions.create_system_execution(
            session, datasource, ExecutionType.CONNECTION_TEST
        ).id


def _read_execution(sessions: sessionmaker[Session], execution_id: str) -> Execution | None:
    with sessions() as session:
        return session.get(Execution, execution_id)


def _ended_or_gone(execution: Execution | None) -> bool:
    return execution is None or execution.status in lifecycle.TERMINAL_STATUSES


def _cancel_if_unfinished(sessions: sessionmaker[Session], execution_id: str) -> None:
    with sessions.begin() as session:
        execution = session.get(Execution, execution_id)
        if execution is not None and execution.status not in lifecycle.TERMINAL_STATUSES:
            with contextlib.suppress(Conflict):  # it ended a moment ago: nothing to stop
                lifecycle.request_cancel(session, execution)


@jsonapi.endpoint(jsonapi.JSON_MEDIA_TYPE)
def refresh_datasource(request: Request) -> Response:
    principal = authenticate(request)
    require(principal, Permission.MANAGE_DATASOURCES)
    with request.app.state.sessions.begin() as session:
        datasource = datasources.get_datasource(session, principal, request.path_params["id"])
        execution = executions.create_system_execution(
            session, datasource, ExecutionType.DATASOURCE_REFRESH
        )
        return jsonapi.json_response({"execution_id": execution.id})


@jsonapi.endpoint(jsonapi.JSON_MEDIA_TYPE)
def datasource_schema(request: Request) -> Response:
    """A data key and token for the newest recorded schema JSON (``?name=`` is checked here and
    applied by the data server, which narrows the document to that schema)."""
    principal = authenticate(request)
    require(principal, Permission.VIEW_DATASOURCES)
    name = request.query_params.get("name")
    unknown = set(request.query_params) - {"name"}
    if unknown:
        raise InvalidQueryParameter(
            f"Unsupported query parameter '{sorted(unknown)[0]}'.", parameter=sorted(unknown)[0]
        )
    if name is not None and not SCHEMA_NAME.match(name):
        raise InvalidQueryParameter("name must be a schema name.", parameter="name")
    state = request.app.state
    with state.sessions() as session:
        datasource = datasources.get_datasource(session, principal, request.path_params["id"])
        if datasource.schema_data_key is None:
            raise Conflict(
                "No schema has been recorded for this datasource yet: refresh it and wait until the "
                "refresh execution completes.",
                code="schema_not_available",
            )
        if name is not None and name not in (datasource.schema_names or []):
            raise NotFound(f"The datasource has no schema named {name!r}.", code="schema_not_found")
        data_key = datasource.schema_data_key
    return jsonapi.json_response(
        data_grants.grant_data(
            state.signing_keys,
            state.settings,
            organization_id=principal.organization_id,
            data_key=data_key,
            scope=Scope.DATASOURCE_SCHEMA,
        )
    )
