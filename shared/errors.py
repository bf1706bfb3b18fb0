"""The error hierarchy: every failure a client can see, with its HTTP status and stable code.

Services raise these; ``shared.problems`` renders them as JSON:API error documents. Nothing here
imports a web framework.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class ConfigurationError(Exception):
    """The deployment is misconfigured; raised at start-up, never answered to a client."""


class AppError(Exception):
    status: int = 500
    code: str = "internal_error"
    title: str = "Internal server error"

    def __init__(
        self,
        detail: str | None = None,
        *,
        pointer: str | None = None,
        parameter: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.pointer = pointer
        self.parameter = parameter
        self.headers = headers or {}
        if code:
            self.code = code

    def to_error_object(self) -> dict[str, Any]:
        error: dict[str, Any] = {
            "status": str(self.status),
            "code": self.code,
            "title": self.title,
            "detail": self.detail,
        }
        if self.pointer is not None:
            error["source"] = {"pointer": self.pointer}
        elif self.parameter is not None:
            error["source"] = {"parameter": self.parameter}
        return error


class BadRequest(AppError):
    status, code, title = 400, "bad_request", "Bad request"


class InvalidQueryParameter(BadRequest):
    code, title = "invalid_query_parameter", "Invalid query parameter"


class MalformedJSON(BadRequest):
    code, title = "malformed_json", "Malformed JSON"


class Unauthorized(AppError):
    status, code, title = 401, "unauthorized", "Unauthorized"


def unauthorized() -> Unauthorized:
    """The one 401 for a key that is missing, unknown, disabled or deleted, whenever found."""
    return Unauthorized(
        "A valid API key is required: send the header 'Authorization: Api <secret>'.",
        headers={"WWW-Authenticate": 'Api realm="dataferry"'},
    )


class Forbidden(AppError):
    status, code, title = 403, "forbidden", "Forbidden"


class NotFound(AppError):
    status, code, title = 404, "not_found", "Not found"


class MethodNotAllowed(AppError):
    status, code, title = 405, "method_not_allowed", "Method not allowed"


class NotAcceptable(AppError):
    status, code, title = 406, "not_acceptable", "Not acceptable"


class Conflict(AppError):
    status, code, title = 409, "conflict", "Conflict"


class RequestTimeout(AppError):
    status, code, title = 408, "request_timeout", "Request timeout"


class ClientGone(AppError):
    """The client hung up mid-request: nobody reads this answer, but the request ends as the
    client's doing (a 4xx in the metrics), not as a server error with a traceback."""

    status, code, title = 400, "client_disconnected", "Client closed the request"


class PayloadTooLarge(AppError):
    status, code, title = 413, "payload_too_large", "Payload too large"


class UnsupportedMediaType(AppError):
    status, code, title = 415, "unsupported_media_type", "Unsupported media type"


class RangeNotSatisfiable(AppError):
    status, code, title = 416, "range_not_satisfiable", "Range not satisfiable"


class Unprocessable(AppError):
    status, code, title = 422, "invalid_attribute", "Unprocessable entity"


class UriTooLong(AppError):
    status, code, title = 414, "uri_too_long", "URI too long"


class DestinationNotAllowed(Unprocessable):
    """A datasource's host is outside the region's egress policy (shared.egress)."""

    code, title = "destination_not_allowed", "Destination not allowed"


class HostNotFound(Unprocessable):
    """A datasource's host name does not resolve (in time) to any address."""

    code, title = "host_not_found", "Host not found"


class PreconditionFailed(AppError):
    status, code, title = 412, "precondition_failed", "Precondition failed"


class HeaderFieldsTooLarge(AppError):
    status, code, title = 431, "header_fields_too_large", "Request header fields too large"


class TooManyRequests(AppError):
    status, code, title = 429, "rate_limited", "Too many requests"


class ServiceUnavailable(AppError):
    status, code, title = 503, "service_unavailable", "Service unavailable"


# An error document lists this many problems at most, and then how many more there were.
MAX_LISTED_PROBLEMS = 20


class UnlistedProblems(Unprocessable):
    """How many problems were found beyond those listed: a 1 MiB body of 80,000 unknown names
    had one error object each, 14 MB answered for most of a second of the server's CPU."""

    code = "more_problems"

    def __init__(self, count: int) -> None:
        super().__init__(f"{count} more problem{'' if count == 1 else 's'} found, not listed.")
        self.count = count


class ValidationErrors(Unprocessable):
    """Several problems found at once: each listed becomes its own error object, up to
    ``MAX_LISTED_PROBLEMS``, and one more counts the rest (the ones left out before, too)."""

    def __init__(self, errors: Sequence[AppError]) -> None:
        found = [error for error in errors if not isinstance(error, UnlistedProblems)]
        listed = found[:MAX_LISTED_PROBLEMS]
        unlisted = len(found) - len(listed)
        unlisted += sum(error.count for error in errors if isinstance(error, UnlistedProblems))
        # Its own code and detail are its first problem's: what a log line of it says.
        first = listed[0] if listed else None
        super().__init__(first.detail if first else None, code=first.code if first else None)
        self.errors: list[AppError] = [*listed, *([UnlistedProblems(unlisted)] if unlisted else [])]
