"""How both servers serve: under uvicorn with the options of shared/web/http_limits.py, once
the heap they start with is set aside from the garbage collector."""

from __future__ import annotations

import gc
import socket

import uvicorn
from starlette.types import ASGIApp

from shared.errors import ConfigurationError
from shared.settings import Settings
from shared.web.http_limits import uvicorn_options


def serve(app: ASGIApp, settings: Settings, *, host: str, port: int) -> None:
    set_aside_startup_heap()
    uvicorn.run(app, host=host, port=port, **uvicorn_options(settings))


def check_listen_address(host: str, port: int) -> None:
    """Refuse, in one line and before any other work, an address the server could not listen on
    (a name that does not resolve, an address not of this machine, a port taken): uvicorn logged
    six lines and exited with status 3, where every other refusal of a command is one ``error:``
    line and 2 (found by the outside probe). Bound and let go at once; uvicorn binds it again."""
    where = f"{host}:{port}"
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigurationError(f"cannot listen on {where}: {_reason(exc)}") from None
    with socket.socket(family, kind, protocol) as trial:
        trial.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds it
        try:
            trial.bind(address)
        except OSError as exc:
            raise ConfigurationError(f"cannot listen on {where}: {_reason(exc)}") from None


def _reason(error: Exception) -> str:
    return (error.strerror if isinstance(error, OSError) else None) or type(error).__name__


def set_aside_startup_heap() -> None:
    """Move what a server holds for good once built (modules, the app and its routes, SQLAlchemy's
    mappers) out of the collector's reach: each full collection otherwise walks all of it, about
    160,000 objects in the API server, which paused its event loop for 0.12 s every few hundred
    requests (3% of its CPU, and every request waiting meanwhile). Garbage is collected first,
    so that none is kept for good."""
    gc.collect()
    gc.freeze()
