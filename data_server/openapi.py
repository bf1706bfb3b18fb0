"""The data server's OpenAPI document, assembled from its declared operations.

Nothing here describes an operation: each is documented where it is declared
(``data_server.endpoints``); this module holds the document's own text and the schemas the
operations name. tests/contract/test_openapi.py checks that every route is described and every
description routed.
"""

from __future__ import annotations

from typing import Any

from data_server.endpoints import OPERATIONS
from data_server.readiness import READINESS
from shared import openapi as oa
from shared.web import operations as web
from shared.web.service import service_operations

TAGS = {OPERATIONS.tag: OPERATIONS.description, **oa.SHARED_TAGS}

DESCRIPTION = (
    """\
The data plane of a dataferry region: it serves stored results, in the format the client asks \
for, to requests carrying `Authorization: Data <token>` or the same token as `?token=` (a \
grant's `data_url`). Tokens come from the API server (Get Execution Data, Get Datasource \
Schema), are valid for one data key and expire quickly; every other request gets one and the \
same 401 before any storage is read (an expired but otherwise valid token: `token_expired`). \
A whole result is served with `Content-Length` (not on the first request for a format, sent as \
it is encoded), a strong `ETag`, `Accept-Ranges: bytes`, single and multiple ranges, `If-None-Match` and `If-Range`; text formats are compressed by \
`Accept-Encoding` (gzip, zstd, br).\
"""
    + oa.COMMON_BEHAVIOUR
)


def operations() -> list[web.Operation]:
    """Every operation of the server: those both servers have, then the data fetch."""
    return [*service_operations(READINESS, build_document), *OPERATIONS.operations]


def build_document() -> dict[str, Any]:
    paths = web.paths(operations())
    return oa.document(
        "dataferry data server",
        oa.package_version(),
        DESCRIPTION,
        TAGS,
        paths,
        web.referenced_schemas(paths.values(), _schemas()),
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
