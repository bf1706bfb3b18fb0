"""The API server's OpenAPI document: every route and method of ``api_server.routes``.

Attribute lists, sortable and filterable names, permissions and limits are read from the code that
enforces them, so the document cannot quietly drift from it; tests/contract/test_openapi.py checks that
every route is described and every described operation is routed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from api_server import jsonapi, serializers
from api_server.endpoints import audit_events, datasource_actions, executions
from api_server.permissions import Permission
from api_server.schemas import (
    BUILT_IN_DATABASE_TYPES,
    CREATABLE_DATABASE_TYPES,
    RESERVED_SNIPPET_PREFIX,
    SNIPPET_NAME,
    ApiKeyUpdate,
    DatasourceCreate,
    DatasourceUpdate,
    SqlSnippetCreate,
    SqlSnippetUpdate,
)
from api_server.services import api_keys as api_key_service
from api_server.services import datasource_files as file_service
from api_server.services import datasources as datasource_service
from api_server.services import listing, sql_parameters
from api_server.services import sql_snippets as snippet_service
from shared import http_limits
from shared import openapi as oa
from shared.database_types import DATABASE_TYPES, SSH_TUNNEL_ATTRIBUTES
from shared.datapaths import PATH_ERRORS
from shared.file_formats import (
    DATABASE_FILE_FORMATS,
    VIEW_FILE_SUFFIXES,
    FileFormat,
    FileKind,
    accepted_media_types,
)
from shared.ids import RESOURCE_ID_PATTERN
from shared.lifecycle import ExecutionStatus, ExecutionType
from shared.problems import JSONAPI_MEDIA_TYPE

JSON = oa.JSON_MEDIA_TYPE
READINESS_CHECKS = ("database",)

TAGS = {
    "API keys": "The calling key, and the organisation's keys (Manage Users).",
    "Audit log": "Every successful write and data grant of the organisation (Manage Users).",
    "Datasources": "JSON:API resource `datasources` and Cluvio's datasource actions.",
    "Datasource files": "The files of a datasource in its organisation's area: upload, list, "
    "delete (resource `datasource_files`).",
    "Executions": "Run SQL on a datasource, follow it, and get a token for its data.",
    "SQL snippets": "JSON:API resource `sql_snippets`: SQL that `[name]` pulls into a query.",
    "Keys": "The region's public signing keys, for data servers that verify data tokens.",
    **oa.SHARED_TAGS,
}

DESCRIPTION = (
    """\
The control plane of a dataferry region, compatible with the Cluvio public API. Resources speak \
JSON:API (`application/vnd.api+json`); Cluvio's action operations (Run Execution, Test \
Connection, Refresh, Get Schema, Get Execution Data) speak plain `application/json`.

Authenticate with `Authorization: Api <secret>`. A missing, malformed, unknown or disabled key \
gets one and the same 401; a key without the permission an operation names gets 403; an id of \
another organisation, or outside the key's datasources, gets the same 404 as an id that never \
existed. Every response to a request with a valid key carries its rate-limit standing \
(`RateLimit`, `RateLimit-Policy`, `X-RateLimit-Limit`, `X-RateLimit-Remaining`, \
`X-RateLimit-Reset`); a key beyond its limit gets 429 with `Retry-After`.\
"""
    + oa.COMMON_BEHAVIOUR
)


def build_document() -> dict[str, Any]:
    return oa.document(
        "dataferry API server",
        oa.package_version(),
        DESCRIPTION,
        TAGS,
        {**oa.shared_paths(READINESS_CHECKS), **_paths()},
        _schemas(),
    )


# ---------------------------------------------------------------- parameters

_ID_SCHEMA = oa.string(pattern=RESOURCE_ID_PATTERN.pattern)


def _id(what: str, schema: oa.Schema = _ID_SCHEMA) -> dict[str, Any]:
    return oa.path_parameter("id", f"The id of the {what}.", schema)


DATASOURCE_ID = _id("datasource")
EXECUTION_ID = _id("execution (a UUID)", oa.string(format="uuid"))
SNIPPET_ID = _id("SQL snippet")
API_KEY_ID = _id("API key")


def _sort_pattern(sort_keys: str) -> str:
    """Keys from ``sort_keys`` (an alternation), none named twice (the lookahead refuses a key
    that comes again later, with or without its `-`)."""
    repeated = rf"(?:.*,)?-?({sort_keys})(?:,.*)?,-?\1(?:,|$)"
    return rf"^(?!{repeated})-?({sort_keys})(,-?({sort_keys}))*$"


def collection_parameters(
    resource_type: str,
    sortable: Sequence[str],
    filterable: Iterable[str],
    fields: Iterable[str],
    filter_notes: Mapping[str, str] | None = None,
    filter_schemas: Mapping[str, oa.Schema] | None = None,
) -> list[dict[str, Any]]:
    """JSON:API paging, sorting, filtering and sparse fieldsets, as ``parse_collection_query``
    reads them; any other query parameter is a 400."""
    notes, schemas = filter_notes or {}, filter_schemas or {}
    sort_keys = "|".join(sortable)
    return [
        oa.query_parameter(
            "page[number]",
            "The page to answer, from 1.",
            oa.integer(minimum=1, maximum=jsonapi.MAX_PAGE_NUMBER, default=1),
        ),
        oa.query_parameter(
            "page[size]",
            f"Resources per page (default {listing.DEFAULT_PAGE_SIZE}).",
            oa.integer(minimum=1, maximum=jsonapi.MAX_PAGE_SIZE, default=listing.DEFAULT_PAGE_SIZE),
        ),
        oa.query_parameter(
            "sort",
            f"Comma-separated sort keys, `-` for descending, each field at most once; "
            f"sortable: {_codes(sortable)}.",
            oa.string(pattern=_sort_pattern(sort_keys)),
        ),
        *(
            oa.query_parameter(
                f"filter[{name}]",
                notes.get(name, f"Only resources whose `{name}` equals this."),
                schemas.get(name),
            )
            for name in filterable
        ),
        fields_parameter(resource_type, fields),
    ]


def comma_list(names: Iterable[str]) -> oa.Schema:
    """A comma-separated list of ``names`` as ``parse_collection_query`` reads one: empty members
    (and so an empty value) are ignored, anything else is a 400."""
    one = f"({'|'.join(re.escape(name) for name in names)})?"
    return oa.string(pattern=rf"^{one}(,{one})*$")


def fields_parameter(resource_type: str, fields: Iterable[str]) -> dict[str, Any]:
    fields = list(fields)
    return oa.query_parameter(
        f"fields[{resource_type}]",
        f"Sparse fieldset: a comma-separated list of {_codes(fields)}; an empty list leaves only "
        "`type`, `id` and `links`.",
        comma_list(fields),
    )


INCLUDE_AGENTS = oa.query_parameter(
    "include",
    "`agents` is accepted; datasource agents are not available yet, so it adds nothing.",
    comma_list(["agents"]),
)

WAIT = oa.query_parameter(
    "wait",
    "Hold the answer until the execution ends (`completed`, `failed` or `cancelled`) or this "
    "many seconds pass (a long poll; the wait holds no server thread).",
    {"type": "number", "minimum": 0, "maximum": executions.MAX_WAIT_SECONDS},
)

IDEMPOTENCY_KEY = oa.parameter(
    "Idempotency-Key",
    "header",
    oa.string(minLength=1, maxLength=255),
    "Repeating a request with the same key answers the execution it created (only once per key "
    "and API key); a different body with a used key is 422 `idempotency_key_reused`.",
)


# ---------------------------------------------------------------- errors

# Every JSON:API endpoint checks Accept (406) and authenticates (401, then 429 when rate-limited).
_AUTHENTICATED = (401, 406, 429)
# Reading a body: 413 above 1 MiB, 408 when slow, 415 for the wrong media type, 400 bad JSON.
_WITH_BODY = (400, 408, 413, 415)
_BAD_QUERY = {400: "A query parameter is unknown or malformed (`invalid_query_parameter`)."}
_BAD_DOCUMENT = (
    "A query parameter is unknown or malformed (`invalid_query_parameter`), the body is not JSON "
    "(`malformed_json`) or not a document with one resource object in `data` (`bad_request`)."
)
_WRONG_TYPE_OR_ID = "`data.type` is not this endpoint's type, or `data.id` is not the URL's id."
_NO_CLIENT_IDS = "Client-generated ids are not supported (`data.id` was sent)."


def errors(*statuses: int, **notes: str) -> dict[str, Any]:
    """Authentication errors plus ``statuses``; notes are keyed ``e409="..."``."""
    return oa.error_responses(
        (*_AUTHENTICATED, *statuses), {int(key[1:]): note for key, note in notes.items()}
    )


def needs(*permissions: Permission) -> dict[str, Any]:
    """The ``x-permissions`` extension: any one of these admits a key."""
    return {"permissions": [str(p) for p in permissions]}


def _codes(names: Iterable[str]) -> str:
    return ", ".join(f"`{name}`" for name in names)


# ---------------------------------------------------------------- schemas


def identifier(resource_type: str) -> oa.Schema:
    return oa.obj({"type": oa.const(resource_type), "id": oa.string()}, ["type", "id"])


def to_one(resource_type: str) -> oa.Schema:
    return oa.obj({"data": oa.nullable(identifier(resource_type))}, ["data"])


def to_many(resource_type: str, description: str | None = None) -> oa.Schema:
    return oa.obj({"data": oa.array(identifier(resource_type))}, ["data"], description)


def attributes(names: Iterable[str], types: Mapping[str, oa.Schema]) -> oa.Schema:
    """The attributes a serializer writes, each with its type (a missing type fails the build)."""
    return oa.obj({name: types[name] for name in names}, closed=False)


def resource(
    resource_type: str,
    attributes_schema: str,
    relationships: Mapping[str, oa.Schema],
    id_schema: oa.Schema = _ID_SCHEMA,
    self_link: bool = True,
) -> oa.Schema:
    properties = {
        "type": oa.const(resource_type),
        "id": id_schema,
        "attributes": oa.ref(attributes_schema),
        "relationships": oa.obj(relationships, closed=False),
    }
    if self_link:
        properties["links"] = oa.obj({"self": oa.string()}, ["self"], closed=False)
    # JSON:API: `attributes` may be absent, and is when a sparse fieldset names no attribute.
    return oa.obj(properties, ["type", "id"], closed=False)


def single(resource_schema: str, **extra: oa.Schema) -> oa.Schema:
    return oa.obj({"data": oa.ref(resource_schema), **extra}, ["data"], closed=False)


def collection(resource_schema: str, **extra: oa.Schema) -> oa.Schema:
    return oa.obj(
        {
            "data": oa.array(oa.ref(resource_schema)),
            "links": oa.ref("PaginationLinks"),
            "meta": oa.ref("CollectionMeta"),
            **extra,
        },
        ["data", "links", "meta"],
        closed=False,
    )


def write_document(
    resource_type: str,
    attributes_schema: str,
    *,
    with_id: bool,
    relationships: Mapping[str, oa.Schema] | None = None,
) -> oa.Schema:
    """A JSON:API request document: ``data.type``, ``data.id`` (updates only), attributes."""
    properties: dict[str, oa.Schema] = {
        "type": oa.const(resource_type),
        "attributes": oa.ref(attributes_schema),
    }
    required = ["type"] if with_id else ["type", "attributes"]
    if with_id:
        properties["id"] = oa.string("Must equal the id in the URL.")
        required.append("id")
    if relationships:
        properties["relationships"] = oa.obj(relationships)
    return oa.obj({"data": oa.obj(properties, required, closed=False)}, ["data"], closed=False)


def _timestamps(*names: str) -> dict[str, oa.Schema]:
    return {name: oa.timestamp() for name in names}


_INCLUDED = {"included": oa.array({"type": "object"}, "With `include=agents`: always empty.")}
_NO_AGENTS = {
    "agents": oa.obj(
        {"data": oa.array(identifier("agents"), maxItems=0)},
        ["data"],
        "Datasource agents are not available yet: only an empty list is accepted.",
    )
}


def _datasource_attribute_types() -> dict[str, oa.Schema]:
    writable = datasource_attributes_schema(DatasourceCreate)["properties"]
    return {
        **writable,
        "database_type": oa.enum((*CREATABLE_DATABASE_TYPES, *BUILT_IN_DATABASE_TYPES)),
        **_timestamps("created_at", "updated_at"),
        "schema_updated_at": oa.nullable(oa.timestamp()),
        "default_schema_name": oa.nullable(oa.string()),
        "server_version": oa.nullable(oa.string()),
        "total_row_count": oa.nullable(oa.integer()),
        "total_row_count_exact": oa.nullable(oa.boolean()),
    }


# Names are stripped before their length is checked: one of spaces only is too short.
NOT_BLANK = {"pattern": r"\S"}


def snippet_name_schema() -> oa.Schema:
    """``check_snippet_name`` as a pattern: an identifier, not in the reserved namespace (any case),
    surrounding whitespace stripped first."""
    reserved = "".join(
        f"[{c.upper()}{c.lower()}]" if c.isalpha() else re.escape(c)
        for c in RESERVED_SNIPPET_PREFIX
    )
    identifier = SNIPPET_NAME.pattern.removesuffix(r"\Z")
    return {"pattern": rf"^\s*(?!{reserved}){identifier}\s*$"}


def snippet_attributes_schema(model: type[SqlSnippetCreate]) -> oa.Schema:
    return oa.model_schema(model, name=snippet_name_schema(), sql=NOT_BLANK)


def _path_error_codes() -> str:
    return ", ".join(f"`{error.code}`" for error in PATH_ERRORS)


def _connection_attribute_descriptions() -> dict[str, oa.Schema]:
    """Which types require or take each connection attribute, from their one declaration."""

    def types(attribute: str, which: str) -> str:
        kinds = [
            f"`{kind.name}`"
            for kind in DATABASE_TYPES.values()
            if attribute in (kind.required if which == "required" else kind.optional)
        ]
        return ", ".join(kinds)

    notes = {
        "port": "Defaults to the type's port (postgres 5432, mysql 3306; s3 443, or 80 when "
        "require_ssl is false).",
        "s3_region": "Not a Cluvio attribute: the region an s3 datasource's requests are signed "
        "for (null: us-east-1). AWS needs the bucket's region; S3-compatible servers their own.",
        "password": "Write-only: encrypted at rest and never returned.",
        "ssh_tunnel_host": "Stored; a datasource that sets it cannot run yet: its executions, "
        "Test Connection and Refresh answer 422 `ssh_tunnel_not_supported`.",
    }
    described: dict[str, oa.Schema] = {}
    for attribute in ("host", "port", "username", "password", *SSH_TUNNEL_ATTRIBUTES, "s3_region"):
        required, optional = types(attribute, "required"), types(attribute, "optional")
        text = " ".join(
            part
            for part in (
                f"Required for {required}." if required else "",
                f"Taken by {optional}." if optional else "",
                "Any other type refuses it.",
                notes.get(attribute, ""),
            )
            if part
        )
        described[attribute] = {"description": text}
    return described


def datasource_attributes_schema(model: type[DatasourceCreate]) -> oa.Schema:
    return oa.model_schema(
        model,
        database_type=oa.enum(
            CREATABLE_DATABASE_TYPES,
            " ".join(f"`{kind.name}`: {kind.description}" for kind in DATABASE_TYPES.values())
            + " The built-in `sample` cannot be created.",
        ),
        **_connection_attribute_descriptions(),
        connection_mode=oa.enum(["direct"]),
        name=NOT_BLANK,
        data_time_zone={"description": "An IANA time zone name."},
        database={
            "description": "For file types: a path relative to the organisation's file area "
            "(`<data root>/<organisation id>/`), stored normalised; `shared/NAME/…` reaches a "
            "folder the operator granted. Absolute paths, `..`, backslashes, control characters, "
            "non-ASCII punctuation and symbols, names NFKC would change and links leading out of "
            f"the area are refused ({_path_error_codes()}). For `postgres` and `mysql`: the "
            "database's name."
        },
    )


_API_KEY_TYPES = {
    "name": oa.string(),
    "prefix": oa.string("The start of the secret, to recognise it by."),
    "permissions": oa.array(oa.enum(p.value for p in Permission)),
    "datasource_ids": oa.nullable(
        oa.array(oa.string(), "The datasources the key is restricted to; null: every one.")
    ),
    "organization_id": oa.string(),
    "enabled": oa.boolean("A disabled key gets 401 until it is enabled again."),
    "created_at": oa.timestamp(),
    "last_used_at": oa.nullable(oa.timestamp("Written at most once a minute.")),
}

_EXECUTION_TYPES = {
    "execution_id": oa.string("The same UUID as the resource id.", format="uuid"),
    "execution_type": oa.enum((ExecutionType.SQL_QUERY, ExecutionType.DATASOURCE_REFRESH)),
    "execution_status": oa.enum(tuple(ExecutionStatus)),
    "result_columns": oa.nullable(oa.integer("Columns of the result.")),
    "result_rows": oa.nullable(oa.integer("Rows of the stored result.")),
    "result_size": oa.nullable(oa.integer("Bytes of the stored result.")),
    "result_truncated": oa.boolean("The result was cut at the row or byte limit."),
    **_timestamps("created_at", "updated_at"),
    "started_at": oa.nullable(oa.timestamp()),
    "completed_at": oa.nullable(oa.timestamp()),
    "error_code": oa.nullable(oa.string("Once failed or cancelled: a stable code (`timeout`, …).")),
    "error_message": oa.nullable(oa.string("Once failed or cancelled.")),
    "cancel_requested": oa.boolean("Present (true) while a cancel is pending."),
    "expanded_sql": oa.string(
        "Only for the key that ran it: the SQL that runs, snippets expanded, placeholders bound."
    ),
    "bound_parameters": oa.array(
        {"type": ["string", "number", "boolean", "null"]},
        "Only for the key that ran it: the values of `$1`, `$2`, ….",
    ),
}
_EXECUTION_ATTRIBUTES = (
    "execution_id",
    "execution_type",
    "execution_status",
    *serializers.EXECUTION_ATTRIBUTES,
    "error_code",
    "error_message",
    "cancel_requested",
    "expanded_sql",
    "bound_parameters",
)

_AUDIT_EVENT_TYPES = {
    "action": oa.string("What happened, e.g. `execution.run`, `data_grant.execution`."),
    "method": oa.string(),
    "path": oa.string("The route template, e.g. `/datasources/{id}`."),
    "resource_id": oa.nullable(oa.string()),
    "status": oa.integer("The HTTP status answered."),
    "api_key_id": oa.nullable(oa.string()),
    "remote_addr": oa.nullable(oa.string()),
    "request_id": oa.nullable(oa.string("The response's `X-Request-Id`.")),
    "created_at": oa.timestamp(),
}


def _run_request_schemas() -> dict[str, oa.Schema]:
    scalar = {"type": ["string", "number", "boolean", "null"]}
    return {
        "RunExecutionRequest": oa.obj(
            {
                "sql_query": oa.string(
                    "One SELECT (or EXPLAIN); `[name]` pulls in a SQL snippet and `{…}` "
                    "placeholders take the parameters. At most `DATAFERRY_MAX_SQL_LENGTH` "
                    "characters.",
                    minLength=1,
                ),
                "r_query": oa.nullable(
                    oa.string("Not supported: anything but null or empty is 422.", maxLength=0)
                ),
                "parameters": oa.nullable(oa.ref("RunParameters")),
            },
            ["sql_query"],
            "Cluvio's Run Execution body.",
        ),
        "RunParameters": oa.obj(
            {
                "timerange": oa.nullable(
                    oa.string(
                        "`<start>~<end>` in unix seconds, start included, end excluded.",
                        pattern=sql_parameters.TIMERANGE_PATTERN,
                    )
                ),
                "aggregation": oa.nullable(
                    oa.enum(
                        sql_parameters.AGGREGATIONS, "The unit of `{…:aggregation}` (default day)."
                    )
                ),
                "tz": oa.nullable(oa.string("An IANA zone for `{…:tz}`; default: the data zone.")),
                "filters": oa.nullable(
                    oa.array(oa.ref("Filter"), maxItems=sql_parameters.MAX_FILTERS)
                ),
            },
            description="Values for the query's `{…}` placeholders (docs/sql-parameters.md).",
        ),
        "Filter": oa.obj(
            {
                "variable_name": oa.string(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$"),
                "selected_values": oa.array(
                    scalar, "Empty for no selection; one `<start>~<end>` string is a range."
                ),
            },
            ["variable_name", "selected_values"],
        ),
    }


def _schemas() -> dict[str, oa.Schema]:
    return {
        "PaginationLinks": oa.obj(
            {
                "self": oa.string(),
                "first": oa.string(),
                "prev": oa.nullable(oa.string()),
                "next": oa.nullable(oa.string()),
                "last": oa.string(),
            },
            ["self", "first", "prev", "next", "last"],
        ),
        "CollectionMeta": oa.obj(
            {
                "total": oa.integer("Resources in the whole collection."),
                "page": oa.obj({"number": oa.integer(), "size": oa.integer()}),
            },
            ["total", "page"],
            closed=False,
        ),
        # datasources
        "DatasourceAttributes": attributes(
            serializers.DATASOURCE_ATTRIBUTES, _datasource_attribute_types()
        ),
        "Datasource": resource(
            "datasources", "DatasourceAttributes", {"agents": to_many("agents", "Always empty.")}
        ),
        "DatasourceDocument": single("Datasource", **_INCLUDED),
        "DatasourceCollection": collection("Datasource", **_INCLUDED),
        "DatasourceCreateAttributes": datasource_attributes_schema(DatasourceCreate),
        "DatasourceUpdateAttributes": datasource_attributes_schema(DatasourceUpdate),
        "DatasourceCreateDocument": write_document(
            "datasources", "DatasourceCreateAttributes", with_id=False, relationships=_NO_AGENTS
        ),
        "DatasourceUpdateDocument": write_document(
            "datasources", "DatasourceUpdateAttributes", with_id=True, relationships=_NO_AGENTS
        ),
        **_datasource_file_schemas(),
        # SQL snippets
        "SqlSnippetAttributes": attributes(
            serializers.SQL_SNIPPET_ATTRIBUTES,
            {
                **snippet_attributes_schema(SqlSnippetCreate)["properties"],
                **_timestamps("created_at", "updated_at"),
            },
        ),
        "SqlSnippet": resource(
            "sql_snippets",
            "SqlSnippetAttributes",
            {"sql_snippet": to_one("sql_snippets")},
        ),
        "SqlSnippetDocument": single("SqlSnippet"),
        "SqlSnippetCollection": collection("SqlSnippet"),
        "SqlSnippetCreateAttributes": snippet_attributes_schema(SqlSnippetCreate),
        "SqlSnippetUpdateAttributes": snippet_attributes_schema(SqlSnippetUpdate),
        "SqlSnippetCreateDocument": write_document(
            "sql_snippets", "SqlSnippetCreateAttributes", with_id=False
        ),
        "SqlSnippetUpdateDocument": write_document(
            "sql_snippets", "SqlSnippetUpdateAttributes", with_id=True
        ),
        # API keys
        "ApiKeyAttributes": attributes(serializers.API_KEY_ATTRIBUTES, _API_KEY_TYPES),
        "ApiKey": resource(
            "api_keys",
            "ApiKeyAttributes",
            {
                "organization": to_one("organizations"),
                "datasources": oa.obj(
                    {"data": oa.nullable(oa.array(identifier("datasources")))}, ["data"]
                ),
            },
        ),
        "ApiKeyDocument": single("ApiKey"),
        "ApiKeyCollection": collection("ApiKey"),
        "ApiKeyUpdateAttributes": oa.model_schema(ApiKeyUpdate, name=NOT_BLANK),
        "ApiKeyUpdateDocument": write_document("api_keys", "ApiKeyUpdateAttributes", with_id=True),
        # audit events
        "AuditEventAttributes": attributes(serializers.AUDIT_EVENT_ATTRIBUTES, _AUDIT_EVENT_TYPES),
        "AuditEvent": resource(
            "audit_events",
            "AuditEventAttributes",
            {"api_key": to_one("api_keys")},
            self_link=False,
        ),
        "AuditEventCollection": collection("AuditEvent"),
        # executions
        "ExecutionAttributes": attributes(_EXECUTION_ATTRIBUTES, _EXECUTION_TYPES),
        "Execution": resource(
            "executions",
            "ExecutionAttributes",
            {"datasource": to_one("datasources")},
            oa.string(format="uuid"),
        ),
        "ExecutionDocument": single("Execution"),
        **_run_request_schemas(),
        # action answers
        "DataGrant": oa.obj(
            {
                "data_key": oa.string("Where the data server finds the data."),
                "data_access_token": oa.string(
                    "A short-lived token for exactly this data key: send it to the data server "
                    "as `Authorization: Data <token>`."
                ),
                "data_url": DATA_URL,
            },
            ["data_key", "data_access_token", "data_url"],
            closed=False,
        ),
        "ConnectionTestResult": oa.obj(
            {
                "status": oa.enum(["ok", "error"]),
                "error_message": oa.nullable(oa.string()),
            },
            ["status", "error_message"],
        ),
        "Jwks": oa.obj(
            {
                "keys": oa.array(
                    oa.obj(
                        {
                            "kty": oa.const("OKP"),
                            "crv": oa.const("Ed25519"),
                            "alg": oa.const("EdDSA"),
                            "use": oa.const("sig"),
                            "kid": oa.string(),
                            "x": oa.string("The public key, base64url."),
                        },
                        ["kty", "crv", "kid", "x"],
                        closed=False,
                    )
                )
            },
            ["keys"],
            "A JSON Web Key Set of Ed25519 public keys.",
        ),
    }


# ---------------------------------------------------------------- operations


def _jsonapi(description: str, schema: str, headers: Mapping[str, str] | None = None) -> dict:
    return oa.response(description, oa.ref(schema), JSONAPI_MEDIA_TYPE, headers)


_DELETED = {"204": oa.response("Deleted.")}
_CREATED_HEADERS = {"Location": "The new resource's URL."}


def _body(schema: str, description: str, media_type: str = JSONAPI_MEDIA_TYPE) -> dict[str, Any]:
    return oa.request_body(oa.ref(schema), media_type, description)


def api_operation(operation_id: str, tag: str, summary: str, description: str, **kw: Any) -> dict:
    return oa.operation(operation_id, tag, summary, description, security="ApiKey", **kw)


def _paths() -> dict[str, dict[str, Any]]:
    return {
        "/.well-known/jwks.json": _jwks_paths(),
        **_api_key_paths(),
        **_audit_paths(),
        **_datasource_paths(),
        **_datasource_file_paths(),
        **_execution_paths(),
        **_snippet_paths(),
    }


def _jwks_paths() -> dict[str, Any]:
    return {
        "get": oa.operation(
            "listPublicKeys",
            "Keys",
            "Public signing keys",
            "Every public key still published (a rotated-out key stays until its overlap "
            "ends); cacheable for 60 s. Data servers with `DATAFERRY_JWKS_URL` read it.",
            {"200": oa.response("The key set.", oa.ref("Jwks"), JSON)},
        )
    }


_API_KEY_FIELDS = (*serializers.API_KEY_ATTRIBUTES, "organization", "datasources")
_KEY_SCOPE = (
    "datasource restriction is at least as narrow as the caller's (an unrestricted caller: any) "
    "and whose permissions the caller holds itself."
)
_KEY_NOT_FOUND = f"No such key in the organisation, or not one whose {_KEY_SCOPE}"
_OPERATOR_HOLD = "An operator disabled the key; only the operator enables or deletes it"


def _api_key_paths() -> dict[str, Any]:
    tag, manage = "API keys", needs(Permission.MANAGE_USERS)
    fields = fields_parameter("api_keys", _API_KEY_FIELDS)
    return {
        "/api_key": {
            "get": api_operation(
                "showCallingApiKey",
                tag,
                "The calling API key",
                "Any valid key may see itself; no query parameters are accepted.",
                responses={
                    "200": _jsonapi("The calling key.", "ApiKeyDocument"),
                    **errors(400),
                },
                **needs(),
            )
        },
        "/api_keys": {
            "get": api_operation(
                "listApiKeys",
                tag,
                "List API keys",
                "The organisation's keys within the caller's scope, paged: keys whose "
                f"{_KEY_SCOPE} Others are left out of the page and of `meta.total`. Keys "
                "are created by the operator (`create-api-key`), not over the API.",
                parameters=collection_parameters(
                    "api_keys",
                    api_key_service.KEY_SORTABLE,
                    api_key_service.KEY_FILTERABLE,
                    _API_KEY_FIELDS,
                    {"enabled": "`true` or `false`."},
                    {"enabled": oa.enum(["true", "false"])},
                ),
                responses={
                    "200": _jsonapi("A page of keys.", "ApiKeyCollection"),
                    **errors(403, e400=_BAD_QUERY[400]),
                },
                **manage,
            )
        },
        "/api_keys/{id}": {
            "parameters": [API_KEY_ID],
            "get": api_operation(
                "showApiKey",
                tag,
                "Get an API key",
                "One key of the organisation within the caller's scope.",
                parameters=[fields],
                responses={
                    "200": _jsonapi("The key.", "ApiKeyDocument"),
                    **errors(403, 404, e400=_BAD_QUERY[400], e404=_KEY_NOT_FOUND),
                },
                **manage,
            ),
            "patch": api_operation(
                "updateApiKey",
                tag,
                "Rename, disable or enable an API key",
                "Only `name` and `enabled` change; a disabled key gets 401 until it is enabled "
                "again. Other attributes are read-only (422 `read_only_attribute`). A key the "
                "operator disabled (`disable-api-key`) is enabled again only by the operator.",
                parameters=[fields],
                body=_body("ApiKeyUpdateDocument", "The attributes to change."),
                responses={
                    "200": _jsonapi("The key as it is now.", "ApiKeyDocument"),
                    **errors(
                        403,
                        404,
                        422,
                        *_WITH_BODY,
                        e400=_BAD_DOCUMENT,
                        e404=_KEY_NOT_FOUND,
                        e409=f"{_OPERATOR_HOLD} (`disabled_by_operator`); or {_WRONG_TYPE_OR_ID}",
                    ),
                },
                **manage,
            ),
            "delete": api_operation(
                "deleteApiKey",
                tag,
                "Delete an API key",
                "The key stops working at once.",
                responses={
                    **_DELETED,
                    **errors(
                        403,
                        404,
                        e404=_KEY_NOT_FOUND,
                        e409=f"{_OPERATOR_HOLD} (`disabled_by_operator`).",
                    ),
                },
                **manage,
            ),
        },
    }


def _audit_paths() -> dict[str, Any]:
    notes = {
        "since": "Events at or after this ISO 8601 time with a zone (e.g. 2026-11-23T09:00:00Z).",
        "until": "Events before this ISO 8601 time with a zone.",
    }
    return {
        "/audit_events": {
            "get": api_operation(
                "listAuditEvents",
                "Audit log",
                "List audit events",
                "Every successful write (create, update, delete, run, cancel, purge, refresh, "
                "test connection) and every data grant, newest first, paged. Never a body, a "
                "secret or a parameter value. The log is organisation-wide: a key restricted "
                "to listed datasources is refused it (403 `datasource_scope_restricted`).",
                parameters=collection_parameters(
                    "audit_events",
                    audit_events.SORTABLE,
                    audit_events.FILTERABLE,
                    (*serializers.AUDIT_EVENT_ATTRIBUTES, "api_key"),
                    notes,
                    {"since": oa.timestamp(), "until": oa.timestamp()},
                ),
                responses={
                    "200": _jsonapi("A page of events.", "AuditEventCollection"),
                    **errors(
                        403,
                        e400=_BAD_QUERY[400],
                        e403="The key lacks the permission or is restricted to listed "
                        "datasources (`datasource_scope_restricted`).",
                    ),
                },
                **needs(Permission.MANAGE_USERS),
            )
        }
    }


def _datasource_paths() -> dict[str, Any]:
    tag = "Datasources"
    view, manage = needs(Permission.VIEW_DATASOURCES), needs(Permission.MANAGE_DATASOURCES)
    fields = fields_parameter("datasources", serializers.DATASOURCE_FIELDS)
    one = [fields, INCLUDE_AGENTS]
    invalid = (
        "An attribute is unknown, read-only or invalid; for `database` of a file type: "
        f"{_path_error_codes()}; agents in `relationships` are not available yet."
    )
    return {
        "/datasources": {
            "get": api_operation(
                "listDatasources",
                tag,
                "List datasources",
                "The datasources the key reaches, paged (every organisation starts with the "
                "built-in sample datasource).",
                parameters=[
                    *collection_parameters(
                        "datasources",
                        datasource_service.SORTABLE,
                        datasource_service.FILTERABLE,
                        serializers.DATASOURCE_FIELDS,
                    ),
                    INCLUDE_AGENTS,
                ],
                responses={
                    "200": _jsonapi("A page of datasources.", "DatasourceCollection"),
                    **errors(403, e400=_BAD_QUERY[400]),
                },
                **view,
            ),
            "post": api_operation(
                "createDatasource",
                tag,
                "Create a datasource",
                "A DuckDB file or a folder of files inside the server's data root. An enabled "
                "datasource is refreshed (its schema recorded) right away.",
                parameters=one,
                body=_body("DatasourceCreateDocument", "The new datasource."),
                responses={
                    "201": _jsonapi("Created.", "DatasourceDocument", headers=_CREATED_HEADERS),
                    **errors(
                        *_WITH_BODY,
                        e400=_BAD_DOCUMENT,
                        e403="The key lacks the permission or is restricted to listed "
                        f"datasources (`datasource_scope_restricted`). {_NO_CLIENT_IDS}",
                        e409=f"`datasource_limit_reached`; or {_WRONG_TYPE_OR_ID}",
                        e422=invalid,
                    ),
                },
                **manage,
            ),
        },
        "/datasources/{id}": {
            "parameters": [DATASOURCE_ID],
            "get": api_operation(
                "showDatasource",
                tag,
                "Get a datasource",
                "`password` is write-only: no response holds it.",
                parameters=one,
                responses={
                    "200": _jsonapi("The datasource.", "DatasourceDocument"),
                    **errors(403, 404, e400=_BAD_QUERY[400]),
                },
                **view,
            ),
            "patch": api_operation(
                "updateDatasource",
                tag,
                "Update a datasource",
                "Only the attributes sent change. The sample datasource allows only `name`, "
                "`enabled`, `data_time_zone` and `max_concurrent_executions`.",
                parameters=one,
                body=_body("DatasourceUpdateDocument", "The attributes to change."),
                responses={
                    "200": _jsonapi("The datasource as it is now.", "DatasourceDocument"),
                    **errors(
                        403,
                        404,
                        *_WITH_BODY,
                        e400=_BAD_DOCUMENT,
                        e409=f"`sample_datasource_fixed`; or {_WRONG_TYPE_OR_ID}",
                        e422=invalid,
                    ),
                },
                **manage,
            ),
            "delete": api_operation(
                "deleteDatasource",
                tag,
                "Delete a datasource",
                "Its executions, their stored results and its schema go with it: queued and "
                "running executions end without storing anything, and data tokens handed out "
                "before answer 404 `result_gone` on the data server.",
                responses={**_DELETED, **errors(403, 404)},
                **manage,
            ),
        },
        "/datasources/{id}/test_connection": {
            "parameters": [DATASOURCE_ID],
            "post": api_operation(
                "testDatasourceConnection",
                tag,
                "Test Datasource Connection",
                "A data server opens the datasource; the answer waits for the outcome (at most "
                f"{datasource_actions.CONNECTION_TEST_TIMEOUT_SECONDS} s, then `error`). Takes "
                "no body.",
                responses={
                    "200": oa.response("The outcome.", oa.ref("ConnectionTestResult"), JSON),
                    **errors(403, 404, e409="The datasource is disabled (`datasource_disabled`)."),
                },
                **manage,
            ),
        },
        "/datasources/{id}/refresh": {
            "parameters": [DATASOURCE_ID],
            "post": api_operation(
                "refreshDatasource",
                tag,
                "Refresh Datasource",
                "Queues a `datasource_refresh` execution that records the schema. Takes no body.",
                responses={
                    "200": oa.response(
                        "The refresh is queued.",
                        oa.obj({"execution_id": oa.string(format="uuid")}, ["execution_id"]),
                        JSON,
                    ),
                    **errors(403, 404, e409="The datasource is disabled (`datasource_disabled`)."),
                },
                **manage,
            ),
        },
        "/datasources/{id}/schema": {
            "parameters": [DATASOURCE_ID],
            "get": api_operation(
                "getDatasourceSchema",
                tag,
                "Get Datasource Schema",
                "A data key and token for the newest recorded schema; fetch it from the data "
                "server (`GET /data/{data_key}`, passing `name` on to narrow it).",
                parameters=[
                    oa.query_parameter(
                        "name",
                        "Only this schema (checked here, applied by the data server).",
                        oa.string(pattern=datasource_actions.SCHEMA_NAME.pattern),
                    )
                ],
                responses={
                    "200": oa.response("A data grant for the schema.", oa.ref("DataGrant"), JSON),
                    **errors(
                        403,
                        e400=_BAD_QUERY[400],
                        e404="No such datasource, or no schema of that `name` "
                        "(`schema_not_found`).",
                        e409="No schema recorded yet: refresh and wait for it to complete "
                        "(`schema_not_available`).",
                    ),
                },
                **view,
            ),
        },
    }


# ---------------------------------------------------------------- datasource files


def _datasource_file_schemas() -> dict[str, oa.Schema]:
    storage = oa.obj(
        {
            "used_bytes": oa.integer("Files and stored results together."),
            "quota_bytes": oa.integer("`DATAFERRY_MAX_ORGANIZATION_STORAGE_MB`, in bytes."),
            "files_bytes": oa.integer("Every file in the organisation's area."),
            "results_bytes": oa.integer("Stored results of its executions not yet purged."),
        },
        ["used_bytes", "quota_bytes", "files_bytes", "results_bytes"],
        "The organisation's storage against its quota.",
    )
    change = oa.obj(
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
    )
    collection_meta = oa.obj(
        {
            "total": oa.integer("Files in the whole collection."),
            "page": oa.obj({"number": oa.integer(), "size": oa.integer()}),
            "storage": oa.ref("StorageUsage"),
        },
        ["total", "page", "storage"],
        closed=False,
    )
    types = {
        "name": oa.string("The file's name, which is also its id; its stem names the view."),
        "format": oa.enum(f.value for f in FileFormat),
        "size": oa.integer("Bytes."),
        "modified_at": oa.timestamp(),
    }
    return {
        "StorageUsage": storage,
        "FileChangeMeta": change,
        "DatasourceFileAttributes": attributes(serializers.DATASOURCE_FILE_ATTRIBUTES, types),
        "DatasourceFile": resource("datasource_files", "DatasourceFileAttributes", {}, oa.string()),
        "DatasourceFileDocument": single("DatasourceFile"),
        "DatasourceFileChangeDocument": single("DatasourceFile", meta=oa.ref("FileChangeMeta")),
        "DatasourceFileCollection": oa.obj(
            {
                "data": oa.array(oa.ref("DatasourceFile")),
                "links": oa.ref("PaginationLinks"),
                "meta": collection_meta,
            },
            ["data", "links", "meta"],
            closed=False,
        ),
        "FileDeletedDocument": oa.obj({"meta": oa.ref("FileChangeMeta")}, ["meta"], closed=False),
    }


def _upload_body(kinds: Iterable[tuple[str, FileKind]], what: str) -> dict[str, Any]:
    media_types = sorted({media for _, kind in kinds for media in accepted_media_types(kind)})
    binary = {"type": "string", "format": "binary"}
    return {
        "required": True,
        "description": what,
        "content": {media: {"schema": binary} for media in media_types},
    }


def _datasource_file_paths() -> dict[str, Any]:
    tag = "Datasource files"
    view, manage = needs(Permission.VIEW_DATASOURCES), needs(Permission.MANAGE_DATASOURCES)
    fields = fields_parameter("datasource_files", serializers.DATASOURCE_FILE_ATTRIBUTES)
    name = oa.path_parameter(
        "name",
        "The file's name, percent-encoded: one path segment with a suffix the views read "
        f"({_codes(VIEW_FILE_SUFFIXES)}), at most {file_service.MAX_NAME_BYTES} bytes, not "
        "starting with a dot or a space; the characters datasource paths allow.",
        oa.string(minLength=1),
    )
    quota = (
        "The organisation's storage (files in its area plus stored results) is counted against "
        "`DATAFERRY_MAX_ORGANIZATION_STORAGE_MB`; the usage comes back in `meta.storage`."
    )
    wrong_type = "`wrong_database_type`: the datasource is not of a type that has these files"
    put_errors = {
        "e400": "A query parameter other than `fields[datasource_files]` was sent, or the client "
        "closed the connection mid-upload (`client_disconnected`).",
        "e404": "No such datasource (or outside the key's datasources).",
        "e408": f"No data arrived for {http_limits.BODY_TIMEOUT_SECONDS:.0f} s; nothing written.",
        "e409": f"{wrong_type}; `datasource_read_only` (an operator's shared folder); "
        "`file_name_taken` (another file gives the same view name, or a folder has this name); "
        "`datasource_unavailable` (its path no longer resolves).",
        "e413": "Past `DATAFERRY_MAX_UPLOAD_MB` (`upload_too_large`) or the organisation's "
        "storage quota (`storage_quota_exceeded`), decided from `Content-Length` before the body "
        "is read and again as it arrives; nothing written, the connection closes.",
        "e415": "`Content-Type` is neither `application/octet-stream` nor the format's own.",
        "e422": "`invalid_file_name` or `unsupported_file_type` (`source.parameter` is `name`); "
        "`file_not_parsable`: the body does not read as its format; nothing written.",
        "e503": "The server could not store the file (`storage_unavailable`); nothing written.",
    }
    refresh = (
        "Then a refresh of the datasource is queued (`meta.refresh_execution_id`) so that its "
        "schema follows."
    )
    return {
        "/datasources/{id}/files": {
            "parameters": [DATASOURCE_ID],
            "get": api_operation(
                "listDatasourceFiles",
                tag,
                "List a files datasource's files",
                "The files whose views the datasource makes (temporary files of uploads under way "
                f"are not listed), paged, sortable by name, size and modified_at. {quota}",
                parameters=[
                    *collection_parameters(
                        "datasource_files",
                        file_service.SORTABLE,
                        (),
                        serializers.DATASOURCE_FILE_ATTRIBUTES,
                    )
                ],
                responses={
                    "200": _jsonapi("A page of files.", "DatasourceFileCollection"),
                    **errors(403, 404, e400=_BAD_QUERY[400], e409=f"{wrong_type}."),
                },
                **view,
            ),
        },
        "/datasources/{id}/files/{name}": {
            "parameters": [DATASOURCE_ID, name],
            "get": api_operation(
                "showDatasourceFile",
                tag,
                "Get a file's metadata",
                "Its name, format, size and modification time (not its content).",
                parameters=[fields],
                responses={
                    "200": _jsonapi("The file.", "DatasourceFileDocument"),
                    **errors(
                        403,
                        404,
                        409,
                        422,
                        e400=_BAD_QUERY[400],
                        e404="No such datasource, or no such file (`file_not_found`).",
                        e409=f"{wrong_type}.",
                    ),
                },
                **view,
            ),
            "put": api_operation(
                "uploadDatasourceFile",
                tag,
                "Upload a file",
                "The body is the file itself, streamed to disk beside its target: it replaces "
                "a file of that name whole (200) or creates it (201), only after it was checked "
                "to read as its format (Parquet footer; CSV, TSV and JSON sniffed on their first "
                "rows), and never partly: a refused, failed or interrupted upload writes nothing. "
                f"Two files may not share a view name (their stem, case-insensitively). {quota} "
                f"{refresh}",
                parameters=[fields],
                body=_upload_body(VIEW_FILE_SUFFIXES.items(), "The file's bytes."),
                responses={
                    "200": _jsonapi("Replaced.", "DatasourceFileChangeDocument"),
                    "201": _jsonapi(
                        "Created.", "DatasourceFileChangeDocument", headers=_CREATED_HEADERS
                    ),
                    **errors(403, 404, 408, 409, 413, 415, 422, 503, **put_errors),
                },
                **manage,
            ),
            "delete": api_operation(
                "deleteDatasourceFile",
                tag,
                "Delete a file",
                f"Its view goes with the next refresh. {refresh}",
                responses={
                    "200": _jsonapi("Deleted.", "FileDeletedDocument"),
                    **errors(
                        403,
                        404,
                        409,
                        422,
                        e400=_BAD_QUERY[400],
                        e404="No such datasource, or no such file (`file_not_found`).",
                        e409=f"{wrong_type}; `datasource_read_only`.",
                        e422=put_errors["e422"],
                    ),
                },
                **manage,
            ),
        },
        "/datasources/{id}/database_file": {
            "parameters": [DATASOURCE_ID],
            "get": api_operation(
                "showDatabaseFile",
                tag,
                "Get a database file's metadata",
                "The DuckDB or SQLite file a `duckdb` or `sqlite` datasource attaches.",
                parameters=[fields],
                responses={
                    "200": _jsonapi("The file.", "DatasourceFileDocument"),
                    **errors(
                        403,
                        404,
                        409,
                        e400=_BAD_QUERY[400],
                        e404="No such datasource, or its file does not exist (`file_not_found`).",
                        e409=f"{wrong_type}.",
                    ),
                },
                **view,
            ),
            "put": api_operation(
                "uploadDatabaseFile",
                tag,
                "Upload a database file",
                "The body is a DuckDB (`duckdb` datasource) or SQLite (`sqlite`) database file. It "
                "is checked by opening it read-only (DuckDB with external access off) and then "
                "replaces the datasource's file atomically: executions running meanwhile finish "
                f"on the old one. {quota} {refresh}",
                parameters=[fields],
                body=_upload_body(DATABASE_FILE_FORMATS.items(), "The database file's bytes."),
                responses={
                    "200": _jsonapi("Replaced.", "DatasourceFileChangeDocument"),
                    "201": _jsonapi(
                        "Created (the datasource's file did not exist).",
                        "DatasourceFileChangeDocument",
                        headers=_CREATED_HEADERS,
                    ),
                    **errors(
                        403,
                        404,
                        408,
                        409,
                        413,
                        415,
                        422,
                        503,
                        **{**put_errors, "e422": "`file_not_parsable`; nothing written."},
                    ),
                },
                **manage,
            ),
        },
    }


DATA_URL = oa.string(
    "The data on the region's public data-server address with the token in its query "
    "(`?token=`), for clients that cannot send headers: it expires with the token.",
    format="uri",
)


def _execution_paths() -> dict[str, Any]:
    tag = "Executions"
    run, read = needs(*executions.RUN_PERMISSIONS), needs(*executions.READ_PERMISSIONS)
    grant = oa.obj(
        {
            "data_key": oa.string("Where the data server finds the result."),
            "data_access_token": oa.string("Send as `Authorization: Data <token>`."),
            "data_timestamp": oa.integer("When the execution completed, in unix seconds."),
            "data_url": DATA_URL,
        },
        ["data_key", "data_access_token", "data_timestamp", "data_url"],
        closed=False,
    )
    return {
        "/datasources/{id}/executions": {
            "parameters": [DATASOURCE_ID],
            "post": api_operation(
                "runExecution",
                tag,
                "Run Execution",
                "Queues the SQL and answers at once with status `starting`; follow it with "
                "Get Execution. Snippets are expanded and parameters bound before anything is "
                "queued: a problem is a 422 and no execution is created. Run-and-wait (beyond "
                "Cluvio): with `?wait=N` the answer comes when the execution ended or N seconds "
                "passed, in whatever state it reached; a completed one carries its data grant "
                "in `meta` (as Get Execution Data hands it out), so run and fetch are two "
                "requests. Without `wait` the answer is exactly Cluvio's.",
                parameters=[IDEMPOTENCY_KEY, WAIT],
                body=_body("RunExecutionRequest", "The SQL and its parameters.", JSON),
                responses={
                    "200": oa.response(
                        "The queued execution; with `wait`, as it is then, and `meta` the data "
                        "grant once it completed.",
                        oa.obj(
                            {"data": oa.ref("Execution"), "meta": grant}, ["data"], closed=False
                        ),
                        JSONAPI_MEDIA_TYPE,
                    ),
                    **errors(
                        403,
                        404,
                        *_WITH_BODY,
                        e400="`wait` is out of range, another query parameter was sent, or the "
                        "body is not JSON (`malformed_json`); nothing is queued.",
                        e409="The datasource is disabled (`datasource_disabled`).",
                        e422="The body or its parameters are not valid: `invalid_sql_query`, "
                        "`too_long`, `r_query_not_supported`, `unknown_attribute`, the "
                        "parameter codes of docs/sql-parameters.md, a snippet problem, "
                        "`invalid_idempotency_key` or `idempotency_key_reused`.",
                        e429="The key's rate limit (`rate_limited`), or the organisation "
                        "already has its most executions running (`too_many_running_executions`, "
                        "`Retry-After: 1`).",
                    ),
                },
                **run,
            ),
        },
        "/executions/{id}": {
            "parameters": [EXECUTION_ID],
            "get": api_operation(
                "getExecution",
                tag,
                "Get Execution",
                "Executions are visible for 24 hours after they started (then 404).",
                parameters=[WAIT],
                responses={
                    "200": _jsonapi("The execution.", "ExecutionDocument"),
                    **errors(403, 404, e400="`wait` is out of range, or another parameter sent."),
                },
                **read,
            ),
            "delete": api_operation(
                "purgeExecutionResult",
                tag,
                "Purge an execution's result",
                "Deletes the stored result now (beyond Cluvio); the execution stays visible and "
                "Get Execution Data answers 404 `result_gone`. An unfinished execution is "
                "cancelled as by Cancel, so it never stores a result.",
                responses={**_DELETED, **errors(403, 404)},
                **run,
            ),
        },
        "/executions/{id}/data": {
            "parameters": [EXECUTION_ID],
            "get": api_operation(
                "getExecutionData",
                tag,
                "Get Execution Data",
                "A data key and a fresh short-lived token for the result, to fetch from the "
                "data server. Data is kept 24 hours after completion.",
                responses={
                    "200": oa.response("A data grant.", grant, JSON),
                    "204": oa.response("No data: not completed yet, failed or cancelled."),
                    **errors(
                        403,
                        e404="No such execution, or its data expired or was deleted "
                        "(`result_gone`).",
                    ),
                },
                **read,
            ),
        },
        "/executions/{id}/cancel": {
            "parameters": [EXECUTION_ID],
            "post": api_operation(
                "cancelExecution",
                tag,
                "Cancel an execution",
                "Beyond Cluvio: asks the worker to stop; `cancel_requested` shows until it has. "
                "A 200 is final: the execution ends `cancelled` even if its query finishes "
                "meanwhile (that result is refused and deleted). 409 if it ended before the "
                "cancel reached it. Takes no body.",
                responses={
                    "200": _jsonapi("The execution.", "ExecutionDocument"),
                    **errors(403, 404, e409="It already ended (`execution_finished`)."),
                },
                **run,
            ),
        },
    }


def _snippet_paths() -> dict[str, Any]:
    tag = "SQL snippets"
    view, manage = needs(Permission.VIEW_DASHBOARDS), needs(Permission.MANAGE_DASHBOARDS)
    fields = fields_parameter("sql_snippets", (*serializers.SQL_SNIPPET_ATTRIBUTES, "sql_snippet"))
    invalid = "An attribute is unknown, read-only or invalid (e.g. a reserved `CLUVIO_` name)."
    taken = f"The name is taken (`sql_snippet_name_taken`); or {_WRONG_TYPE_OR_ID}"
    return {
        "/sql_snippets": {
            "get": api_operation(
                "listSqlSnippets",
                tag,
                "List SQL snippets",
                "The organisation's snippets, paged.",
                parameters=collection_parameters(
                    "sql_snippets",
                    snippet_service.SORTABLE,
                    snippet_service.FILTERABLE,
                    (*serializers.SQL_SNIPPET_ATTRIBUTES, "sql_snippet"),
                ),
                responses={
                    "200": _jsonapi("A page of snippets.", "SqlSnippetCollection"),
                    **errors(403, e400=_BAD_QUERY[400]),
                },
                **view,
            ),
            "post": api_operation(
                "createSqlSnippet",
                tag,
                "Create a SQL snippet",
                "`[name]` in a query is then replaced by this SQL.",
                parameters=[fields],
                body=_body("SqlSnippetCreateDocument", "The new snippet."),
                responses={
                    "201": _jsonapi("Created.", "SqlSnippetDocument", headers=_CREATED_HEADERS),
                    **errors(
                        *_WITH_BODY,
                        e400=_BAD_DOCUMENT,
                        e403=f"The key lacks the permission. {_NO_CLIENT_IDS}",
                        e409=taken,
                        e422=invalid,
                    ),
                },
                **manage,
            ),
        },
        "/sql_snippets/{id}": {
            "parameters": [SNIPPET_ID],
            "get": api_operation(
                "showSqlSnippet",
                tag,
                "Get a SQL snippet",
                "One snippet of the organisation.",
                parameters=[fields],
                responses={
                    "200": _jsonapi("The snippet.", "SqlSnippetDocument"),
                    **errors(403, 404, e400=_BAD_QUERY[400]),
                },
                **view,
            ),
            "patch": api_operation(
                "updateSqlSnippet",
                tag,
                "Update a SQL snippet",
                "Only the attributes sent change.",
                parameters=[fields],
                body=_body("SqlSnippetUpdateDocument", "The attributes to change."),
                responses={
                    "200": _jsonapi("The snippet as it is now.", "SqlSnippetDocument"),
                    **errors(403, 404, *_WITH_BODY, e400=_BAD_DOCUMENT, e409=taken, e422=invalid),
                },
                **manage,
            ),
            "delete": api_operation(
                "deleteSqlSnippet",
                tag,
                "Delete a SQL snippet",
                "Queries that still use `[name]` then fail with 422 `unknown_sql_snippet`.",
                responses={**_DELETED, **errors(403, 404)},
                **manage,
            ),
        },
    }
