"""``/readyz`` answers within its bound when a dependency hangs (shared/web/health.py)."""

from __future__ import annotations

import threading

from starlette.applications import Starlette
from starlette.routing import Route
from starlette.testclient import TestClient

from shared.web import health


def test_a_check_that_hangs_is_failing_within_the_bound_and_runs_once_at_a_time(monkeypatch):
    """A frozen metadata database (its host still acknowledging) held each probe for as long as
    the freeze lasted, a thread each (an outside probe): now a probe answers 503 within the
    bound, a second one waits for the same check rather than starting another, and once the
    dependency answers the server is ready again."""
    monkeypatch.setattr(health, "READINESS_CHECK_SECONDS", 0.2)
    frozen = threading.Event()
    started: list[int] = []

    def database(request) -> None:
        started.append(1)
        frozen.wait(30)

    app = Starlette(routes=[Route("/readyz", health.readiness([("database", database)]))])
    with TestClient(app) as client:
        try:
            for _ in range(3):
                answer = client.get("/readyz")
                assert answer.status_code == 503
                assert answer.json()["checks"] == {"database": "failing"}
            assert len(started) == 1  # one thread held, not one per probe
        finally:
            frozen.set()
        for _ in range(50):  # the held check ends; the next probe may still find it running
            answer = client.get("/readyz")
            if answer.status_code == 200:
                break
        assert answer.status_code == 200 and answer.json()["checks"] == {"database": "ok"}
