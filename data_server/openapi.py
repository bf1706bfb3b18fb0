"""The data server's OpenAPI document: every route and method of ``data_server.routes``.

Formats, their media types and the accepted query parameters are read from the code that serves
them; tests/contract/test_openapi.py checks that every route is described and every description routed.
"""

from __future__ import annotations

from typing import Any

from data_server.formats import MAX_ROW_WINDOW, ArrowCompression, ResultFormat
from data_server.representations import ContentCoding
from shared import openapi as oa

# shared.tokens.new_data_key: a scope prefix, then 160 random bits as URL-safe base64.
DATA_KEY_PATTERN = r"^[rs]_[A-Za-z0-9_-]{27}$"
READINESS_CHECKS = ("database", "result_store", "public_keys", "sample_datasource")
DATA_TAG = "Data"
TAGS = {
    DATA_TAG: "Results of executions and recorded datasource schemas, for a data access token.",
    **oa.SHARED_TAGS,
}

DESCRIPTION = (
    """\
The data plane of a dataferry region: it serves stored results, in the format the client asks \
for, to requests carrying `Authorization: Data <token>` or the same token as `?token=` (a \
grant's `data_url`). Tokens come from the API server (Get Execution Data, Get Datasource \
Schema), are valid for one data key and expire quickly; every other request gets one and the \
same 401 before any storage is read (an expired but otherwise valid token: `token_expired`). \
A whole result is served with `Content-Length`, a strong `ETag`, `Accept-Ranges: bytes`, \
single and multiple ranges, `If-None-Match` and `If-Range`; text formats are compressed by \
`Accept-Encoding` (gzip, zstd, br).\
"""
    + oa.COMMON_BEHAVIOUR
)


def build_document() -> dict[str, Any]:
    return oa.document(
        "dataferry data server",
        oa.package_version(),
        DESCRIPTION,
        TAGS,
        {**oa.shared_paths(READINESS_CHECKS), "/data/{data_key}": {"get": _fetch_data()}},
        _schemas(),
    )


def _schemas() -> dict[str, oa.Schema]:
    column = oa.obj(
        {"name": oa.string(), "type": oa.string("The Arrow type, e.g. `decimal128(10, 2)`.")},
        ["name", "type"],
    )
    table = oa.obj(
        {
            "name": oa.string(),
            "type": oa.enum(["table", "view"]),
            "row_count": oa.nullable(oa.integer("An estimate; null for views.")),
            "columns": oa.array(
                oa.obj(
                    {"name": oa.string(), "type": oa.string(), "nullable": oa.boolean()},
                    ["name", "type", "nullable"],
                )
            ),
        },
        ["name", "type", "columns"],
        closed=False,
    )
    schema = oa.obj({"name": oa.string(), "tables": oa.array(table)}, ["name", "tables"])
    return {
        "ResultDocument": oa.obj(
            {
                "columns": oa.array(column),
                "rows": oa.array(
                    oa.array({}),
                    "One array per row; values mapped losslessly (docs/result-formats.md).",
                ),
                "row_count": oa.integer("Rows in this response, after `offset`/`limit`."),
            },
            ["columns", "rows", "row_count"],
            "A result as JSON.",
        ),
        "ResultRecords": oa.array(
            {"type": "object"},
            "A result as an array of objects keyed by column name (`?format=records`), values "
            "mapped as in `ResultDocument`.",
        ),
        "DatasourceSchema": schema,
        "SchemaDocument": oa.obj(
            {"server_version": oa.string(), "schemas": oa.array(oa.ref("DatasourceSchema"))},
            ["schemas"],
            "A datasource's recorded schema; with `name`, only that `DatasourceSchema`.",
            closed=False,
        ),
    }


def _result_content() -> dict[str, Any]:
    """One entry per media type: JSON carries the default document, the records form or a schema
    grant's document; every other format is bytes (``format: binary``) for generated clients."""
    media: dict[str, Any] = {}
    for fmt in ResultFormat:
        if fmt is ResultFormat.RECORDS:
            continue  # shares application/json with the default document
        if fmt is ResultFormat.JSON:
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


_REPRESENTATION_HEADERS = {
    "ETag": "Strong; the same for the same data, format, options and content coding, whatever "
    "the grant.",
    "Accept-Ranges": "`bytes` for a whole result; `none` for a row window.",
    "Content-Length": "The length of the body (absent for a row window, which is streamed).",
    "Content-Encoding": "gzip, zstd or br when negotiated (text formats only).",
}


def _row_count(name: str, description: str) -> dict[str, Any]:
    return oa.query_parameter(
        name, f"{description} Results only.", oa.integer(minimum=0, maximum=MAX_ROW_WINDOW)
    )


def _fetch_data() -> dict[str, Any]:
    formats = ", ".join(f"`{fmt.name_in_query}`" for fmt in ResultFormat)
    parameters = [
        oa.path_parameter(
            "data_key",
            "As returned with the token; its prefix says whether it names a result (`r_`) or a "
            "schema (`s_`).",
            oa.string(pattern=DATA_KEY_PATTERN),
        ),
        oa.query_parameter(
            "format",
            f"The format ({formats}); wins over `Accept`. Schemas are `json` only.",
            oa.enum(fmt.name_in_query for fmt in ResultFormat),
        ),
        _row_count("offset", "Skip this many rows of the stored result."),
        _row_count("limit", "Answer at most this many rows."),
        oa.query_parameter("name", "Schemas only: narrow the document to the schema of this name."),
    ]
    parameters += [
        oa.query_parameter(
            "compression",
            "Arrow IPC buffer compression (`arrow` only). Text formats are compressed by "
            "`Accept-Encoding`; Parquet always is (zstd).",
            oa.enum(c.value for c in ArrowCompression),
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
            "Accept-Encoding",
            "header",
            oa.string(),
            f"Text formats: {', '.join(c.value for c in ContentCoding if c.value != 'identity')}.",
        ),
    ]
    headers = {
        name: {"description": text, "schema": oa.string()}
        for name, text in _REPRESENTATION_HEADERS.items()
    }
    response = {
        "description": "The data. Formats other than JSON carry `Content-Disposition: "
        'inline; filename="<data key>.<extension>"`; all carry `Cache-Control: private, '
        "no-store` and `Vary: Accept, Accept-Encoding`.",
        "headers": headers,
        "content": _result_content(),
    }
    partial = {
        "description": "The requested range (`Content-Range`), or several as "
        "`multipart/byteranges`.",
        "headers": {
            **headers,
            "Content-Range": {"description": "`bytes first-last/size`.", "schema": oa.string()},
        },
        "content": _partial_content(),
    }
    not_modified = {
        "description": "`If-None-Match` named the current ETag: no body.",
        "headers": {"ETag": headers["ETag"]},
    }
    return oa.operation(
        "fetchData",
        DATA_TAG,
        "Fetch data",
        "A stored execution result in the format asked for (`?format=`, else `Accept`, else "
        "JSON), rows selected with `offset`/`limit` without re-running anything; or, for a "
        "schema grant's data key, the datasource's schema JSON.",
        {
            "200": response,
            "206": partial,
            "304": not_modified,
            **oa.error_responses(
                (400, 401, 404, 406, 416),
                {
                    400: "An unknown query parameter (`name` on a result, `offset`/`limit` on a "
                    "schema), an unknown `format` or `compression`, or a malformed "
                    "`offset`/`limit` (`invalid_query_parameter`).",
                    401: "The token is missing, forged, of another region or for another data "
                    "key (`invalid_data_token`): always the same answer; a genuine token past its "
                    "expiry gets `token_expired`.",
                    404: "The result expired or was deleted (`result_gone`), or the schema has "
                    "no such `name` (`schema_not_found`).",
                    406: "`Accept` admits none of the formats (a schema: not JSON).",
                    416: "No range starts within the representation (`range_not_satisfiable`).",
                },
            ),
        },
        security="DataToken",
        parameters=parameters,
    ) | {"security": [{"DataToken": []}, {"DataTokenInUrl": []}]}
