"""A small request body is read before the checks, so that the checks and the handler take one
trip to a thread; a larger one, or one with a content coding, still only after them. Either way
the checks answer first (401, 403) whatever the body holds."""

from __future__ import annotations

import time

import orjson
import pytest

from api_server import jsonapi
from api_server.permissions import Permission
from api_server.resource_layer.operations import EARLY_BODY_BYTES
from tests.support.factories import resource


@pytest.fixture
def bodies_read(monkeypatch):
    """The bodies read, by their declared length."""
    read: list[str | None] = []
    original = jsonapi.read_bounded_body

    async def recorded(request, max_bytes=jsonapi.MAX_BODY_BYTES):
        read.append(request.headers.get("content-length"))
        return await original(request, max_bytes)

    monkeypatch.setattr(jsonapi, "read_bounded_body", recorded)
    monkeypatch.setattr(
        "api_server.resource_layer.operations.read_bounded_body", recorded, raising=True
    )
    return read


def _run(api, key, datasource_id, body: bytes, **headers: str):
    return api.client.post(
        f"/datasources/{datasource_id}/executions",
        content=body,
        headers={"Authorization": f"Api {key}", "Content-Type": "application/json", **headers},
    )


def test_a_small_write_takes_one_trip_to_a_thread(api, trips_to_threads):
    """A plain handler's checks and work in one thread."""
    org = api.create_org()
    trips_to_threads.clear()
    created = api.post("/sql_snippets", org.key, resource("sql_snippets", name="s", sql="SELECT 1"))
    assert created.status_code == 201, created.text
    assert len(trips_to_threads) == 1


@pytest.mark.parametrize("wait", [None, "0.2"])
def test_a_run_is_queued_in_the_thread_of_its_checks(api, trips_to_threads, wait):
    """Run Execution's handler waits on the event loop (with ``?wait``), but its queueing is its
    first step, run with its checks: one trip, then those of the wait's readings (none until
    the execution may have ended: here it stays queued, read once at the deadline)."""
    org = api.create_org()
    listener = api.app.state.execution_waits
    for _ in range(500):  # listening: a run's wait then takes the run's reading as its first
        if listener.mark_in_thread() is not None:
            break
        time.sleep(0.01)
    body = orjson.dumps({"sql_query": "SELECT 1"})
    path = f"/datasources/{org.sample_datasource_id}/executions" + (f"?wait={wait}" if wait else "")
    trips_to_threads.clear()
    answer = api.client.post(
        path,
        content=body,
        headers={"Authorization": f"Api {org.key}", "Content-Type": "application/json"},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["data"]["attributes"]["execution_status"] == "starting"
    assert len(trips_to_threads) == (1 if wait is None else 2)


def test_the_checks_answer_first_whatever_a_small_body_holds(api):
    org = api.create_org()
    viewer = api.create_key(org, [Permission.VIEW_ALERTS])
    for body in (b"{not json", orjson.dumps({"sql_query": "SELECT 1", "nonsense": 1})):
        assert _run(api, "dfk_" + "x" * 40, org.sample_datasource_id, body).status_code == 401
        assert _run(api, viewer, org.sample_datasource_id, body).status_code == 403


def test_a_large_body_is_not_read_for_a_client_the_checks_refuse(api, bodies_read):
    org = api.create_org()
    large = orjson.dumps({"sql_query": "SELECT 1 -- " + "x" * EARLY_BODY_BYTES})
    assert _run(api, "dfk_" + "x" * 40, org.sample_datasource_id, large).status_code == 401
    assert bodies_read == []
    answer = _run(api, org.key, org.sample_datasource_id, large)
    assert answer.status_code == 200, answer.text
    assert bodies_read == [str(len(large))]  # read after the checks passed


def test_a_coded_body_is_refused_after_the_checks(api, bodies_read):
    """A content coding is refused (415) by the body's reading: a refused client hears 401."""
    org = api.create_org()
    body = orjson.dumps({"sql_query": "SELECT 1"})
    refused = _run(
        api, "dfk_" + "x" * 40, org.sample_datasource_id, body, **{"Content-Encoding": "gzip"}
    )
    assert refused.status_code == 401
    coded = _run(api, org.key, org.sample_datasource_id, body, **{"Content-Encoding": "gzip"})
    assert coded.status_code == 415
    assert bodies_read == [str(len(body))]  # only for the client the checks let through


def test_a_small_body_read_first_gets_the_request_heads_deadline(monkeypatch):
    """Before the checks, a body that trickles in is 408 at the request head's deadline (10 s),
    not the body's (30 s): no client holds its connection longer, unauthenticated, than a slow
    head would."""
    import time

    import anyio
    from starlette.requests import Request

    from api_server.openapi import operations
    from api_server.resource_layer import operations as declared
    from shared.errors import RequestTimeout

    monkeypatch.setattr(declared, "REQUEST_HEAD_TIMEOUT_SECONDS", 0.2)
    [create_snippet] = [
        op for op in operations() if (op.method, op.path) == ("POST", "/sql_snippets")
    ]

    async def trickling():
        await anyio.sleep(0.05)
        return {"type": "http.request", "body": b"{", "more_body": True}

    headers = [(b"content-length", b"100"), (b"content-type", b"application/vnd.api+json")]
    request = Request({"type": "http", "method": "POST", "headers": headers}, trickling)
    started = time.monotonic()
    with pytest.raises(RequestTimeout):
        anyio.run(create_snippet.admits_in_thread, request)
    assert time.monotonic() - started < 5
