"""Limits every HTTP request of both servers lives within, so no client can hold a server.

uvicorn enforces what it can (connections, idle keep-alive, h11's header buffer); the middleware
here refuses oversized header blocks and NUL characters in the URL before any endpoint runs,
and ``read_body_within`` gives up on a body that trickles in more slowly than
``BODY_TIMEOUT_SECONDS`` allows.
"""

from __future__ import annotations

from typing import Any

import anyio
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from shared.errors import (
    AppError,
    BadRequest,
    HeaderFieldsTooLarge,
    PayloadTooLarge,
    RequestTimeout,
)
from shared.problems import error_response
from shared.settings import Settings

MAX_HEADER_BYTES = 32 * 1024
BODY_TIMEOUT_SECONDS = 30.0
KEEP_ALIVE_SECONDS = 5


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The uvicorn.run arguments both servers share."""
    return {
        "access_log": False,
        "log_config": None,
        "timeout_graceful_shutdown": 10,
        "timeout_keep_alive": KEEP_ALIVE_SECONDS,
        "limit_concurrency": settings.max_connections,
        # h11, not httptools: httptools has no limit on the header block, so a client could make
        # the server buffer any amount before the middleware here sees a byte of it.
        "http": "h11",
        "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
    }


class RequestLimitsMiddleware:
    """Oversized header blocks (431) and NUL characters in the path or query (400) end here:
    no database stores a NUL in text, so one must never reach a lookup."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            error = _refusal(scope)
            if error is not None:
                await error_response(error)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _refusal(scope: Scope) -> AppError | None:
    size = sum(len(name) + len(value) + 4 for name, value in scope["headers"])
    if size > MAX_HEADER_BYTES:
        return HeaderFieldsTooLarge(
            f"The request headers take {size} bytes; at most {MAX_HEADER_BYTES} are read."
        )
    if "\x00" in scope["path"]:
        return BadRequest("The path holds a NUL character (%00).", code="nul_character")
    if b"%00" in scope["query_string"] or b"\x00" in scope["query_string"]:
        return BadRequest("The query holds a NUL character (%00).", code="nul_character")
    return None


async def read_body_within(request: Request, max_bytes: int) -> bytes:
    """The whole body, or 413 past ``max_bytes``, or 408 if it takes too long to arrive."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"The request body exceeds {max_bytes} bytes.")
    chunks, size = [], 0
    try:
        with anyio.fail_after(BODY_TIMEOUT_SECONDS):
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_bytes:
                    raise PayloadTooLarge(f"The request body exceeds {max_bytes} bytes.")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout(
            f"The request body did not arrive within {BODY_TIMEOUT_SECONDS:.0f} s."
        ) from None
    return b"".join(chunks)
