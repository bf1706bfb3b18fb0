"""``GET /audit_events``: the organisation's audit log, newest first, for keys with Manage Users.

The log is organisation-wide: its events name datasources, executions (also purged ones, whose
datasource is gone from the record), snippets and the keys that acted. A key restricted to listed
datasources is refused it whole (403 ``datasource_scope_restricted``) rather than shown a filtered
log whose filters, paging totals and ``api_key`` relationships could still reveal what lies outside
its scope.
"""

from __future__ import annotations

from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import Response

from api_server import jsonapi, serializers
from api_server.auth import Principal, authenticate
from api_server.permissions import Permission, require
from api_server.services.listing import list_page
from shared.db.models import AuditEvent
from shared.errors import Forbidden, InvalidQueryParameter

SORTABLE = ("created_at", "action")
FILTERABLE = ("action", "api_key_id", "resource_id", "method", "since", "until")
_FIELDS = {"audit_events": (*serializers.AUDIT_EVENT_ATTRIBUTES, "api_key")}


@jsonapi.endpoint()
def list_audit_events(request: Request) -> Response:
    """``filter[since]`` / ``filter[until]`` take ISO 8601 times (since inclusive, until not)."""
    principal = _auditor(request)
    query = jsonapi.parse_collection_query(
        request, sortable=SORTABLE, filterable=FILTERABLE, fields_by_type=_FIELDS
    )
    where = AuditEvent.organization_id == principal.organization_id
    if "since" in query.filters:
        where = where & (AuditEvent.created_at >= _moment(query.filters.pop("since"), "since"))
    if "until" in query.filters:
        where = where & (AuditEvent.created_at < _moment(query.filters.pop("until"), "until"))
    with request.app.state.sessions() as session:
        rows, total = list_page(session, AuditEvent, where, query, AuditEvent.created_at.desc())
        data = [jsonapi.apply_sparse_fields(serializers.audit_event(e), query) for e in rows]
    return jsonapi.collection_response(request, query, data, total)


def _auditor(request: Request) -> Principal:
    principal = authenticate(request)
    require(principal, Permission.MANAGE_USERS)
    if principal.datasource_ids is not None:
        raise Forbidden(
            "A key restricted to listed datasources cannot read the organisation's audit log.",
            code="datasource_scope_restricted",
        )
    return principal


def _moment(value: str, name: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise InvalidQueryParameter(
            f"filter[{name}] must be an ISO 8601 time with a zone, e.g. 2026-11-23T09:00:00Z.",
            parameter=f"filter[{name}]",
        )
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # in year 1 or 9999 and beyond it in UTC: before or after every event
        return (datetime.min if moment.year == 1 else datetime.max).replace(tzinfo=UTC)
