"""A small request body is read before the checks, so that the checks and the handler take one
trip to a thread; a larger one, or one with a content coding, still only after them. Either way
the checks answer first (401, 403) whatever the body holds."""

from __future__ import annotations

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
    """A plain handler's checks and work in one thread (a coroutine handler, one that may wait,
    as Run Execution's, takes its checks' trip and its own)."""
    org = api.create_org()
    trips_to_threads.clear()
    created = api.post("/sql_snippets", org.key, resource("sql_snippets", name="s", sql="SELECT 1"))
    assert created.status_code == 201, created.text
    assert len(trips_to_threads) == 1


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
