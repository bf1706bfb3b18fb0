"""Limits every HTTP request of both servers lives within, so no client can hold a server.

uvicorn enforces what it can (idle keep-alive); the protocol here bounds request heads as they
arrive, pipelined requests and the connection count, and refuses a request whose body length a
proxy in front could read differently; the middleware refuses oversized targets and header
blocks and NUL characters in the URL before any endpoint runs, and
``read_body_within`` gives up on a body that trickles in more slowly than
``BODY_TIMEOUT_SECONDS`` allows.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import unquote, unquote_to_bytes

import anyio
import httptools
import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
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
from shared.request_bounds import (
    MAX_HEADER_BYTES,
    MAX_HEADER_FIELDS,
    MAX_PIPELINED_REQUESTS,
    MAX_REQUEST_TARGET_BYTES,
)
from shared.settings import Settings
from shared.text import is_utf8
from shared.web.problems import error_response

if TYPE_CHECKING:
    from uvicorn._types import ASGISendEvent, HTTPResponseBodyEvent, HTTPResponseStartEvent

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
        "http": BoundedHttpToolsProtocol,
        # No WebSocket route exists: an upgrade is an ordinary request (404), not a plain-text 403.
        "ws": "none",
    }


class PassthroughCycle(RequestResponseCycle):
    """uvicorn's request cycle, with two changes to how a body without a length is sent:

    - over HTTP/1.1, a chunk's pieces (size, data, CRLF) go to the transport as they are
      instead of joined into one new copy of each chunk: a first fetch of a large result sends
      hundreds of megabytes, and the copy cost its event loop a sixth of its sending time;
    - over HTTP/1.0, which has no chunked coding, the body ends where the connection closes
      (uvicorn chunked it all the same, and a 1.0 client read the chunk sizes as data).
    """

    close_delimited = False

    async def send(self, message: ASGISendEvent) -> None:
        if message["type"] == "http.response.start" and self._without_length(message):
            self.close_delimited, self.chunked_encoding, self.keep_alive = True, False, False
            headers = [
                (n, v) for n, v in message.get("headers", ()) if n.lower() != b"transfer-encoding"
            ]
            message = {**message, "headers": headers}
        elif message["type"] == "http.response.body" and not self.response_complete:
            if self.close_delimited:
                await self._send_until_close(message)
                return
            body = message.get("body", b"")
            if body and self.chunked_encoding and self.scope["method"] != "HEAD":
                if not await self._writable():
                    return
                self.transport.writelines([b"%x\r\n" % len(body), body, b"\r\n"])
                # uvicorn ends the body (or not) as for an empty piece: the data is sent
                message = {**message, "body": b""}
        await super().send(message)

    def _without_length(self, start: HTTPResponseStartEvent) -> bool:
        """An HTTP/1.0 response that has a body and no Content-Length (a Transfer-Encoding the
        app set is dropped: 1.0 has none)."""
        if self.scope["http_version"] != "1.0" or self.scope["method"] == "HEAD":
            return False
        if start.get("status") in (204, 304):
            return False
        return all(name.lower() != b"content-length" for name, _ in start.get("headers", ()))

    async def _writable(self) -> bool:
        """Once the client has read enough of what was sent (as uvicorn waits before a write),
        whether it is still there to write to."""
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        return not self.disconnected

    async def _send_until_close(self, message: HTTPResponseBodyEvent) -> None:
        if not await self._writable():
            return
        self.transport.write(message.get("body", b""))
        if not message.get("more_body", False):
            self.response_complete = True
            self.message_event.set()
            self.transport.close()  # the body's end
            self.on_response()


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol (llhttp, in C), with the bounds llhttp does not keep and
    JSON:API documents for the answers given before any app runs.

    - **Header fields are bounded while they arrive**, a request's head and the trailer fields
      after a chunked body alike: past ``MAX_HEADER_BYTES`` or ``MAX_HEADER_FIELDS`` fields the
      request is a 431. httptools joins the pieces of a field of any length before handing it
      over, and uvicorn kept every field as Python objects twenty times its size. Each field is
      counted when it is handed over, and the part of one still being joined by the reads that
      held nothing else; a read that also held the end of a message, body or chunk is not
      counted, so up to one read (uvloop reads up to 256,000 bytes) of such a field may wait
      uncounted, as it could under h11. Trailer fields are read and dropped: no app reads them,
      and one would pass a forged ``X-Forwarded-For`` after a proxy's checks. A request target
      past ``MAX_REQUEST_TARGET_BYTES`` is a 414 as it is read.
    - **Framing a proxy in front could read differently is refused** (``_framing_fault``): a
      400, and the connection closes.
    - **Pipelined requests are bounded.** llhttp reads every request of a chunk at once, each
      held until its turn: past ``MAX_PIPELINED_REQUESTS`` waiting, the connection closes once
      those are answered, and the refused one gets no answer of its own (one read could
      otherwise hold ten thousand requests).
    - **A deadline for each request head**: armed when the connection opens or a response ends
      with no request waiting, disarmed when a head is whole, however many bytes trickle in.
    - **The connection limit is decided once per connection**, as it opens: one over the limit
      closes the connection that has waited longest for a request head (at least
      ``EVICTABLE_AFTER_SECONDS``), or else has its requests answered 503. uvicorn's own check
      refused every request while the count was over the limit, those of connections opened
      long before included: a thousand connections that sent nothing kept every client out.
    - **A client that stops reading** is dropped after ``SEND_STALL_TIMEOUT_SECONDS``.

    httptools rather than h11: docs/architecture.md §3.
    """

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.head_deadline: asyncio.TimerHandle | None = None
        self.send_deadline: asyncio.TimerHandle | None = None
        self.waiting_since: float | None = None  # for a request head; None while one is served
        self.head_pending = True  # the next bytes belong to a request head
        self.fields_open = True  # httptools may be joining part of a header or trailer field
        self.steps = 0  # of the parse between header fields, body data and messages
        # Read in this head (its target too) or trailer section; ``_step`` starts the next.
        self.field_bytes = self.field_count = self.target_bytes = 0
        self.fields_chunk_bytes = 0  # of reads that held nothing but fields of one section
        self.refusal: AppError | None = None  # found while llhttp parsed: answered after it
        # The request read before the latest one (``cycle``), answered before it.
        self.answered_before: RequestResponseCycle | None = None
        self.closing_after_answers = False  # nothing more is read from this connection
        self.admitted = True
        # The limit is checked by ``_admit`` instead of uvicorn, whose 503 is plain text.
        self.connection_limit, self.limit_concurrency = self.limit_concurrency, None
        self.app_within_limit, self.app = self.app, self._admit

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
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
            if isinstance(other, BoundedHttpToolsProtocol)
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
        if self.closing_after_answers:
            return
        self._unset_keepalive_if_required()
        cycle, steps, open_before = self.cycle, self.steps, self.fields_open
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # No protocol is upgraded to: the request was answered as any other, and what
            # follows it on the connection is not HTTP/1.1 to this server.
            if not self._stop_reading():
                self.transport.close()
            return
        except httptools.HttpParserError as error:
            refusal, self.refusal = self.refusal, None
            if refusal is not None:
                # Its traceback's frames (a callback's, and this one) hold the connection.
                refusal.__traceback__ = None
            self._refuse(refusal or _invalid_request(error))
            return
        if self.cycle is not cycle:
            self._disarm_head_deadline()
        only_fields = open_before and self.fields_open and self.steps == steps
        self.fields_chunk_bytes = self.fields_chunk_bytes + len(data) if only_fields else 0
        if self.fields_chunk_bytes > MAX_HEADER_BYTES:
            self._refuse(_fields_too_large())

    def _step(self, fields_open: bool) -> None:
        self.steps += 1
        self.fields_open = fields_open
        self.field_bytes = self.field_count = self.target_bytes = 0

    def _count_field(self, size: int) -> None:
        self.field_bytes += size
        self.field_count += 1
        if self.field_bytes > MAX_HEADER_BYTES or self.field_count > MAX_HEADER_FIELDS:
            self.refusal = _fields_too_large()
            raise self.refusal  # llhttp stops here; data_received answers it

    def on_url(self, url: bytes) -> None:
        self.target_bytes += len(url)
        if self.target_bytes > MAX_REQUEST_TARGET_BYTES:
            self.refusal = UriTooLong(
                f"The request target exceeds {MAX_REQUEST_TARGET_BYTES} bytes."
            )
            raise self.refusal  # llhttp stops here; data_received answers it
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_field(len(name) + len(value) + 4)
        if self.head_pending:  # else a trailer field: dropped
            super().on_header(name, value)

    def on_chunk_header(self) -> None:
        self._step(fields_open=True)  # trailer fields follow the last chunk's header

    def on_chunk_complete(self) -> None:
        self._step(fields_open=False)

    def on_body(self, body: bytes) -> None:
        if self.fields_open:
            self._step(fields_open=False)
        super().on_body(body)

    def on_headers_complete(self) -> None:
        http_version = self.parser.get_http_version()
        fault = _framing_fault(http_version, self.headers, self.parser.should_upgrade())
        if fault is not None:
            self.refusal = BadRequest(fault, code="invalid_http_request")
        elif len(self.pipeline) >= MAX_PIPELINED_REQUESTS:
            self.refusal = BadRequest(
                f"More than {MAX_PIPELINED_REQUESTS} requests were sent ahead of their answers.",
                code="too_many_pipelined_requests",
            )
        if self.refusal is not None:
            raise self.refusal  # llhttp stops here; data_received answers it
        if http_version == "1.0":
            self.expect_100_continue = False  # RFC 9110 §10.1.1: ignored in HTTP/1.0
        previous = self.cycle
        super().on_headers_complete()  # may refuse the target: the head is still pending then
        self.head_pending = False
        self._step(fields_open=False)
        self.answered_before = previous

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        cycle.__class__ = PassthroughCycle  # before its task exists, however eagerly it starts
        super()._start_asgi_task(cycle, app)

    def on_message_complete(self) -> None:
        self.head_pending = True
        self.answered_before = None  # only a request whose body is still read may need it
        self._step(fields_open=True)
        super().on_message_complete()

    def on_response_complete(self) -> None:
        owed = bool(self.pipeline)
        super().on_response_complete()
        if not owed and not self.transport.is_closing():
            self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_deadline()
        self._disarm_send_deadline()
        super().connection_lost(exc)
        # What refers back to this connection: without it, the connection (and the last
        # request's fields) is freed at once, not at a full collection, which is rare. uvicorn
        # cancels the keep-alive timer only when the client closed cleanly, not on a reset.
        self._unset_keepalive_if_required()
        self.app = self.app_within_limit
        self.pipeline.clear()
        self.answered_before = None
        if self.cycle is not None:
            self.cycle.on_response = _nothing

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.send_deadline is None:
            self.send_deadline = self.loop.call_later(
                SEND_STALL_TIMEOUT_SECONDS, self._send_stalled
            )

    def resume_writing(self) -> None:
        self._disarm_send_deadline()
        super().resume_writing()

    def _refuse(self, error: AppError) -> None:
        """Answer ``error`` and close the connection. A fault in a request (its head, or the
        body or trailers of one still waiting its turn) behind requests still owed answers:
        those go out and the connection closes after them. A fault in the body of the request
        being served: answered if its response has not begun, and its app is told the client is
        gone."""
        waiting_its_turn = not self.head_pending and bool(self.pipeline)
        if waiting_its_turn:
            # Dropped: the connection closes after the answer of the request read before it.
            self.pipeline.popleft()
            self.cycle = cast(RequestResponseCycle, self.answered_before)
        if self.head_pending or waiting_its_turn:
            if self._stop_reading():
                return
        else:
            self.closing_after_answers = True
            if self.cycle.response_started:
                self.transport.close()
                return
        body = orjson.dumps(error_document(error))
        head = (
            f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}\r\n"
            f"content-type: {JSONAPI_MEDIA_TYPE}\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n"
        )
        self.transport.write(head.encode() + body)
        self.transport.close()

    def _stop_reading(self) -> bool:
        """Read nothing more from this connection; whether answers are still owed for requests
        read before (the last of them then closes the connection)."""
        self.closing_after_answers = True
        self._disarm_head_deadline()
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False
            return True
        return False

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


def _fields_too_large() -> HeaderFieldsTooLarge:
    return HeaderFieldsTooLarge(
        f"The request's header fields exceed {MAX_HEADER_BYTES} bytes or {MAX_HEADER_FIELDS} "
        "fields."
    )


def _nothing() -> None:
    pass


def _framing_fault(
    http_version: str, headers: list[tuple[bytes, bytes]], upgrade: bool
) -> str | None:
    """Why a request whose head llhttp accepted is refused all the same: what a proxy in front
    may read otherwise (RFC 9112 §3.2, §6.1, §6.3 let a server refuse each), or a version no
    client of this API speaks."""
    if http_version not in ("1.0", "1.1"):
        return f"HTTP/{http_version} is not served: send HTTP/1.1."
    names = [name for name, _ in headers]
    if http_version == "1.1" and names.count(b"host") != 1:
        return "Exactly one Host header is required in HTTP/1.1."
    codings = [value.strip().lower() for name, value in headers if name == b"transfer-encoding"]
    if upgrade and (
        codings or any(v.strip() not in (b"", b"0") for n, v in headers if n == b"content-length")
    ):
        # llhttp reads no body after a head that asks for a protocol upgrade (curl --http2 over
        # http:// asks for h2c): the app would be given an empty one.
        return (
            "A request that asks for a protocol upgrade cannot carry a body here: send it "
            "without the Upgrade header (curl: without --http2)."
        )
    if not codings:
        return None
    if http_version == "1.0":
        return "An HTTP/1.0 request cannot use Transfer-Encoding."
    if b"content-length" in names:
        return "The request has both Content-Length and Transfer-Encoding: send one."
    if codings != [b"chunked"]:
        return "The only Transfer-Encoding read is chunked, once."
    return None


def _invalid_request(error: httptools.HttpParserError) -> BadRequest:
    """llhttp's reason is one of its fixed texts, never the request's bytes; a callback's
    error (one of uvicorn's) has none worth telling."""
    reason = "" if isinstance(error, httptools.HttpParserCallbackError) else f": {error}"
    return BadRequest(f"The request is not valid HTTP/1.1{reason}.", code="invalid_http_request")


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
            "The path holds an encoded slash (%2F): no id or file name holds a slash.",
            code="encoded_slash",
        )
    if b"%00" in scope["query_string"] or b"\x00" in scope["query_string"]:
        return BadRequest("The query holds a NUL character (%00).", code="nul_character")
    for part, sent in (("path", scope.get("raw_path")), ("query", scope["query_string"])):
        if sent and not is_utf8(unquote_to_bytes(sent)):
            # Decoded as it is, each such byte became U+FFFD: a filter matched nothing, a file
            # name was refused for a character the client never sent.
            return BadRequest(
                f"The {part} is not UTF-8 once its %-escapes are decoded (%FF alone is not).",
                code="not_utf8",
            )
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
