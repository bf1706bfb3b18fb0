"""API keys: the calling key (any key), and the organisation's keys within the caller's scope
(Manage Users; the scope rule is ``services.api_keys.within_scope``)."""

from __future__ import annotations

from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import Response

from api_server import jsonapi, serializers
from api_server.auth import Principal, authenticate
from api_server.permissions import Permission, require
from api_server.schemas import API_KEY_READ_ONLY, ApiKeyUpdate
from api_server.services import api_keys
from shared.db.models import ApiKey

_FIELDS = {"api_keys": (*serializers.API_KEY_ATTRIBUTES, "organization", "datasources")}


@jsonapi.endpoint()
def show_calling_api_key(request: Request) -> Response:
    """Needs no permission: any valid key may see itself."""
    principal = authenticate(request)
    jsonapi.parse_collection_query(request, collection=False)
    with request.app.state.sessions() as session:
        key = session.scalars(select(ApiKey).where(ApiKey.id == principal.api_key_id)).one()
        return jsonapi.response({"data": serializers.api_key(key)})


def _admin(request: Request) -> Principal:
    principal = authenticate(request)
    require(principal, Permission.MANAGE_USERS)
    return principal


def _query(request: Request, collection: bool) -> jsonapi.CollectionQuery:
    return jsonapi.parse_collection_query(
        request,
        sortable=api_keys.KEY_SORTABLE,
        filterable=api_keys.KEY_FILTERABLE if collection else (),
        fields_by_type=_FIELDS,
        collection=collection,
    )


def _resource(key: ApiKey, query: jsonapi.CollectionQuery) -> dict:
    return jsonapi.apply_sparse_fields(serializers.api_key(key, f"/api_keys/{key.id}"), query)


@jsonapi.endpoint()
def list_api_keys(request: Request) -> Response:
    principal = _admin(request)
    query = _query(request, collection=True)
    if "enabled" in query.filters:
        query.filters["enabled"] = jsonapi.parse_boolean(
            "filter[enabled]", query.filters["enabled"]
        )
    with request.app.state.sessions() as session:
        rows, total = api_keys.list_keys(session, principal, query)
        data = [_resource(key, query) for key in rows]
    return jsonapi.collection_response(request, query, data, total)


@jsonapi.endpoint()
def show_api_key(request: Request) -> Response:
    principal = _admin(request)
    query = _query(request, collection=False)
    with request.app.state.sessions() as session:
        key = api_keys.get_key(session, principal, request.path_params["id"])
        return jsonapi.response({"data": _resource(key, query)})


@jsonapi.endpoint()
def update_api_key(request: Request) -> Response:
    """Rename, disable or re-enable a key; a disabled key gets 401 like an unknown one."""
    principal = _admin(request)
    key_id = request.path_params["id"]
    query = _query(request, collection=False)
    document = jsonapi.read_json_body(request)
    attributes = jsonapi.parse_resource_document(document, "api_keys", key_id).attributes
    data = jsonapi.validate_attributes(ApiKeyUpdate, attributes, API_KEY_READ_ONLY)
    with request.app.state.sessions.begin() as session:
        key = api_keys.get_key(session, principal, key_id)
        api_keys.update_key(session, key, data.changes())
        return jsonapi.response({"data": _resource(key, query)})


@jsonapi.endpoint()
def delete_api_key(request: Request) -> Response:
    principal = _admin(request)
    with request.app.state.sessions.begin() as session:
        key = api_keys.get_key(session, principal, request.path_params["id"])
        api_keys.delete_key(session, key)
    return Response(status_code=204)
