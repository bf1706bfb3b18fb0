"""``GET``/``HEAD /data/{data_key}``: authorise, negotiate, open, then send — nothing fails after
byte one.

A whole result is served from its materialised representation (data_server/representations.py)
with a length, an ETag and ranges (data_server/ranges.py). A row window (``offset``/``limit``) is
encoded on the fly and streamed, without ranges or content coding (docs/result-formats.md)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from data_server import formats, ranges, representations
from data_server.auth import authorize_data_request
from shared.errors import InvalidQueryParameter, NotAcceptable, NotFound
from shared.results import result_object_key, schema_object_key
from shared.tokens import URL_TOKEN_PARAMETER, Scope

_RESULT_PARAMETERS = {"format", "offset", "limit", "compression", URL_TOKEN_PARAMETER}
_SCHEMA_PARAMETERS = {"name", "format", URL_TOKEN_PARAMETER}
# Every answer depends on these request headers (besides the token).
_VARY = "Accept, Accept-Encoding"


def _reject_unknown_parameters(request: Request, allowed: set[str]) -> None:
    """Known parameters, each at most once: a second ``format`` or ``offset`` is a mistake the
    client should hear about, not a silent choice of the last one."""
    seen: set[str] = set()
    for name, _ in request.query_params.multi_items():
        if name not in allowed:
            raise InvalidQueryParameter(f"Unsupported query parameter '{name}'.", parameter=name)
        if name in seen:
            raise InvalidQueryParameter(f"'{name}' is given more than once.", parameter=name)
        seen.add(name)


async def fetch_data(request: Request) -> Response:
    data_key = request.path_params["data_key"]
    grant = await authorize_data_request(request, data_key)
    if grant.scope is Scope.DATASOURCE_SCHEMA:
        return await _schema_response(request, data_key)
    _reject_unknown_parameters(request, _RESULT_PARAMETERS)
    params = request.query_params
    fmt = formats.negotiate(request.headers.get("accept"), params.get("format"))
    compression = formats.parse_compression(params.get("compression"), fmt)
    offset, limit = formats.parse_row_window(params.get("offset"), params.get("limit"))
    headers = {"Cache-Control": "private, no-store", "Vary": _VARY}
    if fmt not in (formats.ResultFormat.JSON, formats.ResultFormat.RECORDS):
        headers["Content-Disposition"] = f'inline; filename="{data_key}.{fmt.extension}"'
    store = request.app.state.result_store
    if "offset" in params or "limit" in params:
        return await _window_response(store, data_key, fmt, compression, offset, limit, headers)
    coding = representations.negotiate_coding(request.headers.get("accept-encoding"), fmt)
    representation = representations.Representation(fmt, compression, coding)
    source = await run_in_threadpool(
        representations.open_representation, store, data_key, representation
    )
    if coding is not representations.ContentCoding.IDENTITY:
        headers["Content-Encoding"] = coding.value
    return ranges.object_response(
        request,
        source,
        etag=representation.etag(data_key),
        media_type=fmt.content_type,
        headers=headers,
    )


async def _window_response(
    store: Any,
    data_key: str,
    fmt: formats.ResultFormat,
    compression: formats.ArrowCompression,
    offset: int,
    limit: int | None,
    headers: dict[str, str],
) -> Response:
    """A row window, encoded as it is sent: no length, no ranges."""
    source = await run_in_threadpool(store.open, result_object_key(data_key))
    chunks = formats.encode_result(source, fmt, offset, limit, compression)
    first = await run_in_threadpool(
        next, chunks, b""
    )  # errors surface here, before any byte is sent
    return StreamingResponse(
        _chained(first, chunks, source),
        media_type=fmt.content_type,
        headers={**headers, "Accept-Ranges": "none"},
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
