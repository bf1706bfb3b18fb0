"""An upload's body, streamed to disk as it arrives: memory stays bounded whatever its size.

uvicorn stops reading the socket while a request's unread body exceeds 64 KiB, so at most that
plus ``FLUSH_BYTES`` are held here at any moment. Each piece is counted against the upload's
limits before it is written (413 the moment it would pass them); a body that stalls for
``BODY_TIMEOUT_SECONDS`` is a 408, and a client that hangs up ends the request. Either way the
caller closes the upload, which removes its temporary file.
"""

from __future__ import annotations

import anyio
from starlette.requests import ClientDisconnect, Request

from api_server.services.uploads import Upload
from shared.errors import ClientGone, RequestTimeout
from shared.http_limits import BODY_TIMEOUT_SECONDS

FLUSH_BYTES = 1024 * 1024


def declared_length(request: Request) -> int | None:
    """The Content-Length the client declared, if any (h11 has checked its form)."""
    value = request.headers.get("content-length", "")
    return int(value) if value.isdigit() else None


async def receive_into(request: Request, upload: Upload) -> None:
    """Write the whole body into ``upload``; writes run in a worker thread, off the loop."""
    pending = bytearray()
    chunks = request.stream()
    try:
        while True:
            # A deadline per piece, not per body: a large upload may take long, a stalled one not.
            with anyio.fail_after(BODY_TIMEOUT_SECONDS):
                chunk = await anext(chunks, None)
            if chunk is None:
                break
            upload.admit(len(chunk))
            pending += chunk
            if len(pending) >= FLUSH_BYTES:
                await anyio.to_thread.run_sync(upload.write, pending)
                pending = bytearray()
        if pending:
            await anyio.to_thread.run_sync(upload.write, pending)
    except TimeoutError:
        raise RequestTimeout(
            f"The upload stalled: no data arrived for {BODY_TIMEOUT_SECONDS:.0f} s.",
            headers={"Connection": "close"},
        ) from None
    except ClientDisconnect:
        raise ClientGone("The client closed the connection before its upload arrived.") from None
