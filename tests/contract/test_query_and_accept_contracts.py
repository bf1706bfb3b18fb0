"""Query-string and Accept contracts found wanting from outside: sort keys, the parameter blamed
next to ``wait``, and the JSON:API Accept that Cluvio clients send to the plain-JSON actions."""

from __future__ import annotations

import pytest

from api_server.permissions import Permission
from api_server.resources.api_keys import API_KEYS
from api_server.resources.audit_events import AUDIT_EVENTS
from api_server.resources.datasources import DATASOURCES
from api_server.resources.sql_snippets import SQL_SNIPPETS
from tests.support.factories import dump_tables, resource

JSONAPI = "application/vnd.api+json"


@pytest.mark.parametrize(
    ("collection", "sortable"),
    [
        ("/datasources", DATASOURCES.sortable),
        ("/sql_snippets", SQL_SNIPPETS.sortable),
        ("/api_keys", API_KEYS.sortable),
        ("/audit_events", AUDIT_EVENTS.sortable),
    ],
)
def test_a_thousand_sort_keys_are_400_not_500(api, collection, sortable):
    """As many as the 16 KiB request-target limit lets through (2,000 are a 414 now)."""
    org = api.create_org()
    sort_key = sortable[0]
    response = api.get(f"{collection}?sort={','.join([sort_key] * 1000)}", org.key)
    assert response.status_code == 400
    error = response.json()["errors"][0]
    assert error["code"] == "invalid_query_parameter"
    assert error["source"] == {"parameter": "sort"}
    assert api.get("/datasources", org.key).status_code == 200


@pytest.mark.parametrize("sort", ["name,name", "name,-name", "-name,created_at,name"])
def test_a_repeated_sort_key_is_400_naming_it(api, sort):
    org = api.create_org()
    response = api.get(f"/datasources?sort={sort}", org.key)
    assert response.status_code == 400
    assert "'name' more than once" in response.json()["errors"][0]["detail"]


def test_distinct_sort_keys_still_sort(api):
    org = api.create_org()
    assert api.get("/datasources?sort=-name,created_at", org.key).status_code == 200


def _queued_execution(api, org):
    response = api.client.post(
        f"/datasources/{org.sample_datasource_id}/executions",
        json={"sql_query": "SELECT 1"},
        headers={"Authorization": f"Api {org.key}"},
    )
    assert response.status_code == 200, response.text
    return response.json()["data"]["id"]


@pytest.mark.parametrize(
    ("query", "blamed"),
    [("wait=1&foo=1", "foo"), ("foo=1&wait=1", "foo"), ("wait=0&sort=name", "sort")],
)
def test_an_unknown_parameter_next_to_wait_is_the_one_blamed(api, query, blamed):
    org = api.create_org()
    execution_id = _queued_execution(api, org)
    response = api.get(f"/executions/{execution_id}?{query}", org.key)
    assert response.status_code == 400
    assert response.json()["errors"][0]["source"] == {"parameter": blamed}


def _plain_json_actions(api, org):
    """(method, path, status when accepted) of every action that answers plain JSON."""
    execution_id = _queued_execution(api, org)
    ds = org.sample_datasource_id
    return [
        ("GET", f"/executions/{execution_id}/data", 204),
        ("POST", f"/datasources/{ds}/refresh", 200),
        ("GET", f"/datasources/{ds}/schema", 409),  # no refresh has run: still a JSON answer
    ]


@pytest.mark.parametrize(
    ("accept", "accepted"),
    [
        (JSONAPI, True),
        (f"{JSONAPI}; ext=foo", True),
        ("application/json", True),
        ("text/html, application/vnd.api+json", True),
        ("*/*", True),
        ("text/html", False),
        ("image/png, text/csv", False),
        (f"{JSONAPI};q=0", False),
    ],
)
def test_plain_json_actions_take_the_jsonapi_accept_of_cluvio_clients(api, accept, accepted):
    org = api.create_org()
    for method, path, status in _plain_json_actions(api, org):
        response = api.client.request(
            method, path, headers={"Authorization": f"Api {org.key}", "Accept": accept}
        )
        if accepted:
            assert response.status_code == status, (path, response.text)
            if response.content:
                expected = "application/json" if status < 400 else JSONAPI
                assert response.headers["content-type"] == expected
        else:
            assert response.status_code == 406, path
            assert response.json()["errors"][0]["code"] == "not_acceptable"


@pytest.mark.parametrize(("accept", "status"), [(JSONAPI, 403), ("text/html", 406)])
def test_test_connection_takes_the_jsonapi_accept_too(api, accept, status):
    """Accept is checked first: a key without Manage Datasources gets 403 once Accept passed
    (and so the test never waits for a data server that is not running here)."""

    org = api.create_org()
    viewer = api.create_key(org, [Permission.VIEW_DATASOURCES])
    response = api.client.post(
        f"/datasources/{org.sample_datasource_id}/test_connection",
        headers={"Authorization": f"Api {viewer}", "Accept": accept},
    )
    assert response.status_code == status


def _with_relationship(document, name):
    document["data"]["relationships"] = {name: {"data": [{"type": "datasources", "id": "x"}]}}
    return document


def test_a_relationship_an_update_cannot_set_is_422_and_nothing_changes(api):
    """PATCH /api_keys with a `datasources` relationship used to answer 200 having ignored it."""
    org = api.create_org()
    scoped = api.create_key(
        org, [Permission.VIEW_DATASOURCES], datasource_ids=[org.sample_datasource_id]
    )
    key_id = api.get("/api_key", scoped).json()["data"]["id"]
    snippet = api.post("/sql_snippets", org.key, resource("sql_snippets", name="s", sql="1"))
    snippet_id = snippet.json()["data"]["id"]
    before = dump_tables(api.app)
    for path, type_, name in [
        (f"/api_keys/{key_id}", "api_keys", "datasources"),
        (f"/sql_snippets/{snippet_id}", "sql_snippets", "owner"),
        (f"/datasources/{org.sample_datasource_id}", "datasources", "organization"),
    ]:
        document = _with_relationship(resource(type_, path.rsplit("/", 1)[1], name="n"), name)
        answer = api.patch(path, org.key, document)
        assert answer.status_code == 422, (path, answer.text)
        error = answer.json()["errors"][0]
        assert error["code"] == "relationship_not_settable"
        assert error["source"] == {"pointer": f"/data/relationships/{name}"}
    assert dump_tables(api.app) == before


def test_a_relationship_a_create_cannot_set_is_422(api):
    org = api.create_org()
    document = _with_relationship(resource("sql_snippets", name="s", sql="1"), "datasources")
    answer = api.post("/sql_snippets", org.key, document)
    assert answer.status_code == 422
    assert answer.json()["errors"][0]["source"] == {"pointer": "/data/relationships/datasources"}
