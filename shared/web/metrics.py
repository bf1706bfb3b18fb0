"""``GET /metrics`` (Prometheus text format 0.0.4) and the middleware that counts, times and sizes
every HTTP response into the process's ``shared.metrics.Metrics``."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.metrics import CONTENT_TYPE, HTTP_METHODS, OTHER_METHOD, Metrics


def metrics(request: Request) -> Response:
    """A plain function, which runs in the thread pool: rendering reads the queue from the
    metadata DB, and a scrape must never stall the event loop."""
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE)


class MetricsMiddleware:
    """Counts, times and sizes every HTTP response; streaming bodies are timed to their end."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status, sent = 500, 0

        async def measure(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, measure)
        finally:
            metrics: Metrics = scope["app"].state.metrics
            route = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"] if scope["method"] in HTTP_METHODS else OTHER_METHOD
            metrics.requests.labels(method, route, str(status)).inc()
            metrics.latency.labels(method, route).observe(time.perf_counter() - started)
            metrics.bytes_sent.labels(route).inc(sent)
