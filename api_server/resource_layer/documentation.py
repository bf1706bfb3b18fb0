"""The OpenAPI description of declared resources, derived, never written per operation.

A resource type gives its schemas (attributes from its model, the resource object, the single and
collection documents, the create and update documents) and its collection parameters; the
vocabulary here (responses, bodies, the notes of common errors) is what the API server's
operations declare with. Their path items are derived in ``shared.web.operations``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from api_server import jsonapi
from api_server.resource_layer.resource_types import ResourceType
from api_server.services import listing
from shared import openapi as oa
from shared.problems import JSONAPI_MEDIA_TYPE

BAD_QUERY = "A query parameter is unknown or malformed (`invalid_query_parameter`)."
BAD_DOCUMENT = (
    "A query parameter is unknown or malformed (`invalid_query_parameter`), the body is not JSON "
    "(`malformed_json`) or not a document with one resource object in `data` (`bad_request`)."
)
WRONG_TYPE_OR_ID = "`data.type` is not this endpoint's type, or `data.id` is not the URL's id."
NO_CLIENT_IDS = "Client-generated ids are not supported (`data.id` was sent)."
DELETED = {"204": oa.response("Deleted.")}
CREATED_HEADERS = {"Location": "The new resource's URL."}


def codes(names: Iterable[str]) -> str:
    return ", ".join(f"`{name}`" for name in names)


def jsonapi_response(
    description: str, schema_name: str, headers: Mapping[str, str] | None = None
) -> dict[str, Any]:
    return oa.response(description, oa.ref(schema_name), JSONAPI_MEDIA_TYPE, headers)


def request_body(
    schema_name: str, description: str, media_type: str = JSONAPI_MEDIA_TYPE
) -> dict[str, Any]:
    return oa.request_body(oa.ref(schema_name), media_type, description)


# ---------------------------------------------------------------- query parameters


def _sort_pattern(sort_keys: str) -> str:
    """Keys from ``sort_keys`` (an alternation), none named twice (the lookahead refuses a key
    that comes again later, with or without its `-`)."""
    repeated = rf"(?:.*,)?-?({sort_keys})(?:,.*)?,-?\1(?:,|$)"
    return rf"^(?!{repeated})-?({sort_keys})(,-?({sort_keys}))*$"


def comma_list(names: Iterable[str]) -> oa.Schema:
    """A comma-separated list of ``names`` as ``parse_collection_query`` reads one: empty members
    (and so an empty value) are ignored, anything else is a 400."""
    one = f"({'|'.join(re.escape(name) for name in names)})?"
    return oa.string(pattern=rf"^{one}(,{one})*$")


def fields_parameter(resource: ResourceType) -> dict[str, Any]:
    return oa.query_parameter(
        f"fields[{resource.type}]",
        f"Sparse fieldset: a comma-separated list of {codes(resource.fields)}; an empty list "
        "leaves only `type`, `id` and `links`.",
        comma_list(resource.fields),
    )


def include_parameter(resource: ResourceType) -> dict[str, Any]:
    return oa.query_parameter(
        "include",
        f"Related resources to add under `included`: {codes(resource.includable)}.",
        comma_list(resource.includable),
    )


def one_parameters(resource: ResourceType) -> list[dict[str, Any]]:
    """The query parameters of a request that answers one resource of ``resource``."""
    extra = [include_parameter(resource)] if resource.includable else []
    return [*extra, fields_parameter(resource)]


def collection_parameters(resource: ResourceType) -> list[dict[str, Any]]:
    """JSON:API paging, sorting, filtering and sparse fieldsets, as ``ResourceType.query``
    reads them; any other query parameter is a 400."""
    sort_keys = "|".join(resource.sortable)
    sort = oa.query_parameter(
        "sort",
        "Comma-separated sort keys, `-` for descending, each field at most once; sortable: "
        f"{codes(resource.sortable)}.",
        oa.string(pattern=_sort_pattern(sort_keys)),
    )
    return [
        oa.query_parameter(
            "page[number]",
            "The page to answer, from 1.",
            oa.integer(minimum=1, maximum=jsonapi.MAX_PAGE_NUMBER, default=1),
        ),
        oa.query_parameter(
            "page[size]",
            f"Resources per page (default {listing.DEFAULT_PAGE_SIZE}: a list asked for without it "
            "answers whole up to that many, as Cluvio's, which have no paging, do).",
            oa.integer(minimum=1, maximum=listing.MAX_PAGE_SIZE, default=listing.DEFAULT_PAGE_SIZE),
        ),
        *([sort] if resource.sortable else []),
        *(
            oa.query_parameter(
                f"filter[{declared.name}]",
                declared.description or f"Only resources whose `{declared.name}` equals this.",
                declared.schema,
            )
            for declared in resource.filters
        ),
        *one_parameters(resource),
    ]


def id_parameter(resource: ResourceType) -> dict[str, Any]:
    return oa.path_parameter("id", f"The id of the {resource.noun}.", resource.id_schema)


# ---------------------------------------------------------------- schemas


def _identifier(resource_type: str) -> oa.Schema:
    return oa.obj({"type": oa.const(resource_type), "id": oa.string()}, ["type", "id"])


def _relationship_schema(resource: ResourceType, name: str) -> oa.Schema:
    declared = resource.relationships[name]
    linkage = _identifier(declared.type)
    data = oa.array(linkage) if declared.to_many else linkage
    if declared.nullable or not declared.to_many:  # to-one linkage may always be null
        data = oa.nullable(data)
    return oa.obj({"data": data}, ["data"], declared.description)


def _attributes_schema(resource: ResourceType) -> oa.Schema:
    """What a server answer holds: open, and nothing required (a sparse fieldset leaves any out)."""
    schema = oa.model_schema(resource.output_model)
    properties = {
        name: {**prop, **resource.output_refinements.get(name, {})}
        for name, prop in schema["properties"].items()
    }
    return oa.obj(properties, closed=False)


# Members JSON:API lets a resource object carry, which a write reads as JSON:API shapes them and
# then ignores: declared, so a client (or a fuzzer) knows a wrong shape is a 400.
_IGNORED_MEMBERS: dict[str, oa.Schema] = {
    "links": {
        "type": "object",
        "additionalProperties": {
            "anyOf": [
                {"type": "string", "format": "uri-reference"},
                {"type": "null"},
                oa.obj(
                    {"href": {"type": "string", "format": "uri-reference"}}, ["href"], closed=False
                ),
            ]
        },
        "description": "Ignored; each link a URI reference, null, or an object whose `href` is one.",
    },
    "meta": {"type": "object", "description": "Ignored."},
}


def _write_document(resource: ResourceType, *, update: bool) -> oa.Schema:
    """A JSON:API request document: ``data.type``, ``data.id`` (updates only), attributes; the
    type and id may be left out, as Cluvio's samples do (``jsonapi.parse_resource_document``)."""
    stem = f"{resource.schema_name}{'Update' if update else 'Create'}"
    properties: dict[str, oa.Schema] = {
        "type": oa.const(resource.type, "May be left out: the endpoint's."),
        "attributes": oa.ref(f"{stem}Attributes"),
    }
    required = [] if update else ["attributes"]
    if update:
        properties["id"] = oa.string("Must equal the id in the URL; may be left out.")
    properties |= _IGNORED_MEMBERS
    if resource.settable_relationships:
        needed = () if update else resource.required_on_create
        properties["relationships"] = oa.obj(
            {
                name: resource.relationships[name].accepted or _relationship_schema(resource, name)
                for name in resource.settable_relationships
            },
            needed,
        )
        if needed:
            required.append("relationships")
    return oa.obj({"data": oa.obj(properties, required, closed=False)}, ["data"], closed=False)


def resource_schemas(resource: ResourceType) -> dict[str, oa.Schema]:
    """Every schema of the type; ``document`` keeps those an operation refers to."""
    name = resource.schema_name
    properties: dict[str, oa.Schema] = {
        "type": oa.const(resource.type),
        "id": resource.id_schema,
        "attributes": oa.ref(f"{name}Attributes"),
        "relationships": oa.obj(
            {rel: _relationship_schema(resource, rel) for rel in resource.relationships},
            closed=False,
        ),
    }
    if resource.path is not None or resource.self_links_given:
        properties["links"] = oa.obj({"self": oa.string()}, ["self"], closed=False)
    included = (
        {"included": oa.array({"type": "object"}, f"With `include`: {resource.included_note}")}
        if resource.includable
        else {}
    )
    return {
        f"{name}Attributes": _attributes_schema(resource),
        # JSON:API: `attributes` may be absent, and is when a sparse fieldset names no attribute.
        name: oa.obj(properties, ["type", "id"], closed=False),
        f"{name}Document": oa.obj({"data": oa.ref(name), **included}, ["data"], closed=False),
        f"{name}Collection": oa.obj(
            {
                "data": oa.array(oa.ref(name)),
                "links": oa.ref("PaginationLinks"),
                "meta": resource.collection_meta or oa.ref("CollectionMeta"),
                **included,
            },
            ["data", "links", "meta"],
            closed=False,
        ),
        f"{name}CreateAttributes": {
            **oa.model_schema(resource.create_model),
            **(resource.create_attributes_rule or {}),
        },
        f"{name}UpdateAttributes": oa.model_schema(resource.update_model),
        f"{name}CreateDocument": _write_document(resource, update=False),
        f"{name}UpdateDocument": _write_document(resource, update=True),
    }


COLLECTION_SCHEMAS = {
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
}
