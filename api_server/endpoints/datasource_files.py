"""Files of a datasource: list, get, upload, delete; and the database file of a duckdb or sqlite
datasource. Parse → authorise → call the service → serialise.

An upload's body is not a JSON:API document: it is the file itself, streamed to disk
(``upload_body``) only after the caller, its permission, the datasource, the name, the media type
and the declared length have all been accepted.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from api_server import jsonapi, serializers
from api_server.auth import Principal, authenticate
from api_server.permissions import Permission, require
from api_server.services import datasource_files, uploads
from api_server.services.uploads import Committed, Upload, UploadTarget
from api_server.upload_body import declared_length, receive_into
from shared.storage_quota import StorageUsage

RESOURCE_TYPE = "datasource_files"
_FIELDS = {RESOURCE_TYPE: serializers.DATASOURCE_FILE_ATTRIBUTES}


def file_link(datasource_id: str, name: str) -> str:
    return f"/datasources/{datasource_id}/files/{quote(name, safe='')}"


def database_file_link(datasource_id: str) -> str:
    return f"/datasources/{datasource_id}/database_file"


def _query(request: Request, collection: bool = False) -> jsonapi.CollectionQuery:
    return jsonapi.parse_collection_query(
        request,
        sortable=datasource_files.SORTABLE,
        fields_by_type=_FIELDS,
        collection=collection,
    )


def _resource(request: Request, entry: datasource_files.FileEntry, link: str) -> dict[str, Any]:
    return jsonapi.apply_sparse_fields(serializers.datasource_file(entry, link), _query(request))


@jsonapi.endpoint()
def list_datasource_files(request: Request) -> Response:
    principal = authenticate(request)
    require(principal, Permission.VIEW_DATASOURCES)
    query = _query(request, collection=True)
    datasource_id = request.path_params["id"]
    state = request.app.state
    with state.sessions() as session:
        entries, total, usage = datasource_files.list_files(
            session, principal, state.settings, datasource_id, query
        )
    data = [
        jsonapi.apply_sparse_fields(
            serializers.datasource_file(entry, file_link(datasource_id, entry.name)), query
        )
        for entry in entries
    ]
    return jsonapi.response(
        {
            "data": data,
            "links": jsonapi.pagination_links(request, query, total),
            "meta": {
                "total": total,
                "page": {"number": query.page_number, "size": query.page_size},
                "storage": usage.as_meta(),
            },
        }
    )


@jsonapi.endpoint()
def show_datasource_file(request: Request) -> Response:
    principal = authenticate(request)
    require(principal, Permission.VIEW_DATASOURCES)
    _query(request)
    datasource_id, name = request.path_params["id"], request.path_params["name"]
    state = request.app.state
    with state.sessions() as session:
        entry = datasource_files.get_file(session, principal, state.settings, datasource_id, name)
    return jsonapi.response({"data": _resource(request, entry, file_link(datasource_id, name))})


@jsonapi.endpoint()
def show_database_file(request: Request) -> Response:
    principal = authenticate(request)
    require(principal, Permission.VIEW_DATASOURCES)
    _query(request)
    datasource_id = request.path_params["id"]
    state = request.app.state
    with state.sessions() as session:
        entry = datasource_files.get_database_file(
            session, principal, state.settings, datasource_id
        )
    link = database_file_link(datasource_id)
    return jsonapi.response({"data": _resource(request, entry, link)})


@jsonapi.streaming_endpoint()
async def upload_datasource_file(request: Request) -> Response:
    """PUT the file's bytes as the body: created (201) or replaced (200) whole, or not at all."""
    target = await run_in_threadpool(_prepare, request, request.path_params["name"])
    return await _receive(request, target, file_link(target.datasource_id, target.name))


@jsonapi.streaming_endpoint()
async def upload_database_file(request: Request) -> Response:
    """PUT a duckdb or sqlite datasource's database file, replacing the attached one atomically."""
    target = await run_in_threadpool(_prepare, request, None)
    return await _receive(request, target, database_file_link(target.datasource_id))


def _prepare(request: Request, name: str | None) -> UploadTarget:
    """Everything an upload can be refused for, decided before its body is read: a file of a
    files datasource (``name``), or a database file (None)."""
    principal = _manager(request)
    state = request.app.state
    datasource_id = request.path_params["id"]
    content_type, length = request.headers.get("content-type"), declared_length(request)
    with state.sessions() as session:
        if name is None:
            return uploads.prepare_database_upload(
                session, principal, state.settings, datasource_id, content_type, length
            )
        return uploads.prepare_file_upload(
            session, principal, state.settings, datasource_id, name, content_type, length
        )


@jsonapi.endpoint()
def delete_datasource_file(request: Request) -> Response:
    principal = _manager(request)
    state = request.app.state
    deleted = datasource_files.delete_file(
        state.sessions,
        principal,
        state.settings,
        request.path_params["id"],
        request.path_params["name"],
    )
    return jsonapi.response({"meta": _meta(deleted.refresh_execution_id, deleted.usage)})


def _manager(request: Request) -> Principal:
    """The caller, if it may change files (403 otherwise); no query parameter but fields."""
    principal = authenticate(request)
    require(principal, Permission.MANAGE_DATASOURCES)
    _query(request)
    return principal


async def _receive(request: Request, target: UploadTarget, link: str) -> Response:
    state = request.app.state
    upload = await run_in_threadpool(Upload, target)
    try:
        await receive_into(request, upload)
        committed: Committed = await run_in_threadpool(
            uploads.commit_upload, state.sessions, state.settings, upload
        )
    finally:
        with anyio.CancelScope(shield=True):  # even when the server stops: nothing left behind
            await anyio.to_thread.run_sync(upload.close)
    document = {
        "data": _resource(request, committed.entry, link),
        "meta": _meta(committed.refresh_execution_id, committed.usage),
    }
    if committed.created:
        return jsonapi.response(document, 201, {"Location": link})
    return jsonapi.response(document)


def _meta(refresh_execution_id: str | None, usage: StorageUsage) -> dict[str, Any]:
    """``refresh_execution_id``: the queued refresh that records the new schema (null when the
    datasource is disabled); ``storage``: the organisation's usage against its quota."""
    return {"refresh_execution_id": refresh_execution_id, "storage": usage.as_meta()}
