"""The execution lifecycle, in one place: its statuses, types and error codes, and every
transition of an ``executions`` row, whichever server makes it. The table is the queue.

- ``shared.execution_states``: the vocabulary, apart so that the sandbox child imports it
  without SQLAlchemy;
- ``claims``: which queued execution a free worker starts (fair scheduling, caps, a data
  server's share) and starting it under a lease;
- ``transitions``: everything after the claim — a worker's renew, complete, fail and release
  (fenced by the attempt number), reaping, retention, and the API server's cancel and purge.

Both servers import it as one (``from shared import lifecycle``); this is its interface.
"""

from shared.execution_states import (
    TERMINAL_STATUSES,
    UNFINISHED_STATUSES,
    ErrorCode,
    ExecutionStatus,
    ExecutionType,
)
from shared.lifecycle.claims import (
    ORGANIZATION_CAP_COUNTS,
    Claim,
    ClaimContended,
    announce_if_work_waits,
    claim_next,
)
from shared.lifecycle.transitions import (
    CANCELLED_MESSAGE,
    RETENTION_SWEEP_SECONDS,
    LeaseState,
    complete,
    delete_executions,
    delete_expired_executions,
    expire_results,
    finish_unsuccessfully,
    purge_result,
    reap_expired_leases,
    release,
    renew_lease,
    request_cancel,
)

__all__ = [
    "CANCELLED_MESSAGE",
    "ORGANIZATION_CAP_COUNTS",
    "RETENTION_SWEEP_SECONDS",
    "TERMINAL_STATUSES",
    "UNFINISHED_STATUSES",
    "Claim",
    "ClaimContended",
    "ErrorCode",
    "ExecutionStatus",
    "ExecutionType",
    "LeaseState",
    "announce_if_work_waits",
    "claim_next",
    "complete",
    "delete_executions",
    "delete_expired_executions",
    "expire_results",
    "finish_unsuccessfully",
    "purge_result",
    "reap_expired_leases",
    "release",
    "renew_lease",
    "request_cancel",
]
