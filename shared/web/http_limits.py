"""Limits every HTTP request of both servers lives within, so no client can hold a server.

uvicorn enforces what it can (connections, idle keep-alive, h11's header buffer); the protocol
here refuses a request whose body length a proxy in front could read differently; the middleware
refuses oversized header blocks and NUL characters in the URL before any endpoint runs, and
``read_body_within`` gives up on a body that trickles in more slowly than
``BODY_TIMEOUT_SECONDS`` allows.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any, cast
from urllib.parse import unquote

import anyio
import h11
import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import STATUS_PHRASES, H11Protocol
from uvicorn.server import ServerState

from shared.digits import natural_number
from shared.errors import (
    AppError,
    BadRequest,
    ClientGone,
    HeaderFieldsTooLarge,
    PayloadTooLarge,
    RequestTimeout,
    ServiceUnavailable,
    UriTooLong,
)
from shared.problems import JSONAPI_MEDIA_TYPE, error_document
from shared.settings import Settings
from shared.web.problems import error_response

MAX_HEADER_BYTES = 32 * 1024
# Path plus query. h11 bounds only heads that arrive in pieces, so a request line sent whole could
# be up to a socket read (64 KiB) long; no route needs more than a few hundred bytes.
MAX_REQUEST_TARGET_BYTES = 16 * 1024
BODY_TIMEOUT_SECONDS = 30.0
KEEP_ALIVE_SECONDS = 5
# From the moment a connection may send a request head (it opened, or the previous response
# ended) until the whole head has arrived; then the connection is closed. Half-open connections
# would otherwise count against DATAFERRY_MAX_CONNECTIONS for ever.
REQUEST_HEAD_TIMEOUT_SECONDS = 10.0
# At the connection limit, a new connection closes the one that has waited longest for a request
# head, if that wait has lasted this long: a client that connects sends its request at once, so
# connections that send nothing (or keep a head unfinished) cannot keep clients out for the
# head deadline's whole length.
EVICTABLE_AFTER_SECONDS = 1.0
# How long a response may sit unsent because the client stopped reading (the write buffer stays
# above its high-water mark); then the connection is dropped. Without it a client that pipelines
# requests, or starts a large download, and never reads would hold its connection for ever.
SEND_STALL_TIMEOUT_SECONDS = 30.0

logger = logging.getLogger(__name__)


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The uvicorn.run arguments both servers share."""
    trusted_proxies = settings.trusted_proxies.strip()
    return {
        "access_log": False,
        # uvicorn believes X-Forwarded-For from 127.0.0.1 unless told otherwise: any local client
        # (a TCP sidecar's, a TLS terminator's) could then write what it liked into the audit log.
        "proxy_headers": bool(trusted_proxies),
        "forwarded_allow_ips": trusted_proxies or None,
        "log_config": None,
        "timeout_graceful_shutdown": 10,
        "timeout_keep_alive": KEEP_ALIVE_SECONDS,
        "limit_concurrency": settings.max_connections,
        # h11, not httptools: httptools has no limit on the header block, so a client could make
        # the server buffer any amount before the middleware here sees a byte of it.
        "http": BoundedH11Protocol,
        "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
        # No WebSocket route exists: an upgrade is an ordinary request (404), not a plain-text 403.
        "ws": "none",
    }


class FramedH11Connection(h11.Connection):
    """h11's connection, refusing a request whose body length is declared ambiguously.

    h11 already refuses conflicting Content-Length values and any Transfer-Encoding but a single
    ``chunked``; it reads a request with both Content-Length and Transfer-Encoding by the latter,
    while a proxy in front may trust the former and forward the rest of the body as a second
    request (request smuggling). RFC 9112 §6.1 and §6.3 let a server refuse both this and an
    HTTP/1.0 request with Transfer-Encoding; uvicorn answers the error with ``send_400_response``
    and closes the connection.
    """

    framing_fault: str | None = None
    # What h11 made of a request it refused: 431 when the head outgrew its buffer before it was
    # whole (a head read whole is measured by ``RequestLimitsMiddleware``).
    refused_status = 400
    # Where a response body's pieces go (the connection's transport), once the protocol has one.
    body_sink: asyncio.WriteTransport | None = None

    def send(self, event: h11.Event) -> bytes | None:  # type: ignore[override]
        """A body's data goes to the transport in the pieces h11 frames it in (chunk size, data,
        CRLF) instead of joined into one new copy of each chunk: a first fetch of a large result
        sends hundreds of megabytes, and the copy cost its event loop a quarter of its time."""
        if self.body_sink is None or type(event) is not h11.Data:
            return super().send(event)
        pieces = self.send_with_data_passthrough(event) or []
        self.body_sink.writelines(
            [p if isinstance(p, bytes | bytearray | memoryview) else memoryview(p) for p in pieces]
        )
        return b""

    def next_event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        try:
            event = super().next_event()
        except h11.RemoteProtocolError as error:
            self.refused_status = error.error_status_hint
            raise
        if isinstance(event, h11.Request):
            self.framing_fault = _framing_fault(event)
            if self.framing_fault is not None:
                raise h11.RemoteProtocolError(self.framing_fault, error_status_hint=400)
        return event


def _framing_fault(request: h11.Request) -> str | None:
    names = {name for name, _ in request.headers}
    if b"transfer-encoding" not in names:
        return None
    if b"content-length" in names:
        return "The request has both Content-Length and Transfer-Encoding: send one."
    if request.http_version == b"1.0":
        return "An HTTP/1.0 request cannot use Transfer-Encoding."
    return None


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request head, and JSON:API documents for
    the answers uvicorn gives before any app runs (an unparsable request, too many connections).

    A request head is complete when uvicorn starts a new request cycle for it; until then the
    deadline armed when the connection opened or the previous response ended stays armed, however
    many bytes trickle in.

    The connection limit is decided once per connection, as it opens: one over the limit closes
    the connection that has waited longest for a request head (at least
    ``EVICTABLE_AFTER_SECONDS``), or else has its requests answered 503. uvicorn's own check
    refused every request while the count was over the limit, those of connections opened long
    before included: a thousand connections that sent nothing kept every client out, with no key
    (found by the outside probe).
    """

    conn: FramedH11Connection

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.conn = FramedH11Connection(
            h11.SERVER, config.h11_max_incomplete_event_size or MAX_HEADER_BYTES
        )
        self.head_deadline: asyncio.TimerHandle | None = None
        self.send_deadline: asyncio.TimerHandle | None = None
        self.waiting_since: float | None = None  # for a request head; None while one is served
        self.admitted = True
        # The limit is checked by ``_admit`` instead of uvicorn, whose 503 is plain text.
        self.connection_limit, self.limit_concurrency = self.limit_concurrency, None
        self.app_within_limit, self.app = self.app, self._admit

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.conn.body_sink = transport
        self._arm_head_deadline()
        limit = self.connection_limit
        if limit is not None and len(self.connections) > limit:
            self.admitted = self._close_longest_waiting()

    def _close_longest_waiting(self) -> bool:
        """Close the connection that has waited longest for a request head, if it has waited
        ``EVICTABLE_AFTER_SECONDS``; whether one was closed. A connection whose request is
        being served is never closed here."""
        since = time.monotonic() - EVICTABLE_AFTER_SECONDS
        waiting = [
            other
            for other in self.connections
            if isinstance(other, BoundedH11Protocol)
            and other.waiting_since is not None
            and other.waiting_since <= since
            and not other.transport.is_closing()
        ]
        if not waiting:
            return False
        longest = min(waiting, key=lambda other: cast(float, other.waiting_since))
        longest._disarm_head_deadline()
        longest.transport.close()
        return True

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        super().data_received(data)
        if self.cycle is not cycle:
            self._disarm_head_deadline()

    def on_response_complete(self) -> None:
        cycle = self.cycle
        super().on_response_complete()
        if self.cycle is cycle and not self.transport.is_closing():
            self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_deadline()
        self._disarm_send_deadline()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.send_deadline is None:
            self.send_deadline = self.loop.call_later(
                SEND_STALL_TIMEOUT_SECONDS, self._send_stalled
            )

    def resume_writing(self) -> None:
        self._disarm_send_deadline()
        super().resume_writing()

    def send_400_response(self, msg: str) -> None:
        error: AppError
        if self.conn.refused_status == HeaderFieldsTooLarge.status:
            error = HeaderFieldsTooLarge(f"The request headers exceed {MAX_HEADER_BYTES} bytes.")
        else:
            detail = self.conn.framing_fault or "The request is not valid HTTP/1.1."
            error = BadRequest(detail, code="invalid_http_request")
        body = orjson.dumps(error_document(error))
        headers = [
            (b"content-type", JSONAPI_MEDIA_TYPE.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        try:
            for event in (
                h11.Response(
                    status_code=error.status, headers=headers, reason=STATUS_PHRASES[error.status]
                ),
                h11.Data(data=body),
                h11.EndOfMessage(),
            ):
                self.transport.write(self.conn.send(event) or b"")
        except h11.LocalProtocolError:
            pass  # a response had already begun on this connection: closing is all that is left
        self.transport.close()

    async def _admit(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refused: the requests of a connection that opened over the limit and closed no other
        for its place, and a request beyond ``limit`` running ones (this request's task is
        already one of ``self.tasks`` here)."""
        limit = self.connection_limit
        if limit is not None and (not self.admitted or len(self.tasks) > limit):
            logger.warning("refused a request: %d connections are open", len(self.connections))
            error = ServiceUnavailable(
                f"The server holds its limit of {limit} connections; try again shortly.",
                code="too_many_connections",
                headers={"Connection": "close", "Retry-After": "1"},
            )
            await error_response(error)(scope, receive, send)
            return
        await self.app_within_limit(scope, receive, send)

    def _arm_head_deadline(self) -> None:
        self._disarm_head_deadline()
        self.head_deadline = self.loop.call_later(
            REQUEST_HEAD_TIMEOUT_SECONDS, self._head_deadline_passed
        )
        self.waiting_since = time.monotonic()  # the loop's clock counts whole milliseconds

    def _disarm_head_deadline(self) -> None:
        self.waiting_since = None
        if self.head_deadline is not None:
            self.head_deadline.cancel()
            self.head_deadline = None

    def _disarm_send_deadline(self) -> None:
        if self.send_deadline is not None:
            self.send_deadline.cancel()
            self.send_deadline = None

    def _send_stalled(self) -> None:
        """Nothing was read for the whole deadline: drop the connection and its unsent bytes."""
        self.send_deadline = None
        logger.info("dropped a connection whose client stopped reading")
        self.transport.abort()

    def _head_deadline_passed(self) -> None:
        self.head_deadline = None
        if not self.transport.is_closing() and self.transport.get_protocol() is self:
            self.transport.close()


class RequestLimitsMiddleware:
    """Oversized request targets (414) and header blocks (431), NUL characters in the path or
    query, and other control characters or encoded slashes in the path (400) end here: no
    database stores a NUL in text, so one must never reach a lookup, and a path is routed as
    the client's proxy reads it. A target in absolute form (``GET http://host/path``), which
    RFC 9112 §3.2.2 says a server must accept, is routed by its path (uvicorn passes it whole)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope = _origin_form(scope)
            error = _refusal(scope)
            if error is not None:
                await error_response(error)(scope, receive, send)
                return
        await self.app(scope, receive, send)


_CONTROL_CHARACTER = re.compile("[\x01-\x1f\x7f]")


def _origin_form(scope: Scope) -> Scope:
    raw = scope.get("raw_path") or scope["path"].encode()
    if not raw.lower().startswith((b"http://", b"https://")):
        return scope
    path = b"/" + raw.split(b"://", 1)[1].partition(b"/")[2]
    return {**scope, "raw_path": path, "path": unquote(path.decode("ascii", "replace"))}


def _refusal(scope: Scope) -> AppError | None:
    target = len(scope.get("raw_path") or scope["path"].encode()) + len(scope["query_string"])
    if target > MAX_REQUEST_TARGET_BYTES:
        return UriTooLong(
            f"The path and query take {target} bytes; at most {MAX_REQUEST_TARGET_BYTES} are read."
        )
    size = sum(len(name) + len(value) + 4 for name, value in scope["headers"])
    if size > MAX_HEADER_BYTES:
        return HeaderFieldsTooLarge(
            f"The request headers take {size} bytes; at most {MAX_HEADER_BYTES} are read."
        )
    if "\x00" in scope["path"]:
        return BadRequest("The path holds a NUL character (%00).", code="nul_character")
    if _CONTROL_CHARACTER.search(scope["path"]):
        # Starlette's routes end in "$", which also matches before a final line feed: a path
        # ending in %0A reached the route of the path without it, past a proxy's exact rules.
        return BadRequest(
            "The path holds a control character (%01 to %1F, %7F): no id or name holds one.",
            code="control_character",
        )
    if b"%2f" in (scope.get("raw_path") or b"").lower():
        # Decoded, it would separate segments the client sent as one: a proxy's rule for
        # /datasources/*/files would not see /datasources/x%2Ffiles, which routes there.
        return BadRequest(
            "The path holds an encoded slash (%2F): no id or name holds a slash.",
            code="encoded_slash",
        )
    if b"%00" in scope["query_string"] or b"\x00" in scope["query_string"]:
        return BadRequest("The query holds a NUL character (%00).", code="nul_character")
    return None


async def read_body_within(request: Request, max_bytes: int, seconds: float | None = None) -> bytes:
    """The whole body, or 413 past ``max_bytes``, or 408 if it takes longer than ``seconds``
    (``BODY_TIMEOUT_SECONDS`` unless given)."""
    seconds = BODY_TIMEOUT_SECONDS if seconds is None else seconds
    declared = natural_number(request.headers.get("content-length", ""), max_bytes)
    if declared is not None and declared > max_bytes:
        raise PayloadTooLarge(f"The request body exceeds {max_bytes} bytes.")
    chunks, size = [], 0
    try:
        with anyio.fail_after(seconds):
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_bytes:
                    raise PayloadTooLarge(f"The request body exceeds {max_bytes} bytes.")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout(
            f"The request body did not arrive within {seconds:.0f} s.",
            headers={"Connection": "close"},  # the rest of the body would be read as a request
        ) from None
    except ClientDisconnect:
        raise ClientGone("The client closed the connection before its body arrived.") from None
    return b"".join(chunks)
