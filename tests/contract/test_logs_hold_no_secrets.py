"""No log line holds a secret the suite handed out.

The whole run is checked once every test has ended, whatever the order (conftest's
``pytest_sessionfinish``). The scenario here makes sure there is something to check even when this
file runs alone: a password datasource, an object-storage datasource's key, a bad and a good key,
bound values, a data grant, and a fetch through a data URL (``?token=``), whose access-log line must
hold the path only, and fetches with the token mistakenly in the path, where it must be masked.
"""

from __future__ import annotations

import logging

import orjson
from starlette.testclient import TestClient

from api_server.permissions import Permission
from api_server.services.data_grants import data_url
from data_server.app import create_app as create_data_app
from shared.signing_keys import SigningKeyring
from shared.tokens import Scope, mint_data_token, new_data_key
from tests.support.factories import POSTGRES_DATASOURCE, Api
from tests.support.log_watch import CAPTURE, SENSITIVE, leaked_secrets, remember


def _scenario(api: Api) -> None:
    org = api.create_org()
    api.create_datasource(org.key, password="pw-for-the-log-test-41f7", **POSTGRES_DATASOURCE)
    remember("S3KEYIDFORTHELOGTEST")  # an object-storage key: id and secret
    api.create_datasource(
        org.key, name="Bucket", database_type="s3", database="s3://logged/data/",
        host="127.0.0.1", port=9000, require_ssl=False, username="S3KEYIDFORTHELOGTEST",
        password="s3-secret-for-the-log-test-2b9d",
    )  # fmt: skip
    datasource = api.create_datasource(org.key)["id"]
    narrow = api.create_key(org, [Permission.VIEW_ALERTS])
    assert api.get("/datasources", narrow).status_code == 403
    assert api.get("/datasources", org.key[:-2] + "zz").status_code == 401
    value = "bound-in-the-log-test-8c2d"
    remember(value)
    run = api.client.post(
        f"/datasources/{datasource}/executions",
        content=orjson.dumps(
            {
                "sql_query": "SELECT * FROM t WHERE {a=v}",
                "parameters": {"filters": [{"variable_name": "v", "selected_values": [value]}]},
            }
        ),
        headers={"Authorization": f"Api {org.key}", "Content-Type": "application/json"},
    )
    assert run.status_code == 200, run.text
    bad = api.client.post(
        f"/datasources/{datasource}/executions",
        content=orjson.dumps({"sql_query": "SELECT {v.value}", "parameters": {"tz": value}}),
        headers={"Authorization": f"Api {org.key}", "Content-Type": "application/json"},
    )
    assert bad.status_code == 422
    _fetch_by_data_url(api)


def _fetch_by_data_url(api: Api) -> None:
    """The data server's access log, for a request whose URL holds a token. (The test client's
    own logger, which writes whole URLs, is not the server's and is kept quiet.)"""
    settings = api.app.state.settings
    data_key = new_data_key(Scope.EXECUTION_RESULT)
    token = mint_data_token(
        SigningKeyring(settings), settings, organization_id="o", data_key=data_key,
        scope=Scope.EXECUTION_RESULT,
    )  # fmt: skip
    remember(token)
    client_logger = logging.getLogger("httpx2")
    level = client_logger.level
    client_logger.setLevel(logging.WARNING)
    try:
        with TestClient(create_data_app(settings)) as data:
            url = data_url(settings, data_key, token).removeprefix(settings.public_data_url)
            assert data.get(url).status_code == 404  # authorised; nothing stored under the key
            # A client's mistakes put the token in the path, which is logged (found by a probe).
            for mistaken in (
                f"/data/{data_key}%3Ftoken={token}",
                f"/data/{data_key}&token={token}",
                f"/data/{token}",
            ):
                assert data.get(mistaken).status_code in (401, 404)
    finally:
        client_logger.setLevel(level)
    assert any(f"GET /data/{data_key} 404" in line for line in CAPTURE.lines)
    assert sum(f"GET /data/{data_key}?token=eyJ…" in line for line in CAPTURE.lines) == 1
    assert any("GET /data/eyJ… 40" in line for line in CAPTURE.lines)


def test_no_log_line_holds_a_key_token_password_or_bound_value(api):
    _scenario(api)
    assert CAPTURE.lines, "nothing was captured: the log handler is not installed"
    assert len(SENSITIVE) >= 3
    assert leaked_secrets() == []


def test_the_check_finds_a_secret_that_was_logged():
    """The session-end check is not vacuous: a remembered value in a log line is reported."""
    secret = "planted-secret-for-the-check-7e1a"
    remember(secret)
    logging.getLogger("dataferry.test").warning("leaking %s", secret)
    try:
        assert leaked_secrets() == [secret[:12] + "…"]
    finally:
        SENSITIVE.discard(secret)
        CAPTURE.lines[:] = [line for line in CAPTURE.lines if secret not in line]
