"""The JSON:API documents of a declared type: one resource, or one page of a collection."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

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
    return jsonapi.response(
        _with_included(_paged(data, request, query, total, meta), query, included)
    )


def streamed_page(
    request: Request,
    query: jsonapi.CollectionQuery,
    batches: Iterator[list[dict[str, Any]]],
    total: int,
) -> Response:
    """One page of a collection whose resources may weigh a megabyte each (a filter's options):
    ``batches`` reads and serialises a few at a time as the body is sent, so that a request
    holds a batch in memory, not the page (``page`` would hold the rows, their objects and the
    whole document at once). Nothing to ``include``: the types streamed declare no inclusion."""
    opening, closing = jsonapi.render(_paged([], request, query, total, None)).split(b"[]", 1)

    def body() -> Iterator[bytes]:
        yield opening + b"["
        separator = b""
        for batch in batches:  # one piece of the body per batch: each is a trip to a thread
            if batch:
                rendered = (jsonapi.render(jsonapi.apply_sparse_fields(r, query)) for r in batch)
                yield separator + b",".join(rendered)
                separator = b","
        yield b"]" + closing

    return StreamingResponse(body(), media_type=jsonapi.JSONAPI_MEDIA_TYPE)


def _paged(
    data: list[dict[str, Any]],
    request: Request,
    query: jsonapi.CollectionQuery,
    total: int,
    meta: Mapping[str, Any] | None,
) -> dict[str, Any]:
    paging = {"total": total, "page": {"number": query.page_number, "size": query.page_size}}
    return {
        "data": data,
        "links": jsonapi.pagination_links(request, query, total),
        "meta": {**paging, **(meta or {})},
    }
