"""Dashboards (``/dashboards``): Cluvio's pages of reports with shared default parameters.

The attributes are Cluvio's Dashboard schema (the nested settings: ``dashboard_settings``; every
problem points at the member that has it). Relationships are read from the rows that own them
(reports, group memberships, the snippets the reports' SQL names); those whose resources dataferry
does not have yet are always empty, and say why.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, Field, StringConstraints, WithJsonSchema
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
    READ_ONLY,
    Attributes,
    Filter,
    Relationship,
    ResourceType,
    from_row,
)
from api_server.resource_layer.responses import one, page
from api_server.resources.dashboard_settings import FiltersConfiguration, Layout, TimeZoneConfig
from api_server.resources.filters import MAX_INCLUDED_OPTIONS_CHARACTERS, included_filters
from api_server.resources.sql_snippets import SQL_SNIPPETS
from api_server.services import dashboards
from api_server.services.dashboards import DashboardView
from api_server.services.object_limits import limit_reached
from api_server.services.reports import report_views
from shared import openapi as oa
from shared.db.models import Dashboard
from shared.errors import InvalidQueryParameter
from sql_templating.parameters import InputParameters

# The reports' SQL that one answer may include (a dashboard may hold thousands of reports, each
# up to DATAFERRY_MAX_SQL_LENGTH characters): included resources are rendered whole, in memory,
# and a dashboard including a thousand reports of 100,000 characters took 200 MB of the API
# server. ``GET /reports`` pages them.
MAX_INCLUDED_SQL_CHARACTERS = 16_000_000
_TOO_MUCH_INCLUDED = (
    f"Or the filters `include` would add hold more than {MAX_INCLUDED_OPTIONS_CHARACTERS:,} "
    f"characters of options together, or its reports more than {MAX_INCLUDED_SQL_CHARACTERS:,} "
    "of SQL (`include_too_large`, at `include`)."
)
MIN_PAGE_WIDTH, MAX_PAGE_WIDTH = 320, 7680  # pixels: a phone to an 8K screen
MIN_REFRESH_MINUTES, MAX_REFRESH_MINUTES = 5, 1440  # Cluvio caches results for up to 24 hours


def _check_default_parameters(value: dict[str, Any]) -> dict[str, Any]:
    """Run Execution's ``parameters`` rules; stored as sent (a time range keeps its text)."""
    InputParameters.model_validate(value)
    return value


class DashboardAttributes(Attributes):
    name: DisplayName
    description: Annotated[str, StringConstraints(max_length=2000)] | None = None
    time_zone_config: TimeZoneConfig | None = None
    automatic_update_enabled: bool = False
    thumbnail_enabled: bool = False
    thumbnail_created_at: Annotated[
        datetime | None,
        READ_ONLY,
        Field(description="Always null: dataferry renders no thumbnails."),
    ]
    prewarm: Annotated[
        bool,
        Field(
            description="Keep the reports' results fresh at the default parameters: every "
            "`data_refresh_rate` minutes (anchored at `data_refresh_anchor_time`) one data server "
            "runs the dashboard, and runs inside that window reuse its executions "
            "(docs/result-reuse.md). `automatic_update_enabled` does the same."
        ),
    ] = False
    published: Annotated[
        bool,
        READ_ONLY,
        Field(
            description="Always true: without user groups every key with View Dashboards sees "
            "every dashboard (within its datasource scope)."
        ),
    ]
    data_refresh_rate: Annotated[
        Annotated[int, Field(ge=MIN_REFRESH_MINUTES, le=MAX_REFRESH_MINUTES)] | None,
        Field(
            description=f"Minutes between refreshes, {MIN_REFRESH_MINUTES} to "
            f"{MAX_REFRESH_MINUTES} (Cluvio keeps results for up to a day); null: none."
        ),
    ] = None
    data_refresh_anchor_time: Annotated[
        Annotated[str, Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")] | None,
        Field(
            description="`HH:MM` in the dashboard's time zone (its fixed one, else UTC) that "
            "refreshes align to, every day; null: midnight."
        ),
    ] = None
    is_locked: Annotated[
        bool,
        Field(
            description="A locked dashboard refuses changes and deletion (409 "
            "`dashboard_locked`), its reports' too; unlock it with a PATCH of "
            '`"is_locked": false` alone (`"is_locked": true` alone changes nothing: 200).'
        ),
    ] = False
    default_parameters: Annotated[
        dict[str, Any],
        AfterValidator(_check_default_parameters),
        WithJsonSchema(oa.model_schema(InputParameters)),
        Field(
            description="Run Execution's `parameters` (Cluvio's InputParameters), the values "
            "its reports run with unless a run gives others; stored as sent."
        ),
    ] = Field(default_factory=dict)
    default_page_width: Annotated[
        Annotated[int, Field(ge=MIN_PAGE_WIDTH, le=MAX_PAGE_WIDTH)] | None,
        Field(description=f"Pixels, {MIN_PAGE_WIDTH} to {MAX_PAGE_WIDTH}."),
    ] = None
    layout: Layout = Field(default_factory=list)
    floating_enabled: Annotated[
        bool, READ_ONLY, Field(description="Always false: the grid layout is the only one.")
    ]
    color_scheme: Annotated[
        Annotated[str, Field(pattern=r"^scheme_[1-9][0-9]?$")] | None,
        Field(description="One of Cluvio's schemes, `scheme_1` to `scheme_99`."),
    ] = None
    filters_configuration: FiltersConfiguration | None = None
    created_at: Annotated[datetime, READ_ONLY]
    updated_at: Annotated[datetime, READ_ONLY]


DASHBOARDS = ResourceType(
    type="dashboards",
    schema_name="Dashboard",
    noun="dashboard",
    attributes=DashboardAttributes,
    path="/dashboards",
    relationships={
        "reports": Relationship(
            "reports",
            linked=lambda view: view.report_ids,
            to_many=True,
            description="The reports on the dashboard, oldest first.",
        ),
        "filters": Relationship(
            "filters",
            linked=lambda view: view.filter_ids,
            to_many=True,
            description="The organisation's filters whose variables its reports' SQL uses.",
        ),
        "sql_snippets": Relationship(
            "sql_snippets",
            linked=lambda view: view.sql_snippet_ids,
            to_many=True,
            description="The organisation's snippets that its reports' SQL names with `[name]`.",
        ),
        "dashboard_groups": Relationship(
            "dashboard_groups",
            linked=lambda view: view.dashboard_group_ids,
            to_many=True,
            description="The groups the dashboard is in (set on the group).",
        ),
        "dashboard_sharing_links": Relationship.not_yet(
            "dashboard_sharing_links", "sharing links are not available yet"
        ),
        "user": Relationship(
            "users",
            linked=lambda view: None,
            description="Always null: API keys, not users, create dashboards in dataferry.",
        ),
        "user_groups": Relationship.not_yet(
            "user_groups", "dashboards are not shared with user groups yet"
        ),
    },
    sortable=("name", "created_at", "updated_at"),
    filters=(Filter("name"),),
    includable=(
        "reports",
        "filters",
        "sql_snippets",
        "dashboard_groups",
        "dashboard_sharing_links",
        "user",
        "user_groups",
    ),
    included_note="the reports (while their SQL holds at most "
    f"{MAX_INCLUDED_SQL_CHARACTERS:,} characters together, else 400 `include_too_large`), "
    "filters (those the key reaches; with their options only while those hold at most "
    f"{MAX_INCLUDED_OPTIONS_CHARACTERS:,} characters together, else 400 `include_too_large`, "
    "unless `fields[filters]` leaves `values` and `value_names` out), SQL snippets and dashboard "
    "groups named (sharing links, users and user groups do not exist yet: nothing).",
    readers={name: from_row(name) for name in DashboardAttributes.model_fields},
)


def _included(
    session: Session,
    principal: Principal,
    views: Sequence[DashboardView],
    query: jsonapi.CollectionQuery,
) -> list[dict[str, Any]]:
    """The resource objects ``include`` asks for, each once, serialised by its own type (the
    groups' and reports' modules are imported here, when used: the groups' imports this one,
    the reports' may come to). Sharing links, users and user groups do not exist yet: nothing
    to include."""
    from api_server.resources.dashboard_groups import DASHBOARD_GROUPS
    from api_server.resources.reports import REPORTS

    include = query.include
    objects: list[dict[str, Any]] = []
    if "reports" in include:
        wanted = {i for view in views for i in view.report_ids}
        weight = dashboards.sql_characters(session, wanted)
        if weight > MAX_INCLUDED_SQL_CHARACTERS:
            raise InvalidQueryParameter(
                f"The reports this would include hold {weight:,} characters of SQL, more than "
                f"the {MAX_INCLUDED_SQL_CHARACTERS:,} an answer includes: read them from "
                "GET /reports?filter[dashboard]=<id>, a page at a time.",
                parameter="include",
                code="include_too_large",
            )
        reports = dashboards.reports_by_ids(session, principal, wanted)
        objects += [REPORTS.serialize(view) for view in report_views(session, principal, reports)]
    if "filters" in include:
        wanted = {i for view in views for i in view.filter_ids}
        objects += included_filters(session, principal, wanted, query)
    if "sql_snippets" in include:
        wanted = {i for view in views for i in view.sql_snippet_ids}
        snippets = dashboards.snippets_by_ids(session, principal, wanted)
        objects += [SQL_SNIPPETS.serialize(snippet) for snippet in snippets]
    if "dashboard_groups" in include:
        wanted = {i for view in views for i in view.dashboard_group_ids}
        groups = dashboards.groups_by_ids(session, principal, wanted)
        objects += [DASHBOARD_GROUPS.serialize(group) for group in groups]
    return objects


OPERATIONS = Operations(
    "Dashboards",
    "JSON:API resource `dashboards`: Cluvio's pages of reports with default parameters.",
    [DASHBOARDS],
)
VIEW, MANAGE = (Permission.VIEW_DASHBOARDS,), (Permission.MANAGE_DASHBOARDS,)
_SCOPE = (
    "A key restricted to some datasources sees a dashboard only if every report on it runs on "
    "one of them (a dashboard without reports: every key); others answer as unknown ids do."
)
_INVALID = (
    "An attribute is unknown, read-only or invalid; each problem points at its member (a layout "
    "item naming a report not on this dashboard: `layout_report_unknown`)."
)
_LOCKED = f"The dashboard is locked (`dashboard_locked`); or {doc.WRONG_TYPE_OR_ID}"


@OPERATIONS.get(
    "/dashboards",
    operation_id="listDashboards",
    summary="List Dashboards",
    description=f"The organisation's dashboards, paged. {_SCOPE}",
    permissions=VIEW,
    parameters=tuple(doc.collection_parameters(DASHBOARDS)),
    responses={"200": doc.jsonapi_response("A page of dashboards.", "DashboardCollection")},
    errors={400: f"{doc.BAD_QUERY} {_TOO_MUCH_INCLUDED}"},
)
def list_dashboards(request: Request, principal: Principal) -> Response:
    query = DASHBOARDS.query(request, collection=True)
    with request.app.state.sessions() as session:
        views, total = dashboards.list_dashboards(session, principal, query)
        extra = _included(session, principal, views, query)
        return page(DASHBOARDS, request, query, views, total, included=extra)


@OPERATIONS.post(
    "/dashboards",
    operation_id="createDashboard",
    summary="Create Dashboard",
    description="A dashboard without reports: reports join it through their `dashboard` "
    "relationship, so its `layout` starts empty.",
    permissions=MANAGE,
    audit="dashboard.create",
    parameters=tuple(doc.one_parameters(DASHBOARDS)),
    body=Body.BOUNDED,
    request_body=doc.request_body("DashboardCreateDocument", "The new dashboard."),
    responses={"201": doc.jsonapi_response("Created.", "DashboardDocument", doc.CREATED_HEADERS)},
    errors={
        400: f"{doc.BAD_DOCUMENT} {_TOO_MUCH_INCLUDED}",
        403: f"The key lacks the permission. {doc.NO_CLIENT_IDS}",
        409: f"{limit_reached(Dashboard)}; or {doc.WRONG_TYPE_OR_ID}",
        422: _INVALID,
    },
)
def create_dashboard(request: Request, principal: Principal) -> Response:
    query = DASHBOARDS.query(request, collection=False)
    data = DASHBOARDS.validate(DASHBOARDS.read(request), update=False)
    with request.app.state.sessions.begin() as session:
        settings = request.app.state.settings
        view = dashboards.create_dashboard(session, principal, data.model_dump(), settings)
        extra = _included(session, principal, [view], query)
        return one(DASHBOARDS, query, view, status_code=201, included=extra)


@OPERATIONS.get(
    "/dashboards/{id}",
    operation_id="showDashboard",
    summary="Get Dashboard",
    description=f"One dashboard; `include` adds related resources (a comma list). {_SCOPE}",
    permissions=VIEW,
    subject=DASHBOARDS,
    parameters=tuple(doc.one_parameters(DASHBOARDS)),
    responses={"200": doc.jsonapi_response("The dashboard.", "DashboardDocument")},
    errors={400: f"{doc.BAD_QUERY} {_TOO_MUCH_INCLUDED}", 404: None},
)
def show_dashboard(request: Request, principal: Principal) -> Response:
    query = DASHBOARDS.query(request, collection=False)
    with request.app.state.sessions() as session:
        view = dashboards.get_dashboard(session, principal, request.path_params["id"])
        extra = _included(session, principal, [view], query)
        return one(DASHBOARDS, query, view, included=extra)


@OPERATIONS.patch(
    "/dashboards/{id}",
    operation_id="updateDashboard",
    summary="Update Dashboard",
    description="Only the attributes sent change. A locked dashboard takes only `is_locked`, "
    "sent alone: `false` unlocks it, `true` changes nothing.",
    permissions=MANAGE,
    audit="dashboard.update",
    subject=DASHBOARDS,
    parameters=tuple(doc.one_parameters(DASHBOARDS)),
    body=Body.BOUNDED,
    request_body=doc.request_body("DashboardUpdateDocument", "The attributes to change."),
    responses={"200": doc.jsonapi_response("The dashboard as it is now.", "DashboardDocument")},
    errors={
        400: f"{doc.BAD_DOCUMENT} {_TOO_MUCH_INCLUDED}",
        404: None,
        409: _LOCKED,
        422: _INVALID,
    },
)
def update_dashboard(request: Request, principal: Principal) -> Response:
    dashboard_id = request.path_params["id"]
    query = DASHBOARDS.query(request, collection=False)
    stored = keeping_stored_name(
        request, lambda session: dashboards.find_dashboard(session, principal, dashboard_id).name
    )
    data = DASHBOARDS.validate(DASHBOARDS.read(request, dashboard_id), update=True, context=stored)
    changes = data.model_dump(include=data.model_fields_set)
    with request.app.state.sessions.begin() as session:
        view = dashboards.update_dashboard(session, principal, dashboard_id, changes)
        extra = _included(session, principal, [view], query)
        return one(DASHBOARDS, query, view, included=extra)


@OPERATIONS.delete(
    "/dashboards/{id}",
    operation_id="deleteDashboard",
    summary="Delete Dashboard",
    description="Its reports go with it (their executions stay, without a report), and it "
    "leaves every group. A locked dashboard is not deleted.",
    permissions=MANAGE,
    audit="dashboard.delete",
    subject=DASHBOARDS,
    responses=doc.DELETED,
    errors={404: None, 409: "The dashboard is locked (`dashboard_locked`)."},
)
def delete_dashboard(request: Request, principal: Principal) -> Response:
    with request.app.state.sessions.begin() as session:
        dashboards.delete_dashboard(session, principal, request.path_params["id"])
    return Response(status_code=204)
