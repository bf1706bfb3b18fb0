"""HTTP semantics of a stored object of known size and strong ETag (RFC 9110 §13-14): HEAD,
``If-Match`` (412), ``If-None-Match`` (304), ``If-Range``, single ranges (206) and several
(``multipart/byteranges``), unsatisfiable ranges (416). The body is read from the object a
chunk at a time, off the loop."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pyarrow as pa
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from shared.digits import natural_number
from shared.errors import PreconditionFailed, RangeNotSatisfiable
from shared.web.request_headers import list_value, sole_value

READ_CHUNK_BYTES = 1024 * 1024
MAX_RANGES = 16  # more parts than this is not a reader resuming or seeking: the whole body
# Byte positions are read up to this; larger ones lie past the end of any object all the same.
_PAST_EVERY_OBJECT = 10**18

Span = tuple[int, int]  # first and last byte, inclusive


def parse_ranges(header: str | None, size: int) -> list[Span] | None:
    """The satisfiable spans of a ``Range: bytes=…`` header; None means "send it all" (no
    header, another unit, a malformed one, too many parts, parts overlapping into more bytes
    than the whole), as RFC 9110 §14.2 allows."""
    if not header:
        return None
    unit, _, specs = header.partition("=")
    if unit.strip().lower() != "bytes" or not specs.strip():
        return None
    spans: list[Span] = []
    entries = [entry.strip() for entry in specs.split(",") if entry.strip()]
    if not entries or len(entries) > MAX_RANGES:
        return None
    for entry in entries:
        first_text, dash, last_text = entry.partition("-")
        first = natural_number(first_text, _PAST_EVERY_OBJECT) if first_text else None
        last = natural_number(last_text, _PAST_EVERY_OBJECT) if last_text else None
        if not dash or (first_text and first is None) or (last_text and last is None):
            return None
        if first is None:
            if last is None:
                return None
            if last > 0 and size > 0:
                spans.append((max(0, size - last), size - 1))
            continue
        if last is not None and last < first:
            return None
        if first < size:
            spans.append((first, size - 1 if last is None else min(last, size - 1)))
    if sum(last - first + 1 for first, last in spans) > size:
        return None  # overlapping parts asking for more than the body: it once, as §14.2 allows
    if not spans:
        raise RangeNotSatisfiable(
            f"No requested range starts within the {size} bytes of this representation.",
            headers={"Content-Range": f"bytes */{size}"},
        )
    return spans


def _etag_listed(header: str, etag: str | None, *, weak: bool) -> bool:
    """Whether ``header`` (a list of entity tags) names ``etag``; ``*`` names any current
    representation, the only one a response without an ETag (a row window) can match."""
    tags = [tag.strip() for tag in header.split(",")]
    if "*" in tags:
        return True
    if etag is None:
        return False
    if weak:
        return etag.removeprefix("W/") in (tag.removeprefix("W/") for tag in tags)
    return etag in tags


def preconditions(request: Request, etag: str | None, headers: dict[str, str]) -> Response | None:
    """RFC 9110 §13.2.2's order for a GET or HEAD: ``If-Match`` naming no current
    representation is a 412 (strong comparison); then a 304 when ``If-None-Match`` lists it
    (weak comparison). ``etag`` None: the response has none."""
    if_match = list_value(request, "if-match")
    if if_match is not None and not _etag_listed(if_match, etag, weak=False):
        raise PreconditionFailed(
            "If-Match names no current representation of this result"
            + (f"; its ETag is {etag}." if etag else " (it has none: a row window or a schema).")
        )
    if_none_match = list_value(request, "if-none-match")
    if if_none_match is None or not _etag_listed(if_none_match, etag, weak=True):
        return None
    validators = {"ETag": etag, "Accept-Ranges": "bytes"} if etag else {}
    return Response(status_code=304, headers={**headers, **validators})


def object_response(
    request: Request,
    source: pa.NativeFile,
    *,
    etag: str,
    media_type: str,
    headers: dict[str, str],
) -> Response:
    """A 200, 206 or 416 for ``source``, which the response closes. The caller evaluates the
    preconditions (``preconditions``) first, before anything is opened or encoded."""
    size = source.size()
    headers = {**headers, "ETag": etag, "Accept-Ranges": "bytes"}
    spans = None
    if_range = sole_value(request, "If-Range")
    if if_range is None or if_range.strip() == etag:
        try:
            spans = parse_ranges(sole_value(request, "Range"), size)
        except RangeNotSatisfiable:
            source.close()
            raise
    if spans and len(spans) > 1 and "Content-Encoding" in headers:
        spans = None  # parts of a compressed body are no body a client could decode: send it all
    head = request.method == "HEAD"
    if spans is None:
        return _streamed(
            source, [(0, size - 1)], 200, head, {**headers, "Content-Length": str(size)}, media_type
        )
    if len(spans) == 1:
        first, last = spans[0]
        headers |= {
            "Content-Range": f"bytes {first}-{last}/{size}",
            "Content-Length": str(last - first + 1),
        }
        return _streamed(source, spans, 206, head, headers, media_type)
    return _multipart(source, spans, size, head, headers, media_type)


def _multipart(
    source: pa.NativeFile,
    spans: list[Span],
    size: int,
    head: bool,
    headers: dict[str, str],
    media_type: str,
) -> Response:
    boundary = os.urandom(12).hex()
    heads = [
        (
            f"--{boundary}\r\nContent-Type: {media_type}\r\n"
            f"Content-Range: bytes {first}-{last}/{size}\r\n\r\n"
        ).encode()
        for first, last in spans
    ]
    tail = f"--{boundary}--\r\n".encode()
    length = sum(
        len(h) + (last - first + 1) + 2 for h, (first, last) in zip(heads, spans, strict=True)
    )
    headers = {**headers, "Content-Length": str(length + len(tail))}

    async def body() -> AsyncIterator[bytes]:
        try:
            for part_head, (first, last) in zip(heads, spans, strict=True):
                yield part_head
                async for chunk in _read(source, first, last):
                    yield chunk
                yield b"\r\n"
            yield tail
        finally:
            source.close()

    media = f"multipart/byteranges; boundary={boundary}"
    if head:
        source.close()
        return _headers_only(206, headers, media)
    return StreamingResponse(body(), status_code=206, headers=headers, media_type=media)


def _streamed(
    source: pa.NativeFile,
    spans: list[Span],
    status: int,
    head: bool,
    headers: dict[str, str],
    media_type: str,
) -> Response:
    if head or not spans or spans[0][1] < spans[0][0]:
        source.close()
        return _headers_only(status, headers, media_type)
    first, last = spans[0]
    if isinstance(source, pa.BufferReader) and last - first < READ_CHUNK_BYTES:
        # A small result, encoded in memory: one body, without a streaming response's task
        # group and disconnect listener, which cost more than the rest of such a fetch.
        with source:
            return Response(
                source.read_at(last - first + 1, first),
                status_code=status,
                headers=headers,
                media_type=media_type,
            )

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in _read(source, first, last):
                yield chunk
        finally:
            source.close()

    return StreamingResponse(body(), status_code=status, headers=headers, media_type=media_type)


def _headers_only(status: int, headers: dict[str, str], media_type: str) -> Response:
    """HEAD (or an empty object): the headers GET would send, Content-Length included."""
    return Response(status_code=status, headers=headers, media_type=media_type)


async def _read(source: pa.NativeFile, first: int, last: int) -> AsyncIterator[bytes]:
    position = first
    while position <= last:
        size = min(READ_CHUNK_BYTES, last - position + 1)
        if isinstance(source, pa.BufferReader):  # in memory: no disk to wait for
            chunk = source.read_at(size, position)
        else:
            chunk = await run_in_threadpool(source.read_at, size, position)
        if not chunk:
            raise OSError("the stored representation ended early")
        position += len(chunk)
        yield chunk
