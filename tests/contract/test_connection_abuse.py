"""Connections that misbehave, found by probing from outside: a client that stops reading, one
that hangs up mid-body, one that forges log lines through the path, one that trickles a body
without a key, and the protocol edges (WebSocket upgrades, a trailing slash, repeated
parameters)."""

from __future__ import annotations

import io
import logging
import socket
import threading
import time
from collections.abc import Iterator

import anyio
import httpx
import pytest
import uvicorn
from starlette.requests import ClientDisconnect, Request

from shared import http_limits
from shared.errors import ClientGone, RequestTimeout
from shared.logging import configure_logging
from shared.settings import Settings
from tests.support.processes import free_port, socket_address

# ---------------------------------------------------------------------------- a reader that stops

BODY = b"x" * (64 * 1024 * 1024)


async def _large_body(scope, receive, send):
    """Answers every request with 64 MiB, far more than any socket buffer holds."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    for start in range(0, len(BODY), 1 << 20):
        await send({"type": "http.response.body", "body": BODY[start : start + (1 << 20)],
                    "more_body": True})  # fmt: skip
    await send({"type": "http.response.body", "body": b""})


@pytest.fixture
def stall_server(monkeypatch) -> Iterator[tuple[uvicorn.Server, int]]:
    monkeypatch.setattr(http_limits, "SEND_STALL_TIMEOUT_SECONDS", 1.0)
    port = free_port()
    options = http_limits.uvicorn_options(Settings(max_connections=10))
    config = uvicorn.Config(_large_body, host="127.0.0.1", port=port, lifespan="off", **options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(100):
        if server.started:
            break
        time.sleep(0.05)
    yield server, port
    server.should_exit = True
    thread.join(10)


def test_a_client_that_stops_reading_is_dropped_after_the_send_deadline(stall_server):
    server, port = stall_server
    with socket.socket() as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(("127.0.0.1", port))
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 3)  # pipelined, never read
        assert _held_connections(server, lambda held: held == 1), "never accepted"
        assert _held_connections(server, lambda held: held == 0), "the stalled connection is held"
        received = 0
        client.settimeout(5)
        try:
            while chunk := client.recv(1 << 20):
                received += len(chunk)
        except ConnectionResetError:
            pass
        assert received < len(BODY)  # dropped, not finished


def _held_connections(server: uvicorn.Server, wanted, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if wanted(len(server.server_state.connections)):
            return True
        time.sleep(0.05)
    return False


# ---------------------------------------------------------------------------- bodies


def test_a_client_that_hangs_up_mid_body_is_its_own_doing_not_a_500():
    async def receive():
        raise ClientDisconnect()

    request = Request({"type": "http", "method": "POST", "headers": []}, receive)

    async def read():
        return await http_limits.read_body_within(request, 1024)

    with pytest.raises(ClientGone) as raised:
        anyio.run(read)
    assert raised.value.status < 500


def test_a_body_that_never_finishes_gets_408_and_the_connection_closes(monkeypatch):
    monkeypatch.setattr(http_limits, "BODY_TIMEOUT_SECONDS", 0.1)

    async def receive():
        await anyio.sleep(1)
        return {"type": "http.request", "body": b"", "more_body": False}

    request = Request({"type": "http", "method": "POST", "headers": []}, receive)

    async def read():
        return await http_limits.read_body_within(request, 1024)

    with pytest.raises(RequestTimeout) as raised:
        anyio.run(read)
    assert raised.value.headers == {"Connection": "close"}


# ---------------------------------------------------------------------------- logs


def test_a_control_character_in_a_logged_value_cannot_start_a_line(capsys):
    configure_logging("INFO")
    logging.getLogger("dataferry.access").info("%s %s", "GET", "/x\nFORGED-LINE 200\r\u2028")
    logging.getLogger().handlers[-1].flush()
    written = capsys.readouterr().err
    assert "FORGED-LINE" in written
    assert not any(line.startswith("FORGED-LINE") for line in written.splitlines())
    assert "\\nFORGED-LINE 200\\r\\u2028" in written


def test_a_traceback_keeps_its_lines():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    configure_logging("INFO")
    handler.setFormatter(logging.getLogger().handlers[-1].formatter)
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "failed", (), True)
        record.exc_info = __import__("sys").exc_info()
        record.request_id = "-"
        handler.emit(record)
    assert stream.getvalue().count("\n") > 2


# ---------------------------------------------------------------------------- real servers


def _log(small_region) -> str:
    return (small_region.cwd / "servers.log").read_text(errors="replace")


@pytest.mark.e2e
def test_hanging_up_mid_body_leaves_no_traceback_and_no_500(small_region):
    key = small_region.create_organization("Hangs up")["api_key"]
    before = _log(small_region).count("Traceback")
    for _ in range(3):
        with socket.create_connection(
            socket_address(small_region.api_url), timeout=10
        ) as connection:
            connection.sendall(
                b"POST /datasources HTTP/1.1\r\nHost: x\r\nAuthorization: Api "
                + key.encode()
                + b"\r\nContent-Type: application/vnd.api+json\r\nContent-Length: 100\r\n\r\nab"
            )
            time.sleep(0.3)
    time.sleep(0.5)
    assert _log(small_region).count("Traceback") == before
    metrics = httpx.get(f"{small_region.api_url}/metrics", timeout=10).text
    assert 'status="500"' not in metrics


@pytest.mark.e2e
def test_a_path_cannot_forge_a_log_line(small_region):
    httpx.get(f"{small_region.api_url}/x%0aFORGED-LINE%0d", timeout=10)
    for _ in range(100):  # the access line is written after the response: wait up to 10 s
        log = _log(small_region)
        if "FORGED-LINE" in log:
            break
        time.sleep(0.1)
    assert "FORGED-LINE" in log
    assert not any(line.startswith("FORGED-LINE") for line in log.splitlines())


@pytest.mark.e2e
def _kept_alive(url: str) -> socket.socket:
    """A connection the server has certainly accepted: one request answered, then idle (for
    less than the 5 s keep-alive)."""
    connection = socket.create_connection(socket_address(url), timeout=10)
    connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert connection.recv(65536).startswith(b"HTTP/1.1 200")
    return connection


def test_the_connection_limit_counts_the_asking_connection_once(small_region):
    """With a limit of 4: three idle connections and one asking are served; a fourth idle one
    makes the asking connection the fifth, refused."""
    idle: list[socket.socket] = []
    try:
        for _ in range(3):
            idle.append(_kept_alive(small_region.api_url))
        assert httpx.get(f"{small_region.api_url}/healthz", timeout=10).status_code == 200
        idle.append(_kept_alive(small_region.api_url))
        assert httpx.get(f"{small_region.api_url}/healthz", timeout=10).status_code == 503
    finally:
        for connection in idle:
            connection.close()


@pytest.mark.e2e
def test_an_anonymous_body_is_refused_before_it_is_read(small_region):
    with socket.create_connection(socket_address(small_region.api_url), timeout=10) as connection:
        connection.sendall(
            b"POST /datasources HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/vnd.api+json\r\nContent-Length: 100000\r\n\r\n"
        )
        started = time.monotonic()
        answer = connection.recv(65536)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:100]
    assert time.monotonic() - started < 5  # not the body's 30 s


@pytest.mark.e2e
@pytest.mark.parametrize("server", ["api", "data"])
def test_a_websocket_upgrade_is_an_ordinary_jsonapi_404(small_region, server):
    url = small_region.api_url if server == "api" else small_region.data_url
    response = httpx.get(
        f"{url}/no-such-socket",
        headers={
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        },
        timeout=10,
    )
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/vnd.api+json"


# ---------------------------------------------------------------------------- in process


def test_a_trailing_slash_is_a_404_not_a_redirect_to_the_host_header(api):
    org = api.create_org()
    response = api.client.get(
        "/datasources/",
        headers={"Authorization": f"Api {org.key}", "Host": "evil.example"},
        follow_redirects=False,
    )
    assert response.status_code == 404
    assert "location" not in response.headers


@pytest.mark.parametrize(
    ("query", "parameter"),
    [("sort=name&sort=-name", "sort"), ("page[size]=1&page[size]=2", "page[size]")],
)
def test_a_repeated_query_parameter_is_400_naming_it(api, query, parameter):
    org = api.create_org()
    response = api.get(f"/datasources?{query}", org.key)
    assert response.status_code == 400
    assert response.json()["errors"][0]["source"] == {"parameter": parameter}
