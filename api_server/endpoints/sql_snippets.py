"""SQL snippet endpoints (``/sql_snippets``): parse → authorise → call the service → serialise."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from api_server import jsonapi, serializers
from api_server.auth import authenticate
from api_server.permissions import Permission, require
from api_server.schemas import SQL_SNIPPET_READ_ONLY, SqlSnippetCreate, SqlSnippetUpdate
from api_server.services import sql_snippets
from shared.db.models import SqlSnippet

_FIELDS = {"sql_snippets": (*serializers.SQL_SNIPPET_ATTRIBUTES, "sql_snippet")}


def _query(request: Request, collection: bool) -> jsonapi.CollectionQuery:
    return jsonapi.parse_collection_query(
        request,
        sortable=sql_snippets.SORTABLE,
        filterable=sql_snippets.FILTERABLE,
        fields_by_type=_FIELDS,
        collection=collection,
    )


def _document(request: Request, snippet: SqlSnippet, status_code: int = 200) -> Response:
    resource = serializers.sql_snippet(snippet)
    data = jsonapi.apply_sparse_fields(resource, _query(request, collection=False))
    headers = {"Location": resource["links"]["self"]} if status_code == 201 else None
    return jsonapi.response({"data": data}, status_code, headers)


def _attributes(request: Request, snippet_id: str | None = None) -> dict:
    document = jsonapi.read_json_body(request)
    return jsonapi.parse_resource_document(document, "sql_snippets", snippet_id).attributes


@jsonapi.endpoint()
def list_sql_snippets(request: Request) -> Response:
    principal = authenticate(request)
    require(principal, Permission.VIEW_DASHBOARDS)
    query = _query(request, collection=True)
    with request.app.state.sessions() as session:
        rows, total = sql_snippets.list_snippets(session, principal, query)
        data = [jsonapi.apply_sparse_fields(serializers.sql_snippet(s), query) for s in rows]
    return jsonapi.collection_response(request, query, data, total)


@jsonapi.endpoint()
def show_sql_snippet(request: Request) -> Response:
    principal = authenticate(request)
    require(principal, Permission.VIEW_DASHBOARDS)
    with request.app.state.sessions() as session:
        snippet = sql_snippets.get_snippet(session, principal, request.path_params["id"])
        return _document(request, snippet)


@jsonapi.endpoint()
def create_sql_snippet(request: Request) -> Response:
    principal = authenticate(request)
    require(principal, Permission.MANAGE_DASHBOARDS)
    attributes = _attributes(request)
    data = jsonapi.validate_attributes(SqlSnippetCreate, attributes, SQL_SNIPPET_READ_ONLY)
    with request.app.state.sessions.begin() as session:
        snippet = sql_snippets.create_snippet(session, principal, data.model_dump())
        return _document(request, snippet, status_code=201)


@jsonapi.endpoint()
def update_sql_snippet(request: Request) -> Response:
    principal = authenticate(request)
    require(principal, Permission.MANAGE_DASHBOARDS)
    snippet_id = request.path_params["id"]
    attributes = _attributes(request, snippet_id)
    data = jsonapi.validate_attributes(SqlSnippetUpdate, attributes, SQL_SNIPPET_READ_ONLY)
    with request.app.state.sessions.begin() as session:
        snippet = sql_snippets.update_snippet(session, principal, snippet_id, data.changes())
        return _document(request, snippet)


@jsonapi.endpoint()
def delete_sql_snippet(request: Request) -> Response:
    principal = authenticate(request)
    require(principal, Permission.MANAGE_DASHBOARDS)
    with request.app.state.sessions.begin() as session:
        sql_snippets.delete_snippet(session, principal, request.path_params["id"])
    return Response(status_code=204)
