"""Dashboard groups (``/dashboard_groups``): named sets of dashboards, like tags (a dashboard may
be in several). A group grants nothing: who sees a dashboard does not depend on its groups."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import StringConstraints
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
    Attributes,
    Filter,
    Relationship,
    ResourceType,
    from_row,
)
from api_server.resource_layer.responses import one, page
from api_server.resources.dashboards import DASHBOARDS
from api_server.services import dashboards
from api_server.services.dashboards import DASHBOARD_LINKAGE_POINTER, DashboardGroupView
from api_server.services.object_limits import limit_reached
from shared import openapi as oa
from shared.db.models import DashboardGroup
from shared.errors import Unprocessable

MAX_GROUP_DASHBOARDS = 1000  # dashboards set in one request


class DashboardGroupAttributes(Attributes):
    name: DisplayName
    description: Annotated[str, StringConstraints(max_length=2000)] | None = None
    created_at: Annotated[datetime, READ_ONLY]
    updated_at: Annotated[datetime, READ_ONLY]


_DASHBOARD_LINKAGE = oa.obj(
    {
        "data": oa.array(
            oa.obj({"type": oa.const("dashboards"), "id": ID_SCHEMA}, ["type", "id"]),
            maxItems=MAX_GROUP_DASHBOARDS,
            uniqueItems=True,
        )
    },
    ["data"],
    "The group's dashboards from now on (each once): those named join, the others leave. A key "
    "restricted to some datasources changes only the dashboards it sees.",
)

DASHBOARD_GROUPS = ResourceType(
    type="dashboard_groups",
    schema_name="DashboardGroup",
    noun="dashboard group",
    attributes=DashboardGroupAttributes,
    path="/dashboard_groups",
    relationships={
        "dashboards": Relationship(
            "dashboards",
            linked=lambda view: view.dashboard_ids,
            to_many=True,
            description="The dashboards in the group that the key sees, by name.",
            accepted=_DASHBOARD_LINKAGE,
        )
    },
    settable_relationships=("dashboards",),
    sortable=("name", "created_at", "updated_at"),
    filters=(Filter("name"),),
    includable=("dashboards",),
    included_note="the group's dashboards (those the key sees).",
    readers={name: from_row(name) for name in DashboardGroupAttributes.model_fields},
)

OPERATIONS = Operations(
    "Dashboard groups",
    "JSON:API resource `dashboard_groups`: named sets of dashboards.",
    [DASHBOARD_GROUPS],
)
VIEW, MANAGE = (Permission.VIEW_DASHBOARDS,), (Permission.MANAGE_DASHBOARDS,)
_HOLDS_HIDDEN = (
    "The key lacks the permission, or is restricted to listed datasources and the group holds "
    "dashboards it does not see (`datasource_scope_restricted`): it may change which of the "
    "ones it sees are members, not rename or delete the group."
)
_INVALID = (
    "An attribute is unknown, read-only or invalid, or a dashboard in `relationships` is not one "
    "of the organisation's (`dashboard_not_found`, pointing at it)."
)


def _dashboard_ids(resource: jsonapi.ResourceInput) -> list[str] | None:
    """The ids of a ``dashboards`` to-many linkage, each once; None when it is not sent."""
    relationship = resource.relationships.get("dashboards")
    if relationship is None:
        return None
    linkage = relationship.get("data")
    if set(relationship) != {"data"} or not isinstance(linkage, list):
        raise Unprocessable(
            'dashboards holds only "data": an array of dashboard identifiers.',
            pointer="/data/relationships/dashboards",
            code="invalid_relationship",
        )
    if len(linkage) > MAX_GROUP_DASHBOARDS:
        raise Unprocessable(
            f"At most {MAX_GROUP_DASHBOARDS} dashboards may be set at once.",
            pointer=DASHBOARD_LINKAGE_POINTER,
            code="too_many",
        )
    ids: list[str] = []
    for index, identifier in enumerate(linkage):
        pointer = f"{DASHBOARD_LINKAGE_POINTER}/{index}"
        if set(identifier) != {"type", "id"} or identifier["type"] != "dashboards":
            raise Unprocessable(
                'Each member is {"type": "dashboards", "id"}: only dashboards are in a group.',
                pointer=pointer,
                code="invalid_relationship",
            )
        if identifier["id"] in ids:
            raise Unprocessable(
                f"Dashboard {identifier['id']!r} is named twice.",
                pointer=pointer,
                code="duplicate_dashboard",
            )
        ids.append(identifier["id"])
    return ids


def _included(
    session: Session, principal: Principal, views: list[DashboardGroupView], include: set[str]
) -> list[dict[str, Any]]:
    if "dashboards" not in include:
        return []
    wanted = {dashboard_id for view in views for dashboard_id in view.dashboard_ids}
    return [
        DASHBOARDS.serialize(d) for d in dashboards.dashboards_by_ids(session, principal, wanted)
    ]


@OPERATIONS.get(
    "/dashboard_groups",
    operation_id="listDashboardGroups",
    summary="List dashboard groups",
    description="The organisation's dashboard groups, paged.",
    permissions=VIEW,
    parameters=tuple(doc.collection_parameters(DASHBOARD_GROUPS)),
    responses={
        "200": doc.jsonapi_response("A page of dashboard groups.", "DashboardGroupCollection")
    },
    errors={400: doc.BAD_QUERY},
)
def list_dashboard_groups(request: Request, principal: Principal) -> Response:
    query = DASHBOARD_GROUPS.query(request, collection=True)
    with request.app.state.sessions() as session:
        views, total = dashboards.list_groups(session, principal, query)
        extra = _included(session, principal, views, query.include)
        return page(DASHBOARD_GROUPS, request, query, views, total, included=extra)


@OPERATIONS.post(
    "/dashboard_groups",
    operation_id="createDashboardGroup",
    summary="Create a dashboard group",
    description="With its dashboards, if `relationships.dashboards` names them.",
    permissions=MANAGE,
    audit="dashboard_group.create",
    parameters=tuple(doc.one_parameters(DASHBOARD_GROUPS)),
    body=Body.BOUNDED,
    request_body=doc.request_body("DashboardGroupCreateDocument", "The new group."),
    responses={
        "201": doc.jsonapi_response("Created.", "DashboardGroupDocument", doc.CREATED_HEADERS)
    },
    errors={
        400: doc.BAD_DOCUMENT,
        403: f"The key lacks the permission. {doc.NO_CLIENT_IDS}",
        409: f"{limit_reached(DashboardGroup)}; or {doc.WRONG_TYPE_OR_ID}",
        422: _INVALID,
    },
)
def create_dashboard_group(request: Request, principal: Principal) -> Response:
    query = DASHBOARD_GROUPS.query(request, collection=False)
    resource = DASHBOARD_GROUPS.read(request)
    data = DASHBOARD_GROUPS.validate(resource, update=False)
    members = _dashboard_ids(resource)
    with request.app.state.sessions.begin() as session:
        settings = request.app.state.settings
        view = dashboards.create_group(session, principal, data.model_dump(), members, settings)
        extra = _included(session, principal, [view], query.include)
        return one(DASHBOARD_GROUPS, query, view, status_code=201, included=extra)


@OPERATIONS.get(
    "/dashboard_groups/{id}",
    operation_id="showDashboardGroup",
    summary="Get a dashboard group",
    description="One group of the organisation; `include=dashboards` adds its dashboards.",
    permissions=VIEW,
    subject=DASHBOARD_GROUPS,
    parameters=tuple(doc.one_parameters(DASHBOARD_GROUPS)),
    responses={"200": doc.jsonapi_response("The group.", "DashboardGroupDocument")},
    errors={400: doc.BAD_QUERY, 404: None},
)
def show_dashboard_group(request: Request, principal: Principal) -> Response:
    query = DASHBOARD_GROUPS.query(request, collection=False)
    with request.app.state.sessions() as session:
        view = dashboards.get_group(session, principal, request.path_params["id"])
        extra = _included(session, principal, [view], query.include)
        return one(DASHBOARD_GROUPS, query, view, included=extra)


@OPERATIONS.patch(
    "/dashboard_groups/{id}",
    operation_id="updateDashboardGroup",
    summary="Update a dashboard group",
    description="Only the attributes sent change; `relationships.dashboards`, if sent, "
    "replaces the group's dashboards.",
    permissions=MANAGE,
    audit="dashboard_group.update",
    subject=DASHBOARD_GROUPS,
    parameters=tuple(doc.one_parameters(DASHBOARD_GROUPS)),
    body=Body.BOUNDED,
    request_body=doc.request_body("DashboardGroupUpdateDocument", "The changes."),
    responses={"200": doc.jsonapi_response("The group as it is now.", "DashboardGroupDocument")},
    errors={
        400: doc.BAD_DOCUMENT,
        403: _HOLDS_HIDDEN,
        404: None,
        409: doc.WRONG_TYPE_OR_ID,
        422: _INVALID,
    },
)
def update_dashboard_group(request: Request, principal: Principal) -> Response:
    group_id = request.path_params["id"]
    query = DASHBOARD_GROUPS.query(request, collection=False)
    resource = DASHBOARD_GROUPS.read(request, group_id)
    stored = keeping_stored_name(
        request, lambda session: dashboards.get_group(session, principal, group_id).row.name
    )
    data = DASHBOARD_GROUPS.validate(resource, update=True, context=stored)
    members = _dashboard_ids(resource)
    with request.app.state.sessions.begin() as session:
        view = dashboards.update_group(session, principal, group_id, data.changes(), members)
        extra = _included(session, principal, [view], query.include)
        return one(DASHBOARD_GROUPS, query, view, included=extra)


@OPERATIONS.delete(
    "/dashboard_groups/{id}",
    operation_id="deleteDashboardGroup",
    summary="Delete a dashboard group",
    description="Its dashboards stay; they only leave the group.",
    permissions=MANAGE,
    audit="dashboard_group.delete",
    subject=DASHBOARD_GROUPS,
    responses=doc.DELETED,
    errors={403: _HOLDS_HIDDEN, 404: None},
)
def delete_dashboard_group(request: Request, principal: Principal) -> Response:
    with request.app.state.sessions.begin() as session:
        dashboards.delete_group(session, principal, request.path_params["id"])
    return Response(status_code=204)
