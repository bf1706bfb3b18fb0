"""Limits on requests: target size (414), header size (431), body size (413), slow bodies (408),
uvicorn options."""

from __future__ import annotations

import json
import re
import socket
import time

import anyio
import httpx
import pytest
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError
from starlette.requests import Request
from starlette.testclient import TestClient

from data_server.app import create_app as create_data_app
from shared.db.engine import create_metadata_engine
from shared.db.models import SqlSnippet
from shared.errors import RequestTimeout
from shared.settings import Settings
from shared.web import http_limits
from tests.support.factories import JSONAPI, dump_tables, resource
from tests.support.processes import running_region, socket_address


@pytest.fixture
def data_client(tmp_path):
    app = create_data_app(Settings(state_dir=tmp_path, sample_scale=0.001))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def _huge_headers() -> dict[str, str]:
    return {f"x-filler-{i}": "x" * 1000 for i in range(40)}


def test_oversized_headers_are_431_on_the_api_server(api):
    org = api.create_org()
    answer = api.client.get(
        "/datasources", headers={"Authorization": f"Api {org.key}", **_huge_headers()}
    )
    assert answer.status_code == 431
    error = answer.json()["errors"][0]
    assert (error["status"], error["code"]) == ("431", "header_fields_too_large")
    assert answer.headers["content-type"] == "application/vnd.api+json"


def test_oversized_headers_are_431_on_the_data_server(data_client):
    answer = data_client.get("/data/x", headers=_huge_headers())
    assert (
        answer.status_code == 431
        and answer.json()["errors"][0]["code"] == "header_fields_too_large"
    )


def test_headers_below_the_limit_pass(api):
    org = api.create_org()
    headers = {"Authorization": f"Api {org.key}", "x-filler": "x" * 20_000}
    assert api.client.get("/datasources", headers=headers).status_code == 200


def test_a_body_that_trickles_in_is_408(monkeypatch):
    monkeypatch.setattr(http_limits, "BODY_TIMEOUT_SECONDS", 0.2)
    sent = 0

    async def receive():
        nonlocal sent
        sent += 1
        if sent > 1:
            await anyio.sleep(0.15)
        return {"type": "http.request", "body": b"x", "more_body": sent < 100}

    request = Request({"type": "http", "method": "POST", "headers": []}, receive)

    async def read():
        return await http_limits.read_body_within(request, 1024)

    with pytest.raises(RequestTimeout):
        anyio.run(read)


def test_both_servers_run_uvicorn_with_the_limits():
    options = http_limits.uvicorn_options(Settings(max_connections=50))
    assert options["limit_concurrency"] == 50
    assert options["timeout_keep_alive"] == http_limits.KEEP_ALIVE_SECONDS
    assert options["http"] is http_limits.BoundedHttpToolsProtocol


# ---------------------------------------------------------------------------- NUL characters


@pytest.mark.parametrize(
    ("path", "document", "content_type", "pointer"),
    [
        (
            "/sql_snippets",
            resource("sql_snippets", name="a\x00b", sql="SELECT 1"),
            JSONAPI,
            "/data/attributes/name",
        ),
        (
            "/datasources/{sample}/executions",
            {"sql_query": "SELECT 1 -- \x00", "parameters": {}},
            "application/json",
            "/sql_query",
        ),
        (
            "/datasources/{sample}/executions",
            {
                "sql_query": "SELECT {v.value}",
                "parameters": {
                    "filters": [{"variable_name": "v", "selected_values": ["ok", "x\x00"]}]
                },
            },
            "application/json",
            "/parameters/filters/0/selected_values/1",
        ),
        ("/datasources/{sample}/executions", b'"\\u0000"', "application/json", ""),
    ],
    ids=["resource-attribute", "sql-query", "bound-value", "whole-body"],
)
def test_a_nul_in_body_text_is_422_at_its_member_and_stores_nothing(
    api, path, document, content_type, pointer
):
    """PostgreSQL stores no NUL in text: without this check the insert failed with a 500."""
    org = api.create_org()
    before = dump_tables(api.app)
    answer = api.post(path.format(sample=org.sample_datasource_id), org.key, document, content_type)
    assert answer.status_code == 422, answer.text
    error = answer.json()["errors"][0]
    assert error["code"] == "nul_character"
    assert error["source"] == {"pointer": pointer}
    assert dump_tables(api.app) == before


@pytest.mark.parametrize(
    "path", ["/datasources/abc%00", "/datasources?filter[name]=a%00", "/sql_snippets/%00"]
)
def test_a_nul_in_the_path_or_query_is_400(api, path):
    org = api.create_org()
    answer = api.get(path, org.key)
    assert answer.status_code == 400, answer.text
    assert answer.json()["errors"][0]["code"] == "nul_character"


@pytest.mark.parametrize(
    ("path", "part"),
    [
        ("/datasources?filter[name]=%ff", "query"),
        ("/datasources?filter[name]=%C3", "query"),  # a sequence cut short
        ("/datasources/%ff", "path"),
        ("/datasources/abcd-abcd-abcd/files/%FF.csv", "path"),
    ],
)
def test_a_path_or_query_that_is_not_utf8_is_400_saying_so(api, path, part):
    """Decoded as sent, each such byte became U+FFFD: the filter matched nothing (200, an empty
    list) and the file name was refused for a character the client never sent."""
    org = api.create_org()
    answer = api.get(path, org.key)
    assert answer.status_code == 400, answer.text
    [error] = answer.json()["errors"]
    assert error["code"] == "not_utf8" and f"The {part} is not UTF-8" in error["detail"]


def test_text_in_utf8_passes_in_the_path_and_the_query(api):
    org = api.create_org()
    listed = api.get("/datasources?filter[name]=%C3%A9t%C3%A9", org.key)
    assert listed.status_code == 200, listed.text
    assert api.get("/datasources/%C3%A9", org.key).status_code == 404


def test_database_errors_never_quote_the_statement_values(settings):
    """Their text is logged (shared.problems logs unexpected errors with the traceback)."""
    engine = create_metadata_engine(settings.database_url)
    secret = "bound-value-in-an-error-5e1f"
    with pytest.raises(IntegrityError) as raised, engine.begin() as connection:
        connection.execute(
            insert(SqlSnippet).values(
                id="x", organization_id="zzzz-zzzz-zzzz", name=secret, sql=secret
            )
        )
    engine.dispose()
    assert secret not in str(raised.value)
    assert "hidden" in str(raised.value)


@pytest.mark.e2e
def test_a_real_server_refuses_a_huge_header_block_and_stays_up(tmp_path):
    """uvicorn's own parser must cap the header block: the middleware only sees it once read."""
    with running_region(tmp_path) as region:
        host, port = region.api_url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as connection:
            connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            try:
                for _ in range(256):  # 1 MiB at most, in 4 KiB header lines
                    connection.sendall(b"X-Filler: " + b"x" * 4086 + b"\r\n")
            except OSError:
                pass  # the server closed the connection: what we want
            answer = connection.recv(200)
        # the protocol refuses the head before it is whole: a 431 all the same, as a JSON:API
        # document
        assert answer.startswith(b"HTTP/1.1 431 "), answer
        assert b"content-type: application/vnd.api+json" in answer.lower(), answer
        assert httpx.get(f"{region.api_url}/healthz", timeout=5).status_code == 200


# ---------------------------------------------------------------------------- connections


def _read_until_closed(connection: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or 30 s pass)."""
    connection.settimeout(30)
    received = b""
    for _ in range(1000):
        chunk = connection.recv(65536)
        if not chunk:
            return received
        received += chunk
    raise AssertionError(f"the server kept talking: {received[:200]!r}")


def _read_response(connection: socket.socket) -> bytes:
    """One whole response (head and a Content-Length body) from a kept-alive connection."""
    received = b""
    for _ in range(1000):
        head, separator, body = received.partition(b"\r\n\r\n")
        if separator:
            length = re.search(rb"(?i)content-length: (\d+)", head)
            if length and len(body) >= int(length.group(1)):
                return received
        chunk = connection.recv(65536)
        assert chunk, f"the server closed the connection: {received[:200]!r}"
        received += chunk
    raise AssertionError("no whole response")


def _jsonapi_error(answer: bytes) -> tuple[int, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    assert headers["content-type"] == "application/vnd.api+json", answer
    return int(lines[0].split()[1]), json.loads(body)["errors"][0]


@pytest.mark.e2e
@pytest.mark.parametrize("server", ["api", "data"])
def test_an_unparsable_request_is_a_jsonapi_400(small_region, server):
    url = small_region.api_url if server == "api" else small_region.data_url
    with socket.create_connection(socket_address(url), timeout=10) as connection:
        connection.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        status, error = _jsonapi_error(_read_until_closed(connection))
    assert (status, error["status"], error["code"]) == (400, "400", "invalid_http_request")


@pytest.mark.e2e
@pytest.mark.parametrize("server", ["api", "data"])
@pytest.mark.parametrize("where", ["path", "query"])
def test_a_60_kb_request_line_sent_whole_is_a_jsonapi_414(small_region, server, where):
    """h11 bounded only heads that arrived in pieces: one sent in a single write got through;
    the protocol now refuses the target as it reads it."""
    url = small_region.api_url if server == "api" else small_region.data_url
    target = "/datasources/" + "x" * 60_000 if where == "path" else "/datasources?q=" + "x" * 60_000
    head = f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    with socket.create_connection(socket_address(url), timeout=10) as connection:
        connection.sendall(head)
        status, error = _jsonapi_error(_read_until_closed(connection))
    assert (status, error["status"], error["code"]) == (414, "414", "uri_too_long")


def test_a_request_target_at_the_limit_passes(api):
    org = api.create_org()
    query = "/datasources?filter[name]="
    target = query + "x" * (http_limits.MAX_REQUEST_TARGET_BYTES - len(query))
    answer = api.get(target, org.key)
    assert answer.status_code == 200, answer.text


@pytest.mark.e2e
def test_half_open_connections_are_closed_after_the_head_deadline(small_region):
    """Four connections that never finish (or never start) a request head fill the limit of 4:
    others get a JSON:API 503 until the head deadline closes them; then they are served again.
    One of them first has a whole request answered: the deadline starts again after a response."""
    urls = (small_region.api_url, small_region.data_url)
    held = []
    try:
        for url in urls:
            answered = socket.create_connection(socket_address(url), timeout=10)
            held.append(answered)
            answered.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _read_response(answered).startswith(b"HTTP/1.1 200")
            answered.sendall(b"GET /healthz HTTP/1.1\r\n")
            for partial in (b"", b"GET /healthz HTTP/1.1\r\nHost: x\r\n", b"GET /h"):
                connection = socket.create_connection(socket_address(url), timeout=10)
                held.append(connection)
                if partial:
                    connection.sendall(partial)
        opened = time.monotonic()
        # The servers have accepted every connection, and none has waited long enough to be
        # closed for a newcomer (EVICTABLE_AFTER_SECONDS).
        time.sleep(0.2)
        for url in urls:
            refused = httpx.get(f"{url}/healthz", timeout=10)
            assert refused.status_code == 503, refused.text
            assert refused.headers["content-type"] == "application/vnd.api+json"
            assert refused.headers["retry-after"] == "1"
            assert refused.json()["errors"][0]["code"] == "too_many_connections"
        assert time.monotonic() - opened < http_limits.EVICTABLE_AFTER_SECONDS
        for connection in held:
            assert _read_until_closed(connection) == b""
        waited = time.monotonic() - opened
        deadline = http_limits.REQUEST_HEAD_TIMEOUT_SECONDS
        assert deadline - 1 < waited < deadline + 5
        for url in urls:
            assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
    finally:
        for connection in held:
            connection.close()


def _idle_connections(url: str, count: int) -> list[socket.socket]:
    """``count`` connections to ``url`` that send nothing, once the server has accepted them."""
    opened = [socket.create_connection(socket_address(url), timeout=10) for _ in range(count)]
    time.sleep(0.2)
    return opened


def _closed_by_the_server(connection: socket.socket) -> bool:
    connection.settimeout(0.5)
    try:
        return connection.recv(1) == b""
    except TimeoutError:
        return False


@pytest.mark.e2e
@pytest.mark.parametrize("server", ["api", "data"])
def test_connections_over_the_limit_leave_those_admitted_working(small_region, server):
    """Found by the outside probe: with as many connections open as the limit allows, the
    requests of a connection admitted long before were refused too (uvicorn's check counted the
    connections at each request). Only the connection over the limit is refused now."""
    url = small_region.api_url if server == "api" else small_region.data_url
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(socket_address(url), timeout=10) as admitted:
        admitted.sendall(request)
        assert _read_response(admitted).startswith(b"HTTP/1.1 200")
        idle = _idle_connections(url, 4)  # the limit is 4: the last is over it
        try:
            admitted.sendall(request)
            assert _read_response(admitted).startswith(b"HTTP/1.1 200")
            idle[-1].sendall(request)
            status, error = _jsonapi_error(_read_until_closed(idle[-1]))
            assert (status, error["code"]) == (503, "too_many_connections")
        finally:
            for connection in idle:
                connection.close()


@pytest.mark.e2e
@pytest.mark.parametrize("server", ["api", "data"])
def test_a_new_connection_at_the_limit_closes_the_one_that_waited_longest(small_region, server):
    """Found by the outside probe: connections that send nothing, renewed before the head
    deadline closes them, kept every new client out with a 503. At the limit, a newcomer now
    closes the connection that has waited longest for a request head, once it has waited
    EVICTABLE_AFTER_SECONDS; one whose request is being served is never closed."""
    url = small_region.api_url if server == "api" else small_region.data_url
    idle = _idle_connections(url, 4)
    try:
        time.sleep(http_limits.EVICTABLE_AFTER_SECONDS)
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
        assert [_closed_by_the_server(connection) for connection in idle] == [
            True,
            False,
            False,
            False,
        ]
    finally:
        for connection in idle:
            connection.close()


@pytest.mark.parametrize(
    ("target", "path", "raw_path"),
    [
        (b"http://127.0.0.1:8001/data/a%20b", "/data/a b", b"/data/a%20b"),
        (b"HTTPS://example.com", "/", b"/"),
        (b"/data/plain", "/data/plain", b"/data/plain"),
    ],
)
def test_a_target_in_absolute_form_is_routed_by_its_path(target, path, raw_path):
    """RFC 9112 §3.2.2: a server must accept ``GET http://host/path``; uvicorn passes the
    whole target on as the path, which no route matched (404)."""
    seen: list[dict] = []

    async def app(scope, receive, send):
        seen.append(scope)

    scope = {
        "type": "http",
        "method": "GET",
        "path": target.decode(),
        "raw_path": target,
        "query_string": b"token=t",
        "headers": [],
    }
    anyio.run(http_limits.RequestLimitsMiddleware(app), scope, None, None)
    assert (seen[0]["path"], seen[0]["raw_path"]) == (path, raw_path)
    assert seen[0]["query_string"] == b"token=t"


def test_trusted_proxies_turn_on_uvicorns_forwarded_headers():
    options = http_limits.uvicorn_options(Settings(trusted_proxies="10.0.0.5, 10.1.0.0/16"))
    assert options["proxy_headers"] and options["forwarded_allow_ips"] == "10.0.0.5,10.1.0.0/16"
    assert http_limits.uvicorn_options(Settings())["proxy_headers"] is False
