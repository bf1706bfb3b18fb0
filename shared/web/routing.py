"""Routes: one per path with a handler per method (so a 405 names every method the path allows),
and the handlers that publish a server's OpenAPI document."""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from shared.errors import MethodNotAllowed
from shared.openapi import JSON_MEDIA_TYPE
from shared.reference_page import render_html

Handler = Callable[[Request], Awaitable[Response]]


# The reference page is one document with its style inline and nothing else (no script, no
# image, no font, no form): a browser is told to load nothing else for it, nor frame it.
DOCS_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)


def handling_method(method: str) -> str:
    """The method whose handler answers ``method``: HEAD is answered by GET's, side effects
    included (the server only drops the body), so it is recorded as GET is (api_server/audit.py)."""
    return "GET" if method == "HEAD" else method


def resource_route(path: str, **handlers: Handler) -> Route:
    """``resource_route("/things/{id}", GET=show, PATCH=update)``."""
    by_method = {method.upper(): handler for method, handler in handlers.items()}
    if "GET" in by_method:
        by_method.setdefault("HEAD", by_method[handling_method("HEAD")])
    allowed = ", ".join(sorted(by_method))

    async def dispatch(request: Request) -> Response:
        handler = by_method.get(request.method)
        if handler is None:
            raise MethodNotAllowed(
                f"Method {request.method} is not allowed here; allowed: {allowed}.",
                headers={"Allow": allowed},
            )
        return await handler(request)

    # Every method, known or not (FOO, QUERY), reaches dispatch, so that its 405 names the
    # methods the path takes: Starlette's own would list whatever the route was given.
    route = Route(path, dispatch, name=path)
    route.methods = None
    # A converter ("{name:path}": a name that may hold "/", so that the endpoint, not the router,
    # refuses it) is how the route matches, not part of its template: the audit log, metrics and
    # the OpenAPI document name "/files/{name}".
    route.path = route.path_format
    route.handled_methods = frozenset(by_method)  # type: ignore[attr-defined]
    return route


def documentation_handlers(
    build_document: Callable[[], dict[str, Any]],
) -> tuple[Handler, Handler]:
    """``GET /openapi.json`` and ``GET /docs``, built on first use and then kept: the document
    describes code, which does not change while the process runs."""

    @functools.cache
    def rendered() -> tuple[bytes, str]:
        spec = build_document()
        return json.dumps(spec, indent=2).encode(), render_html(spec)

    async def openapi_json(request: Request) -> Response:
        return Response(rendered()[0], media_type=JSON_MEDIA_TYPE)

    async def docs(request: Request) -> Response:
        return HTMLResponse(rendered()[1], headers={"Content-Security-Policy": DOCS_POLICY})

    return openapi_json, docs
