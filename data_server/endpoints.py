"""``GET``/``HEAD /data/{data_key}``: authorise, negotiate, open, then send — nothing fails after
byte one.

A whole result is served from its materialised representation (data_server/representations.py)
with a length, an ETag and ranges (data_server/ranges.py). A row window (``offset``/``limit``) is
encoded on the fly and streamed, without ranges or content coding (docs/result-formats.md).

The operation is declared here, once (``OPERATIONS``): the route and the OpenAPI document derive
from it (``shared.web.operations``)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from data_server import encoders, formats, ranges, representations
from data_server.auth import authorize_data_request
from data_server.growing_files import GrowingReader
from shared import openapi as oa
from shared.errors import Forbidden, NotAcceptable, NotFound
from shared.results import ResultGone, result_object_key, schema_object_key
from shared.storage_quota import charge_representation
from shared.tokens import URL_TOKEN_PARAMETER, DataGrant, Scope
from shared.web import operations as web
from shared.web.request_headers import list_value

_RESULT_PARAMETERS = {"format", "offset", "limit", "compression", URL_TOKEN_PARAMETER}
_SCHEMA_PARAMETERS = {"name", "format", URL_TOKEN_PARAMETER}
# Every answer depends on these request headers (besides the token).
_VARY = "Accept, Accept-Encoding"


@dataclass(frozen=True, eq=False)
class DataOperation(web.Operation):
    """An operation on one data key (``{data_key}``): admitted by a data token for that key, in
    the header or the URL, with one 401 for every bad token before any storage is read."""

    security: tuple[str, ...] = ("DataToken", "DataTokenInUrl")

    async def admit(self, request: Request) -> tuple[DataGrant]:
        return (await authorize_data_request(request, request.path_params["data_key"]),)

    def documented_errors(self) -> dict[int, str | None]:
        return {401: None, **self.errors}


OPERATIONS = web.Operations(
    "Data",
    "Results of executions and recorded datasource schemas, for a data access token.",
    DataOperation,
)

# shared.tokens.new_data_key: a scope prefix, then 160 random bits as URL-safe base64.
DATA_KEY_PATTERN = r"^[rs]_[A-Za-z0-9_-]{27}$"
_REPRESENTATION_HEADERS = {
    "ETag": "Strong; the same for the same data, format, options and content coding, whatever "
    "the grant.",
    "Accept-Ranges": "`bytes` for a whole result; `none` for a row window.",
    "Content-Length": "The length of the body (absent for a row window, and for the first "
    "HTTP/1.1 request for a representation: both are sent as they are encoded).",
    "Content-Encoding": "gzip, zstd or br when negotiated (text formats only).",
}


def _result_content() -> dict[str, Any]:
    """One entry per media type: JSON carries the default document, the records form or a schema
    grant's document; every other format is bytes (``format: binary``) for generated clients."""
    media: dict[str, Any] = {}
    for fmt in formats.ResultFormat:
        if fmt is formats.ResultFormat.RECORDS:
            continue  # shares application/json with the default document
        if fmt is formats.ResultFormat.JSON:
            schema: oa.Schema = {
                "oneOf": [
                    oa.ref("ResultDocument"),
                    oa.ref("ResultRecords"),
                    oa.ref("SchemaDocument"),
                ]
            }
        else:
            schema = oa.string(
                f"{fmt.name_in_query}: bytes.", format="binary", contentMediaType=fmt.media_type
            )
        media[fmt.content_type] = {"schema": schema}
    return media


def _partial_content() -> dict[str, Any]:
    media = {
        content_type: {"schema": oa.string("The requested bytes.", format="binary")}
        for content_type in _result_content()
    }
    media["multipart/byteranges"] = {
        "schema": oa.string("One part per range (several ranges).", format="binary")
    }
    return media


def _row_count(name: str, description: str) -> dict[str, Any]:
    return oa.query_parameter(
        name, f"{description} Results only.", oa.integer(minimum=0, maximum=formats.MAX_ROW_WINDOW)
    )


def _parameters() -> tuple[dict[str, Any], ...]:
    """Each query parameter ``fetch_data`` reads (the token's is its security scheme's) and each
    request header it honours."""
    names = [fmt.name_in_query for fmt in formats.ResultFormat]
    listed = ", ".join(f"`{name}`" for name in names)
    codings = [c.value for c in representations.ContentCoding if c.value != "identity"]
    return (
        oa.query_parameter(
            "format",
            f"The format ({listed}); wins over `Accept`. Schemas are `json` only.",
            oa.enum(names),
        ),
        _row_count("offset", "Skip this many rows of the stored result."),
        _row_count("limit", "Answer at most this many rows."),
        oa.query_parameter(
            "name",
            "Schemas only: narrow the document to the schema of this name; a grant asked for "
            "one schema is narrowed to it already, and answers 403 for another.",
        ),
        oa.query_parameter(
            "compression",
            "Arrow IPC buffer compression (`arrow` only). Text formats are compressed by "
            "`Accept-Encoding`; Parquet always is (zstd).",
            oa.enum(c.value for c in formats.ArrowCompression),
        ),
        oa.parameter(
            "Range",
            "header",
            oa.string(),
            "`bytes=first-last`, `bytes=first-` or `bytes=-suffix`, several separated by commas "
            "(a whole result only; a compressed one answers several ranges with the whole body).",
        ),
        oa.parameter("If-Range", "header", oa.string(), "An ETag: ranges only if it matches."),
        oa.parameter("If-None-Match", "header", oa.string(), "ETags: 304 if one matches."),
        oa.parameter(
            "Accept-Encoding", "header", oa.string(), f"Text formats: {', '.join(codings)}."
        ),
    )


def _responses() -> dict[str, Any]:
    headers = {
        name: {"description": text, "schema": oa.string()}
        for name, text in _REPRESENTATION_HEADERS.items()
    }
    return {
        "200": {
            "description": "The data. Formats other than JSON carry `Content-Disposition: "
            'inline; filename="<data key>.<extension>"`; all carry `Cache-Control: private, '
            "no-store` and `Vary: Accept, Accept-Encoding`.",
            "headers": headers,
            "content": _result_content(),
        },
        "206": {
            "description": "The requested range (`Content-Range`), or several as "
            "`multipart/byteranges`.",
            "headers": {
                **headers,
                "Content-Range": {"description": "`bytes first-last/size`.", "schema": oa.string()},
            },
            "content": _partial_content(),
        },
        "304": {
            "description": "`If-None-Match` named the current ETag: no body.",
            "headers": {"ETag": headers["ETag"]},
        },
    }


@OPERATIONS.get(
    "/data/{data_key}",
    operation_id="fetchData",
    summary="Fetch data",
    description="A stored execution result in the format asked for (`?format=`, else `Accept`, "
    "else JSON), rows selected with `offset`/`limit` without re-running anything; or, for a "
    "schema grant's data key, the datasource's schema JSON.",
    path_parameters=(
        oa.path_parameter(
            "data_key",
            "As returned with the token; its prefix says whether it names a result (`r_`) or a "
            "schema (`s_`).",
            oa.string(pattern=DATA_KEY_PATTERN),
        ),
    ),
    parameters=_parameters(),
    responses=_responses(),
    errors={
        400: "An unknown query parameter (`name` on a result, `offset`/`limit` on a schema), an "
        "unknown `format` or `compression`, or a malformed `offset`/`limit` "
        "(`invalid_query_parameter`).",
        401: "The token is missing, forged, of another region or for another data key "
        "(`invalid_data_token`): always the same answer; a genuine token past its expiry gets "
        "`token_expired`.",
        403: "A grant of one schema asked for another `name` (`schema_not_granted`).",
        404: "The result expired or was deleted (`result_gone`), or the schema has no such `name` "
        "(`schema_not_found`).",
        406: "`Accept` admits none of the formats (a schema: not JSON).",
        412: "`If-Match` names no current representation (`precondition_failed`).",
        416: "No range starts within the representation (`range_not_satisfiable`).",
    },
)
async def fetch_data(request: Request, grant: DataGrant) -> Response:
    data_key = request.path_params["data_key"]
    if grant.scope is Scope.DATASOURCE_SCHEMA:
        return await _schema_response(request, grant)
    web.reject_undeclared_query(request, _RESULT_PARAMETERS)
    params = request.query_params
    fmt = formats.negotiate(list_value(request, "accept"), params.get("format"))
    compression = formats.parse_compression(params.get("compression"), fmt)
    offset, limit = formats.parse_row_window(params.get("offset"), params.get("limit"))
    headers = {"Cache-Control": "private, no-store", "Vary": _VARY}
    if fmt not in (formats.ResultFormat.JSON, formats.ResultFormat.RECORDS):
        headers["Content-Disposition"] = f'inline; filename="{data_key}.{fmt.extension}"'
    state = request.app.state
    store = state.result_store
    if "offset" in params or "limit" in params:
        headers["Accept-Ranges"] = "none"
        answered = await _preconditions(request, store, result_object_key(data_key), None, headers)
        return answered or await _window_response(
            store,
            data_key,
            fmt,
            compression,
            offset,
            limit,
            headers,
            state.encoding_threads.slices,
            head=request.method == "HEAD",
        )
    coding = representations.negotiate_coding(list_value(request, "accept-encoding"), fmt)
    representation = representations.Representation(fmt, compression, coding)
    etag = representation.etag(data_key)
    if coding is not representations.ContentCoding.IDENTITY:
        headers["Content-Encoding"] = coding.value
    answered = await _preconditions(request, store, result_object_key(data_key), etag, headers)
    if answered is not None:
        return answered

    def charge(size: int) -> bool:
        return charge_representation(
            state.sessions,
            state.settings,
            grant.organization_id,
            data_key,
            representation.variant,
            size,
        )

    source = await run_in_threadpool(
        representations.open_representation,
        store,
        data_key,
        representation,
        grant.organization_id,
        charge,
        state.encoding_threads,
        state.warm_files,
    )
    if isinstance(source, GrowingReader):
        if _can_follow(request) and not source.whole:
            return await _follow_encoding(source, etag, fmt, headers)
        source = await source.complete()  # a length, ranges or HEAD need every byte
    return ranges.object_response(
        request, source, etag=etag, media_type=fmt.content_type, headers=headers
    )


async def _preconditions(
    request: Request, store: Any, object_key: str, etag: str | None, headers: dict[str, str]
) -> Response | None:
    """A 304 (or a 412 raised) before anything is encoded: the ETag names the bytes. A result
    (or schema) that is gone is a 404 all the same."""
    answered = ranges.preconditions(request, etag, headers)
    if answered is not None and await run_in_threadpool(store.size, object_key) is None:
        raise ResultGone("This result is no longer available.")
    return answered


def _can_follow(request: Request) -> bool:
    """Whether this request may get the encoding as it grows, without a length: a whole GET over
    HTTP/1.1, whose chunked body tells a client that a cut-short transfer is incomplete. An
    HTTP/1.0 body without a length ends where the connection closes, so a cut one would look
    whole: such a client waits for the end and gets the length."""
    return (
        request.method == "GET"
        and "range" not in request.headers
        and request.scope.get("http_version") != "1.0"
    )


async def _follow_encoding(
    source: GrowingReader, etag: str, fmt: formats.ResultFormat, headers: dict[str, str]
) -> Response:
    """The first fetch of a representation, sent as it is encoded: no length yet (later
    fetches have one), the same bytes and ETag. An error before the first byte is answered as
    one; a later one cuts the body short, which a client sees as an incomplete transfer."""
    await source.started()
    return StreamingResponse(
        source.chunks(),
        media_type=fmt.content_type,
        headers={**headers, "ETag": etag, "Accept-Ranges": "bytes"},
    )


async def _window_response(
    store: Any,
    data_key: str,
    fmt: formats.ResultFormat,
    compression: formats.ArrowCompression,
    offset: int,
    limit: int | None,
    headers: dict[str, str],
    pool: Executor | None,
    *,
    head: bool,
) -> Response:
    """A row window, encoded as it is sent: no length, no ranges. A HEAD encodes nothing: it
    has no body to send, and the window's length is unknown until one is encoded."""
    source = await run_in_threadpool(store.open, result_object_key(data_key))
    if head:
        source.close()
        return StreamingResponse(iter(()), media_type=fmt.content_type, headers=headers)
    chunks = encoders.encode_result(source, fmt, offset, limit, compression, pool=pool)
    first = await run_in_threadpool(
        next, chunks, b""
    )  # errors surface here, before any byte is sent
    return StreamingResponse(
        _chained(first, chunks, source), media_type=fmt.content_type, headers=headers
    )


def _chained(
    first: bytes | memoryview, rest: Iterator[bytes | memoryview], source: Any
) -> Iterator[bytes | memoryview]:
    try:
        if first:
            yield first
        yield from rest
    finally:
        source.close()


async def _schema_response(request: Request, grant: DataGrant) -> Response:
    """The schema JSON of a refresh; ``?name=``, or else the grant's schema, narrows it to one
    schema."""
    data_key = grant.data_key
    web.reject_undeclared_query(request, _SCHEMA_PARAMETERS)
    wanted = request.query_params.get("format")  # read as for results: 400 when unknown
    if wanted is not None:
        acceptable = formats.negotiate(None, wanted) is formats.ResultFormat.JSON
    else:
        acceptable = formats.accepts_json(list_value(request, "accept"))
    if not acceptable:
        raise NotAcceptable("Schemas are served as application/json only.")
    # No ETag (a schema is small and never cached): If-Match answers 412, If-None-Match: * 304.
    headers = {"Cache-Control": "private, no-store", "Vary": "Accept"}
    store = request.app.state.result_store
    answered = await _preconditions(request, store, schema_object_key(data_key), None, headers)
    if answered is not None:
        return answered
    raw = await run_in_threadpool(store.read_bytes, schema_object_key(data_key))
    document = orjson.loads(raw)
    name = request.query_params.get("name", grant.schema_name)
    if grant.schema_name is not None and name != grant.schema_name:
        raise Forbidden(
            f"This token grants the schema {grant.schema_name!r} only.", code="schema_not_granted"
        )
    if name is not None:
        matching = [schema for schema in document.get("schemas", []) if schema.get("name") == name]
        if not matching:
            raise NotFound(f"No schema named {name!r} in this datasource.", code="schema_not_found")
        document = matching[0]
    return Response(orjson.dumps(document), media_type="application/json", headers=headers)
