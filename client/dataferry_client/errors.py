"""The client's exceptions: one tree, each carrying ``status``, ``code``, ``detail`` and ``pointer``.

JSON:API error documents of either server become an :class:`ApiError` subclass chosen by HTTP
status; what goes wrong outside HTTP (an execution that failed, a wait that ran out, a network that
failed after retries, a result shorter than announced) has its own class with a stable ``code``.
"""

from __future__ import annotations

import json
from typing import Any


class DataferryError(Exception):
    """Base of every error the client raises."""

    status: int | None = None
    code: str = "error"

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        code: str | None = None,
        pointer: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.pointer = pointer

    def __str__(self) -> str:
        where = f" (at {self.pointer})" if self.pointer else ""
        return f"{self.detail}{where}"


class ConfigurationError(DataferryError):
    """No API URL, key or data URL was given, or the profile file is unreadable."""

    code = "configuration_error"


class NotJson(DataferryError, ValueError):
    """A value the client was asked to send has no JSON spelling (NaN, an infinity): refused
    before sending, where the server would answer 400 ``malformed_json`` about a body the caller
    never wrote."""

    code = "not_json"


class TransportError(DataferryError):
    """The server could not be reached, or a connection broke, and retries did not help."""

    code = "transport_error"


class UnexpectedAnswer(DataferryError):
    """An answer that is not the API's: no JSON, or not the document the API defines (a proxy's
    or a captive portal's page at the configured URL, say)."""

    code = "unexpected_answer"


class QueryTimeout(DataferryError):
    """The execution did not end within the caller's ``timeout``."""

    code = "client_timeout"

    def __init__(self, detail: str, *, execution_id: str) -> None:
        super().__init__(detail)
        self.execution_id = execution_id


class QueryInterrupted(KeyboardInterrupt):
    """Ctrl-C (a KeyboardInterrupt) while ``query`` waited for its execution, which was then
    cancelled on the server, so that it holds no worker for the rest of its time limit."""

    def __init__(self, execution_id: str) -> None:
        super().__init__(f"execution {execution_id} cancelled")
        self.execution_id = execution_id


class ExecutionFailed(DataferryError):
    """The execution ended ``failed`` or ``cancelled``; ``code`` is the server's ``error_code``."""

    code = "execution_failed"

    def __init__(
        self, detail: str, *, execution_id: str, execution_status: str, code: str | None
    ) -> None:
        super().__init__(detail, code=code)
        self.execution_id = execution_id
        self.execution_status = execution_status


class DataNotAvailable(DataferryError):
    """Get Execution Data answered 204: the execution has not completed, or it failed."""

    code = "data_not_available"


class IncompleteResult(DataferryError):
    """Fewer or more rows arrived than the execution reported."""

    code = "incomplete_result"


class ApiError(DataferryError):
    """A JSON:API error answer; ``errors`` holds every entry of the document."""

    def __init__(
        self,
        detail: str,
        *,
        status: int,
        code: str | None = None,
        pointer: str | None = None,
        title: str | None = None,
        errors: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(detail, status=status, code=code, pointer=pointer)
        self.title = title
        self.errors = errors or []


class BadRequest(ApiError):
    code = "bad_request"


class AuthenticationError(ApiError):
    """401: a wrong, disabled or deleted API key (or an invalid data token)."""

    code = "unauthorized"


class PermissionDenied(ApiError):
    code = "forbidden"


class NotFound(ApiError):
    code = "not_found"


class Conflict(ApiError):
    code = "conflict"


class Unprocessable(ApiError):
    code = "unprocessable"


class RateLimited(ApiError):
    """429 still answered after the client's bounded retries; ``retry_after`` in seconds."""

    code = "rate_limited"

    def __init__(self, detail: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        self.retry_after = retry_after


class ServerError(ApiError):
    code = "server_error"


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: AuthenticationError,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    422: Unprocessable,
    429: RateLimited,
}


def api_error(status: int, body: bytes, retry_after: float | None = None) -> ApiError:
    """The exception for an error answer: its first JSON:API error, or the bare status."""

    cls = _BY_STATUS.get(status, ServerError if status >= 500 else ApiError)
    errors: list[dict[str, Any]] = []
    try:
        document = json.loads(body)
        if isinstance(document, dict) and isinstance(document.get("errors"), list):
            errors = [e for e in document["errors"] if isinstance(e, dict)]
    except ValueError:
        pass
    first = errors[0] if errors else {}
    source: dict[str, Any] = first.get("source") or {}
    if not isinstance(source, dict):
        source = {}
    pointer = source.get("pointer") or (
        f"?{source['parameter']}" if source.get("parameter") else None
    )
    detail = str(first.get("detail") or first.get("title") or f"HTTP {status}")
    extra: dict[str, Any] = {"retry_after": retry_after} if cls is RateLimited else {}
    return cls(
        detail,
        status=status,
        code=first.get("code"),
        pointer=pointer,
        title=first.get("title"),
        errors=errors,
        **extra,
    )
