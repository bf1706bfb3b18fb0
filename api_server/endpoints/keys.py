"""The region's public signing keys, for data servers that fetch them over HTTP."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from shared.tokens import jwks, load_public_keys


async def jwks_document(request: Request) -> Response:
    """Public keys only; every key still published (a rotated-out key stays until its overlap ends)."""
    keys = await run_in_threadpool(load_public_keys, request.app.state.settings)
    return JSONResponse(jwks(keys), headers={"Cache-Control": "public, max-age=60"})
