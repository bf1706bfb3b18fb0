"""An upload's body, streamed to disk as it arrives: memory stays bounded whatever its size.

uvicorn stops reading the socket while a request's unread body exceeds 64 KiB, so at most that
plus ``FLUSH_BYTES`` are held here at any moment. Each piece is counted against the upload's
limits before it is written (413 the moment it would pass them); a body that arrives too slowly
(below ``MIN_UPLOAD_BYTES_PER_WINDOW`` per ``UPLOAD_WINDOW_SECONDS``) is a 408, and a client that
hangs up ends the request. Either way the caller closes the upload, which removes its temporary
file and so the quota it held.
"""

from __future__ import annotations

import anyio
from starlette.requests import ClientDisconnect, Request

from api_server.services.uploads import Upload
from shared.digits import natural_number
from shared.errors import ClientGone, RequestTimeout
from shared.web.http_limits import BODY_TIMEOUT_SECONDS

FLUSH_BYTES = 1024 * 1024
# The pace an upload must keep: at least this many bytes within every window of time spent waiting
# for the client (about 2 KiB/s). A deadline per piece alone let a client hold a connection, and
# the quota its temporary file counts, for ever by sending a few bytes a second. A stalled body
# fails after one window, as any other body does; a link of 2G mobile speed (~25 KiB/s) passes
# with a tenfold margin. Time the server spends writing to disk is not counted.
UPLOAD_WINDOW_SECONDS = BODY_TIMEOUT_SECONDS
MIN_UPLOAD_BYTES_PER_WINDOW = 64 * 1024
_LARGEST_LENGTH = 2**63 - 1  # beyond any upload limit; larger declared lengths come back just above


def declared_length(request: Request) -> int | None:
    """The Content-Length the client declared, if any (llhttp has checked its form)."""
    return natural_number(request.headers.get("content-length", ""), _LARGEST_LENGTH)


async def receive_into(request: Request, upload: Upload) -> None:
    """Write the whole body into ``upload``; writes run in a worker thread, off the loop."""
    pending = bytearray()
    chunks = request.stream()
    # A deadline per window, not per body: a large upload may take long, a slow one not.
    window_bytes, window_waited = 0, 0.0
    try:
        while True:
            started = anyio.current_time()
            with anyio.fail_after(UPLOAD_WINDOW_SECONDS - window_waited):
                chunk = await anext(chunks, None)
            if chunk is None:
                break
            window_waited += anyio.current_time() - started
            window_bytes += len(chunk)
            if window_bytes >= MIN_UPLOAD_BYTES_PER_WINDOW:
                window_bytes, window_waited = 0, 0.0
            upload.admit(len(chunk))
            pending += chunk
            if len(pending) >= FLUSH_BYTES:
                await anyio.to_thread.run_sync(upload.write, pending)
                pending = bytearray()
        if pending:
            await anyio.to_thread.run_sync(upload.write, pending)
    except TimeoutError:
        raise RequestTimeout(
            f"The upload is too slow: at least {MIN_UPLOAD_BYTES_PER_WINDOW // 1024} KiB must "
            f"arrive every {UPLOAD_WINDOW_SECONDS:g} s; nothing was written.",
            headers={"Connection": "close"},
        ) from None
    except ClientDisconnect:
        raise ClientGone("The client closed the connection before its upload arrived.") from None
