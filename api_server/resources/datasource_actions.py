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
from api_server.execution_waits import ExecutionWaits
from api_server.principals import Principal
from api_server.resource_layer.operations import Operations
from api_server.resources.datasources import DATASOURCES, MANAGE, VIEW
from api_server.resources.datasources import OPERATIONS as DATASOURCE_OPERATIONS
from api_server.resources.executions import DATA_URL
from api_server.services import data_grants, datasources, executions
from shared import lifecycle
from shared import openapi as oa
from shared.db.models import Execution
from shared.errors import Conflict, InvalidQueryParameter, NotFound
from shared.lifecycle import ExecutionStatus, ExecutionType
from shared.tokens import Scope

CONNECTION_TEST_TIMEOUT_SECONDS = 30
SCHEMA_NAME = re.compile(r"^[^\x00-\x1f]{1,255}$")

SCHEMAS = {
    "ConnectionTestResult": oa.obj(
        {"status": oa.enum(["ok", "error"]), "error_message": oa.nullable(oa.string())},
        ["status", "error_message"],
    ),
    "DataGrant": oa.obj(
        {
            "data_key": oa.string("Where the data server finds the data."),
            "data_access_token": oa.string(
                "A short-lived token for exactly this data key: send it to the data server as "
                "`Authorization: Data <token>`."
            ),
            "data_url": DATA_URL,
        },
        ["data_key", "data_access_token", "data_url"],
        closed=False,
    ),
}
# Under the datasources' own tag: these act on one datasource.
OPERATIONS = Operations(
    DATASOURCE_OPERATIONS.tag, DATASOURCE_OPERATIONS.description, schemas=SCHEMAS
)
_DISABLED = "The datasource is disabled (`datasource_disabled`)."
_TUNNELLED = "The datasource sets `ssh_tunnel_host` (`ssh_tunnel_not_supported`)."


@OPERATIONS.post(
    "/datasources/{id}/test_connection",
    operation_id="testDatasourceConnection",
    summary="Test Datasource Connection",
    description="A data server opens the datasource; the answer waits for the outcome (at most "
    f"{CONNECTION_TEST_TIMEOUT_SECONDS} s, then `error`). Takes no body.",
    permissions=MANAGE,
    audit="datasource.test_connection",
    subject=DATASOURCES,
    produces=jsonapi.JSON_MEDIA_TYPE,
    responses={"200": oa.response("The outcome.", oa.ref("ConnectionTestResult"))},
    errors={404: None, 409: _DISABLED, 422: _TUNNELLED},
)
async def test_connection(request: Request, principal: Principal) -> Response:
    """The answer waits for the test's outcome on the event loop (holding no thread), at most
    ``CONNECTION_TEST_TIMEOUT_SECONDS``; then the test is cancelled."""
    sessions = request.app.state.sessions
    execution_id = await run_in_threadpool(_queue_connection_test, request, principal)

    def read() -> Awaitable[Execution | None]:
        return run_in_threadpool(_read_execution, sessions, execution_id)

    waits: ExecutionWaits = request.app.state.execution_waits
    execution = await waits.wait_until_ended(
        execution_id, CONNECTION_TEST_TIMEOUT_SECONDS, read, _ended_or_gone
    )
    if execution is None:  # its datasource was deleted meanwhile
        return _outcome("The datasource was deleted.")
    if execution.status == ExecutionStatus.COMPLETED:
        return _outcome(None)
    if execution.status in lifecycle.TERMINAL_STATUSES:
        return _outcome(execution.error_message)
    await run_in_threadpool(_cancel_if_unfinished, sessions, execution_id)
    return _outcome(f"No data server answered within {CONNECTION_TEST_TIMEOUT_SECONDS} s.")


def _outcome(error_message: str | None) -> Response:
    status = "ok" if error_message is None else "error"
    return jsonapi.json_response({"status": status, "error_message": error_message})


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


@OPERATIONS.post(
    "/datasources/{id}/refresh",
    operation_id="refreshDatasource",
    summary="Refresh Datasource",
    description="Queues a `datasource_refresh` execution that records the schema. Takes no body.",
    permissions=MANAGE,
    audit="datasource.refresh",
    subject=DATASOURCES,
    produces=jsonapi.JSON_MEDIA_TYPE,
    responses={
        "200": oa.response(
            "The refresh is queued.",
            oa.obj({"execution_id": oa.string(format="uuid")}, ["execution_id"]),
        )
    },
    errors={404: None, 409: _DISABLED, 422: _TUNNELLED},
)
def refresh_datasource(request: Request, principal: Principal) -> Response:
    with request.app.state.sessions.begin() as session:
        datasource = datasources.get_datasource(session, principal, request.path_params["id"])
        execution = executions.create_system_execution(
            session, datasource, ExecutionType.DATASOURCE_REFRESH
        )
        return jsonapi.json_response({"execution_id": execution.id})


@OPERATIONS.get(
    "/datasources/{id}/schema",
    operation_id="getDatasourceSchema",
    summary="Get Datasource Schema",
    description="A data key and token for the newest recorded schema; fetch it from the data "
    "server (`GET /data/{data_key}`). With `name`, the grant's document is that one schema.",
    permissions=VIEW,
    audit="data_grant.schema",
    subject=DATASOURCES,
    produces=jsonapi.JSON_MEDIA_TYPE,
    parameters=(
        oa.query_parameter(
            "name",
            "Only this schema: the grant's token carries it, and the data server answers with "
            "that schema's document.",
            oa.string(pattern=SCHEMA_NAME.pattern),
        ),
    ),
    responses={"200": oa.response("A data grant for the schema.", oa.ref("DataGrant"))},
    errors={
        400: "A query parameter is unknown or malformed (`invalid_query_parameter`).",
        404: "No such datasource, or no schema of that `name` (`schema_not_found`).",
        409: "No schema recorded yet: refresh and wait for it to complete "
        "(`schema_not_available`).",
    },
)
def datasource_schema(request: Request, principal: Principal) -> Response:
    """A data key and token for the newest recorded schema JSON; ``?name=`` is checked here and
    carried in the token, and the data server narrows the document to that schema."""
    name = _schema_name(request)
    state = request.app.state
    with state.sessions() as session:
        datasource = datasources.get_datasource(session, principal, request.path_params["id"])
        if datasource.schema_data_key is None:
            raise Conflict(
                "No schema has been recorded for this datasource yet: refresh it and wait until "
                "the refresh execution completes.",
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
            schema_name=name,
        )
    )


def _schema_name(request: Request) -> str | None:
    """``?name=``, the only query parameter taken (any other is a 400)."""
    unknown = sorted(set(request.query_params) - {"name"})
    if unknown:
        raise InvalidQueryParameter(
            f"Unsupported query parameter '{unknown[0]}'.", parameter=unknown[0]
        )
    name = request.query_params.get("name")
    if name is not None and not SCHEMA_NAME.match(name):
        raise InvalidQueryParameter("name must be a schema name.", parameter="name")
    return name
