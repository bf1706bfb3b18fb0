"""``GET /data/{data_key}``: authorise, negotiate, open, then stream — nothing fails after byte one."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from data_server import formats
from data_server.auth import authorize_data_request
from shared.errors import InvalidQueryParameter, NotAcceptable, NotFound
from shared.results import result_object_key, schema_object_key
from shared.tokens import Scope

_RESULT_PARAMETERS = {"format", "offset", "limit"}
_SCHEMA_PARAMETERS = {"name", "format"}


def _reject_unknown_parameters(request: Request, allowed: set[str]) -> None:
    for name in request.query_params:
        if name not in allowed:
            raise InvalidQueryParameter(f"Unsupported query parameter '{name}'.", parameter=name)


async def fetch_data(request: Request) -> Response:
    data_key = request.path_params["data_key"]
    grant = authorize_data_request(request, data_key)
    if grant.scope is Scope.DATASOURCE_SCHEMA:
        return await _schema_response(request, data_key)
    _reject_unknown_parameters(request, _RESULT_PARAMETERS)
    params = request.query_params
    fmt = formats.negotiate(request.headers.get("accept"), params.get("format"))
    offset, limit = formats.parse_row_window(params.get("offset"), params.get("limit"))
    store = request.app.state.result_store
    source = await run_in_threadpool(store.open, result_object_key(data_key))
    chunks = formats.encode_result(source, fmt, offset, limit)
    first = await run_in_threadpool(
        next, chunks, b""
    )  # errors surface here, before any byte is sent
    headers = {"Cache-Control": "private, no-store"}
    if fmt is not formats.ResultFormat.JSON:
        headers["Content-Disposition"] = f'inline; filename="{data_key}.{fmt.extension}"'
    return StreamingResponse(
        _chained(first, chunks, source), media_type=fmt.content_type, headers=headers
    )


def _chained(first: bytes, rest: Iterator[bytes], source: Any) -> Iterator[bytes]:
    try:
        if first:
            yield first
        yield from rest
    finally:
        source.close()


async def _schema_response(request: Request, data_key: str) -> Response:
    """The schema JSON of a refresh; ``?name=`` narrows it to one schema."""
    _reject_unknown_parameters(request, _SCHEMA_PARAMETERS)
    wanted = request.query_params.get("format")
    if wanted not in (None, "json") or not formats.accepts_json(request.headers.get("accept")):
        raise NotAcceptable("Schemas are served as application/json only.")
    raw = await run_in_threadpool(
        request.app.state.result_store.read_bytes, schema_object_key(data_key)
    )
    document = orjson.loads(raw)
    name = request.query_params.get("name")
    if name is not None:
        matching = [schema for schema in document.get("schemas", []) if schema.get("name") == name]
        if not matching:
            raise NotFound(f"No schema named {name!r} in this datasource.", code="schema_not_found")
        document = matching[0]
    return Response(
        orjson.dumps(document),
        media_type="application/json",
        headers={"Cache-Control": "private, no-store"},
    )
