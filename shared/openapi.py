"""OpenAPI 3.1 building blocks shared by both servers, and the routes that publish a document.

Each server describes its own operations (``<server>/openapi.py``); this module holds what they
share: schema helpers, the JSON:API error document and the reusable error responses, the security
schemes, and the operations both servers have (health, metrics, these docs). The routes that
publish a document are in ``shared.web.routing``; its HTML rendering for ``/docs`` in
``shared.reference_page``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from pydantic import BaseModel

from shared.errors import (
    AppError,
    BadRequest,
    Conflict,
    Forbidden,
    HeaderFieldsTooLarge,
    MethodNotAllowed,
    NotAcceptable,
    NotFound,
    PayloadTooLarge,
    PreconditionFailed,
    RangeNotSatisfiable,
    RequestTimeout,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
    Unprocessable,
    UnsupportedMediaType,
    UriTooLong,
)
from shared.problems import JSONAPI_MEDIA_TYPE
from shared.request_bounds import (
    MAX_HEADER_BYTES,
    MAX_HEADER_FIELDS,
    MAX_PIPELINED_REQUESTS,
    MAX_REQUEST_TARGET_BYTES,
)
from shared.tokens import URL_TOKEN_PARAMETER

OPENAPI_VERSION = "3.1.0"
JSON_MEDIA_TYPE = "application/json"

Schema = dict[str, Any]


# ---------------------------------------------------------------- schema helpers


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def string(description: str | None = None, **constraints: Any) -> Schema:
    return _described({"type": "string", **constraints}, description)


def integer(description: str | None = None, **constraints: Any) -> Schema:
    return _described({"type": "integer", **constraints}, description)


def boolean(description: str | None = None) -> Schema:
    return _described({"type": "boolean"}, description)


def timestamp(description: str | None = None) -> Schema:
    return string(description, format="date-time")


def enum(values: Iterable[str], description: str | None = None) -> Schema:
    return string(description, enum=list(values))


def const(value: str, description: str | None = None) -> Schema:
    return string(description, const=value)


def nullable(schema: Schema) -> Schema:
    """OpenAPI 3.1 spells "or null" as a type list (3.0's ``nullable`` is gone)."""
    if isinstance(schema.get("type"), str) and "enum" not in schema and "const" not in schema:
        return {**schema, "type": [schema["type"], "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def array(items: Schema, description: str | None = None, **constraints: Any) -> Schema:
    return _described({"type": "array", "items": items, **constraints}, description)


def obj(
    properties: Mapping[str, Schema],
    required: Iterable[str] = (),
    description: str | None = None,
    *,
    closed: bool = True,
) -> Schema:
    """An object schema; ``closed`` (no other members) is how the server reads request bodies."""
    schema: Schema = {"type": "object", "properties": dict(properties)}
    if required := list(required):
        schema["required"] = required
    if closed:
        schema["additionalProperties"] = False
    return _described(schema, description)


def model_schema(model: type[BaseModel], **refinements: Schema) -> Schema:
    """A pydantic model's JSON Schema without pydantic's noise (titles, ``default: null``),
    with ``refinements`` merged into the named properties (enums a validator enforces)."""
    schema = model.model_json_schema()
    schema = _without_noise(_inlined(schema, schema.pop("$defs", {})))
    for name, extra in refinements.items():
        schema["properties"][name] = {**schema["properties"][name], **extra}
    return schema


def model_schemas(models: Mapping[str, type[BaseModel]]) -> dict[str, Schema]:
    """Component schemas of models that nest one another (a request body and its parts): where
    one uses another of ``models``, it refers to that one's component by name."""
    components = {model.__name__: name for name, model in models.items()}
    schemas = {}
    for name, model in models.items():
        schema = model.model_json_schema()
        schemas[name] = _without_noise(_inlined(schema, schema.pop("$defs", {}), components))
    return schemas


def _inlined(
    schema: Any, definitions: Mapping[str, Schema], components: Mapping[str, str] | None = None
) -> Any:
    """``$ref``s into pydantic's ``$defs`` replaced by what they name (an enum a field uses), so
    the schema stands alone inside the document's components; or, for a model that has a
    component of its own (``components``: class name → component name), by a ``$ref`` to it."""
    components = components or {}
    if isinstance(schema, dict):
        target = schema.get("$ref", "")
        if target.startswith("#/$defs/"):
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            defined = target.removeprefix("#/$defs/")
            if defined in components:
                return {**ref(components[defined]), **rest}
            return {**_inlined(definitions[defined], definitions, components), **rest}
        return {key: _inlined(value, definitions, components) for key, value in schema.items()}
    if isinstance(schema, list):
        return [_inlined(item, definitions, components) for item in schema]
    return schema


def _without_noise(schema: Any) -> Any:
    if isinstance(schema, dict):
        cleaned = {
            key: _without_noise(value)
            for key, value in schema.items()
            if key != "title" and not (key == "default" and value is None)
        }
        members = cleaned.get("anyOf")
        if isinstance(members, list) and len(members) == 2 and {"type": "null"} in members:
            # pydantic's "X | None" as this module spells it (``nullable``)
            other = next(m for m in members if m != {"type": "null"})
            rest = {key: value for key, value in cleaned.items() if key != "anyOf"}
            return {**nullable(other), **rest} if "anyOf" not in nullable(other) else cleaned
        return cleaned
    if isinstance(schema, list):
        return [_without_noise(item) for item in schema]
    return schema


def _described(schema: Schema, description: str | None) -> Schema:
    return {**schema, "description": description} if description else schema


# ---------------------------------------------------------------- operations


def content(schema: Schema, media_type: str = JSON_MEDIA_TYPE) -> dict[str, Any]:
    return {media_type: {"schema": schema}}


def response(
    description: str,
    schema: Schema | None = None,
    media_type: str = JSON_MEDIA_TYPE,
    headers: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A success response; ``headers`` maps a header name to its description."""
    answer: dict[str, Any] = {"description": description}
    if schema is not None:
        answer["content"] = content(schema, media_type)
    if headers:
        answer["headers"] = {
            name: {"description": text, "schema": string()} for name, text in headers.items()
        }
    return answer


def parameter(
    name: str,
    location: str,
    schema: Schema,
    description: str,
    *,
    required: bool = False,
) -> dict[str, Any]:
    param: dict[str, Any] = {
        "name": name,
        "in": location,
        "description": description,
        "schema": schema,
    }
    if required or location == "path":
        param["required"] = True
    return param


def path_parameter(name: str, description: str, schema: Schema | None = None) -> dict[str, Any]:
    return parameter(name, "path", schema or string(), description)


def query_parameter(name: str, description: str, schema: Schema | None = None) -> dict[str, Any]:
    return parameter(name, "query", schema or string(), description)


def request_body(schema: Schema, media_type: str, description: str) -> dict[str, Any]:
    return {"required": True, "description": description, "content": content(schema, media_type)}


def operation(
    operation_id: str,
    tag: str,
    summary: str,
    description: str,
    responses: dict[str, Any],
    *,
    security: Iterable[str] = (),
    parameters: Iterable[dict[str, Any]] = (),
    body: dict[str, Any] | None = None,
    **extensions: Any,
) -> dict[str, Any]:
    """One operation object; ``security`` names the schemes any one of which admits a request,
    none: no credentials at all."""
    op: dict[str, Any] = {
        "operationId": operation_id,
        "tags": [tag],
        "summary": summary,
        "description": description,
        "security": [{scheme: []} for scheme in security],
    }
    if parameters := list(parameters):
        op["parameters"] = parameters
    if body is not None:
        op["requestBody"] = body
    op["responses"] = responses
    op.update({f"x-{name.replace('_', '-')}": value for name, value in extensions.items()})
    return op


# ---------------------------------------------------------------- errors and security

# Each error class the servers raise, with what its status means in this API.
_ERROR_RESPONSES: dict[type[AppError], str] = {
    BadRequest: "A query parameter, or the request body, is malformed or not supported here; "
    "`source.parameter` or `source.pointer` names it.",
    Unauthorized: "The credentials are missing or not valid: every cause gets the same answer.",
    Forbidden: "The credentials are valid but do not allow this operation.",
    NotFound: "No such object, or it belongs to another organisation or lies outside the key's "
    "datasources: the answers are the same.",
    MethodNotAllowed: "The path does not take this method; `Allow` lists those it takes.",
    NotAcceptable: "The `Accept` header admits no media type this operation produces.",
    RequestTimeout: "The request body did not fully arrive within 30 s (one declared at most 64 "
    "KiB long: within 10 s, as a request head).",
    Conflict: "The request conflicts with the current state of the object (see `code`).",
    PayloadTooLarge: "The request body exceeds 1 MiB.",
    UnsupportedMediaType: "The request body was not sent with the media type this operation takes.",
    Unprocessable: "The body is well-formed but its values are not valid; each problem is one "
    "error object whose `source.pointer` names the member at fault. Nothing was changed.",
    PreconditionFailed: "`If-Match` names no current representation.",
    RangeNotSatisfiable: "No range of the `Range` header starts within the representation; "
    "`Content-Range: bytes */<size>` gives its size.",
    TooManyRequests: "A rate limit is used up; retry after `Retry-After` seconds.",
    UriTooLong: "The path and query exceed 16 KiB.",
    HeaderFieldsTooLarge: "The request headers exceed 32 KiB.",
    ServiceUnavailable: "A dependency of the server cannot be reached right now.",
}
_ERROR_HEADERS = {
    401: {"WWW-Authenticate": "The scheme to authenticate with (`Api` or `Data`)."},
    405: {"Allow": "The methods this path takes."},
    416: {"Content-Range": "`bytes */<size>`: the size of the representation."},
    429: {"Retry-After": "Seconds to wait before trying again."},
}


def error_response_name(status: int) -> str:
    return next(cls.__name__ for cls in _ERROR_RESPONSES if cls.status == status)


def error_responses(statuses: Iterable[int], notes: Mapping[int, str] | None = None) -> dict:
    """References to the shared error responses; a note (the codes an operation gives, say)
    overrides the shared description, as OpenAPI 3.1 lets a reference do."""
    notes = notes or {}
    answers = {}
    for status in sorted(set(statuses) | set(notes)):
        answer = {"$ref": f"#/components/responses/{error_response_name(status)}"}
        if status in notes:
            answer["description"] = notes[status]
        answers[str(status)] = answer
    return answers


def _error_components() -> dict[str, Any]:
    error_object = obj(
        {
            "status": string("The HTTP status, as a string.", pattern=r"^[45][0-9]{2}$"),
            "code": string("Stable and machine-readable, e.g. `invalid_query_parameter`."),
            "title": string("The same for every error of this status."),
            "detail": string("What went wrong in this request, for a human."),
            "source": {
                "description": "Which part of the request is at fault, when one is.",
                "oneOf": [
                    obj({"pointer": string("A JSON Pointer into the request body.")}, ["pointer"]),
                    obj({"parameter": string("The query parameter at fault.")}, ["parameter"]),
                ],
            },
        },
        ["status", "code", "title", "detail"],
    )
    errors = obj(
        {"errors": array(ref("ErrorObject"), minItems=1)},
        ["errors"],
        "A JSON:API error document: every failure of either server looks like this.",
    )
    responses = {
        cls.__name__: response(
            f"{cls.title}. {meaning}",
            ref("Errors"),
            JSONAPI_MEDIA_TYPE,
            _ERROR_HEADERS.get(cls.status),
        )
        for cls, meaning in _ERROR_RESPONSES.items()
    }
    return {"schemas": {"ErrorObject": error_object, "Errors": errors}, "responses": responses}


SECURITY_SCHEMES = {
    "ApiKey": {
        "type": "apiKey",
        "in": "header",
        "name": "Authorization",
        "description": "An API key of the organisation: `Authorization: Api <secret>`, where the "
        "secret looks like `dfk_<40 characters>_<checksum>`.",
    },
    "DataToken": {
        "type": "apiKey",
        "in": "header",
        "name": "Authorization",
        "description": "A short-lived data access token for exactly one data key, as issued by the "
        "API server: `Authorization: Data <token>`.",
    },
    "DataTokenInUrl": {
        "type": "apiKey",
        "in": "query",
        "name": URL_TOKEN_PARAMETER,
        "description": "The same data access token in the query, as a grant's `data_url` carries "
        "it, for clients that cannot send headers. Ignored when `Authorization` is sent.",
    },
}


# ---------------------------------------------------------------- the document

COMMON_BEHAVIOUR = f"""

Every GET also answers HEAD. Any request may get 400 (a NUL character in the path or query; \
`invalid_http_request`, which closes the connection, for bytes that are not HTTP/1.1 or framing \
a proxy could read otherwise: both `Content-Length` and `Transfer-Encoding`, a transfer coding \
other than `chunked`, an HTTP/1.1 request without exactly one `Host`, a body on a request that \
asks for a protocol upgrade), 404 (no such route), 405 (the path does not take the method; \
`Allow` lists those it takes), 414 (path and query above {MAX_REQUEST_TARGET_BYTES // 1024} KiB), \
431 (header fields above {MAX_HEADER_BYTES // 1024} KiB or {MAX_HEADER_FIELDS} fields; trailer \
fields alike), 500, or 503: `too_many_connections` (the server holds its connection limit; \
`Retry-After: 1`), `database_unavailable` (the server cannot reach its metadata database; no \
`Retry-After`: a change may or may not have been made), `server_stopping` (the server stopped \
before the request ended: a slow upload, a long wait; no `Retry-After` either). Every response carries `X-Request-Id`, \
except the refusals made while the request is read (400, 414, 431) and `too_many_connections`, \
which are answered before any route and close the connection. A request pipelined behind more \
than {MAX_PIPELINED_REQUESTS} others is not answered: the connection closes after theirs. Every error is a JSON:API error document \
(`Errors`)."""


def package_version() -> str:
    try:
        return version("dataferry")
    except PackageNotFoundError:  # running from a checkout that was never installed
        return "0.0.0"


def document(
    title: str,
    version: str,
    description: str,
    tags: Mapping[str, str],
    paths: Mapping[str, dict[str, Any]],
    schemas: Mapping[str, Schema] | None = None,
) -> dict[str, Any]:
    """A whole OpenAPI 3.1 document; no ``servers``, so every path is relative to this server."""
    shared = _error_components()
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": title, "version": version, "description": description},
        "tags": [{"name": name, "description": text} for name, text in tags.items()],
        "paths": dict(paths),
        "components": {
            "schemas": {**shared["schemas"], **(schemas or {})},
            "responses": shared["responses"],
            "securitySchemes": SECURITY_SCHEMES,
        },
    }


# ---------------------------------------------------------------- operations of both servers

OPERATIONS_TAG = "Operations"
DOCUMENTATION_TAG = "Documentation"
SHARED_TAGS = {
    OPERATIONS_TAG: "Liveness, readiness and metrics, for load balancers and monitoring.",
    DOCUMENTATION_TAG: "This reference, as OpenAPI and as HTML.",
}
