"""Every failure answered as the one JSON:API error document (``shared.problems``): the
exception handlers both apps install, Starlette's own 404/405 included, and the last resort."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from shared.errors import AppError, Conflict, MethodNotAllowed, NotFound, ServiceUnavailable
from shared.problems import JSONAPI_MEDIA_TYPE, error_document


def error_response(exc: AppError) -> Response:
    return Response(
        orjson.dumps(error_document(exc)),
        status_code=exc.status,
        media_type=JSONAPI_MEDIA_TYPE,
        headers=exc.headers,
    )


async def handle_app_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AppError)
    return error_response(exc)


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 (unknown route, wrong method) in our error shape."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_response(NotFound("No such route."))
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        return error_response(
            MethodNotAllowed(
                f"Method {request.method} is not allowed here; allowed: {allowed}.",
                headers={"Allow": allowed} if allowed else None,
            )
        )
    error = AppError(str(exc.detail))
    error.status = exc.status_code
    error.code = "http_error"
    error.title = "HTTP error"
    return error_response(error)


# PostgreSQL's codes for a transaction it ended so that another could go on: a deadlock, or a
# serializable transaction's conflict. Nothing of it was kept; sent again, it most likely passes.
_ENDED_FOR_ANOTHER = frozenset({"40P01", "40001"})
# SQLite's for a read transaction that tried to write after another had (in WAL mode).
_SQLITE_ENDED_FOR_ANOTHER = "SQLITE_BUSY_SNAPSHOT"


def ended_for_another(exc: BaseException) -> bool:
    """Whether the database ended the request's transaction for another's sake: a 409
    ``concurrent_change`` to send again (``concurrent_change_response``), not a 500 (an outside
    probe: report moves and group changes at once, on PostgreSQL)."""
    if not isinstance(exc, DBAPIError):
        return False
    orig = exc.orig
    return (
        getattr(orig, "sqlstate", None) in _ENDED_FOR_ANOTHER
        or getattr(orig, "sqlite_errorname", None) == _SQLITE_ENDED_FOR_ANOTHER
    )


def server_stopping_response() -> Response:
    """A request still running when the stopping server's grace ran out (a slow upload, a long
    wait): uvicorn cancels it and would answer a plain-text 500. No ``Retry-After``: an upload
    cut off stored nothing, but what else ran may or may not have been done."""
    return error_response(
        ServiceUnavailable(
            "The server stopped before this request ended. Another server of the region may "
            "answer it: read before sending a change again.",
            code="server_stopping",
        )
    )


def database_unavailable_response() -> Response:
    """No ``Retry-After``: a connection lost while committing may have kept a change, so a
    client does not send a change again by itself (dataferry's client resends a 503's change
    only when its ``Retry-After`` says that nothing was done)."""
    return error_response(
        ServiceUnavailable(
            "The server cannot reach its database at the moment. A read can be sent again "
            "shortly; a change may or may not have been made: read before sending it again.",
            code="database_unavailable",
        )
    )


def concurrent_change_response() -> Response:
    return error_response(
        Conflict(
            "Another request changed the same objects at the same moment, and nothing of this "
            "one was kept: send it again.",
            code="concurrent_change",
            headers={"Retry-After": "1"},
        )
    )


def unexpected_error_response() -> Response:
    """The last resort, a bare 500 with no details (``RequestContextMiddleware`` sends it and
    logs the traceback under the request's id)."""
    return error_response(AppError("The server failed to handle this request."))


# Not ``Exception``: Starlette hands that one to its outermost middleware, outside the request's
# id, so a 500 would carry no X-Request-ID and its traceback would be logged without one.
EXCEPTION_HANDLERS: dict[Any, Any] = {
    AppError: handle_app_error,
    HTTPException: handle_http_exception,
}
