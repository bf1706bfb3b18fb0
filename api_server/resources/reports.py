"""Reports (``/reports``): SQL on one datasource, shown on a dashboard; and, beyond Cluvio, running
a report (``POST /reports/{id}/executions``) or every report of a dashboard
(``POST /dashboards/{id}/executions``) as ordinary executions.

Cluvio's API reference names the type but documents no attribute; its older API calls the SQL
``query``, accepted here as a deprecated input name of ``sql_query``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import orjson
from pydantic import AfterValidator, Field, StringConstraints
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response

from api_server import jsonapi
from api_server.permissions import Permission
from api_server.principals import Principal
from api_server.resource_layer import documentation as doc
from api_server.resource_layer.names import DisplayName, keeping_stored_name
from api_server.resource_layer.operations import Body, Operations
from api_server.resource_layer.resource_types import (
    ID_SCHEMA,
    READ_ONLY,
    WRITE_ONLY,
    Attributes,
    Filter,
    Relationship,
    ResourceType,
    from_row,
)
from api_server.resource_layer.responses import one, page
from api_server.resources.executions import (
    IDEMPOTENCY_KEY,
    NO_ROOM_TO_RUN,
    REPORT_RUN_ANSWER,
    REPORT_RUN_EXECUTION,
    RUN_REFUSALS,
    TOO_LARGE_TO_RUN,
    WAIT,
    Queued,
    answer_run,
    queue_to_answer,
    serialize_run,
)
from api_server.services import reports
from api_server.services.executions import RQuery, SqlQuery
from api_server.services.object_limits import limit_reached
from shared import openapi as oa
from shared.db.models import Report
from shared.errors import BadRequest, Unprocessable
from shared.input_models import problem
from shared.runs import QueuedRun
from sql_templating.parameters import Filter as ParameterFilter
from sql_templating.parameters import InputParameters

# Chart settings are the client's: stored and echoed, bounded so that a page of reports stays
# small. Over the bound is a 422 (`too_large`, pointing at the attribute), not a 413: the body
# was within the request limit and read; one member of it is invalid.
MAX_VISUALIZATION_BYTES = 64 * 1024
# Chart settings nest a few levels; past this a value is refused (`too_deep`) before the JSON
# encoder's own recursion limit (255) could fail an answer.
MAX_VISUALIZATION_DEPTH = 32


def _depth(value: Any) -> int:
    """How many arrays and objects deep ``value`` nests (a scalar: 0), without recursing."""
    deepest, pending = 0, [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict | list):
            depth += 1
            deepest = max(deepest, depth)
            if depth > MAX_VISUALIZATION_DEPTH:
                break
            pending.extend(
                (child, depth) for child in (item.values() if isinstance(item, dict) else item)
            )
    return deepest


def _within_visualization_bound(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is None:
        return None
    if _depth(value) > MAX_VISUALIZATION_DEPTH:
        raise problem(
            "too_deep",
            f"visualization nests more than {MAX_VISUALIZATION_DEPTH} arrays and objects deep.",
        )
    try:
        size = len(orjson.dumps(value))
    except orjson.JSONEncodeError:  # an integer beyond 64 bits: no answer could carry it
        raise problem(
            "number_out_of_range",
            "visualization holds an integer beyond 64 bits; send such a number as a string.",
        ) from None
    if size > MAX_VISUALIZATION_BYTES:
        raise problem(
            "too_large",
            f"visualization takes {size} bytes as compact JSON; at most "
            f"{MAX_VISUALIZATION_BYTES} are allowed.",
        )
    return value


class ReportAttributes(Attributes):
    name: DisplayName
    description: Annotated[str, StringConstraints(max_length=2000)] | None = None
    sql_query: Annotated[
        SqlQuery,
        Field(
            default=None,
            json_schema_extra={"pattern": r"\S"},
            description="Run Execution's `sql_query`: one SELECT (or EXPLAIN), `[name]` pulls in "
            "a SQL snippet, `{…}` placeholders take the parameters of a run; at most "
            "`DATAFERRY_MAX_SQL_LENGTH` characters. Required on create (or its deprecated older "
            "name `query`).",
        ),
    ]
    query: Annotated[
        SqlQuery,
        WRITE_ONLY,
        Field(
            default=None,
            description="Deprecated input: Cluvio's older name of `sql_query`, read as it. Sent "
            "with `sql_query`, both must be equal (else 422 `conflicting_attributes`). Never "
            "returned.",
            json_schema_extra={"deprecated": True, "pattern": r"\S"},
        ),
    ]
    r_query: Annotated[RQuery, WRITE_ONLY] = None
    visualization: Annotated[
        dict[str, Any] | None,
        AfterValidator(_within_visualization_bound),
        Field(
            description="How the client shows the result: any JSON object, stored and returned "
            f"as sent; at most {MAX_VISUALIZATION_BYTES} bytes as compact JSON (else 422 "
            f"`too_large`) and {MAX_VISUALIZATION_DEPTH} arrays and objects deep (else 422 "
            "`too_deep`)."
        ),
    ] = None
    created_at: Annotated[datetime, READ_ONLY]
    updated_at: Annotated[datetime, READ_ONLY]


def _to_one(type_name: str) -> oa.Schema:
    return oa.obj({"type": oa.const(type_name), "id": oa.string()}, ["type", "id"])


REPORTS = ResourceType(
    type="reports",
    schema_name="Report",
    noun="report",
    attributes=ReportAttributes,
    path="/reports",
    create_attributes_rule={"anyOf": [{"required": ["sql_query"]}, {"required": ["query"]}]},
    required_on_create=("datasource",),
    relationships={
        "datasource": Relationship(
            "datasources",
            linked=lambda view: view.row.datasource_id,
            description="What the SQL runs on: required on create, settable; a datasource the "
            "key reaches (any other id is 422 `datasource_not_found`).",
            accepted=oa.obj(
                {"data": _to_one("datasources")},
                ["data"],
                "What the SQL runs on (required on create): a datasource the key reaches.",
            ),
        ),
        "dashboard": Relationship(
            "dashboards",
            linked=lambda view: view.row.dashboard_id,
            description="The dashboard it is on (null: none); settable, null takes it off. A "
            "locked dashboard gets no report, and its reports cannot change, move or be deleted "
            "(409 `dashboard_locked`).",
        ),
        "filters": Relationship(
            "filters",
            linked=lambda view: view.filter_ids,
            to_many=True,
            description="Read-only: the filters the key reaches whose variables the SQL's `{…}` "
            "placeholders name (those inside snippets are not followed).",
        ),
        "sql_snippets": Relationship(
            "sql_snippets",
            linked=lambda view: view.sql_snippet_ids,
            to_many=True,
            description="Read-only: the organisation's snippets the SQL names with `[name]` "
            "(those named inside a snippet are not followed).",
        ),
    },
    settable_relationships=("datasource", "dashboard"),
    sortable=("name", "created_at", "updated_at"),
    filters=(
        Filter("name"),
        Filter("datasource", "Only the reports on this datasource (its id)."),
        Filter("dashboard", "Only the reports on this dashboard (its id)."),
    ),
    readers={name: from_row(name) for name in ReportAttributes.model_fields},
)


OPERATIONS = Operations(
    "Reports",
    "JSON:API resource `reports`: SQL on a datasource, shown on a dashboard; and running a report "
    "or a whole dashboard.",
    [REPORTS],
    schemas=oa.model_schemas(
        {
            "RunReportRequest": reports.RunReportRequest,
            "RunParameters": InputParameters,
            "Filter": ParameterFilter,
        }
    ),
)
VIEW, MANAGE = (Permission.VIEW_DASHBOARDS,), (Permission.MANAGE_DASHBOARDS,)
_INVALID = (
    "An attribute is unknown, read-only or invalid (`invalid_sql_query`, `too_long`, "
    "`r_query_not_supported`, `too_large`, `conflicting_attributes`, …), or a relationship is "
    "missing or malformed (`missing_relationship`, `invalid_relationship`) or names no datasource "
    "or dashboard the key reaches (`datasource_not_found`, `dashboard_not_found`: one answer for "
    "unknown, foreign and out-of-scope ids)."
)
_MOVED_MEANWHILE = "another request moved it meanwhile (`concurrent_change`): send it again."
_LOCKED = "The dashboard is locked (`dashboard_locked`)"
_RUN_ERRORS = (
    "The body or its parameters are not valid (the parameter codes of docs/sql-parameters.md), "
    "the stored SQL no longer expands or binds (a snippet problem: the detail names the report)"
)


# ---------------------------------------------------------------------------- reading requests


def _context(request: Request) -> dict[str, Any]:
    """What the attributes' validators read: ``sql_query``'s length bound is a setting."""
    return {"max_sql_length": request.app.state.settings.max_sql_length}


def _values(data: Attributes, *, create: bool) -> dict[str, Any]:
    """The attributes sent, as the report's columns: ``query`` read as ``sql_query``."""
    values = data.changes()
    values.pop("r_query", None)
    if "query" in values:
        query = values.pop("query")
        if values.setdefault("sql_query", query) != query:
            raise Unprocessable(
                "query is the older name of sql_query: send one of them, or both equal.",
                pointer="/data/attributes/query",
                code="conflicting_attributes",
            )
    if create and "sql_query" not in values:
        raise Unprocessable(
            "'sql_query' is required.",
            pointer="/data/attributes/sql_query",
            code="missing_attribute",
        )
    return values


_RELATED_TYPES = {"datasource": "datasources", "dashboard": "dashboards"}


def _related(resource: jsonapi.ResourceInput, *, create: bool) -> dict[str, str | None]:
    """The relationships sent: name → the related id (None: no dashboard)."""
    related = {
        name: _linked_id(name, resource.relationships[name])
        for name in _RELATED_TYPES
        if name in resource.relationships
    }
    if related.get("datasource", "") is None:
        raise _invalid_relationship("datasource", "A report always has a datasource.", "/data")
    for name in REPORTS.required_on_create if create else ():  # as the document says
        if name not in related:
            raise Unprocessable(
                f"A report needs its {name}: relationships.{name}.",
                pointer=f"/data/relationships/{name}",
                code="missing_relationship",
            )
    return related


def _linked_id(name: str, relationship: Any) -> str | None:
    """A to-one relationship object exactly as documented: ``{"data": null}`` or ``{"data":
    {"type", "id"}}``, nothing else."""
    if not isinstance(relationship, dict) or set(relationship) != {"data"}:
        raise _invalid_relationship(name, "A relationship object holds only 'data'.", "")
    data = relationship["data"]
    if data is None:
        return None
    expected = _RELATED_TYPES[name]
    if not isinstance(data, dict) or set(data) != {"type", "id"}:
        raise _invalid_relationship(name, '\'data\' is null or {"type", "id"}.', "/data")
    if data["type"] != expected or not isinstance(data["id"], str):
        raise _invalid_relationship(name, f"'data' names a resource of type '{expected}'.", "/data")
    return data["id"]


def _invalid_relationship(name: str, detail: str, below: str) -> Unprocessable:
    pointer = f"/data/relationships/{name}{below}"
    return Unprocessable(detail, pointer=pointer, code="invalid_relationship")


# ---------------------------------------------------------------------------- the resource


@OPERATIONS.get(
    "/reports",
    operation_id="listReports",
    summary="List reports",
    description="The organisation's reports on datasources the key reaches, paged.",
    permissions=VIEW,
    parameters=tuple(doc.collection_parameters(REPORTS)),
    responses={"200": doc.jsonapi_response("A page of reports.", "ReportCollection")},
    errors={400: doc.BAD_QUERY},
)
def list_reports(request: Request, principal: Principal) -> Response:
    query = REPORTS.query(request, collection=True)
    with request.app.state.sessions() as session:
        rows, total = reports.list_reports(session, principal, query)
        views = reports.report_views(session, principal, rows)
        return page(REPORTS, request, query, views, total)


@OPERATIONS.post(
    "/reports",
    operation_id="createReport",
    summary="Create a report",
    description="SQL on a datasource (`relationships.datasource`, required), on a dashboard "
    "(`relationships.dashboard`) or on none.",
    permissions=MANAGE,
    audit="report.create",
    parameters=tuple(doc.one_parameters(REPORTS)),
    body=Body.BOUNDED,
    request_body=doc.request_body("ReportCreateDocument", "The new report."),
    responses={"201": doc.jsonapi_response("Created.", "ReportDocument", doc.CREATED_HEADERS)},
    errors={
        400: doc.BAD_DOCUMENT,
        403: f"The key lacks the permission. {doc.NO_CLIENT_IDS}",
        409: f"{limit_reached(Report)}; {_LOCKED}; or {doc.WRONG_TYPE_OR_ID}",
        422: _INVALID,
    },
)
def create_report(request: Request, principal: Principal) -> Response:
    query = REPORTS.query(request, collection=False)
    resource = REPORTS.read(request)
    values = _values(
        REPORTS.validate(resource, update=False, context=_context(request)), create=True
    )
    related = _related(resource, create=True)
    with request.app.state.sessions.begin() as session:
        settings = request.app.state.settings
        report = reports.create_report(session, principal, values, related, settings)
        return one(REPORTS, query, _view(session, principal, report), status_code=201)


@OPERATIONS.get(
    "/reports/{id}",
    operation_id="showReport",
    summary="Get a report",
    description="One report of the organisation, on a datasource the key reaches.",
    permissions=VIEW,
    subject=REPORTS,
    parameters=tuple(doc.one_parameters(REPORTS)),
    responses={"200": doc.jsonapi_response("The report.", "ReportDocument")},
    errors={400: doc.BAD_QUERY, 404: None},
)
def show_report(request: Request, principal: Principal) -> Response:
    query = REPORTS.query(request, collection=False)
    with request.app.state.sessions() as session:
        report = reports.get_report(session, principal, request.path_params["id"])
        return one(REPORTS, query, _view(session, principal, report))


@OPERATIONS.patch(
    "/reports/{id}",
    operation_id="updateReport",
    summary="Update a report",
    description="Only the attributes and relationships sent change. A report that leaves its "
    "dashboard leaves the dashboard's `layout` too.",
    permissions=MANAGE,
    audit="report.update",
    subject=REPORTS,
    parameters=tuple(doc.one_parameters(REPORTS)),
    body=Body.BOUNDED,
    request_body=doc.request_body("ReportUpdateDocument", "What to change."),
    responses={"200": doc.jsonapi_response("The report as it is now.", "ReportDocument")},
    errors={
        400: doc.BAD_DOCUMENT,
        404: None,
        409: f"{_LOCKED}: the one it is on, or the one it would move to; or {doc.WRONG_TYPE_OR_ID}; "
        f"or {_MOVED_MEANWHILE}",
        422: _INVALID,
    },
)
def update_report(request: Request, principal: Principal) -> Response:
    report_id = request.path_params["id"]
    query = REPORTS.query(request, collection=False)
    resource = REPORTS.read(request, report_id)
    stored = keeping_stored_name(
        request, lambda session: reports.get_report(session, principal, report_id).name
    )
    data = REPORTS.validate(resource, update=True, context={**_context(request), **stored})
    values, related = _values(data, create=False), _related(resource, create=False)
    with request.app.state.sessions.begin() as session:
        report = reports.update_report(session, principal, report_id, values, related)
        return one(REPORTS, query, _view(session, principal, report))


def _view(session: Session, principal: Principal, report: Report) -> reports.ReportView:
    (view,) = reports.report_views(session, principal, [report])
    return view


@OPERATIONS.delete(
    "/reports/{id}",
    operation_id="deleteReport",
    summary="Delete a report",
    description="It leaves its dashboard's `layout` too; its executions stay, their `report` null.",
    permissions=MANAGE,
    audit="report.delete",
    subject=REPORTS,
    responses=doc.DELETED,
    errors={404: None, 409: f"{_LOCKED}; or {_MOVED_MEANWHILE}"},
)
def delete_report(request: Request, principal: Principal) -> Response:
    with request.app.state.sessions.begin() as session:
        reports.delete_report(session, principal, request.path_params["id"])
    return Response(status_code=204)


# ---------------------------------------------------------------------------- running


def _queue_report_run(request: Request, principal: Principal) -> Queued:
    settings = request.app.state.settings

    def queue(session: Session, given: reports.ReportRun, idempotency_key: str | None) -> QueuedRun:
        report_id = request.path_params["id"]
        return reports.run_report(session, principal, report_id, given, idempotency_key, settings)

    return queue_to_answer(request, reports.parse_run_body, queue)


@OPERATIONS.post(
    "/reports/{id}/executions",
    operation_id="runReport",
    summary="Run a report",
    description="Beyond Cluvio: runs the report's SQL on its datasource as Run Execution does "
    "(the same `Idempotency-Key`, `?wait` and answer), with the `parameters` given merged over "
    "its dashboard's `default_parameters`. The execution's `report` names the report. View "
    "Dashboards suffices: the key runs stored SQL only. Get Execution and Get Execution Data "
    "need more (View Datasources, Manage Dashboards or Manage Alerts): a key with View "
    "Dashboards alone gets its data with `?wait`, whose answer carries the data grant. On a "
    "dashboard with `data_refresh_rate`, an execution of the same query created within that many "
    'minutes answers instead (result reuse, `meta.reused`; `"refresh": true` refuses it).',
    permissions=VIEW,
    audit="report.run",
    subject=REPORTS,
    parameters=(IDEMPOTENCY_KEY, WAIT),
    body=Body.BOUNDED,
    first_in_thread=_queue_report_run,
    request_body=doc.request_body(
        "RunReportRequest", "The parameters of this run.", oa.JSON_MEDIA_TYPE
    ),
    responses=REPORT_RUN_ANSWER,
    errors={
        **RUN_REFUSALS,
        422: f"{_RUN_ERRORS}, or `invalid_idempotency_key`, `idempotency_key_reused`.",
    },
)
async def run_report(request: Request, principal: Principal, queued: Queued) -> Response:
    return await answer_run(request, principal, queued, tells_reuse=True)


@OPERATIONS.post(
    "/dashboards/{id}/executions",
    operation_id="runDashboard",
    summary="Run a dashboard",
    description="Beyond Cluvio: runs every report of the dashboard as Run a report does, with "
    "the same `parameters` merged over the dashboard's `default_parameters`, all queued in one "
    "transaction (one problem queues none), oldest report first. A key restricted to listed "
    "datasources reaches only dashboards whose reports are all on them: any other answers 404 "
    "as an unknown id does, so a run never leaves out a report silently. Within the dashboard's "
    "`data_refresh_rate`, a report's execution of the same query answers instead of a new one "
    '(result reuse: its `meta.reused`; `"refresh": true` refuses it).',
    permissions=VIEW,
    audit="dashboard.run",
    path_parameters=(oa.path_parameter("id", "The id of the dashboard.", ID_SCHEMA),),
    body=Body.BOUNDED,
    request_body=doc.request_body(
        "RunReportRequest", "The parameters of this run.", oa.JSON_MEDIA_TYPE
    ),
    responses={
        "200": oa.response(
            "The executions, one per report (none for a dashboard without reports), queued or "
            "reused.",
            oa.obj(
                {
                    "data": oa.array(REPORT_RUN_EXECUTION),
                    "meta": oa.obj(
                        {"total": oa.integer("Executions answered, one per report.")}, ["total"]
                    ),
                },
                ["data", "meta"],
                closed=False,
            ),
            jsonapi.JSONAPI_MEDIA_TYPE,
        )
    },
    errors={
        400: "A query parameter was sent, the body is not JSON (`malformed_json`), or an "
        "`Idempotency-Key` was sent (`idempotency_key_not_supported`: a dashboard's run is "
        "several executions; run its reports one by one to make each retry safe).",
        404: None,
        409: "A report's datasource is disabled (`datasource_disabled`), the dashboard needs "
        "more new executions at once than the organisation may ever run together "
        f"(`{reports.BEYOND_THE_CAP}`: no retry helps) or more SQL and parameters than "
        f"its executions may ever keep together (`{reports.BEYOND_THE_TEXT_BUDGET}`: "
        "no retry helps either), or one of its reports was deleted while it was run "
        "(`dashboard_changed`: nothing was queued, run it again).",
        413: f"The body exceeds its bound, or for one of its reports {TOO_LARGE_TO_RUN}.",
        422: f"{_RUN_ERRORS}.",
        429: f"The key's rate limit (`rate_limited`), or {NO_ROOM_TO_RUN}.",
    },
)
def run_dashboard(request: Request, principal: Principal) -> Response:
    if "idempotency-key" in request.headers:  # refused, not ignored: a retry would run again
        raise BadRequest(
            "A dashboard's run is several executions and takes no Idempotency-Key; run its "
            "reports one by one (POST /reports/{id}/executions) to make each retry safe.",
            code="idempotency_key_not_supported",
        )
    given = reports.parse_run_body(jsonapi.read_json_body(request, jsonapi.JSON_MEDIA_TYPE))
    state = request.app.state
    with state.sessions.begin() as session:
        runs = reports.run_dashboard(
            session, principal, request.path_params["id"], given, state.settings
        )
        data = [serialize_run(queued, principal) for queued in runs]
    return jsonapi.response({"data": data, "meta": {"total": len(data)}})
