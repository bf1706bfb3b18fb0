"""Request id and one access-log line per request, as a pure ASGI middleware (streams untouched).
Every response also says ``X-Content-Type-Options: nosniff``.

Headers an endpoint leaves in ``request.state.response_headers`` (the rate-limit standing) are
added to whatever response the request ends with, errors included. An unexpected exception is
answered here, inside the request's id: a JSON:API 500 carrying X-Request-ID, its traceback logged
once under that id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from typing import Any
from urllib.parse import unquote

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.db.engine import database_unavailable, unusable_database_line
from shared.logging import request_id_var
from shared.metrics import HTTP_METHODS
from shared.secret_shapes import without_secrets
from shared.web.problems import (
    concurrent_change_response,
    database_unavailable_response,
    ended_for_another,
    server_stopping_response,
    unexpected_error_response,
)

logger = logging.getLogger("dataferry.access")
error_logger = logging.getLogger("dataferry.errors")
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
# A browser must not read a body as another type than it is said to be: a result's CSV or JSON,
# tenant data served inline, sniffed as HTML would run in the data server's origin.
EVERY_RESPONSE_HEADERS = ((b"x-content-type-options", b"nosniff"),)
LOGGED_PATH_CHARS = 2048
_DECODINGS = 4  # a secret percent-encoded up to this many times over is still found


def _method_as_sent(scope: Scope) -> str:
    """The method if HTTP defines it (the metrics' list); any other is written by its length
    only: h11 took any token as a method, 60 KB of one too, which may hold a pasted key.
    llhttp refuses methods it does not know; this stays in case a parser does not."""
    method: str = scope["method"]
    return method if method in HTTP_METHODS else f"(another method, {len(method)} characters)"


def _path_as_sent(scope: Scope) -> str:
    """The path still percent-encoded, as the client sent it (``%0a`` stays three characters);
    never the query, which may carry a data token. A path that holds an API key or a data token
    (a client that put one there by mistake), percent-encoded up to ``_DECODINGS`` times over, is
    written decoded with the secret masked (the log's formatter masks the plain ones). A path is
    written up to
    ``LOGGED_PATH_CHARS``: one request cannot make a log line of the 16 KiB a URL may have."""
    raw = scope.get("raw_path")
    path = raw.decode("ascii", "backslashreplace") if raw else scope["path"]
    decoded = path
    for _ in range(_DECODINGS):  # %2564fk_ is dfk_ encoded twice
        decoded, before = unquote(decoded), decoded
        if decoded == before:
            break
    masked = without_secrets(decoded)
    logged = masked if masked != decoded else path
    if len(logged) > LOGGED_PATH_CHARS:
        return f"{logged[:LOGGED_PATH_CHARS]}…({len(logged)} characters)"
    return logged


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        # A client's id is kept unless it looks like a secret, which the audit log would keep
        # (found by the outside probe: an API key sent as the request id).
        kept = _VALID_REQUEST_ID.match(incoming) and without_secrets(incoming) == incoming
        request_id = incoming if kept else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status: dict[str, Any] = {"code": 500, "started": False}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["started"] = message["status"], True
                extra = scope.get("state", {}).get("response_headers", {})
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                    *EVERY_RESPONSE_HEADERS,
                    *((name.lower().encode(), value.encode()) for name, value in extra.items()),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except asyncio.CancelledError:  # the server stops (its grace ran out): answered, then
            if not status["started"]:  # the cancellation goes on
                with contextlib.suppress(Exception):  # a connection gone meanwhile
                    await server_stopping_response()(scope, receive, send_with_id)
            raise
        except Exception as exc:
            if status["started"]:
                raise  # a body cut short: the server drops the connection
            if ended_for_another(exc):  # two writes locking rows in different orders: a warning
                route = getattr(scope.get("route"), "path", "?")  # a template: no ids, secrets
                error_logger.warning(
                    "%s %s: the database ended its transaction for another's (%s)",
                    _method_as_sent(scope),
                    route,
                    type(getattr(exc, "orig", exc)).__name__,
                )
                await concurrent_change_response()(scope, receive, send_with_id)
                return
            if database_unavailable(exc):  # an operator's matter: named, without a traceback
                error_logger.error(
                    "%s %s: %s",
                    _method_as_sent(scope),
                    getattr(scope.get("route"), "path", "?"),
                    unusable_database_line(exc),
                )
                await database_unavailable_response()(scope, receive, send_with_id)
                return
            error_logger.exception(
                "unhandled error on %s %s", _method_as_sent(scope), _path_as_sent(scope)
            )
            await unexpected_error_response()(scope, receive, send_with_id)
        finally:
            logger.info(
                "%s %s %d %.1fms",
                _method_as_sent(scope),
                _path_as_sent(scope),
                status["code"],
                (time.perf_counter() - started) * 1000,
            )
            request_id_var.reset(token)
