"""Datasource endpoints: parse → authorise → call the service → serialise."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from api_server import jsonapi, serializers
from api_server.auth import Principal, authenticate
from api_server.permissions import Permission, require
from api_server.schemas import DATASOURCE_READ_ONLY, DatasourceCreate, DatasourceUpdate
from api_server.services import datasources, executions
from shared.datapaths import remove_own_place
from shared.db.models import Datasource
from shared.errors import Unprocessable
from shared.lifecycle import ExecutionType
from shared.results import delete_stored_data

_FIELDS = {"datasources": serializers.DATASOURCE_FIELDS}


def _query(request: Request, collection: bool) -> jsonapi.CollectionQuery:
    return jsonapi.parse_collection_query(
        request,
        sortable=datasources.SORTABLE,
        filterable=datasources.FILTERABLE,
        fields_by_type=_FIELDS,
        includable=("agents",),
        collection=collection,
    )


def _document(
    request: Request, ds: Datasource, principal: Principal, status_code: int = 200
) -> Response:
    resource = serializers.datasource(ds)
    query = _query(request, collection=False)
    document: dict[str, Any] = {"data": jsonapi.apply_sparse_fields(resource, query)}
    if "agents" in query.include:
        document["included"] = []
    headers = {"Location": resource["links"]["self"]} if status_code == 201 else None
    return jsonapi.response(document, status_code, headers)


def _read(request: Request, datasource_id: str | None = None) -> jsonapi.ResourceInput:
    document = jsonapi.read_json_body(request)
    resource = jsonapi.parse_resource_document(
        document, "datasources", datasource_id, settable_relationships=("agents",)
    )
    agents = resource.relationships.get("agents")
    if agents not in (None, {"data": []}):
        raise Unprocessable(
            "Datasource agents are not available yet.", pointer="/data/relationships/agents"
        )
    return resource


@jsonapi.endpoint()
def list_datasources(request: Request) -> Response:
    principal = authenticate(request)
    require(principal, Permission.VIEW_DATASOURCES)
    query = _query(request, collection=True)
    with request.app.state.sessions() as session:
        rows, total = datasources.list_datasources(session, principal, query)
        data = [jsonapi.apply_sparse_fields(serializers.datasource(ds), query) for ds in rows]
    document = {
        "data": data,
        "links": jsonapi.pagination_links(request, query, total),
        "meta": {"total": total, "page": {"number": query.page_number, "size": query.page_size}},
    }
    if "agents" in query.include:
        document["included"] = []
    return jsonapi.response(document)


@jsonapi.endpoint()
def show_datasource(request: Request) -> Response:
    principal = authenticate(request)
    require(principal, Permission.VIEW_DATASOURCES)
    with request.app.state.sessions() as session:
        ds = datasources.get_datasource(session, principal, request.path_params["id"])
        return _document(request, ds, principal)


@jsonapi.endpoint()
def create_datasource(request: Request) -> Response:
    principal = authenticate(request)
    require(principal, Permission.MANAGE_DATASOURCES)
    resource = _read(request)
    data = jsonapi.validate_attributes(DatasourceCreate, resource.attributes, DATASOURCE_READ_ONLY)
    state = request.app.state
    with state.sessions.begin() as session:
        ds = datasources.create_datasource(session, principal, data, state.settings, state.secrets)
        # Record the schema right away, so GET .../schema works without a refresh (a tunnelled
        # datasource cannot run yet: its refresh would be refused).
        if ds.enabled and not ds.ssh_tunnel_host:
            executions.create_system_execution(session, ds, ExecutionType.DATASOURCE_REFRESH)
        return _document(request, ds, principal, status_code=201)


@jsonapi.endpoint()
def update_datasource(request: Request) -> Response:
    principal = authenticate(request)
    require(principal, Permission.MANAGE_DATASOURCES)
    datasource_id = request.path_params["id"]
    resource = _read(request, datasource_id)
    data = jsonapi.validate_attributes(DatasourceUpdate, resource.attributes, DATASOURCE_READ_ONLY)
    state = request.app.state
    with state.sessions.begin() as session:
        ds = datasources.update_datasource(
            session, principal, datasource_id, data, state.settings, state.secrets
        )
        return _document(request, ds, principal)


@jsonapi.endpoint()
def delete_datasource(request: Request) -> Response:
    principal = authenticate(request)
    require(principal, Permission.MANAGE_DATASOURCES)
    state = request.app.state
    with state.sessions.begin() as session:
        deleted = datasources.delete_datasource(session, principal, request.path_params["id"])
    delete_stored_data(state.result_store, results=deleted.results, schemas=deleted.schemas)
    if deleted.own_place is not None:
        remove_own_place(state.settings.data_root, deleted.organization_id, deleted.own_place)
    return Response(status_code=204)
