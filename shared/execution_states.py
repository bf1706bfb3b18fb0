"""The execution lifecycle's vocabulary: statuses, types and error codes.

Apart from ``shared.lifecycle`` (the transitions) only so that the sandbox child, which raises
these codes, starts without importing SQLAlchemy and the models (a quarter of a second each
time a child is started). Everyone else imports them from ``shared.lifecycle``.
"""

from __future__ import annotations

from enum import StrEnum


class ExecutionStatus(StrEnum):
    STARTING = "starting"  # queued, waiting for a worker
    RUNNING = "running"  # claimed under a lease
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATUSES = frozenset(
    {ExecutionStatus.COMPLETED, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED}
)
UNFINISHED_STATUSES = frozenset({ExecutionStatus.STARTING, ExecutionStatus.RUNNING})


class ExecutionType(StrEnum):
    SQL_QUERY = "sql_query"  # Run Execution: the only kind with a result to fetch
    DATASOURCE_REFRESH = "datasource_refresh"  # produces the schema JSON
    CONNECTION_TEST = "connection_test"  # never listed: Test Connection answers its outcome


class ErrorCode(StrEnum):
    """``error_code`` of an execution that did not complete. The SQL check and the engine add
    their own, more specific codes (docs/sql-sandbox.md); these are the lifecycle's."""

    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    WORKER_LOST = "worker_lost"  # its data server stopped renewing the lease too often
    WORKER_CRASHED = "worker_crashed"  # its sandbox child died
    WORKER_STOPPING = "worker_stopping"
    INTERNAL_ERROR = "internal_error"
    # The organisation's stored results and files reach DATAFERRY_MAX_ORGANIZATION_STORAGE_MB.
    STORAGE_QUOTA_EXCEEDED = "storage_quota_exceeded"
    # Its datasource was disabled after it was queued (new runs are refused the same way, a 409).
    DATASOURCE_DISABLED = "datasource_disabled"
