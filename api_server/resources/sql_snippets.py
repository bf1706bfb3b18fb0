"""SQL snippets (``/sql_snippets``): SQL that ``[name]`` pulls into a query."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, Field, StringConstraints
from starlette.requests import Request
from starlette.responses import Response

from api_server.permissions import Permission
from api_server.principals import Principal
from api_server.resource_layer import documentation as doc
from api_server.resource_layer.operations import Body, Operations
from api_server.resource_layer.resource_types import (
    READ_ONLY,
    Attributes,
    Filter,
    Relationship,
    ResourceType,
)
from api_server.resource_layer.responses import one, page
from api_server.services import sql_snippets
from api_server.services.object_limits import limit_reached
from shared.db.models import SqlSnippet

SNIPPET_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
RESERVED_SNIPPET_PREFIX = "CLUVIO_"  # Cluvio's built-in snippets


def check_snippet_name(name: str) -> str:
    """A name that ``[name]`` can reference, and not one of the built-ins' namespace."""
    if not SNIPPET_NAME.match(name):
        raise ValueError("must start with a letter or _ and hold only letters, digits and _")
    if name.upper().startswith(RESERVED_SNIPPET_PREFIX):
        raise ValueError(f"names starting with {RESERVED_SNIPPET_PREFIX} are reserved")
    return name


def _name_pattern() -> str:
    """``check_snippet_name`` as a pattern: an identifier, not in the reserved namespace (any
    case), surrounding whitespace stripped first."""
    reserved = "".join(
        f"[{c.upper()}{c.lower()}]" if c.isalpha() else re.escape(c)
        for c in RESERVED_SNIPPET_PREFIX
    )
    identifier = SNIPPET_NAME.pattern.removesuffix(r"\Z")
    return rf"^\s*(?!{reserved}){identifier}\s*$"


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


class SqlSnippetAttributes(Attributes):
    name: Annotated[
        str,
        StringConstraints(strip_whitespace=True, min_length=1, max_length=128),
        AfterValidator(check_snippet_name),
        Field(json_schema_extra={"pattern": _name_pattern()}),
    ]
    description: Annotated[str, StringConstraints(max_length=2000)] | None = None
    sql: Annotated[
        str,
        StringConstraints(min_length=1, max_length=100_000),
        AfterValidator(_not_blank),
        Field(json_schema_extra={"pattern": r"\S"}),
    ]
    created_at: Annotated[datetime, READ_ONLY]
    updated_at: Annotated[datetime, READ_ONLY]


SQL_SNIPPETS = ResourceType(
    type="sql_snippets",
    schema_name="SqlSnippet",
    noun="SQL snippet",
    attributes=SqlSnippetAttributes,
    path="/sql_snippets",
    # Cluvio's changelog (2024-06-04) adds this relationship to every SqlSnippet object.
    relationships={"sql_snippet": Relationship("sql_snippets", linked=lambda s: s.id)},
    sortable=("name", "created_at", "updated_at"),
    filters=(Filter("name"),),
)

OPERATIONS = Operations(
    "SQL snippets",
    "JSON:API resource `sql_snippets`: SQL that `[name]` pulls into a query.",
    [SQL_SNIPPETS],
)
VIEW, MANAGE = (Permission.VIEW_DASHBOARDS,), (Permission.MANAGE_DASHBOARDS,)
_INVALID = (
    "An attribute is unknown, read-only or invalid (e.g. a reserved `CLUVIO_` name), or the "
    "snippet would refer to itself through its SQL (`sql_snippet_cycle`)."
)
_REFUSED = (
    "The key lacks the permission, or is restricted to listed datasources "
    "(`datasource_scope_restricted`): snippets serve every datasource's SQL, so such a key "
    "reads them but does not write them."
)
_TAKEN = f"The name is taken (`sql_snippet_name_taken`); or {doc.WRONG_TYPE_OR_ID}"


@OPERATIONS.get(
    "/sql_snippets",
    operation_id="listSqlSnippets",
    summary="List SQL snippets",
    description="The organisation's snippets, paged.",
    permissions=VIEW,
    parameters=tuple(doc.collection_parameters(SQL_SNIPPETS)),
    responses={"200": doc.jsonapi_response("A page of snippets.", "SqlSnippetCollection")},
    errors={400: doc.BAD_QUERY},
)
def list_sql_snippets(request: Request, principal: Principal) -> Response:
    query = SQL_SNIPPETS.query(request, collection=True)
    with request.app.state.sessions() as session:
        rows, total = sql_snippets.list_snippets(session, principal, query)
        return page(SQL_SNIPPETS, request, query, rows, total)


@OPERATIONS.post(
    "/sql_snippets",
    operation_id="createSqlSnippet",
    summary="Create a SQL snippet",
    description="`[name]` in a query is then replaced by this SQL.",
    permissions=MANAGE,
    audit="sql_snippet.create",
    parameters=tuple(doc.one_parameters(SQL_SNIPPETS)),
    body=Body.BOUNDED,
    request_body=doc.request_body("SqlSnippetCreateDocument", "The new snippet."),
    responses={"201": doc.jsonapi_response("Created.", "SqlSnippetDocument", doc.CREATED_HEADERS)},
    errors={
        400: doc.BAD_DOCUMENT,
        403: f"{_REFUSED} {doc.NO_CLIENT_IDS}",
        409: f"{limit_reached(SqlSnippet)}. {_TAKEN}",
        422: _INVALID,
    },
)
def create_sql_snippet(request: Request, principal: Principal) -> Response:
    query = SQL_SNIPPETS.query(request, collection=False)
    data = SQL_SNIPPETS.validate(SQL_SNIPPETS.read(request), update=False)
    with request.app.state.sessions.begin() as session:
        settings = request.app.state.settings
        snippet = sql_snippets.create_snippet(session, principal, data.model_dump(), settings)
        return one(SQL_SNIPPETS, query, snippet, status_code=201)


@OPERATIONS.get(
    "/sql_snippets/{id}",
    operation_id="showSqlSnippet",
    summary="Get a SQL snippet",
    description="One snippet of the organisation.",
    permissions=VIEW,
    subject=SQL_SNIPPETS,
    parameters=tuple(doc.one_parameters(SQL_SNIPPETS)),
    responses={"200": doc.jsonapi_response("The snippet.", "SqlSnippetDocument")},
    errors={400: doc.BAD_QUERY, 404: None},
)
def show_sql_snippet(request: Request, principal: Principal) -> Response:
    query = SQL_SNIPPETS.query(request, collection=False)
    with request.app.state.sessions() as session:
        snippet = sql_snippets.get_snippet(session, principal, request.path_params["id"])
        return one(SQL_SNIPPETS, query, snippet)


@OPERATIONS.patch(
    "/sql_snippets/{id}",
    operation_id="updateSqlSnippet",
    summary="Update a SQL snippet",
    description="Only the attributes sent change.",
    permissions=MANAGE,
    audit="sql_snippet.update",
    subject=SQL_SNIPPETS,
    parameters=tuple(doc.one_parameters(SQL_SNIPPETS)),
    body=Body.BOUNDED,
    request_body=doc.request_body("SqlSnippetUpdateDocument", "The attributes to change."),
    responses={"200": doc.jsonapi_response("The snippet as it is now.", "SqlSnippetDocument")},
    errors={400: doc.BAD_DOCUMENT, 403: _REFUSED, 404: None, 409: _TAKEN, 422: _INVALID},
)
def update_sql_snippet(request: Request, principal: Principal) -> Response:
    snippet_id = request.path_params["id"]
    query = SQL_SNIPPETS.query(request, collection=False)
    data = SQL_SNIPPETS.validate(SQL_SNIPPETS.read(request, snippet_id), update=True)
    with request.app.state.sessions.begin() as session:
        snippet = sql_snippets.update_snippet(session, principal, snippet_id, data.changes())
        return one(SQL_SNIPPETS, query, snippet)


@OPERATIONS.delete(
    "/sql_snippets/{id}",
    operation_id="deleteSqlSnippet",
    summary="Delete a SQL snippet",
    description="Queries that still use `[name]` then fail with 422 `unknown_sql_snippet`.",
    permissions=MANAGE,
    audit="sql_snippet.delete",
    subject=SQL_SNIPPETS,
    responses=doc.DELETED,
    errors={403: _REFUSED, 404: None},
)
def delete_sql_snippet(request: Request, principal: Principal) -> Response:
    with request.app.state.sessions.begin() as session:
        sql_snippets.delete_snippet(session, principal, request.path_params["id"])
    return Response(status_code=204)
