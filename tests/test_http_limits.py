"""Limits on requests: header size (431), body size (413), slow bodies (408), uvicorn options."""

from __future__ import annotations

import socket

import anyio
import httpx
import pytest
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError
from starlette.requests import Request
from starlette.testclient import TestClient

from data_server.app import create_app as create_data_app
from shared import http_limits
from shared.db.engine import create_metadata_engine
from shared.db.models import SqlSnippet
from shared.errors import RequestTimeout
from shared.settings import Settings
from tests.factories import JSONAPI, dump_tables, resource
from tests.processes import running_region


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
    assert options["h11_max_incomplete_event_size"] == http_limits.MAX_HEADER_BYTES


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
        assert answer.startswith((b"HTTP/1.1 400", b"HTTP/1.1 431")), answer
        assert httpx.get(f"{region.api_url}/healthz", timeout=5).status_code == 200
