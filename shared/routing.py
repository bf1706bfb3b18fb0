"""One Route per path with a handler per method, so a 405 names every method the path allows."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shared.errors import MethodNotAllowed

_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"]
Handler = Callable[[Request], Awaitable[Response]]


def resource_route(path: str, **handlers: Handler) -> Route:
    """``resource_route("/things/{id}", GET=show, PATCH=update)``."""
    by_method = {method.upper(): handler for method, handler in handlers.items()}
    if "GET" in by_method:
        by_method.setdefault("HEAD", by_method["GET"])
    allowed = ", ".join(sorted(by_method))

    async def dispatch(request: Request) -> Response:
        handler = by_method.get(request.method)
        if handler is None:
            raise MethodNotAllowed(
                f"Method {request.method} is not allowed here; allowed: {allowed}.",
                headers={"Allow": allowed},
            )
        return await handler(request)

    # The Route takes every method so that dispatch, not Starlette, answers 405 (with a stable Allow).
    route = Route(path, dispatch, methods=_ALL_METHODS, name=path)
    # A converter ("{name:path}": a name that may hold "/", so that the endpoint, not the router,
    # refuses it) is how the route matches, not part of its template: the audit log, metrics and
    # the OpenAPI document name "/files/{name}".
    route.path = route.path_format
    route.handled_methods = frozenset(by_method)  # type: ignore[attr-defined]
    return route
