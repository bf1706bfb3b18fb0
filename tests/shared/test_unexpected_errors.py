"""The last resort (shared/web/middleware.py): an unexpected exception is a JSON:API 500 that
carries the request's id, and its traceback is logged once, under that id."""

from __future__ import annotations

import logging

from sqlalchemy.exc import OperationalError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route
from starlette.testclient import TestClient

from shared.logging import request_id_var
from shared.web.middleware import RequestContextMiddleware
from shared.web.problems import EXCEPTION_HANDLERS


async def _crash(request):
    raise ValueError("a bug")


class _DeadlockDetected(Exception):
    sqlstate = "40P01"  # as psycopg's errors carry it


class _LostConnection(Exception):
    sqlstate = "08006"


async def _deadlock(request):
    raise OperationalError("UPDATE dashboards …", {}, _DeadlockDetected("deadlock detected"))


async def _lost(request):
    raise OperationalError("SELECT 1", {}, _LostConnection("server closed the connection"))


def _app() -> Starlette:
    return Starlette(
        routes=[Route("/crash", _crash), Route("/deadlock", _deadlock), Route("/lost", _lost)],
        middleware=[Middleware(RequestContextMiddleware)],
        exception_handlers=EXCEPTION_HANDLERS,
    )


def test_an_unexpected_error_is_a_500_document_with_the_request_id(caplog):
    seen: list[tuple[str, str]] = []

    class Recorder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append((record.name, request_id_var.get()))

    recorder = Recorder(level=logging.ERROR)
    logging.getLogger().addHandler(recorder)
    try:
        with TestClient(_app(), raise_server_exceptions=True) as client:
            answer = client.get("/crash?token=secret", headers={"X-Request-ID": "abc-123"})
    finally:
        logging.getLogger().removeHandler(recorder)
    assert answer.status_code == 500
    assert answer.headers["x-request-id"] == "abc-123"
    assert answer.headers["content-type"] == "application/vnd.api+json"
    (error,) = answer.json()["errors"]
    assert (error["status"], error["code"]) == ("500", "internal_error")
    assert "a bug" not in answer.text and "Traceback" not in answer.text
    assert seen == [("dataferry.errors", "abc-123")]  # once, under the request's id
    logged = [r for r in caplog.records if r.name == "dataferry.errors"]
    assert "secret" not in logged[0].getMessage() and logged[0].exc_info is not None


def test_a_transaction_the_database_ended_for_another_is_a_409_to_send_again(caplog):
    """A deadlock between two writes was a 500 (an outside probe, on PostgreSQL); any other
    database error still is."""
    with TestClient(_app(), raise_server_exceptions=False) as client:
        answer = client.get("/deadlock")
        lost = client.get("/lost")
    assert answer.status_code == 409
    assert answer.headers["retry-after"] == "1"
    (error,) = answer.json()["errors"]
    assert error["code"] == "concurrent_change"
    assert "deadlock" not in answer.text and "dashboards" not in answer.text
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warned] == [
        "GET /deadlock: the database ended its transaction for another's (_DeadlockDetected)"
    ]
    assert lost.status_code == 500
    assert lost.json()["errors"][0]["code"] == "internal_error"
