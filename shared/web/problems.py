"""Every failure answered as the one JSON:API error document (``shared.problems``): the
exception handlers both apps install, Starlette's own 404/405 included, and the last resort."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
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


def ended_for_another(exc: BaseException) -> bool:
    """Whether the database ended the request's transaction for another's sake: a 409
    ``concurrent_change`` to send again (``concurrent_change_response``), not a 500 (an outside
    probe: report moves and group changes at once, on PostgreSQL)."""
    return isinstance(exc, DBAPIError) and getattr(exc.orig, "sqlstate", None) in _ENDED_FOR_ANOTHER


# PostgreSQL's codes for a connection that failed or a server going away (an operator's or a
# failover's shutdown, a crash, a server still starting); a driver's connection failure carries
# none. SQLite's for a database another process holds past the wait.
_UNREACHED_SQLSTATES = ("08", "57P01", "57P02", "57P03")
_SQLITE_BUSY = frozenset({"SQLITE_BUSY", "SQLITE_LOCKED"})


def database_unavailable(exc: BaseException) -> bool:
    """Whether the metadata database could not be reached or went away mid-request (refused,
    timed out, restarted; the pool full for its whole wait): a 503 to send again later
    (``database_unavailable_response``), not a 500 (an outside probe, stopping the database)."""
    if isinstance(exc, PoolTimeout):
        return True
    if not isinstance(exc, OperationalError):
        return False
    if exc.connection_invalidated:
        return True
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if sqlstate is not None:
        return str(sqlstate).startswith(_UNREACHED_SQLSTATES)
    sqlite_error = getattr(exc.orig, "sqlite_errorname", None)
    if sqlite_error is not None:
        return sqlite_error in _SQLITE_BUSY
    return type(exc.orig).__module__.startswith("psycopg")  # connecting failed: no SQLSTATE


def database_unavailable_response() -> Response:
    return error_response(
        ServiceUnavailable(
            "The server cannot reach its database at the moment, and nothing of this request "
            "was done: send it again shortly.",
            code="database_unavailable",
            headers={"Retry-After": "5"},
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
