"""Drive the operations of ``operations.py`` over httpx: one sync and one asyncio driver.

Both apply the same rules, written once in :class:`RetryRule`: a 429 (or 503) is waited out for
its ``Retry-After``, a broken connection is retried only when resending does no harm, and both
are bounded; any other answer outside the call's expected statuses becomes a typed exception.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from dataferry_client import __version__
from dataferry_client.config import Config
from dataferry_client.errors import (
    ConfigurationError,
    DataferryError,
    NotJson,
    TransportError,
    UnexpectedAnswer,
    api_error,
)
from dataferry_client.operations import Call, Operation, Reply

T = TypeVar("T")
logger = logging.getLogger("dataferry_client")
RETRY_STATUSES = (429, 503)
# The longest a ``soon`` call (ending what an interrupted operation started) may take.
SOON_SECONDS = 5.0
# No answer of the API is this large (a page of 100 filters with the largest options is about
# 100 MB): a larger one is refused rather than held in memory, several times over once parsed.
MAX_ANSWER_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class RetryRule:
    """How often and how long the client retries before it raises."""

    max_retries: int = 5
    max_retry_wait: float = 60.0  # seconds; a longer Retry-After is not waited for

    def delay(self, call: Call, reply: Reply | None, attempt: int) -> float | None:
        """Seconds to wait before resending, or None to give up now (a ``soon`` call is sent
        once)."""
        if call.soon or attempt >= self.max_retries:
            return None
        if reply is None:  # the connection failed: a restarting server is back soon, or not
            return 0.2 * 2**attempt if call.retry_safe and attempt < 3 else None
        if reply.status not in RETRY_STATUSES:
            return None
        seconds = retry_after(reply.headers)
        if reply.status == 503 and seconds is None and not call.retry_safe:
            return None  # a change may have been made: a 503 that did nothing says when to retry
        seconds = min(5.0, 0.5 * 2**attempt) if seconds is None else seconds
        return seconds if seconds <= self.max_retry_wait else None


def retry_after(headers: Mapping[str, str]) -> float | None:
    try:
        return max(0.0, float(headers.get("retry-after", "")))
    except ValueError:
        return None


def _request(config: Config, call: Call, timeout: float) -> dict[str, Any]:
    """Keyword arguments of ``httpx.Client.request`` for ``call``."""
    if call.data_token is not None:
        if not config.data_url:
            raise ConfigurationError(
                "no data server URL: pass data_url (--data-url), set DATAFERRY_DATA_URL or add "
                "data_url to the profile"
            )
        url, authorization = config.data_url + call.path, f"Data {call.data_token}"
    else:
        url, authorization = config.api_url + call.path, f"Api {config.api_key}"
    try:
        httpx.URL(url)
    except httpx.InvalidURL as exc:
        server = "data" if call.data_token is not None else "API"
        raise ConfigurationError(f"the {server} server URL is not valid: {exc}") from None
    headers = {
        "Authorization": authorization,
        "User-Agent": f"dataferry-client/{__version__}",
        **call.headers,
    }
    content = None
    if call.body is not None:
        headers["Content-Type"] = call.content_type
        try:
            content = json.dumps(call.body, allow_nan=False).encode()
        except ValueError:
            raise NotJson(
                "A value to send is NaN or infinite, which JSON cannot hold: send it as a string."
            ) from None
    if call.soon:
        timeout = min(timeout, SOON_SECONDS)
    read = call.read_timeout if call.read_timeout is not None else timeout
    return {
        "method": call.method,
        "url": url,
        "params": call.params,
        "headers": headers,
        "content": content,
        "timeout": httpx.Timeout(timeout, read=read),
    }


class _Body:
    """An answer's body as it arrives, held to ``MAX_ANSWER_BYTES`` and to ``timeout`` seconds
    after its headers (a server sending a byte a second never trips httpx's read timeout, which
    counts the time between bytes)."""

    def __init__(self, response: httpx.Response, timeout: float) -> None:
        self.deadline = time.monotonic() + timeout
        self.parts: list[bytes] = []
        self.size = 0
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_ANSWER_BYTES:
            self._too_large()

    def add(self, chunk: bytes) -> None:
        self.parts.append(chunk)
        self.size += len(chunk)
        if self.size > MAX_ANSWER_BYTES:
            self._too_large()
        if time.monotonic() > self.deadline:
            raise TransportError("the server's answer did not arrive in time (it came too slowly)")

    def whole(self) -> bytes:
        return b"".join(self.parts)

    @staticmethod
    def _too_large() -> None:
        raise UnexpectedAnswer(
            f"the server's answer is larger than {MAX_ANSWER_BYTES // 2**20} MiB, which no answer "
            "of the API is: is the URL the dataferry server's?"
        )


def _finish(call: Call, reply: Reply | None, failure: Exception | None) -> Reply:
    if reply is None:
        raise TransportError(f"cannot reach the server: {failure}") from failure
    if reply.status in call.expect:
        return reply
    if 300 <= reply.status < 400:
        where = reply.headers.get("location") or "another address"
        raise ConfigurationError(
            f"the server redirects (HTTP {reply.status}) to {where}: configure the URL it "
            "points to (the client does not follow redirects, which would drop its key)",
            status=reply.status,
        )
    if 200 <= reply.status < 300:
        raise UnexpectedAnswer(
            f"the server answered HTTP {reply.status}, which the API does not answer here: "
            "is the URL the dataferry server's?",
            status=reply.status,
        )
    raise api_error(reply.status, reply.content, retry_after(reply.headers))


def _advance(operation: Operation[T], reply: Reply) -> Call:
    """The operation's next call, given the answer to its last; an answer whose document lacks
    what the API defines (a field missing, of another type) is an UnexpectedAnswer, not a
    client bug."""
    try:
        return operation.send(reply)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UnexpectedAnswer(
            f"the server's answer (HTTP {reply.status}) is not the document the API defines: "
            f"{type(exc).__name__}: {exc}",
            status=reply.status,
        ) from exc


def _log_retry(call: Call, reply: Reply | None, failure: Exception | None, delay: float) -> None:
    reason = f"HTTP {reply.status}" if reply is not None else f"connection failed ({failure})"
    logger.info("%s %s: %s; retrying in %.1f s", call.method, call.path, reason, delay)


class SyncTransport:
    def __init__(self, config: Config, *, timeout: float, retry: RetryRule) -> None:
        self.config = config
        self.timeout = timeout
        self.retry = retry
        self.http = httpx.Client()

    def send(self, call: Call) -> Reply:
        request = _request(self.config, call, self.timeout)
        for attempt in range(self.retry.max_retries + 1):
            reply, failure = None, None
            try:
                with self.http.stream(**request) as response:
                    body = _Body(response, self.timeout)
                    for chunk in response.iter_bytes():
                        body.add(chunk)
                reply = Reply(response.status_code, body.whole(), response.headers)
            except httpx.TransportError as exc:
                failure = exc
            delay = self.retry.delay(call, reply, attempt)
            if delay is None:
                break
            _log_retry(call, reply, failure, delay)
            time.sleep(delay)
        return _finish(call, reply, failure)

    def drive(self, operation: Operation[T]) -> T:
        """Run ``operation`` to its end; errors are thrown into it, so it may handle them, and so
        is a KeyboardInterrupt (Ctrl-C), so it may end what it started: one that came during a
        call, or between two, while the operation waited for its next answer."""
        try:
            call = next(operation)
            while True:
                try:
                    try:
                        reply = self.send(call)
                    except DataferryError as exc:
                        call = operation.throw(exc)
                    else:
                        call = _advance(operation, reply)
                except KeyboardInterrupt as interrupt:
                    if inspect.getgeneratorstate(operation) != inspect.GEN_SUSPENDED:
                        raise  # it came inside the operation, which did not handle it
                    call = operation.throw(interrupt)
        except StopIteration as done:
            result: T = done.value
            return result

    def close(self) -> None:
        self.http.close()


class AsyncTransport:
    def __init__(self, config: Config, *, timeout: float, retry: RetryRule) -> None:
        self.config = config
        self.timeout = timeout
        self.retry = retry
        self.http = httpx.AsyncClient()

    async def send(self, call: Call) -> Reply:
        request = _request(self.config, call, self.timeout)
        for attempt in range(self.retry.max_retries + 1):
            reply, failure = None, None
            try:
                async with self.http.stream(**request) as response:
                    body = _Body(response, self.timeout)
                    async for chunk in response.aiter_bytes():
                        body.add(chunk)
                reply = Reply(response.status_code, body.whole(), response.headers)
            except httpx.TransportError as exc:
                failure = exc
            delay = self.retry.delay(call, reply, attempt)
            if delay is None:
                break
            _log_retry(call, reply, failure, delay)
            await asyncio.sleep(delay)
        return _finish(call, reply, failure)

    async def drive(self, operation: Operation[T]) -> T:
        """As ``SyncTransport.drive``; the task's cancellation is thrown into the operation as
        Ctrl-C is there, so that it may end what it started (its own calls are then sent, unless
        the task is cancelled again)."""
        try:
            call = next(operation)
            while True:
                try:
                    try:
                        reply = await self.send(call)
                    except DataferryError as exc:
                        call = operation.throw(exc)
                    else:
                        call = _advance(operation, reply)
                except asyncio.CancelledError as cancelled:
                    if inspect.getgeneratorstate(operation) != inspect.GEN_SUSPENDED:
                        raise
                    call = operation.throw(cancelled)
        except StopIteration as done:
            result: T = done.value
            return result

    async def close(self) -> None:
        await self.http.aclose()
