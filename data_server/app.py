"""``create_app(settings)``: the data server as an ASGI app (data endpoints arrive with executions)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware

from data_server.routes import routes
from shared.db.engine import create_metadata_engine, create_session_factory
from shared.middleware import RequestContextMiddleware
from shared.problems import EXCEPTION_HANDLERS
from shared.settings import Settings


def create_app(settings: Settings) -> Starlette:
    engine = create_metadata_engine(settings.database_url)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        engine.dispose()

    app = Starlette(
        routes=routes,
        middleware=[Middleware(RequestContextMiddleware)],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.sessions = create_session_factory(engine)
    return app
