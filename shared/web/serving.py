"""How both servers serve: under uvicorn with the options of shared/web/http_limits.py, once
the heap they start with is set aside from the garbage collector."""

from __future__ import annotations

import gc

import uvicorn
from starlette.types import ASGIApp

from shared.settings import Settings
from shared.web.http_limits import uvicorn_options


def serve(app: ASGIApp, settings: Settings, *, host: str, port: int) -> None:
    set_aside_startup_heap()
    uvicorn.run(app, host=host, port=port, **uvicorn_options(settings))


def set_aside_startup_heap() -> None:
    """Move what a server holds for good once built (modules, the app and its routes, SQLAlchemy's
    mappers) out of the collector's reach: each full collection otherwise walks all of it, about
    160,000 objects in the API server, which paused its event loop for 0.12 s every few hundred
    requests (3% of its CPU, and every request waiting meanwhile). Garbage is collected first,
    so that none is kept for good."""
    gc.collect()
    gc.freeze()
