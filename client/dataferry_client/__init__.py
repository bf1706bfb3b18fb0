"""dataferry's Python client: ``Client(...).query(datasource, sql).to_arrow()`` and friends."""

from __future__ import annotations

__version__ = "0.1.0"

from dataferry_client.aio import AsyncClient, AsyncResult
from dataferry_client.client import Client
from dataferry_client.download import Progress
from dataferry_client.errors import (
    ApiError,
    AuthenticationError,
    BadRequest,
    ConfigurationError,
    Conflict,
    DataferryError,
    DataNotAvailable,
    ExecutionFailed,
    IncompleteResult,
    NotFound,
    NotJson,
    PermissionDenied,
    QueryInterrupted,
    QueryTimeout,
    RateLimited,
    ServerError,
    TransportError,
    Unprocessable,
)
from dataferry_client.models import (
    ApiKey,
    ConnectionTest,
    Dashboard,
    DashboardGroup,
    DataGrant,
    Datasource,
    Execution,
    ExecutionStatus,
    Filter,
    FilterOptions,
    Report,
    SqlSnippet,
)
from dataferry_client.result import Result, SaveFormat

__all__ = [
    "ApiError", "ApiKey", "AsyncClient", "AsyncResult", "AuthenticationError", "BadRequest",
    "Client", "ConfigurationError", "Conflict", "ConnectionTest", "Dashboard", "DashboardGroup",
    "DataGrant", "DataNotAvailable", "DataferryError", "Datasource", "Execution",
    "ExecutionFailed", "ExecutionStatus", "Filter", "FilterOptions", "IncompleteResult",
    "NotFound", "NotJson", "PermissionDenied", "Progress", "QueryInterrupted",
    "QueryTimeout", "RateLimited", "Report",
    "Result", "SaveFormat", "ServerError", "SqlSnippet", "TransportError", "Unprocessable",
]  # fmt: skip
