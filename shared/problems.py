"""The one JSON:API error document every failure is rendered as, and its media type.

Framework-free: ``shared.web.problems`` turns it into responses and installs the handlers both
apps use; the OpenAPI documents describe the same shape.
"""

from __future__ import annotations

from typing import Any

from shared.errors import AppError, ValidationErrors

JSONAPI_MEDIA_TYPE = "application/vnd.api+json"


def error_document(exc: AppError) -> dict[str, Any]:
    errors = exc.errors if isinstance(exc, ValidationErrors) else [exc]
    return {"errors": [error.to_error_object() for error in errors]}
