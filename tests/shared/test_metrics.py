"""``GET /metrics`` on both servers: Prometheus text with requests, queue, executions, bytes."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.processes import running_region


def samples(text: str) -> dict[str, list]:
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def test_api_server_counts_requests_by_route_template(api):
    org = api.create_org()
    datasource = org.sample_datasource_id
    api.get(f"/datasources/{datasource}", org.key)
    answer = api.client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    found = samples(answer.text)
    routes = {s.labels["route"] for s in found["dataferry_http_requests"]}
    assert "/datasources/{id}" in routes
    assert datasource not in answer.text and org.key not in answer.text
    depth = found["dataferry_queue_depth"][0].value
    assert depth >= 1  # the new organisation's first schema refresh waits: no worker runs here
    assert "dataferry_running_executions" in found


@pytest.fixture(scope="module")
def region(tmp_path_factory):
    with running_region(tmp_path_factory.mktemp("metrics-region")) as started:
        yield started


def test_data_server_reports_executions_and_bytes_served(region, client):
    sample = httpx.get(f"{client.api_url}/datasources", headers=client.headers).json()["data"][0]
    answer = client.query(sample["id"], "SELECT * FROM range(1000)", format="json")
    sent = int(answer.headers["content-length"])  # on the wire: compressed if httpx asked for it
    found = samples(httpx.get(f"{region.data_url}/metrics").text)
    durations = {
        (s.labels["execution_type"], s.labels["outcome"])
        for s in found["dataferry_execution_duration_seconds"]
        if s.name.endswith("_count") and s.value > 0
    }
    assert ("sql_query", "completed") in durations
    served = [
        s.value
        for s in found["dataferry_http_response_bytes"]
        if s.labels["route"] == "/data/{data_key}" and s.name.endswith("_total")
    ]
    assert served and served[0] >= sent > 0


def test_unknown_methods_share_one_label_value(api):
    """Each made-up method name was a new label value: unauthenticated clients grew the page
    without bound."""
    for number in range(20):
        answer = api.client.request(f"BREW{number}", "/datasources")
        assert answer.status_code == 405
    api.client.request("DELETE", "/datasources")
    found = samples(api.client.get("/metrics").text)
    methods = {
        s.labels["method"]
        for name in ("dataferry_http_requests", "dataferry_http_request_duration_seconds")
        for s in found[name]
    }
    assert methods == {"DELETE", "other"}
    brewed = [
        s.value
        for s in found["dataferry_http_requests"]
        if s.labels["method"] == "other" and s.name.endswith("_total")
    ]
    assert brewed == [20]


def test_a_scrape_reads_the_queue_off_the_event_loop(api, monkeypatch):
    """Rendering reads the metadata DB: on the event loop, a slow database would stall every
    other request of the process."""
    metrics = api.app.state.metrics
    render, loops = metrics.render, []

    def recording_render() -> bytes:
        try:
            loops.append(asyncio.get_running_loop())
        except RuntimeError:  # no loop runs in this thread: a worker thread
            loops.append(None)
        return render()

    monkeypatch.setattr(metrics, "render", recording_render)
    assert api.client.get("/metrics").status_code == 200
    assert loops == [None]
