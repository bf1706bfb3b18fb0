"""API keys: the calling key (any key), and the organisation's keys within the caller's scope
(Manage Users; the scope rule is ``services.api_keys.within_scope``). Keys are created by the
operator (``create-api-key``), not over the API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import Field
from sqlalchemy import select
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
)
from api_server.resource_layer.responses import one, page
from api_server.services import api_keys
from shared import openapi as oa
from shared.db.models import ApiKey


class ApiKeyAttributes(Attributes):
    """What a key with Manage Users may change: the name, and whether the key works."""

    name: DisplayName
    prefix: Annotated[
        str, READ_ONLY, Field(description="The start of the secret, to recognise it by.")
    ]
    permissions: Annotated[list[Permission], READ_ONLY]
    datasource_ids: Annotated[
        list[str] | None,
        READ_ONLY,
        Field(description="The datasources the key is restricted to; null: every one."),
    ]
    organization_id: Annotated[str, READ_ONLY]
    enabled: Annotated[
        bool, Field(description="A disabled key gets 401 until it is enabled again.")
    ]
    created_at: Annotated[datetime, READ_ONLY]
    last_used_at: Annotated[
        datetime | None, READ_ONLY, Field(description="Written at most once a minute.")
    ]


def _parse_enabled(name: str, value: str) -> bool:
    return jsonapi.parse_boolean(name, value)


API_KEYS = ResourceType(
    type="api_keys",
    schema_name="ApiKey",
    noun="API key",
    attributes=ApiKeyAttributes,
    path="/api_keys",
    relationships={
        "organization": Relationship("organizations", linked=lambda key: key.organization_id),
        "datasources": Relationship(
            "datasources", linked=lambda key: key.datasource_ids, to_many=True, nullable=True
        ),
    },
    sortable=("name", "created_at", "last_used_at"),
    filters=(
        Filter("name"),
        Filter("enabled", "`true` or `false`.", oa.enum(["true", "false"]), parse=_parse_enabled),
    ),
    readers={
        "prefix": lambda key: key.secret_prefix,
        "permissions": lambda key: list(key.permissions),
    },
)

OPERATIONS = Operations(
    "API keys", "The calling key, and the organisation's keys (Manage Users).", [API_KEYS]
)
MANAGE = (Permission.MANAGE_USERS,)
_SCOPE = (
    "datasource restriction is at least as narrow as the caller's (an unrestricted caller: any) "
    "and whose permissions the caller holds itself."
)
_NOT_FOUND = f"No such key in the organisation, or not one whose {_SCOPE}"
_OPERATOR_HOLD = "An operator disabled the key; only the operator enables or deletes it"


@OPERATIONS.get(
    "/api_key",
    operation_id="showCallingApiKey",
    summary="The calling API key",
    description="Any valid key may see itself; no query parameters are accepted.",
    responses={"200": doc.jsonapi_response("The calling key.", "ApiKeyDocument")},
    errors={400: None},
)
def show_calling_api_key(request: Request, principal: Principal) -> Response:
    query = jsonapi.parse_collection_query(request, collection=False)
    with request.app.state.sessions() as session:
        key = session.scalars(select(ApiKey).where(ApiKey.id == principal.api_key_id)).one()
        return one(API_KEYS, query, key, self_link="/api_key")


@OPERATIONS.get(
    "/api_keys",
    operation_id="listApiKeys",
    summary="List API keys",
    description="The organisation's keys within the caller's scope, paged: keys whose "
    f"{_SCOPE} Others are left out of the page and of `meta.total`. Keys are created by the "
    "operator (`create-api-key`), not over the API.",
    permissions=MANAGE,
    parameters=tuple(doc.collection_parameters(API_KEYS)),
    responses={"200": doc.jsonapi_response("A page of keys.", "ApiKeyCollection")},
    errors={400: doc.BAD_QUERY},
)
def list_api_keys(request: Request, principal: Principal) -> Response:
    query = API_KEYS.query(request, collection=True)
    with request.app.state.sessions() as session:
        rows, total = api_keys.list_keys(session, principal, query)
        return page(API_KEYS, request, query, rows, total)


@OPERATIONS.get(
    "/api_keys/{id}",
    operation_id="showApiKey",
    summary="Get an API key",
    description="One key of the organisation within the caller's scope.",
    permissions=MANAGE,
    subject=API_KEYS,
    parameters=tuple(doc.one_parameters(API_KEYS)),
    responses={"200": doc.jsonapi_response("The key.", "ApiKeyDocument")},
    errors={400: doc.BAD_QUERY, 404: _NOT_FOUND},
)
def show_api_key(request: Request, principal: Principal) -> Response:
    query = API_KEYS.query(request, collection=False)
    with request.app.state.sessions() as session:
        return one(API_KEYS, query, api_keys.get_key(session, principal, request.path_params["id"]))


@OPERATIONS.patch(
    "/api_keys/{id}",
    operation_id="updateApiKey",
    summary="Rename, disable or enable an API key",
    description="Only `name` and `enabled` change; a disabled key gets 401 until it is enabled "
    "again. Other attributes are read-only (422 `read_only_attribute`). A key the operator "
    "disabled (`disable-api-key`) is enabled again only by the operator.",
    permissions=MANAGE,
    audit="api_key.update",
    subject=API_KEYS,
    parameters=tuple(doc.one_parameters(API_KEYS)),
    body=Body.BOUNDED,
    request_body=doc.request_body("ApiKeyUpdateDocument", "The attributes to change."),
    responses={"200": doc.jsonapi_response("The key as it is now.", "ApiKeyDocument")},
    errors={
        400: doc.BAD_DOCUMENT,
        404: _NOT_FOUND,
        409: f"{_OPERATOR_HOLD} (`disabled_by_operator`); or {doc.WRONG_TYPE_OR_ID}",
        422: None,
    },
)
def update_api_key(request: Request, principal: Principal) -> Response:
    """A disabled key gets 401 like an unknown one."""
    key_id = request.path_params["id"]
    query = API_KEYS.query(request, collection=False)
    stored = keeping_stored_name(
        request, lambda session: api_keys.get_key(session, principal, key_id).name
    )
    data = API_KEYS.validate(API_KEYS.read(request, key_id), update=True, context=stored)
    with request.app.state.sessions.begin() as session:
        key = api_keys.get_key(session, principal, key_id, for_update=True)
        api_keys.update_key(session, key, data.changes())
        return one(API_KEYS, query, key)


@OPERATIONS.delete(
    "/api_keys/{id}",
    operation_id="deleteApiKey",
    summary="Delete an API key",
    description="The key stops working at once.",
    permissions=MANAGE,
    audit="api_key.delete",
    subject=API_KEYS,
    responses=doc.DELETED,
    errors={404: _NOT_FOUND, 409: f"{_OPERATOR_HOLD} (`disabled_by_operator`)."},
)
def delete_api_key(request: Request, principal: Principal) -> Response:
    with request.app.state.sessions.begin() as session:
        api_keys.delete_key(
            session,
            api_keys.get_key(session, principal, request.path_params["id"], for_update=True),
        )
    return Response(status_code=204)
