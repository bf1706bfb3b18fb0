"""``create_app(settings)``: the API server as an ASGI app; nothing is built at import time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware

from api_server.audit import AuditMiddleware
from api_server.execution_waits import ExecutionWaits
from api_server.rate_limits import RateLimiter
from api_server.routes import routes
from shared.db.engine import (
    autocommit,
    create_read_session_factory,
    create_server_engine,
    create_session_factory,
)
from shared.metrics import Metrics
from shared.results import open_result_store
from shared.settings import Settings
from shared.signing_keys import SigningKeyring
from shared.state_secrets import ServerSecrets
from shared.web.http_limits import RequestLimitsMiddleware
from shared.web.metrics import MetricsMiddleware
from shared.web.middleware import RequestContextMiddleware
from shared.web.problems import EXCEPTION_HANDLERS


def create_app(settings: Settings) -> Starlette:
    engine = create_server_engine(settings)
    waits = ExecutionWaits(engine)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await waits.start()
        try:
            yield
        finally:
            await _uploads_closed(app.state.open_uploads)
            await waits.stop()
            engine.dispose()

    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(RequestContextMiddleware),
            Middleware(MetricsMiddleware),
            Middleware(RequestLimitsMiddleware),
            Middleware(AuditMiddleware),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    # "/datasources/" is a 404 like any unknown path, not a redirect built from the Host header.
    app.router.redirect_slashes = False
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessions = create_session_factory(engine, in_turn=True)
    app.state.reads = create_read_session_factory(engine)
    app.state.read_engine = autocommit(engine)
    app.state.secrets = ServerSecrets.load(settings)
    app.state.signing_keys = SigningKeyring(settings)
    app.state.result_store = open_result_store(settings)
    app.state.rate_limiter = RateLimiter(settings.redis_url)
    app.state.metrics = Metrics(app.state.sessions)
    app.state.metrics.registry.register(waits.collector())
    app.state.execution_waits = waits
    app.state.open_uploads = set()
    return app


# How long a stopping server waits for its uploads' temporary files to be removed.
UPLOADS_CLOSED_SECONDS = 5.0


async def _uploads_closed(open_uploads: set[Any]) -> None:
    """Once uvicorn has cancelled the requests still running past its graceful time, their
    uploads remove their temporary files, but only as their tasks next run: the server process
    ended first, leaving one behind (found by the outside probe). Waited for, a little."""
    deadline = time.monotonic() + UPLOADS_CLOSED_SECONDS
    while open_uploads and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
