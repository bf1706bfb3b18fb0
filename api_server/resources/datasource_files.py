"""Files of a datasource (``/datasources/{id}/files``): list, get, upload, delete; and the database
file of a duckdb or sqlite datasource (``/datasources/{id}/database_file``).

An upload's body is not a JSON:API document: it is the file itself (``Body.STREAM``), streamed to
disk (``upload_body``) only after the caller, its permission, the datasource, the name, the media
type and the declared length have all been accepted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import quote

import anyio
from pydantic import Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from api_server import jsonapi
from api_server.principals import Principal
from api_server.resource_layer import documentation as doc
from api_server.resource_layer.operations import Body, Operations
from api_server.resource_layer.resource_types import READ_ONLY, Attributes, ResourceType
from api_server.resource_layer.responses import one, page
from api_server.resources.datasources import DATASOURCES, MANAGE, VIEW
from api_server.services import datasource_files, uploads
from api_server.services.uploads import Committed, Upload, UploadTarget
from api_server.upload_body import declared_length, receive_into
from shared import openapi as oa
from shared.errors import BadRequest, PreconditionFailed
from shared.file_formats import (
    DATABASE_FILE_FORMATS,
    VIEW_FILE_SUFFIXES,
    FileFormat,
    FileKind,
    accepted_media_types,
)
from shared.storage_quota import StorageUsage
from shared.web.http_limits import BODY_TIMEOUT_SECONDS
from shared.web.request_headers import names_any, refuse_content_coding, sole_value


class DatasourceFileAttributes(Attributes):
    name: Annotated[
        str,
        READ_ONLY,
        Field(description="The file's name, which is also its id; its stem names the view."),
    ]
    format: Annotated[FileFormat, READ_ONLY]
    size: Annotated[int, READ_ONLY, Field(description="Bytes.")]
    modified_at: Annotated[datetime, READ_ONLY]


DATASOURCE_FILES = ResourceType(
    type="datasource_files",
    schema_name="DatasourceFile",
    noun="file",
    attributes=DatasourceFileAttributes,
    path=None,
    sortable=("name", "size", "modified_at"),
    id_schema=oa.string(),
    id_attribute="name",  # unique within the datasource
    self_links_given=True,
    collection_meta=oa.obj(
        {
            "total": oa.integer("Files in the whole collection."),
            "page": oa.obj({"number": oa.integer(), "size": oa.integer()}),
            "storage": oa.ref("StorageUsage"),
        },
        ["total", "page", "storage"],
        closed=False,
    ),
)

SCHEMAS = {
    "StorageUsage": oa.obj(
        {
            "used_bytes": oa.integer("Files and stored results together."),
            "quota_bytes": oa.integer("`DATAFERRY_MAX_ORGANIZATION_STORAGE_MB`, in bytes."),
            "files_bytes": oa.integer("Every file in the organisation's area."),
            "results_bytes": oa.integer("Stored results of its executions not yet purged."),
        },
        ["used_bytes", "quota_bytes", "files_bytes", "results_bytes"],
        "The organisation's storage against its quota.",
    ),
    "FileChangeMeta": oa.obj(
        {
            "refresh_execution_id": oa.nullable(
                oa.string(
                    "The `datasource_refresh` execution queued so that the schema follows the "
                    "change; null when the datasource is disabled.",
                    format="uuid",
                )
            ),
            "storage": oa.ref("StorageUsage"),
        },
        ["refresh_execution_id", "storage"],
    ),
    "DatasourceFileChangeDocument": oa.obj(
        {"data": oa.ref("DatasourceFile"), "meta": oa.ref("FileChangeMeta")},
        ["data"],
        closed=False,
    ),
    "FileDeletedDocument": oa.obj({"meta": oa.ref("FileChangeMeta")}, ["meta"], closed=False),
}

OPERATIONS = Operations(
    "Datasource files",
    "The files of a datasource in its organisation's area: upload, list, delete (resource "
    "`datasource_files`).",
    [DATASOURCE_FILES],
    schemas=SCHEMAS,
)

FILE_PATH = "/datasources/{id}/files/{name:path}"  # a name with "/" is the endpoint's to refuse
NAME = oa.path_parameter(
    "name",
    "The file's name, percent-encoded: one path segment with a suffix the views read "
    f"({doc.codes(VIEW_FILE_SUFFIXES)}), at most {datasource_files.MAX_NAME_BYTES} bytes, not "
    "starting with a dot or a space; the characters datasource paths allow (no slash and no "
    "control character, encoded or not: 400 before any route).",
    oa.string(minLength=1, pattern="^[^\\x00-\\x1f\\x7f/]+$"),
)
_QUOTA = (
    "The organisation's storage (files in its area plus stored results) is counted against "
    "`DATAFERRY_MAX_ORGANIZATION_STORAGE_MB`; the usage comes back in `meta.storage`."
)
_REFRESH = (
    "Then a refresh of the datasource is queued (`meta.refresh_execution_id`) so that its schema "
    "follows."
)
_WRONG_TYPE = "`wrong_database_type`: the datasource is not of a type that has these files"
_NO_FILE = "No such datasource, or no such file (`file_not_found`)."
_SHARED_BEYOND_SCOPE = (
    "The key lacks the permission, or is restricted to listed datasources and a datasource "
    "beyond them reads this one's files too (`datasource_scope_restricted`); nothing changed."
)
_BAD_NAME = (
    "`invalid_file_name` or `unsupported_file_type` (`source.parameter` is `name`); "
    "`file_not_parsable`: the body does not read as its format; nothing written."
)
_UPLOAD_ERRORS: dict[int, str | None] = {
    400: "A query parameter other than `fields[datasource_files]` was sent, or the client closed "
    "the connection mid-upload (`client_disconnected`).",
    403: _SHARED_BEYOND_SCOPE,
    404: "No such datasource (or outside the key's datasources).",
    408: f"No data arrived for {BODY_TIMEOUT_SECONDS:.0f} s; nothing written.",
    409: f"{_WRONG_TYPE}; `datasource_read_only` (an operator's shared folder); `file_name_taken` "
    "(another file gives the same view name, or a folder has this name); "
    "`datasource_unavailable` (its path no longer resolves); `datasource_changed` (its "
    "`database` changed while the body arrived; nothing stored).",
    413: "Past `DATAFERRY_MAX_UPLOAD_MB` (`upload_too_large`) or the organisation's storage quota "
    "(`storage_quota_exceeded`), decided from `Content-Length` before the body is read and again "
    "as it arrives; nothing written, the connection closes.",
    415: "`Content-Type` is neither `application/octet-stream` nor the format's own.",
    422: _BAD_NAME,
    503: "The server could not store the file (`storage_unavailable`); nothing written.",
}


def file_link(datasource_id: str, name: str) -> str:
    return f"/datasources/{datasource_id}/files/{quote(name, safe='')}"


def database_file_link(datasource_id: str) -> str:
    return f"/datasources/{datasource_id}/database_file"


def _upload_body(kinds: Iterable[FileKind], what: str) -> dict[str, Any]:
    media_types = sorted({media for kind in kinds for media in accepted_media_types(kind)})
    binary = {"type": "string", "format": "binary"}
    return {
        "required": True,
        "description": what,
        "content": {media: {"schema": binary} for media in media_types},
    }


def _upload_answers(created: str) -> dict[str, Any]:
    return {
        "200": doc.jsonapi_response("Replaced.", "DatasourceFileChangeDocument"),
        "201": doc.jsonapi_response(created, "DatasourceFileChangeDocument", doc.CREATED_HEADERS),
    }


def _change_meta(refresh_execution_id: str | None, usage: StorageUsage) -> dict[str, Any]:
    """``refresh_execution_id``: the queued refresh that records the new schema (null when the
    datasource is disabled); ``storage``: the organisation's usage against its quota."""
    return {"refresh_execution_id": refresh_execution_id, "storage": usage.as_meta()}


# ---------------------------------------------------------------- files of a files datasource


@OPERATIONS.get(
    "/datasources/{id}/files",
    operation_id="listDatasourceFiles",
    summary="List a files datasource's files",
    description="The files whose views the datasource makes (temporary files of uploads under way "
    f"are not listed), paged, sortable by name, size and modified_at. {_QUOTA}",
    permissions=VIEW,
    subject=DATASOURCES,
    parameters=tuple(doc.collection_parameters(DATASOURCE_FILES)),
    responses={"200": doc.jsonapi_response("A page of files.", "DatasourceFileCollection")},
    errors={400: doc.BAD_QUERY, 404: None, 409: f"{_WRONG_TYPE}."},
)
def list_datasource_files(request: Request, principal: Principal) -> Response:
    query = DATASOURCE_FILES.query(request, collection=True)
    datasource_id = request.path_params["id"]
    state = request.app.state
    with state.sessions() as session:
        entries, total, usage = datasource_files.list_files(
            session, principal, state.settings, datasource_id, query
        )
    return page(
        DATASOURCE_FILES,
        request,
        query,
        entries,
        total,
        self_link=lambda entry: file_link(datasource_id, entry.name),
        meta={"storage": usage.as_meta()},
    )


@OPERATIONS.get(
    FILE_PATH,
    operation_id="showDatasourceFile",
    summary="Get a file's metadata",
    description="Its name, format, size and modification time (not its content).",
    permissions=VIEW,
    subject=DATASOURCES,
    path_parameters=(NAME,),
    parameters=tuple(doc.one_parameters(DATASOURCE_FILES)),
    responses={"200": doc.jsonapi_response("The file.", "DatasourceFileDocument")},
    errors={400: doc.BAD_QUERY, 404: _NO_FILE, 409: f"{_WRONG_TYPE}.", 422: None},
)
def show_datasource_file(request: Request, principal: Principal) -> Response:
    query = DATASOURCE_FILES.query(request, collection=False)
    datasource_id, name = request.path_params["id"], request.path_params["name"]
    state = request.app.state
    with state.sessions() as session:
        entry = datasource_files.get_file(session, principal, state.settings, datasource_id, name)
    return one(DATASOURCE_FILES, query, entry, self_link=file_link(datasource_id, name))


@OPERATIONS.put(
    FILE_PATH,
    operation_id="uploadDatasourceFile",
    summary="Upload a file",
    description="The body is the file itself, streamed to disk beside its target: it replaces a "
    "file of that name whole (200) or creates it (201), only after it was checked to read as its "
    "format (Parquet footer; CSV, TSV and JSON sniffed on their first rows), and never partly: a "
    "refused, failed or interrupted upload writes nothing. Two files may not share a view name "
    f"(their stem, case-insensitively). {_QUOTA} {_REFRESH}",
    permissions=MANAGE,
    audit="datasource_file.upload",
    subject=DATASOURCES,
    path_parameters=(NAME,),
    parameters=tuple(doc.one_parameters(DATASOURCE_FILES)),
    body=Body.STREAM,
    request_body=_upload_body(VIEW_FILE_SUFFIXES.values(), "The file's bytes."),
    responses=_upload_answers("Created."),
    errors=_UPLOAD_ERRORS,
)
async def upload_datasource_file(request: Request, principal: Principal) -> Response:
    """PUT the file's bytes as the body: created (201) or replaced (200) whole, or not at all."""
    query = DATASOURCE_FILES.query(request, collection=False)
    name = request.path_params["name"]
    target = await run_in_threadpool(_prepare, request, principal, name)
    return await _receive(request, query, target, file_link(target.datasource_id, target.name))


@OPERATIONS.delete(
    FILE_PATH,
    operation_id="deleteDatasourceFile",
    summary="Delete a file",
    description=f"Its view goes with the next refresh. {_REFRESH}",
    permissions=MANAGE,
    audit="datasource_file.delete",
    subject=DATASOURCES,
    path_parameters=(NAME,),
    responses={"200": doc.jsonapi_response("Deleted.", "FileDeletedDocument")},
    errors={
        400: doc.BAD_QUERY,
        403: _SHARED_BEYOND_SCOPE,
        404: _NO_FILE,
        409: f"{_WRONG_TYPE}; `datasource_read_only`.",
        422: _BAD_NAME,
    },
)
def delete_datasource_file(request: Request, principal: Principal) -> Response:
    DATASOURCE_FILES.query(request, collection=False)
    state = request.app.state
    deleted = datasource_files.delete_file(
        state.sessions,
        principal,
        state.settings,
        request.path_params["id"],
        request.path_params["name"],
    )
    return jsonapi.response({"meta": _change_meta(deleted.refresh_execution_id, deleted.usage)})


# ---------------------------------------------------------------- the database file


@OPERATIONS.get(
    "/datasources/{id}/database_file",
    operation_id="showDatabaseFile",
    summary="Get a database file's metadata",
    description="The DuckDB or SQLite file a `duckdb` or `sqlite` datasource attaches.",
    permissions=VIEW,
    subject=DATASOURCES,
    parameters=tuple(doc.one_parameters(DATASOURCE_FILES)),
    responses={"200": doc.jsonapi_response("The file.", "DatasourceFileDocument")},
    errors={
        400: doc.BAD_QUERY,
        404: "No such datasource, or its file does not exist (`file_not_found`).",
        409: f"{_WRONG_TYPE}.",
    },
)
def show_database_file(request: Request, principal: Principal) -> Response:
    query = DATASOURCE_FILES.query(request, collection=False)
    datasource_id = request.path_params["id"]
    state = request.app.state
    with state.sessions() as session:
        entry = datasource_files.get_database_file(
            session, principal, state.settings, datasource_id
        )
    return one(DATASOURCE_FILES, query, entry, self_link=database_file_link(datasource_id))


@OPERATIONS.put(
    "/datasources/{id}/database_file",
    operation_id="uploadDatabaseFile",
    summary="Upload a database file",
    description="The body is a DuckDB (`duckdb` datasource) or SQLite (`sqlite`) database file. It "
    "is checked by opening it read-only (DuckDB with external access off) and then replaces the "
    "datasource's file atomically: executions running meanwhile finish on the old one. "
    f"{_QUOTA} {_REFRESH}",
    permissions=MANAGE,
    audit="datasource.database_file.upload",
    subject=DATASOURCES,
    parameters=tuple(doc.one_parameters(DATASOURCE_FILES)),
    body=Body.STREAM,
    request_body=_upload_body(DATABASE_FILE_FORMATS.values(), "The database file's bytes."),
    responses=_upload_answers("Created (the datasource's file did not exist)."),
    errors={**_UPLOAD_ERRORS, 422: "`file_not_parsable`; nothing written."},
)
async def upload_database_file(request: Request, principal: Principal) -> Response:
    """PUT a duckdb or sqlite datasource's database file, replacing the attached one atomically."""
    query = DATASOURCE_FILES.query(request, collection=False)
    target = await run_in_threadpool(_prepare, request, principal, None)
    return await _receive(request, query, target, database_file_link(target.datasource_id))


# ---------------------------------------------------------------- uploads


def _prepare(request: Request, principal: Principal, name: str | None) -> UploadTarget:
    """Everything an upload can be refused for, decided before its body is read: a file of a
    files datasource (``name``), or a database file (None)."""
    state = request.app.state
    datasource_id = request.path_params["id"]
    if "content-range" in request.headers:
        raise BadRequest(  # RFC 9110 §14.4: an origin server must refuse a partial PUT
            "A PUT sends the whole file: Content-Range is not taken.", code="partial_put"
        )
    refuse_content_coding(request)
    content_type, length = sole_value(request, "Content-Type"), declared_length(request)
    with state.sessions() as session:
        if name is None:
            target = uploads.prepare_database_upload(
                session, principal, state.settings, datasource_id, content_type, length
            )
        else:
            target = uploads.prepare_file_upload(
                session, principal, state.settings, datasource_id, name, content_type, length
            )
    target = dataclasses.replace(target, must_exist=_existence_condition(request))
    target.check_condition((target.folder / target.name).exists())  # early; the commit decides
    return target


def _existence_condition(request: Request) -> bool | None:
    """An upload's ``If-Match: *`` (replace only) or ``If-None-Match: *`` (create only): the
    conditions a file without an ETag can answer (If-Match naming a tag: 412 at admission). The
    two at once hold for no file (RFC 9110 §13.2.2): 412, nothing written."""
    replace_only = names_any(request, "if-match")
    create_only = names_any(request, "if-none-match")
    if replace_only and create_only:
        raise PreconditionFailed(
            "If-Match: * (replace only) and If-None-Match: * (create only) hold for no file; "
            "send one of them."
        )
    return True if replace_only else False if create_only else None


async def _receive(
    request: Request, query: jsonapi.CollectionQuery, target: UploadTarget, link: str
) -> Response:
    """The body into a temporary file beside the target, checked, then committed whole."""
    state = request.app.state
    upload = await run_in_threadpool(Upload, target)
    state.open_uploads.add(upload)
    try:
        await receive_into(request, upload)
        committed: Committed = await run_in_threadpool(
            uploads.commit_upload, state.sessions, state.settings, upload
        )
    finally:
        with anyio.CancelScope(shield=True):  # even when the server stops: nothing left behind
            await anyio.to_thread.run_sync(upload.close)
            state.open_uploads.discard(upload)
    return one(
        DATASOURCE_FILES,
        query,
        committed.entry,
        status_code=201 if committed.created else 200,
        meta=_change_meta(committed.refresh_execution_id, committed.usage),
        self_link=link,
    )
