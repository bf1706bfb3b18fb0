"""The operations every server has: liveness, readiness, metrics, and its own documentation.

Declared like any other operation (``shared.web.operations``), so the routes and the OpenAPI paths
come from the same declaration; the readiness document names exactly the checks a server runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from shared import openapi as oa
from shared.metrics import CONTENT_TYPE as PROMETHEUS_MEDIA_TYPE
from shared.web.health import ReadinessCheck, liveness, readiness
from shared.web.metrics import metrics
from shared.web.operations import Operation
from shared.web.routing import documentation_handlers


def _readiness_document(names: Sequence[str]) -> oa.Schema:
    return oa.obj(
        {
            "status": oa.enum(["ready", "not_ready"]),
            "checks": oa.obj({name: oa.enum(["ok", "failing"]) for name in names}, names),
        },
        ["status", "checks"],
    )


def service_operations(
    checks: Sequence[tuple[str, ReadinessCheck]], build_document: Callable[[], dict[str, Any]]
) -> list[Operation]:
    """``/healthz``, ``/readyz`` (running ``checks``), ``/metrics``, ``/openapi.json`` and
    ``/docs`` (of ``build_document``): public on both servers."""
    names = [name for name, _ in checks]
    ready = _readiness_document(names)
    openapi_json, docs = documentation_handlers(build_document)
    return [
        Operation(
            "GET",
            "/healthz",
            "checkLiveness",
            oa.OPERATIONS_TAG,
            "Liveness",
            "Answers while the process runs; checks nothing else.",
            liveness,
            responses={
                "200": oa.response(
                    "The process runs.", oa.obj({"status": oa.const("ok")}, ["status"])
                )
            },
        ),
        Operation(
            "GET",
            "/readyz",
            "checkReadiness",
            oa.OPERATIONS_TAG,
            "Readiness",
            f"Runs every readiness check ({', '.join(f'`{name}`' for name in names)}) and reports "
            "each; ready only if all pass.",
            readiness(checks),
            responses={
                "200": oa.response("Every check passed.", ready),
                "503": oa.response("At least one check failed (its name says which).", ready),
            },
        ),
        Operation(
            "GET",
            "/metrics",
            "getMetrics",
            oa.OPERATIONS_TAG,
            "Prometheus metrics",
            "Requests and latency by route template, bytes served, queue depth, running "
            "executions and execution durations, in the Prometheus text format. It needs no "
            "credentials: restrict it at the load balancer.",
            metrics,
            responses={"200": oa.response("The metrics.", oa.string(), PROMETHEUS_MEDIA_TYPE)},
        ),
        Operation(
            "GET",
            "/openapi.json",
            "getOpenApiDocument",
            oa.DOCUMENTATION_TAG,
            "OpenAPI document",
            "This server's API as an OpenAPI 3.1 document.",
            openapi_json,
            responses={"200": oa.response("The document.", {"type": "object"})},
        ),
        Operation(
            "GET",
            "/docs",
            "getApiReference",
            oa.DOCUMENTATION_TAG,
            "API reference",
            "This server's API as one self-contained HTML page (no scripts, no external assets), "
            "rendered from the OpenAPI document.",
            docs,
            responses={"200": oa.response("The page.", oa.string(), "text/html; charset=utf-8")},
        ),
    ]
