"""``/healthz`` (the process answers) and ``/readyz`` (its dependencies answer), for both servers."""

from __future__ import annotations

import asyncio
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


# How long ``/readyz`` waits for a check: a frozen database (its host still acknowledging, so no
# connection ends) held each readiness probe for as long as the freeze lasted (an outside probe),
# and a load balancer waiting on it never took the server out of rotation.
READINESS_CHECK_SECONDS = 5.0


def readiness(
    checks: Sequence[tuple[str, ReadinessCheck]],
) -> Callable[[Request], Awaitable[Response]]:
    """The ``/readyz`` handler: every check run (in a thread), each reported; one that has not
    answered within ``READINESS_CHECK_SECONDS`` is failing. A check still running from an
    earlier probe is waited for again rather than started twice: a frozen dependency holds one
    thread per check, not one per probe."""
    running: dict[str, asyncio.Future[None]] = {}

    async def readyz(request: Request) -> Response:
        results = {}
        for name, check in checks:
            attempt = running.get(name)
            if attempt is None or attempt.done():
                attempt = asyncio.ensure_future(run_in_threadpool(check, request))
                attempt.add_done_callback(_retrieved)
                running[name] = attempt
            try:
                await asyncio.wait_for(asyncio.shield(attempt), READINESS_CHECK_SECONDS)
                results[name] = "ok"
            except TimeoutError:
                logger.warning(
                    "readiness check %s has not answered for %.0f s",
                    name,
                    READINESS_CHECK_SECONDS,
                )
                results[name] = "failing"
            except Exception as exc:  # any failure means "not ready", reported, never raised
                logger.warning("readiness check %s failed: %s", name, type(exc).__name__)
                results[name] = "failing"
        ready = all(v == "ok" for v in results.values())
        return JSONResponse(
            {"status": "ready" if ready else "not_ready", "checks": results},
            status_code=200 if ready else 503,
        )

    return readyz


def _retrieved(attempt: asyncio.Future[None]) -> None:
    """A check that ended after its probe answered: its error is taken (it was reported as
    failing then), not left for asyncio to complain of."""
    if not attempt.cancelled():
        attempt.exception()
