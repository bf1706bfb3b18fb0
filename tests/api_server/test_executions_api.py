"""Execution operations on the API server, without a worker: validation, idempotency, visibility,
204 before completion, cancel, purge."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import delete, select, update
from starlette.testclient import TestClient

from api_server.permissions import Permission
from api_server.services import executions as executions_service
from data_server.app import create_app as create_data_app
from shared.db.models import ApiKey, Execution, Organization
from tests.support.factories import resource

JSON = "application/json"


def _run(api, key, datasource_id, body, headers=None):
    import orjson

    return api.client.post(
        f"/datasources/{datasource_id}/executions",
        content=orjson.dumps(body) if not isinstance(body, bytes) else body,
        headers={"Authorization": f"Api {key}", "Content-Type": JSON, **(headers or {})},
    )


def test_run_execution_answers_200_with_the_cluvio_resource(api):
    org = api.create_org()
    response = _run(
        api, org.key, org.sample_datasource_id, {"sql_query": "SELECT 1", "parameters": {}}
    )
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert data["type"] == "executions"
    attributes = data["attributes"]
    assert uuid.UUID(attributes["execution_id"]) and data["id"] == attributes["execution_id"]
    assert attributes["execution_type"] == "sql_query"
    assert attributes["execution_status"] == "starting"
    for name in ("created_at", "updated_at", "started_at", "completed_at"):
        assert name in attributes
    # Integers as Cluvio documents them (its sample: 0 while starting), never null: a client's
    # typed model of the resource would refuse one.
    counts = {name: attributes[name] for name in ("result_columns", "result_rows", "result_size")}
    assert counts == {"result_columns": 0, "result_rows": 0, "result_size": 0}
    assert "error_code" not in attributes


@pytest.mark.parametrize(
    ("body", "pointer", "code"),
    [
        (
            {"sql_query": "SELECT 1", "r_query": "summary(sql.data)"},
            "/r_query",
            "r_query_not_supported",
        ),
        ({"sql_query": "SELECT 1", "r_query": 5}, "/r_query", "r_query_not_supported"),
        ({"sql_query": ""}, "/sql_query", "invalid_sql_query"),
        ({"sql_query": " \n\t"}, "/sql_query", "invalid_sql_query"),
        ({"sql_query": 5}, "/sql_query", "invalid_sql_query"),
        ({}, "/sql_query", "invalid_sql_query"),
        ({"sql_query": "SELECT 1", "parameters": []}, "/parameters", "invalid_type"),
        ({"sql_query": "SELECT 1", "extra": 1}, "/extra", "unknown_attribute"),
        ({"sql_query": "SELECT 1 -- " + "x" * 100_000}, "/sql_query", "too_long"),
        (["SELECT 1"], "", "invalid_attribute"),
    ],
)
def test_bad_run_bodies_are_422_and_create_nothing(api, body, pointer, code):
    org = api.create_org()
    response = _run(api, org.key, org.sample_datasource_id, body)
    assert response.status_code == 422, response.text
    error = response.json()["errors"][0]
    assert (error["code"], error["source"]["pointer"]) == (code, pointer)
    with api.app.state.sessions() as session:
        assert session.query(Execution).filter_by(execution_type="sql_query").count() == 0


def test_every_problem_of_a_run_body_is_reported_at_once(api):
    org = api.create_org()
    body = {"sql_query": 5, "r_query": "x", "parameters": {"tz": "Mars/Olympus"}, "extra": 1}
    response = _run(api, org.key, org.sample_datasource_id, body)
    assert response.status_code == 422, response.text
    assert [(e["code"], e["source"]["pointer"]) for e in response.json()["errors"]] == [
        ("invalid_sql_query", "/sql_query"),
        ("r_query_not_supported", "/r_query"),
        ("invalid_time_zone", "/parameters/tz"),
        ("unknown_attribute", "/extra"),
    ]


def test_run_execution_needs_json_content_type(api):
    org = api.create_org()
    response = api.client.post(
        f"/datasources/{org.sample_datasource_id}/executions",
        content=b'{"sql_query": "SELECT 1"}',
        headers={"Authorization": f"Api {org.key}", "Content-Type": "text/plain"},
    )
    assert response.status_code == 415


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("application/json; charset=utf-8", 200),
        ("application/json; charset=UTF-8", 200),
        ("application/json; charset=latin-1", 415),
        ("application/json; charset=utf-16", 415),
    ],
)
def test_a_json_body_declared_in_another_charset_is_415(api, content_type, status):
    """JSON between systems is UTF-8 (RFC 8259 §8.1): a body said to be otherwise is not read
    as UTF-8 regardless."""
    org = api.create_org()
    response = api.client.post(
        f"/datasources/{org.sample_datasource_id}/executions",
        content='{"sql_query": "SELECT \'é\'"}'.encode(),
        headers={"Authorization": f"Api {org.key}", "Content-Type": content_type},
    )
    assert response.status_code == status, response.text


def test_malformed_json_is_400(api):
    org = api.create_org()
    response = _run(api, org.key, org.sample_datasource_id, b"{nope")
    assert response.status_code == 400


def test_idempotency_key_returns_the_same_execution_or_422(api):
    org = api.create_org()
    body = {"sql_query": "SELECT 42"}
    first = _run(api, org.key, org.sample_datasource_id, body, {"Idempotency-Key": "abc"})
    again = _run(api, org.key, org.sample_datasource_id, body, {"Idempotency-Key": "abc"})
    assert first.json()["data"]["id"] == again.json()["data"]["id"]
    different = _run(
        api,
        org.key,
        org.sample_datasource_id,
        {"sql_query": "SELECT 43"},
        {"Idempotency-Key": "abc"},
    )
    assert different.status_code == 422
    assert different.json()["errors"][0]["code"] == "idempotency_key_reused"
    other = _run(api, org.key, org.sample_datasource_id, body, {"Idempotency-Key": "xyz"})
    assert other.json()["data"]["id"] != first.json()["data"]["id"]


def test_a_retry_that_waited_while_its_first_took_the_last_slot_answers_the_first(api, monkeypatch):
    """Two requests with one Idempotency-Key at once: the second, having looked for the first's
    execution before it was committed, meets the cap the first filled, and answers the first's
    execution, not a 429 (the look before queueing misses it here, as under that race)."""
    org = api.create_org()
    with api.app.state.sessions.begin() as session:
        session.get_one(Organization, org.id).max_running_executions = 1
    body, keyed = {"sql_query": "SELECT 42"}, {"Idempotency-Key": "once"}
    first = _run(api, org.key, org.sample_datasource_id, body, keyed)
    assert first.status_code == 200, first.text
    looks = []
    real = executions_service._find_idempotent

    def missing_the_first_once(*args):
        looks.append(args)
        return None if len(looks) == 1 else real(*args)

    monkeypatch.setattr(executions_service, "_find_idempotent", missing_the_first_once)
    again = _run(api, org.key, org.sample_datasource_id, body, keyed)
    assert again.status_code == 200, again.text
    assert again.json()["data"]["id"] == first.json()["data"]["id"] and len(looks) == 2
    with api.app.state.sessions() as session:  # the refused run's text was taken off again
        kept = session.get_one(Organization, org.id).execution_text_bytes
        rows = session.scalars(
            select(Execution.kept_bytes).where(Execution.organization_id == org.id)
        )
        assert kept == sum(rows) > 0
    unkeyed = _run(api, org.key, org.sample_datasource_id, body)
    assert unkeyed.status_code == 429


def test_an_idempotency_key_is_read_as_utf8(api):
    """Before, its bytes were judged as Latin-1: a Cyrillic key held "control characters" and
    was refused. (The test client re-encodes what is not UTF-8, so invalid bytes cannot be
    sent from here.)"""
    org = api.create_org()
    body = {"sql_query": "SELECT 42"}
    key = {"Idempotency-Key": "ключ-1".encode()}
    first = _run(api, org.key, org.sample_datasource_id, body, key)
    again = _run(api, org.key, org.sample_datasource_id, body, key)
    assert first.status_code in (200, 201), first.text
    assert first.json()["data"]["id"] == again.json()["data"]["id"]
    control = {"Idempotency-Key": "\u0085x".encode()}  # a C1 control character, in UTF-8
    refused = _run(api, org.key, org.sample_datasource_id, body, control)
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["code"] == "invalid_idempotency_key"


def test_an_execution_is_found_by_any_spelling_of_its_uuid(api):
    """RFC 9562 reads UUIDs case-insensitively: upper case, braces, ``urn:uuid:`` and no
    hyphens name the same execution (before: 404), with ``?wait`` too."""
    org = api.create_org()
    execution_id = _run(api, org.key, org.sample_datasource_id, {"sql_query": "SELECT 1"}).json()[
        "data"
    ]["id"]
    spellings = [
        execution_id.upper(),
        f"{{{execution_id}}}",
        f"urn:uuid:{execution_id}",
        execution_id.replace("-", ""),
    ]
    for spelling in spellings:
        for query in ("", "?wait=0"):
            found = api.get(f"/executions/{spelling}{query}", org.key)
            assert found.status_code == 200, (spelling, found.text)
            assert found.json()["data"]["id"] == execution_id
    other = api.create_org("Other")
    assert api.get(f"/executions/{execution_id.upper()}", other.key).status_code == 404


@pytest.mark.parametrize(
    ("permissions", "status"),
    [
        ([Permission.VIEW_DATASOURCES], 403),
        ([Permission.VIEW_DASHBOARDS], 403),
        ([Permission.MANAGE_DASHBOARDS], 200),
        ([Permission.MANAGE_ALERTS], 200),
        ([Permission.MANAGE_DATASOURCES], 200),
    ],
)
def test_run_execution_permissions(api, permissions, status):
    org = api.create_org()
    key = api.create_key(org, permissions)
    assert _run(api, key, org.sample_datasource_id, {"sql_query": "SELECT 1"}).status_code == status


def test_foreign_or_out_of_scope_execution_is_404_like_a_random_id(api):
    mine, theirs = api.create_org("Mine"), api.create_org("Theirs")
    theirs_execution = _run(
        api, theirs.key, theirs.sample_datasource_id, {"sql_query": "SELECT 1"}
    ).json()["data"]["id"]
    other_ds = api.create_datasource(mine.key)
    mine_execution = _run(api, mine.key, other_ds["id"], {"sql_query": "SELECT 1"}).json()["data"][
        "id"
    ]
    restricted = api.create_key(mine, [Permission.MANAGE_DASHBOARDS], [mine.sample_datasource_id])
    for key, execution_id in ((mine.key, theirs_execution), (restricted, mine_execution)):
        for suffix in ("", "/data"):
            response = api.get(f"/executions/{execution_id}{suffix}", key)
            random = api.get(f"/executions/{uuid.uuid4()}{suffix}", key)
            assert response.status_code == 404
            assert response.content == random.content
    assert _run(api, restricted, other_ds["id"], {"sql_query": "SELECT 1"}).status_code == 404
    assert api.get("/executions/not-a-uuid", mine.key).status_code == 404


def test_data_is_204_until_completed_and_after_failure(api):
    org = api.create_org()
    execution_id = _run(api, org.key, org.sample_datasource_id, {"sql_query": "SELECT 1"}).json()[
        "data"
    ]["id"]
    response = api.get(f"/executions/{execution_id}/data", org.key)
    assert response.status_code == 204 and response.content == b""
    with api.app.state.sessions.begin() as session:
        session.execute(
            update(Execution)
            .where(Execution.id == execution_id)
            .values(status="failed", error_code="syntax_error", error_message="bad")
        )
    assert api.get(f"/executions/{execution_id}/data", org.key).status_code == 204
    shown = api.get(f"/executions/{execution_id}", org.key).json()["data"]["attributes"]
    assert (shown["error_code"], shown["error_message"]) == ("syntax_error", "bad")


def test_a_key_is_answered_for_no_cache_to_keep(api):
    """A data grant holds a bearer token; every answer to a key is its own (found by the
    outside probe: Get Execution Data had no Cache-Control)."""
    org = api.create_org()
    execution_id = _run(api, org.key, org.sample_datasource_id, {"sql_query": "SELECT 1"}).json()[
        "data"
    ]["id"]
    api.complete_by_hand(execution_id)
    grant = api.get(f"/executions/{execution_id}/data", org.key)
    assert "data_access_token" in grant.json(), grant.text
    viewer = api.create_key(org, [Permission.VIEW_ALERTS])
    for answer in (grant, api.get("/datasources", org.key), api.get("/datasources", viewer)):
        assert answer.headers["cache-control"] == "no-store", answer.status_code


@pytest.mark.parametrize(
    "wait", ["31", "-1", "abc", "nan", "1_0", " 1", "\uff11", "\u0661", "30.0001", "1e309"]
)
def test_wait_is_bounded(api, wait):
    org = api.create_org()
    execution_id = _run(api, org.key, org.sample_datasource_id, {"sql_query": "SELECT 1"}).json()[
        "data"
    ]["id"]
    response = api.get(f"/executions/{execution_id}?wait={wait}", org.key)
    assert response.status_code == 400
    assert response.json()["errors"][0]["source"] == {"parameter": "wait"}


def test_wait_returns_after_the_timeout_when_nothing_changes(api):
    org = api.create_org()
    execution_id = _run(api, org.key, org.sample_datasource_id, {"sql_query": "SELECT 1"}).json()[
        "data"
    ]["id"]
    response = api.get(f"/executions/{execution_id}?wait=0.3", org.key)
    assert response.json()["data"]["attributes"]["execution_status"] == "starting"


def _waited_while(api, org, change):
    """The answer of a ``?wait`` on a new execution of ``org`` while ``change(session,
    execution_id)`` was committed."""
    execution_id = _run(api, org.key, org.sample_datasource_id, {"sql_query": "SELECT 1"}).json()[
        "data"
    ]["id"]
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(api.get, f"/executions/{execution_id}?wait=1", org.key)
        time.sleep(0.2)
        with api.app.state.sessions.begin() as session:
            change(session, execution_id)
        return waiting.result(timeout=10)


@pytest.mark.parametrize("meanwhile", ["disabled", "deleted"])
def test_a_key_disabled_or_deleted_during_the_wait_gets_a_401(api, meanwhile):
    """What the execution is then is the organisation's: a key that lost its access while its
    request waited gets what its next request would get (as the filters' dynamic options and
    run-and-wait's grant do)."""
    org = api.create_org()

    def lose_the_keys(session, _execution_id):
        for key in session.scalars(select(ApiKey).where(ApiKey.organization_id == org.id)):
            if meanwhile == "deleted":
                session.delete(key)
            else:
                key.enabled = False

    response = _waited_while(api, org, lose_the_keys)
    assert response.status_code == 401, response.text
    assert response.json()["errors"][0]["code"] == "unauthorized"


@pytest.mark.parametrize(("key_disabled", "status"), [(False, 404), (True, 401)])
def test_an_execution_gone_during_the_wait_is_a_404_unless_the_key_went_too(
    api, key_disabled, status
):
    """The wait's reads ask for the execution and the key in one statement; with no execution
    to read, the key's state is asked on its own, and a key no longer enabled is told first."""
    org = api.create_org()

    def delete_it(session, execution_id):
        session.execute(delete(Execution).where(Execution.id == execution_id))
        if key_disabled:
            keys = update(ApiKey).where(ApiKey.organization_id == org.id)
            session.execute(keys.values(enabled=False))

    response = _waited_while(api, org, delete_it)
    assert response.status_code == status, response.text


def test_cancel_before_start_and_purge(api):
    org = api.create_org()
    execution_id = _run(api, org.key, org.sample_datasource_id, {"sql_query": "SELECT 1"}).json()[
        "data"
    ]["id"]
    cancelled = api.client.post(
        f"/executions/{execution_id}/cancel", headers={"Authorization": f"Api {org.key}"}
    )
    assert cancelled.status_code == 200
    assert cancelled.json()["data"]["attributes"]["execution_status"] == "cancelled"
    again = api.client.post(
        f"/executions/{execution_id}/cancel", headers={"Authorization": f"Api {org.key}"}
    )
    assert again.status_code == 409
    assert api.delete(f"/executions/{execution_id}", org.key).status_code == 204


def test_a_queued_execution_of_a_datasource_disabled_since_fails_without_running(api, settings):
    """Queued before the datasource was disabled, it started afterwards and ran on it (an
    outside probe: an operator disabling a misbehaving remote database expects no more)."""
    org = api.create_org()
    ds = api.create_datasource(org.key)["id"]
    execution_id = _run(api, org.key, ds, {"sql_query": "SELECT 1"}).json()["data"]["id"]
    disabled = api.patch(f"/datasources/{ds}", org.key, resource("datasources", ds, enabled=False))
    assert disabled.status_code == 200, disabled.text
    with TestClient(create_data_app(settings, run_workers=True)):  # its workers start now
        deadline = time.monotonic() + 30
        while (attributes := _execution(api, org.key, execution_id))["execution_status"] in (
            "starting",
            "running",
        ):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert (attributes["execution_status"], attributes["error_code"]) == (
        "failed",
        "datasource_disabled",
    )


def _execution(api, key, execution_id):
    return api.get(f"/executions/{execution_id}", key).json()["data"]["attributes"]


def test_disabled_datasource_refuses_executions(api):
    org = api.create_org()
    ds = api.create_datasource(org.key, enabled=False)
    response = _run(api, org.key, ds["id"], {"sql_query": "SELECT 1"})
    assert response.status_code == 409
    assert response.json()["errors"][0]["code"] == "datasource_disabled"


def test_schema_before_any_refresh_is_409(api):
    org = api.create_org()
    response = api.get(f"/datasources/{org.sample_datasource_id}/schema", org.key)
    assert response.status_code == 409
    assert response.json()["errors"][0]["code"] == "schema_not_available"


def test_refresh_returns_an_execution_id(api):
    org = api.create_org()
    response = api.client.post(
        f"/datasources/{org.sample_datasource_id}/refresh",
        headers={"Authorization": f"Api {org.key}"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    execution_id = response.json()["execution_id"]
    shown = api.get(f"/executions/{execution_id}", org.key).json()["data"]["attributes"]
    assert shown["execution_type"] == "datasource_refresh"


def test_jwks_publishes_only_public_keys(api):
    document = api.client.get("/.well-known/jwks.json").json()
    (key,) = document["keys"]
    assert (key["kty"], key["crv"], key["alg"]) == ("OKP", "Ed25519", "EdDSA")
    assert "d" not in key
