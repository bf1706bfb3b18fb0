"""The last resort (shared/web/middleware.py): an unexpected exception is a JSON:API 500 that
carries the request's id, and its traceback is logged once, under that id."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import sqlite3
import threading

import psycopg
import pytest
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route
from starlette.testclient import TestClient

from shared.db.engine import (
    create_metadata_engine,
    database_unavailable,
    log_failure,
    unusable_database,
)
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


async def _refused(request):
    """A real connection failure: nothing listens on port 9 of this machine."""
    engine = create_metadata_engine("postgresql+psycopg://nobody:s3cret-pw@127.0.0.1:9/none")
    try:
        engine.connect()
    finally:
        engine.dispose()


async def _pool_exhausted(request):
    raise PoolTimeout("QueuePool limit of size 10 overflow 10 reached, connection timed out")


def _sqlite_error(text: str, name: str | None) -> sqlite3.OperationalError:
    error = sqlite3.OperationalError(text)
    error.sqlite_errorname = name  # as sqlite3 sets it (Python 3.11)
    return error


async def _no_such_table(request):
    raise OperationalError("SELECT 1", {}, _sqlite_error("no such table: x", "SQLITE_ERROR"))


async def _too_many_parameters(request):
    """psycopg's own refusal, with no SQLSTATE, as a failure to connect has none either."""
    refusal = psycopg.OperationalError("number of parameters must be between 0 and 65535")
    raise OperationalError("SELECT … IN (…)", {}, refusal)


async def _sqlite_busy(request):
    raise OperationalError(
        "BEGIN IMMEDIATE", {}, _sqlite_error("database is locked", "SQLITE_BUSY")
    )


async def _sqlite_snapshot(request):
    error = _sqlite_error("database is locked", "SQLITE_BUSY_SNAPSHOT")
    raise OperationalError("UPDATE dashboards …", {}, error)


async def _sqlite_locked(request):
    error = _sqlite_error("database table is locked", "SQLITE_LOCKED")
    raise OperationalError("DROP TABLE x", {}, error)


def _app() -> Starlette:
    return Starlette(
        routes=[
            Route("/crash", _crash),
            Route("/deadlock", _deadlock),
            Route("/lost", _lost),
            Route("/refused", _refused),
            Route("/pool", _pool_exhausted),
            Route("/bug", _no_such_table),
            Route("/parameters", _too_many_parameters),
            Route("/sqlite-busy", _sqlite_busy),
            Route("/sqlite-snapshot", _sqlite_snapshot),
            Route("/sqlite-locked", _sqlite_locked),
        ],
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
    """A deadlock between two writes was a 500 (an outside probe, on PostgreSQL)."""
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
    assert lost.status_code == 503  # a connection's end: tests below


def test_a_database_that_cannot_be_reached_is_a_503_without_a_retry_after(caplog):
    """Refused, lost mid-request, no pooled connection within the pool's wait, SQLite held past
    its wait: a 500 with a traceback in the log before (an outside probe stopped the metadata
    database). No Retry-After: a connection lost while committing may have kept a change, which
    a client must not send again by itself. The log says which route and the driver's first
    line, never the password. A request's own database error is still a 500, with its
    traceback; SQLite's stale snapshot is the 409 to send again."""
    paths = ("/refused", "/lost", "/pool", "/sqlite-busy")
    others = ("/bug", "/parameters", "/sqlite-locked", "/sqlite-snapshot")
    with TestClient(_app(), raise_server_exceptions=False) as client:
        answers = {path: client.get(path) for path in (*paths, *others)}
    for path in paths:
        answer = answers[path]
        assert answer.status_code == 503, path
        assert "retry-after" not in answer.headers
        (error,) = answer.json()["errors"]
        assert (error["status"], error["code"]) == ("503", "database_unavailable")
        assert "127.0.0.1" not in answer.text and "s3cret" not in answer.text
    assert [answers[path].status_code for path in others] == [500, 500, 500, 409]
    logged = [r for r in caplog.records if r.name == "dataferry.errors"]
    refused = [r.getMessage() for r in logged if r.getMessage().startswith("GET /refused")]
    assert len(refused) == 1 and "port 9" in refused[0] and "s3cret" not in refused[0]
    with_traceback = {r.getMessage().split()[-1] for r in logged if r.exc_info is not None}
    assert with_traceback == {"/bug", "/parameters", "/sqlite-locked"}


def test_a_metadata_database_that_never_answers_fails_a_connection_within_seconds():
    """A server that accepts connections and never answers held each request for 130 s, and
    /readyz with them (an outside probe, with a listener in the database's place)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        engine = create_metadata_engine(f"postgresql+psycopg://nobody@127.0.0.1:{port}/none")
        failed: list[BaseException] = []

        def connect() -> None:
            try:
                engine.connect().close()
            except BaseException as exc:  # what the thread ended with
                failed.append(exc)

        attempt = threading.Thread(target=connect, daemon=True)
        attempt.start()
        attempt.join(30)  # the bound is 5 s; the kernel's default is over two minutes
        engine.dispose()
    assert not attempt.is_alive(), "the connection still waits on a server that never answers"
    assert len(failed) == 1 and isinstance(failed[0], OperationalError)
    assert database_unavailable(failed[0])


def test_a_background_loop_logs_an_unavailable_database_in_one_line(caplog):
    """Found by the outside probe: a data server that lost PostgreSQL for 30 s logged 4,700
    lines, a traceback for each claim and maintenance pass. Any other failure keeps its
    traceback."""
    logger = logging.getLogger("dataferry.test_loop")
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    engine = create_metadata_engine(f"postgresql+psycopg://nobody:hunter2@127.0.0.1:{port}/x")
    try:
        with pytest.raises(OperationalError) as refused:
            engine.connect()
    finally:
        engine.dispose()
    with caplog.at_level(logging.ERROR, logger=logger.name):
        log_failure(logger, refused.value, "claiming failed id=%s", "e1")
        log_failure(logger, ValueError("a bug"), "maintenance failed")
    unavailable, bug = caplog.records
    assert unavailable.exc_info is None and "\n" not in unavailable.getMessage()
    assert unavailable.getMessage().startswith("claiming failed id=e1: the metadata database")
    assert f"port {port}" in unavailable.getMessage() and "hunter2" not in caplog.text
    assert bug.exc_info is not None and bug.getMessage() == "maintenance failed"


def test_only_a_database_that_cannot_be_used_is_told_in_one_line_by_a_command():
    """A constraint or a bug in a statement keeps its traceback (the review: every database
    error of an operator command was said to be the database's, "cannot be used")."""
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    clash = IntegrityError("INSERT INTO t VALUES (1)", {}, sqlite3.IntegrityError("UNIQUE"))
    assert not unusable_database(clash)
    refused_url = ProgrammingError(None, None, psycopg.ProgrammingError("bad value"))
    assert unusable_database(refused_url)


def test_a_request_the_stopping_server_cancels_is_answered_503_then_cancelled():
    """Found by the probe of this stop's changes: a slow upload or a long wait still running
    when the stopping server's grace ran out got uvicorn's plain-text 500."""
    sent: list[dict] = []

    async def forever(scope, receive, send) -> None:
        await asyncio.Event().wait()

    async def send(message) -> None:
        sent.append(message)

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "method": "PUT", "path": "/x", "raw_path": b"/x", "headers": []}

    async def stopping() -> None:
        request = asyncio.create_task(RequestContextMiddleware(forever)(scope, receive, send))
        await asyncio.sleep(0.05)
        request.cancel("timeout graceful shutdown exceeded")  # as uvicorn does
        with pytest.raises(asyncio.CancelledError):
            await request

    asyncio.run(stopping())
    start, body = sent[0], b"".join(m.get("body", b"") for m in sent[1:])
    assert start["status"] == 503
    assert (b"content-type", b"application/vnd.api+json") in start["headers"]
    assert json.loads(body)["errors"][0]["code"] == "server_stopping"
