"""``GET /audit_events``: the organisation's audit log, newest first, for keys that reach all of it.

The log is organisation-wide: its events name datasources, executions (also purged ones, whose
datasource is gone from the record), snippets, dashboards and the keys that acted. So it is read
only by a key with Manage Users that could administer every key of the organisation: one holding
every permission and restricted to no datasource. Any other is refused it whole (403
``permission_scope_restricted`` or ``datasource_scope_restricted``) rather than shown a filtered
log, whose filters, paging totals and ``api_key`` relationships could still reveal the keys and
the activity outside its scope (and a deleted key's events name no permissions to filter by).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response

from api_server.permissions import Permission
from api_server.principals import Principal
from api_server.resource_layer import documentation as doc
from api_server.resource_layer.operations import Operations
from api_server.resource_layer.resource_types import (
    READ_ONLY,
    Attributes,
    Filter,
    Relationship,
    ResourceType,
)
from api_server.resource_layer.responses import page
from api_server.services.listing import list_page
from shared import openapi as oa
from shared.db.models import AuditEvent
from shared.errors import InvalidQueryParameter


def _moment(name: str, value: str) -> datetime:
    """An ISO 8601 time with a zone, in UTC; one beyond UTC's range is before or after every event."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise InvalidQueryParameter(
            f"{name} must be an ISO 8601 time with a zone, e.g. 2026-11-23T09:00:00Z.",
            parameter=name,
        )
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # in year 1 or 9999 and beyond it in UTC
        return (datetime.min if moment.year == 1 else datetime.max).replace(tzinfo=UTC)


class AuditEventAttributes(Attributes):
    action: Annotated[
        str,
        READ_ONLY,
        Field(description="What happened, e.g. `execution.run`, `data_grant.execution`."),
    ]
    method: Annotated[str, READ_ONLY]
    path: Annotated[
        str, READ_ONLY, Field(description="The route template, e.g. `/datasources/{id}`.")
    ]
    resource_id: Annotated[str | None, READ_ONLY]
    status: Annotated[int, READ_ONLY, Field(description="The HTTP status answered.")]
    api_key_id: Annotated[str | None, READ_ONLY]
    remote_addr: Annotated[str | None, READ_ONLY]
    request_id: Annotated[
        str | None, READ_ONLY, Field(description="The response's `X-Request-Id`.")
    ]
    created_at: Annotated[datetime, READ_ONLY]


AUDIT_EVENTS = ResourceType(
    type="audit_events",
    schema_name="AuditEvent",
    noun="audit event",
    attributes=AuditEventAttributes,
    path=None,
    relationships={
        "api_key": Relationship("api_keys", linked=lambda event: event.api_key_id),
    },
    sortable=("created_at", "action"),
    filters=(
        Filter("action"),
        Filter("api_key_id"),
        Filter("resource_id"),
        Filter("method"),
        Filter(
            "since",
            "Events at or after this ISO 8601 time with a zone (e.g. 2026-11-23T09:00:00Z).",
            oa.timestamp(),
            parse=_moment,
        ),
        Filter(
            "until", "Events before this ISO 8601 time with a zone.", oa.timestamp(), parse=_moment
        ),
    ),
)

OPERATIONS = Operations(
    "Audit log",
    "Every successful write and data grant of the organisation (Manage Users, and every other "
    "permission).",
    [AUDIT_EVENTS],
)


@OPERATIONS.get(
    "/audit_events",
    operation_id="listAuditEvents",
    summary="List audit events",
    description="Every successful write (create, update, delete, run, cancel, purge, refresh, "
    "test connection) and every data grant, newest first, paged. Never a body, a secret or a "
    "parameter value. The log is organisation-wide, so it is read only by a key that could "
    "administer every key: a key lacking any permission is refused it (403 "
    "`permission_scope_restricted`), as is a key restricted to listed datasources (403 "
    "`datasource_scope_restricted`).",
    permissions=(Permission.MANAGE_USERS,),
    parameters=tuple(doc.collection_parameters(AUDIT_EVENTS)),
    responses={"200": doc.jsonapi_response("A page of events.", "AuditEventCollection")},
    errors={
        400: doc.BAD_QUERY,
        403: "The key lacks Manage Users (`permission_denied`) or any other permission "
        "(`permission_scope_restricted`), or is restricted to listed datasources "
        "(`datasource_scope_restricted`).",
    },
)
def list_audit_events(request: Request, principal: Principal) -> Response:
    principal.require_every_datasource("read the organisation's audit log")
    principal.require_every_permission("read the organisation's audit log")
    query = AUDIT_EVENTS.query(request, collection=True)
    where = AuditEvent.organization_id == principal.organization_id
    if "since" in query.filters:
        where = where & (AuditEvent.created_at >= query.filters.pop("since"))
    if "until" in query.filters:
        where = where & (AuditEvent.created_at < query.filters.pop("until"))
    with request.app.state.sessions() as session:
        rows, total = list_page(session, AuditEvent, where, query, AuditEvent.created_at.desc())
        return page(AUDIT_EVENTS, request, query, rows, total)
