"""``/healthz`` (the process answers) and ``/readyz`` (its dependencies answer), for both servers."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from sqlalchemy import text
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

logger = logging.getLogger(__name__)

ReadinessCheck = Callable[[Request], None]


def database_answers(request: Request) -> None:
    with request.app.state.sessions() as session:
        session.execute(text("SELECT 1"))


async def liveness(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def readiness(
    checks: Sequence[tuple[str, ReadinessCheck]],
) -> Callable[[Request], Awaitable[Response]]:
    """The ``/readyz`` handler: every check run (in a thread), each reported."""

    async def readyz(request: Request) -> Response:
        results = {}
        for name, check in checks:
            try:
                await run_in_threadpool(check, request)
                results[name] = "ok"
            except Exception as exc:  # any failure means "not ready", reported, never raised
                logger.warning("readiness check %s failed: %s", name, type(exc).__name__)
                results[name] = "failing"
        ready = all(v == "ok" for v in results.values())
        return JSONResponse(
            {"status": "ready" if ready else "not_ready", "checks": results},
            status_code=200 if ready else 503,
        )

    return readyz
