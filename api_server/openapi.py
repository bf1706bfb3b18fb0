"""The API server's OpenAPI document, assembled from the declared resources and operations.

Nothing here describes an operation: each is documented where it is declared
(``api_server/resources/``), and the schemas come from the models that validate and serialise, so
the document cannot drift from the code; tests/contract/test_openapi.py checks that every route is
described and every described operation is routed.
"""

from __future__ import annotations

from typing import Any

from api_server.resource_layer import documentation
from api_server.resources import OPERATION_SETS, all_operations
from shared import openapi as oa
from shared.web import operations as web
from shared.web.health import database_answers
from shared.web.service import service_operations

# The readiness checks /readyz runs (and documents).
READINESS = (("database", database_answers),)

TAGS = {
    **{operations.tag: operations.description for operations in OPERATION_SETS},
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


def operations() -> list[web.Operation]:
    """Every operation of the server: those both servers have, then the declared resources'."""
    return [*service_operations(READINESS, build_document), *all_operations()]


def build_document() -> dict[str, Any]:
    paths = web.paths(operations())
    return oa.document(
        "dataferry API server",
        oa.package_version(),
        DESCRIPTION,
        TAGS,
        paths,
        web.referenced_schemas(paths.values(), _declared_schemas()),
    )


def _declared_schemas() -> dict[str, oa.Schema]:
    """Every schema a declaration can offer; the document keeps those its operations use."""
    schemas = dict(documentation.COLLECTION_SCHEMAS)
    for operations in OPERATION_SETS:
        for resource_type in operations.resource_types:
            schemas.update(documentation.resource_schemas(resource_type))
        schemas.update(operations.schemas)
    return schemas
