"""Prometheus metrics of one server process: the registry, its counters and histograms, and the
queue gauges read from the metadata DB when scraped. Framework-free, so workers record execution
durations here; ``shared.web.metrics`` serves ``GET /metrics`` and counts HTTP requests.

Requests are counted and timed by route template (``/executions/{id}``, never an id) and by
method, any method outside ``HTTP_METHODS`` counted as ``other``, so the label set stays small
whatever clients send and no tenant's ids leak.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from shared.db.models import Execution
from shared.lifecycle import UNFINISHED_STATUSES, ExecutionStatus

logger = logging.getLogger(__name__)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
HTTP_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)
OTHER_METHOD = "other"


class _QueueCollector(Collector):
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            with self.sessions() as session:
                counts = dict(
                    session.execute(
                        select(Execution.status, func.count())
                        .where(Execution.status.in_(UNFINISHED_STATUSES))
                        .group_by(Execution.status)
                    ).all()
                )
        except Exception as exc:  # a scrape must not fail because the DB is briefly away
            logger.warning("metrics: cannot read the queue (%s)", type(exc).__name__)
            return
        yield GaugeMetricFamily(
            "dataferry_queue_depth",
            "Executions waiting to be claimed.",
            counts.get(ExecutionStatus.STARTING, 0),
        )
        yield GaugeMetricFamily(
            "dataferry_running_executions",
            "Executions running now, in the whole region.",
            counts.get(ExecutionStatus.RUNNING, 0),
        )


class Metrics:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "dataferry_http_requests",
            "HTTP requests answered, by route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "dataferry_http_request_duration_seconds",
            "Time from request to the end of the response body.",
            ["method", "route"],
            registry=self.registry,
        )
        self.bytes_sent = Counter(
            "dataferry_http_response_bytes",
            "Response body bytes sent, by route template.",
            ["route"],
            registry=self.registry,
        )
        self.execution_duration = Histogram(
            "dataferry_execution_duration_seconds",
            "Wall time of executions run by this process's workers, by type and outcome.",
            ["execution_type", "outcome"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
            registry=self.registry,
        )
        self.registry.register(_QueueCollector(sessions))

    def render(self) -> bytes:
        return generate_latest(self.registry)
