"""Limits on requests: header size (431), body size (413), slow bodies (408), uvicorn options."""

from __future__ import annotations

import anyio
import pytest
from starlette.requests import Request
from starlette.testclient import TestClient

from data_server.app import create_app as create_data_app
from shared import http_limits
from shared.errors import RequestTimeout
from shared.settings import Settings


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
