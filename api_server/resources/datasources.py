"""Datasources (``/datasources``): what queries run on. Cluvio's list, create, get, update, delete.

One attributes model says what a client may write and how it is checked, what only the server sets,
and what is never sent back (``password``). Which database types require or take each connection
attribute is declared once, in ``shared.database_types``; the notes here are computed from it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, Field, StringConstraints
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
    WRITE_ONLY,
    Attributes,
    Filter,
    Relationship,
    ResourceType,
)
from api_server.resource_layer.responses import one, page
from api_server.services import datasources, executions
from shared import object_storage
from shared import openapi as oa
from shared.database_types import CREATABLE_DATABASE_TYPES, DATABASE_TYPES
from shared.datapaths import PATH_ERRORS, remove_own_place
from shared.db.models import Datasource
from shared.errors import Unprocessable
from shared.lifecycle import ExecutionType
from shared.results import delete_stored_data
from shared.storage_quota import note_area_changed_now
from shared.time_zones import known_time_zones

BUILT_IN_DATABASE_TYPES = ("sample",)  # every organisation has one; none can be created
# What a datasource's database_type may read: the types that may be created, and the built-in.
SHOWN_DATABASE_TYPES = (*CREATABLE_DATABASE_TYPES, *BUILT_IN_DATABASE_TYPES)


def check_time_zone(value: str) -> str:
    if value not in known_time_zones():
        raise ValueError(f"unknown IANA time zone {value!r}")
    return value


def check_database_type(value: str) -> str:
    if value in BUILT_IN_DATABASE_TYPES:
        raise ValueError("the sample datasource is built in and cannot be created")
    if value not in CREATABLE_DATABASE_TYPES:
        supported = ", ".join(CREATABLE_DATABASE_TYPES)
        raise ValueError(f"database_type {value!r} is not supported; supported: {supported}")
    return value


def check_direct(value: str) -> str:
    if value != "direct":
        raise ValueError(
            "only connection_mode 'direct' is supported (agents are not available yet)"
        )
    return value


# ---------------------------------------------------------------- documentation of attributes

_CONNECTION_NOTES = {
    "port": "Defaults to the type's port (postgres 5432, mysql 3306; s3 443, or 80 when "
    "require_ssl is false).",
    "s3_region": "Not a Cluvio attribute: the region an s3 datasource's requests are signed "
    "for (null: us-east-1). AWS needs the bucket's region; S3-compatible servers their own.",
    "password": "Write-only: encrypted at rest and never returned.",
    "username": "An `s3` datasource's (its access key id) is null to keys without Manage "
    "Datasources.",
    "ssh_tunnel_host": "Stored; a datasource that sets it cannot run yet: its executions, "
    "Test Connection and Refresh answer 422 `ssh_tunnel_not_supported`.",
}


def connection_note(attribute: str) -> str:
    """Which types require or take ``attribute``, from their one declaration."""
    required = [f"`{k.name}`" for k in DATABASE_TYPES.values() if attribute in k.required]
    optional = [f"`{k.name}`" for k in DATABASE_TYPES.values() if attribute in k.optional]
    parts = (
        f"Required for {', '.join(required)}." if required else "",
        f"Taken by {', '.join(optional)}." if optional else "",
        "Any other type refuses it.",
        _CONNECTION_NOTES.get(attribute, ""),
    )
    return " ".join(part for part in parts if part)


PATH_ERROR_CODES = doc.codes(error.code for error in PATH_ERRORS)
_DATABASE_TYPE_NOTE = (
    " ".join(f"`{kind.name}`: {kind.description}" for kind in DATABASE_TYPES.values())
    + " The built-in `sample` cannot be created."
)
_DATABASE_NOTE = (
    "For file types: a path relative to the organisation's file area (`<data root>/<organisation "
    "id>/`), stored normalised; `shared/NAME/…` reaches a folder the operator granted. Absolute "
    "paths, `..`, backslashes, control characters, non-ASCII punctuation and symbols, names NFKC "
    f"would change and links leading out of the area are refused ({PATH_ERROR_CODES}). For "
    "`postgres` and `mysql`: the database's name."
)

ShortText = Annotated[str, StringConstraints(max_length=255)]
LongText = Annotated[str, StringConstraints(max_length=1024)]
Port = Annotated[int, Field(ge=1, le=65535)]
# A Cluvio attribute of a database type dataferry does not offer: accepted as null, never sent.
NotOffered = Annotated[
    None, WRITE_ONLY, Field(description="A Cluvio attribute of a type not offered: only null.")
]


class DatasourceAttributes(Attributes):
    name: DisplayName
    database_type: Annotated[
        str,
        AfterValidator(check_database_type),
        Field(
            description=_DATABASE_TYPE_NOTE,
            json_schema_extra={"enum": list(CREATABLE_DATABASE_TYPES)},
        ),
    ]
    connection_mode: Annotated[
        str, AfterValidator(check_direct), Field(json_schema_extra={"enum": ["direct"]})
    ] = "direct"
    host: Annotated[ShortText | None, Field(description=connection_note("host"))] = None
    port: Annotated[Port | None, Field(description=connection_note("port"))] = None
    username: Annotated[ShortText | None, Field(description=connection_note("username"))] = None
    password: Annotated[
        LongText | None, WRITE_ONLY, Field(description=connection_note("password"))
    ] = None
    database: Annotated[LongText | None, Field(description=_DATABASE_NOTE)] = None
    ssh_tunnel_host: Annotated[
        ShortText | None, Field(description=connection_note("ssh_tunnel_host"))
    ] = None
    ssh_tunnel_port: Annotated[
        Port | None, Field(description=connection_note("ssh_tunnel_port"))
    ] = None
    ssh_tunnel_user: Annotated[
        ShortText | None, Field(description=connection_note("ssh_tunnel_user"))
    ] = None
    s3_region: Annotated[
        Annotated[
            str, StringConstraints(max_length=64), AfterValidator(object_storage.check_region)
        ]
        | None,
        Field(description=connection_note("s3_region")),
    ] = None
    data_time_zone: Annotated[
        str, AfterValidator(check_time_zone), Field(description="An IANA time zone name.")
    ] = "UTC"
    require_ssl: bool = True
    verify_ssl: bool = False
    enabled: bool = True
    max_concurrent_executions: Annotated[int, Field(ge=1, le=100)] = 20
    update_schema_nightly: bool = False
    update_schema_row_counts: bool = False
    created_at: Annotated[datetime, READ_ONLY]
    updated_at: Annotated[datetime, READ_ONLY]
    schema_updated_at: Annotated[
        datetime | None,
        READ_ONLY,
        Field(description="When a refresh last recorded the schema; null: never yet."),
    ]
    default_schema_name: Annotated[
        str | None,
        READ_ONLY,
        Field(
            description="The schema unqualified table names resolve in, where it is fixed "
            "(the sample datasource's `main`); null otherwise."
        ),
    ]
    server_version: Annotated[
        str | None,
        READ_ONLY,
        Field(description="The database's version, as the last refresh read it."),
    ]
    total_row_count: Annotated[
        int | None, READ_ONLY, Field(description="Rows in all tables at the last refresh.")
    ]
    total_row_count_exact: Annotated[
        bool | None,
        READ_ONLY,
        Field(description="Whether `total_row_count` was counted, not estimated."),
    ]
    athena_region: NotOffered = None
    athena_workgroup: NotOffered = None
    databricks_http_path: NotOffered = None
    snowflake_identifier: NotOffered = None
    snowflake_region: NotOffered = None
    snowflake_warehouse: NotOffered = None
    bigquery_service_key: NotOffered = None


_NO_AGENTS = oa.obj(
    {
        "data": oa.array(
            oa.obj({"type": oa.const("agents"), "id": oa.string()}, ["type", "id"]), maxItems=0
        )
    },
    ["data"],
    "Datasource agents are not available yet: only an empty list is accepted.",
)

DATASOURCES = ResourceType(
    type="datasources",
    schema_name="Datasource",
    noun="datasource",
    attributes=DatasourceAttributes,
    path="/datasources",
    relationships={
        "agents": Relationship(
            "agents",
            linked=lambda ds: [],
            to_many=True,
            description="Always empty.",
            accepted=_NO_AGENTS,
        )
    },
    settable_relationships=("agents",),
    sortable=("name", "database_type", "created_at", "updated_at"),
    filters=(
        Filter("name"),
        Filter.one_of("database_type", SHOWN_DATABASE_TYPES),
    ),
    includable=("agents",),
    included_note="always empty (datasource agents are not available yet).",
    output_refinements={"database_type": {"enum": list(SHOWN_DATABASE_TYPES)}},
)

OPERATIONS = Operations(
    "Datasources",
    "JSON:API resource `datasources` and Cluvio's datasource actions.",
    [DATASOURCES],
)
VIEW, MANAGE = (Permission.VIEW_DATASOURCES,), (Permission.MANAGE_DATASOURCES,)
_INVALID = (
    "An attribute is unknown, read-only or invalid; for `database` of a file type: "
    f"{PATH_ERROR_CODES}; agents in `relationships` are not available yet."
)


def _read(request: Request, datasource_id: str | None = None) -> jsonapi.ResourceInput:
    """The request's document; ``agents`` may only be set to none (they are not available)."""
    resource = DATASOURCES.read(request, datasource_id)
    if resource.relationships.get("agents") not in (None, {"data": []}):
        raise Unprocessable(
            "Datasource agents are not available yet.", pointer="/data/relationships/agents"
        )
    return resource


class _WithoutCredentials:
    """A datasource as a key without Manage Datasources reads it: its type's credential
    attributes (an s3 datasource's access key id) are null, as Cluvio shows credentials only
    with that permission."""

    def __init__(self, row: Datasource, hidden: tuple[str, ...]) -> None:
        self._row = row
        self._hidden = hidden

    def __getattr__(self, name: str) -> Any:
        return None if name in self._hidden else getattr(self._row, name)


def _as_seen_by(principal: Principal, row: Datasource) -> Datasource | _WithoutCredentials:
    kind = DATABASE_TYPES.get(row.database_type)  # the built-in sample has no entry
    hidden = kind.credentials if kind is not None else ()
    if not hidden or Permission.MANAGE_DATASOURCES in principal.permissions:
        return row
    return _WithoutCredentials(row, hidden)


@OPERATIONS.get(
    "/datasources",
    operation_id="listDatasources",
    summary="List datasources",
    description="The datasources the key reaches, paged (every organisation starts with the "
    "built-in sample datasource).",
    permissions=VIEW,
    parameters=tuple(doc.collection_parameters(DATASOURCES)),
    responses={"200": doc.jsonapi_response("A page of datasources.", "DatasourceCollection")},
    errors={400: doc.BAD_QUERY},
)
def list_datasources(request: Request, principal: Principal) -> Response:
    query = DATASOURCES.query(request, collection=True)
    with request.app.state.sessions() as session:
        rows, total = datasources.list_datasources(session, principal, query)
        shown = [_as_seen_by(principal, row) for row in rows]
        return page(DATASOURCES, request, query, shown, total)


@OPERATIONS.post(
    "/datasources",
    operation_id="createDatasource",
    summary="Create a datasource",
    description="A DuckDB file or a folder of files inside the server's data root, or a remote "
    "database. An enabled datasource is refreshed (its schema recorded) right away.",
    permissions=MANAGE,
    audit="datasource.create",
    parameters=tuple(doc.one_parameters(DATASOURCES)),
    body=Body.BOUNDED,
    request_body=doc.request_body("DatasourceCreateDocument", "The new datasource."),
    responses={"201": doc.jsonapi_response("Created.", "DatasourceDocument", doc.CREATED_HEADERS)},
    errors={
        400: doc.BAD_DOCUMENT,
        403: "The key lacks the permission or is restricted to listed datasources "
        f"(`datasource_scope_restricted`). {doc.NO_CLIENT_IDS}",
        409: f"`datasource_limit_reached`; or {doc.WRONG_TYPE_OR_ID}",
        422: _INVALID,
    },
)
def create_datasource(request: Request, principal: Principal) -> Response:
    query = DATASOURCES.query(request, collection=False)
    data = DATASOURCES.validate(_read(request), update=False)
    state = request.app.state
    with state.sessions.begin() as session:
        ds = datasources.create_datasource(
            session, principal, data.model_dump(), state.settings, state.secrets
        )
        # Record the schema right away, so GET .../schema works without a refresh (a tunnelled
        # datasource cannot run yet: its refresh would be refused).
        if ds.enabled and not ds.ssh_tunnel_host:
            executions.create_system_execution(session, ds, ExecutionType.DATASOURCE_REFRESH)
        return one(DATASOURCES, query, ds, status_code=201)


@OPERATIONS.get(
    "/datasources/{id}",
    operation_id="showDatasource",
    summary="Get a datasource",
    description="`password` is write-only: no response holds it.",
    permissions=VIEW,
    subject=DATASOURCES,
    parameters=tuple(doc.one_parameters(DATASOURCES)),
    responses={"200": doc.jsonapi_response("The datasource.", "DatasourceDocument")},
    errors={400: doc.BAD_QUERY, 404: None},
)
def show_datasource(request: Request, principal: Principal) -> Response:
    query = DATASOURCES.query(request, collection=False)
    with request.app.state.sessions() as session:
        ds = datasources.get_datasource(session, principal, request.path_params["id"])
        return one(DATASOURCES, query, _as_seen_by(principal, ds))


@OPERATIONS.patch(
    "/datasources/{id}",
    operation_id="updateDatasource",
    summary="Update a datasource",
    description="Only the attributes sent change. The sample datasource allows only `name`, "
    "`enabled`, `data_time_zone` and `max_concurrent_executions`.",
    permissions=MANAGE,
    audit="datasource.update",
    subject=DATASOURCES,
    parameters=tuple(doc.one_parameters(DATASOURCES)),
    body=Body.BOUNDED,
    request_body=doc.request_body("DatasourceUpdateDocument", "The attributes to change."),
    responses={"200": doc.jsonapi_response("The datasource as it is now.", "DatasourceDocument")},
    errors={
        400: doc.BAD_DOCUMENT,
        404: None,
        409: f"`sample_datasource_fixed`; or {doc.WRONG_TYPE_OR_ID}",
        422: f"{_INVALID} A change of `database_type`, `host`, `port`, `database` or "
        "`username` (an `s3` datasource's `s3_region` too), or `require_ssl` or `verify_ssl` "
        "to false on a "
        "datasource with a stored password needs the password sent again, or null "
        "(`password_required`): it is never sent to a new destination.",
    },
)
def update_datasource(request: Request, principal: Principal) -> Response:
    datasource_id = request.path_params["id"]
    query = DATASOURCES.query(request, collection=False)
    stored = keeping_stored_name(
        request,
        lambda session: datasources.get_datasource(session, principal, datasource_id).name,
    )
    data = DATASOURCES.validate(_read(request, datasource_id), update=True, context=stored)
    state = request.app.state
    with state.sessions.begin() as session:
        ds = datasources.update_datasource(
            session, principal, datasource_id, data.changes(), state.settings, state.secrets
        )
        return one(DATASOURCES, query, ds)


@OPERATIONS.delete(
    "/datasources/{id}",
    operation_id="deleteDatasource",
    summary="Delete a datasource",
    description="Its executions, their stored results and its schema go with it: queued and "
    "running executions end without storing anything, and data tokens handed out before answer "
    "404 `result_gone` on the data server.",
    permissions=MANAGE,
    audit="datasource.delete",
    subject=DATASOURCES,
    responses=doc.DELETED,
    errors={404: None, 409: "Reports run on it (`datasource_in_use`): move or delete them first."},
)
def delete_datasource(request: Request, principal: Principal) -> Response:
    state = request.app.state
    with state.sessions.begin() as session:
        deleted = datasources.delete_datasource(
            session, state.settings, principal, request.path_params["id"]
        )
    delete_stored_data(state.result_store, results=deleted.results, schemas=deleted.schemas)
    for place in deleted.own_places:
        remove_own_place(state.settings.data_root, deleted.organization_id, place)
    if deleted.own_places:
        note_area_changed_now(state.sessions, deleted.organization_id)
    return Response(status_code=204)
