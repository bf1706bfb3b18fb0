"""Rate limits per API key (memory and Redis), their headers, and the running-executions cap."""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress

import orjson
import pytest
from limits import RateLimitItemPerMinute
from sqlalchemy import func, select
from starlette.requests import Request

from api_server import rate_limits
from api_server.auth import authenticate
from api_server.rate_limits import Policy, RateLimiter
from shared.db.models import Execution, Organization
from tests.support.factories import Api

REDIS_ENV = "DATAFERRY_TEST_REDIS_URL"
LIMIT = 5
RATE_HEADERS = (
    "ratelimit-policy",
    "ratelimit",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
)


@pytest.fixture
def limited(settings) -> Iterator[Api]:
    with Api.start(settings.with_overrides(rate_limit_per_minute=LIMIT)) as started:
        yield started


def redis_url() -> str:
    url = os.environ.get(REDIS_ENV)
    if not url:
        pytest.skip(f"Redis tests need {REDIS_ENV} (e.g. redis://127.0.0.1:6379/0)")
    return url


def test_limit_plus_one_request_is_429_with_the_headers(limited):
    org = limited.create_org()  # create_org itself made one request with the key
    answers = [limited.get("/api_key", org.key) for _ in range(LIMIT)]
    assert [a.status_code for a in answers] == [200] * (LIMIT - 1) + [429]
    for answer in answers:
        assert all(name in answer.headers for name in RATE_HEADERS)
    assert [int(a.headers["x-ratelimit-remaining"]) for a in answers] == [3, 2, 1, 0, 0]
    assert (
        answers[0].headers["ratelimit-policy"] == f'"minute";q={LIMIT};w=60, "hour";q=20000;w=3600'
    )
    assert answers[0].headers["ratelimit"].startswith('"minute";r=3;t=')
    refused = answers[-1]
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    error = refused.json()["errors"][0]
    assert (error["status"], error["code"]) == ("429", "rate_limited")


def test_authentication_alone_counts_nothing(limited):
    """Rate limiting is its own step of a request (``limit_rate``), not a side effect of
    resolving the key: code that authenticates does not spend the caller's budget."""
    org = limited.create_org()  # one request counted
    for _ in range(3 * LIMIT):
        scope = {
            "type": "http",
            "method": "GET",
            "path": "/",
            "headers": [(b"authorization", f"Api {org.key}".encode())],
            "app": limited.app,
            "state": {},
        }
        assert authenticate(Request(scope)).organization_id == org.id
    answer = limited.get("/api_key", org.key)
    assert answer.status_code == 200
    assert answer.headers["x-ratelimit-remaining"] == str(LIMIT - 2)


def test_another_organisation_and_another_key_are_unaffected(limited):
    spent, other = limited.create_org("A"), limited.create_org("B")
    for _ in range(LIMIT):
        limited.get("/api_key", spent.key)
    assert limited.get("/api_key", spent.key).status_code == 429
    assert limited.get("/api_key", other.key).status_code == 200


def test_failed_authentication_does_not_count(limited):
    org = limited.create_org()
    wrong = org.key[:-1] + ("A" if org.key[-1] != "A" else "B")
    for _ in range(3 * LIMIT):
        assert limited.get("/api_key", wrong).status_code == 401
    assert limited.get("/api_key", org.key).headers["x-ratelimit-remaining"] == str(LIMIT - 2)


def test_error_responses_carry_the_headers_too(limited):
    org = limited.create_org()
    missing = limited.get("/datasources/nope-nope-nope", org.key)
    assert missing.status_code == 404 and "x-ratelimit-remaining" in missing.headers


def test_organisation_limits_override_the_default(limited):
    org = limited.create_org()
    with limited.app.state.sessions.begin() as session:
        session.get_one(Organization, org.id).rate_limit_per_minute = 2
    # A changed limit counts in a fresh window (the counter's key includes the limit).
    answers = [limited.get("/api_key", org.key) for _ in range(3)]
    assert [answer.status_code for answer in answers] == [200, 200, 429]
    assert answers[0].headers["x-ratelimit-limit"] == "2"


def test_running_executions_are_capped_per_organisation(api):
    org, other = api.create_org("A"), api.create_org("B")
    with api.app.state.sessions.begin() as session:
        session.get_one(Organization, org.id).max_running_executions = 2

    def run(who):
        return api.client.post(
            f"/datasources/{who.sample_datasource_id}/executions",
            content=orjson.dumps({"sql_query": "SELECT 1"}),
            headers={"Authorization": f"Api {who.key}", "Content-Type": "application/json"},
        )

    # No data server runs here, so every execution stays "starting".
    assert [run(org).status_code for _ in range(3)] == [200, 200, 429]
    refused = run(org)
    assert refused.json()["errors"][0]["code"] == "too_many_running_executions"
    assert refused.headers["retry-after"] == "1"
    assert run(other).status_code == 200


def test_concurrent_runs_never_overshoot_the_cap(api):
    """Eight runs at once against a cap of two: the count and the insert are one critical
    section on both backends (SQLite ignores FOR UPDATE; it takes the write lock first)."""
    org = api.create_org()
    with api.app.state.sessions.begin() as session:
        session.get_one(Organization, org.id).max_running_executions = 2
    barrier = threading.Barrier(8)

    def run(_):
        barrier.wait(timeout=30)
        return api.client.post(
            f"/datasources/{org.sample_datasource_id}/executions",
            content=orjson.dumps({"sql_query": "SELECT 1"}),
            headers={"Authorization": f"Api {org.key}", "Content-Type": "application/json"},
        ).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = sorted(pool.map(run, range(8)))
    assert statuses == [200, 200] + [429] * 6
    with api.app.state.sessions() as session:
        stored = session.scalar(
            select(func.count())
            .select_from(Execution)
            .where(Execution.organization_id == org.id, Execution.execution_type == "sql_query")
        )
    assert stored == 2


# ---------------------------------------------------------------------------- Redis


def test_counters_in_redis_are_shared_between_servers():
    url = redis_url()
    key = f"test-{uuid.uuid4()}"
    first, second = RateLimiter(url), RateLimiter(url)
    policy = Policy(per_minute=3, per_hour=100)
    assert first.shared and second.shared
    decisions = [limiter.hit(key, policy) for limiter in (first, second, first, second)]
    assert [d.allowed for d in decisions] == [True, True, True, False]


def test_a_unix_socket_url_shares_the_counters(tmp_path):
    """``unix://`` (the setting's spelling, redis-py's) reaches Redis: it stopped the API server
    at start with a traceback, as the library the counters use spells it otherwise (found by
    the outside probe)."""
    url = redis_url()
    key, policy = f"test-{uuid.uuid4()}", Policy(per_minute=2, per_hour=100)
    with unix_socket_proxy(url, str(tmp_path / "redis.sock")) as (socket_url, _stop):
        over_socket, over_tcp = RateLimiter(socket_url), RateLimiter(url)
        assert over_socket.shared
        decisions = [limiter.hit(key, policy) for limiter in (over_socket, over_tcp, over_socket)]
    assert [d.allowed for d in decisions] == [True, True, False]


def test_without_redis_each_process_counts_alone():
    key, policy = f"test-{uuid.uuid4()}", Policy(per_minute=2, per_hour=100)
    first, second = RateLimiter(), RateLimiter()
    assert [first.hit(key, policy).allowed for _ in range(3)] == [True, True, False]
    assert second.hit(key, policy).allowed


def test_a_window_in_process_ends_on_time_and_ended_ones_are_swept():
    """The in-process windows start at their first hit, count refused hits too, reset once they
    end, start no thread, and drop ended windows once the table has doubled."""
    clock = [1_000.0]
    windows, minute = rate_limits.ProcessWindows(lambda: clock[0]), RateLimitItemPerMinute(2)
    threads = set(threading.enumerate())  # others' threads may end meanwhile, none may start

    assert [windows.hit(minute, "key") for _ in range(3)] == [True, True, False]
    assert windows.get_window_stats(minute, "key") == (1_060.0, 0)
    clock[0] = 1_059.9
    assert not windows.hit(minute, "key")
    clock[0] = 1_060.0
    assert windows.get_window_stats(minute, "key") == (1_060.0, 2)  # ended: untouched again
    assert windows.hit(minute, "key")
    assert windows.get_window_stats(minute, "key") == (1_120.0, 1)
    assert set(threading.enumerate()) - threads == set()

    clock[0] = 2_000.0
    for n in range(rate_limits.ProcessWindows.SWEEP_AT_LEAST - 2):
        windows.hit(minute, f"key-{n}")
    assert len(windows._windows) == rate_limits.ProcessWindows.SWEEP_AT_LEAST - 1
    clock[0] = 2_060.0
    assert windows.hit(minute, "the last")  # the table reaches its sweep size
    assert list(windows._windows) == [minute.key_for("the last")]


def test_redis_stopping_mid_test_yields_no_server_error(settings):
    """A proxy in front of the real Redis stands in for it, so the shared server is never stopped."""
    with tcp_proxy(redis_url()) as (proxied_url, stop):
        limited = settings.with_overrides(rate_limit_per_minute=1000, redis_url=proxied_url)
        with Api.start(limited) as api:
            org = api.create_org()
            assert api.app.state.rate_limiter.shared
            before = [api.get("/api_key", org.key) for _ in range(3)]
            stop()
            after = [api.get("/api_key", org.key) for _ in range(20)]
    assert all(answer.status_code == 200 for answer in before + after)
    assert all("x-ratelimit-remaining" in answer.headers for answer in after)
    assert not api.app.state.rate_limiter.shared  # it noticed, and counts in process


@contextmanager
def tcp_proxy(url: str):
    """A loopback TCP proxy to Redis that can be cut; yields (url through the proxy, stop)."""
    listener = socket.create_server(("127.0.0.1", 0))
    with _proxy(listener, url) as stop:
        yield f"redis://127.0.0.1:{listener.getsockname()[1]}/{_database(url)}", stop


@contextmanager
def unix_socket_proxy(url: str, path: str):
    """Redis reached through a Unix socket at ``path``: yields (a ``unix://`` url, stop)."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen()
    with _proxy(listener, url) as stop:
        yield f"unix://{path}?db={_database(url)}", stop


def _database(url: str) -> str:
    return url.rsplit("/", 1)[-1] if url.count("/") > 2 else "0"


@contextmanager
def _proxy(listener: socket.socket, url: str):
    """Pumps what ``listener`` accepts to Redis at ``url`` (TCP) until stopped; yields stop."""
    host_port = url.split("//", 1)[1].split("/", 1)[0]
    target = (host_port.rsplit(":", 1)[0], int(host_port.rsplit(":", 1)[1]))
    connections: list[socket.socket] = []
    stopped = threading.Event()

    def pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass

    def accept() -> None:
        while not stopped.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(target)
            connections.extend((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=pump, args=(a, b), daemon=True).start()

    def stop() -> None:
        stopped.set()
        for connection in (listener, *connections):
            with suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield stop
    finally:
        if not stopped.is_set():
            stop()
