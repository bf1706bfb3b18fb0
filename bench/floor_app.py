"""The floor peer of bench/latency_bench.py: a Starlette app doing nothing, served by uvicorn as
dataferry's servers are, so that the bench can print what four (or two) HTTP requests cost on
this machine before any work is done. Each route answers a small JSON document of the size of
dataferry's answers' headers and ids; none reads a database, checks a key or runs a query.

Run as ``python -m uvicorn --app-dir bench floor_app:app``.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

_EXECUTION = {"data": {"type": "executions", "id": "0000-0000-0000"}}


async def execution(request: Request) -> JSONResponse:
    """Stands for Run Execution, Get Execution and Get Execution Data alike."""
    if request.method == "POST":
        await request.body()
    return JSONResponse(_EXECUTION)


async def data(request: Request) -> Response:
    """Stands for the data server's fetch of a one-row result."""
    return Response(b'{"one":1}', media_type="application/json")


app = Starlette(
    routes=[
        Route("/executions", execution, methods=["GET", "POST"]),
        Route("/data", data),
    ]
)
