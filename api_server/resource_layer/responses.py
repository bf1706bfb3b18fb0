"""The JSON:API documents of a declared type: one resource, or one page of a collection."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from api_server import jsonapi
from api_server.resource_layer.resource_types import ResourceType


def _with_included(
    document: dict[str, Any],
    query: jsonapi.CollectionQuery,
    included: Iterable[dict[str, Any]] | None,
) -> dict[str, Any]:
    """``included`` (resource objects the handler gathered for ``include``), sparse fieldsets
    applied; a relationship with nothing to include (datasource agents) adds an empty list."""
    if query.include:
        document["included"] = [
            jsonapi.apply_sparse_fields(resource, query) for resource in included or ()
        ]
    return document


def one(
    resource_type: ResourceType,
    query: jsonapi.CollectionQuery,
    row: Any,
    *,
    status_code: int = 200,
    meta: Mapping[str, Any] | None = None,
    included: Iterable[dict[str, Any]] | None = None,
    **serialized: Any,
) -> Response:
    """``row`` as ``{"data": …}``, sparse fieldsets applied; a 201 carries its ``Location``."""
    resource = resource_type.serialize(row, **serialized)
    document = _with_included(
        {"data": jsonapi.apply_sparse_fields(resource, query)}, query, included
    )
    if meta is not None:
        document["meta"] = dict(meta)
    headers = {"Location": resource["links"]["self"]} if status_code == 201 else None
    return jsonapi.response(document, status_code, headers)


def page(
    resource_type: ResourceType,
    request: Request,
    query: jsonapi.CollectionQuery,
    rows: Iterable[Any],
    total: int,
    *,
    self_link: Callable[[Any], str] | None = None,
    meta: Mapping[str, Any] | None = None,
    included: Iterable[dict[str, Any]] | None = None,
) -> Response:
    """One page of a collection, with its paging links, the total count and ``meta``'s other
    members; ``self_link`` gives a row's link when it is not the type's path/id."""
    data = [
        jsonapi.apply_sparse_fields(
            resource_type.serialize(row, self_link=self_link(row) if self_link else None), query
        )
        for row in rows
    ]
    paging = {"total": total, "page": {"number": query.page_number, "size": query.page_size}}
    document = {
        "data": data,
        "links": jsonapi.pagination_links(request, query, total),
        "meta": {**paging, **(meta or {})},
    }
    return jsonapi.response(_with_included(document, query, included))
