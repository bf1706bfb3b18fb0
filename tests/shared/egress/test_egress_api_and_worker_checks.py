"""The egress policy where it is applied: the API refuses a denied host at create and update with
a pointer, and the worker checks the host again before connecting and hands the child the
address it checked.
"""

from __future__ import annotations

import pytest
from sqlalchemy.engine import make_url

from data_server.datasource_specs import DatasourceSpecs
from data_server.engine import QueryFailed
from shared import lifecycle
from shared.settings import Settings
from tests.support.egress import POINTER
from tests.support.factories import Api, resource
from tests.support.processes import LOOPBACK_NETWORKS


def _postgres_attributes(**overrides):
    attributes = {
        "name": "Warehouse",
        "database_type": "postgres",
        "host": "db.example",
        "port": 5432,
        "database": "warehouse",
        "username": "reader",
        "password": "pw-never-stored",
        "require_ssl": False,
    }
    attributes.update(overrides)
    return resource("datasources", **attributes)


def _datasource_count(api, key) -> int:
    return api.get("/datasources", key).json()["meta"]["total"]


@pytest.mark.parametrize(
    ("host", "code"),
    [
        ("169.254.169.254", "destination_not_allowed"),
        ("10.0.0.5", "destination_not_allowed"),
        ("::ffff:169.254.169.254", "destination_not_allowed"),
        ("0x7f.1", "invalid_host"),
        ("db.invalid", "host_not_found"),
    ],
)
def test_create_refuses_a_denied_host_with_a_pointer_and_stores_nothing(api, host, code):
    org = api.create_org()
    response = api.post("/datasources", org.key, _postgres_attributes(host=host))
    assert response.status_code == 422, response.text
    (error,) = response.json()["errors"]
    assert (error["code"], error["source"]) == (code, {"pointer": POINTER})
    assert _datasource_count(api, org.key) == 1  # the sample datasource only


def test_loopback_is_refused_at_the_api_unless_the_operator_allows_it(settings):
    with Api.start(settings.with_overrides(datasource_allowed_networks="")) as default_api:
        org = default_api.create_org()
        for host in ("127.0.0.1", "localhost", "::1"):
            response = default_api.post("/datasources", org.key, _postgres_attributes(host=host))
            assert response.status_code == 422, response.text
            assert response.json()["errors"][0]["code"] == "destination_not_allowed"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_update_rechecks_a_changed_host_and_keeps_the_old_one(api):
    org = api.create_org()
    created = api.post("/datasources", org.key, _postgres_attributes(host="127.0.0.1"))
    assert created.status_code == 201, created.text
    id_ = created.json()["data"]["id"]
    path = f"/datasources/{id_}"
    response = api.patch(path, org.key, resource("datasources", id_, host="169.254.169.254"))
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["source"] == {"pointer": POINTER}
    assert api.get(path, org.key).json()["data"]["attributes"]["host"] == "127.0.0.1"
    moved = resource("datasources", id_, host="::1", port=5433, password="pw-never-stored")
    moved = api.patch(path, org.key, moved)
    assert moved.status_code == 200, moved.text


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_the_metadata_database_is_refused_at_the_api(api, settings):
    """The suite allows loopback; the metadata DB (PostgreSQL on loopback here) stays refused."""
    url = make_url(settings.database_url)
    org = api.create_org()
    for host in (url.host, "localhost", "127.0.0.2"):
        body = _postgres_attributes(host=host, port=url.port or 5432)
        response = api.post("/datasources", org.key, body)
        assert response.status_code == 422, response.text
        assert "own services" in response.json()["errors"][0]["detail"]
    assert _datasource_count(api, org.key) == 1


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_narrower_policy_does_not_block_unrelated_updates(api, settings):
    org = api.create_org()
    created = api.post("/datasources", org.key, _postgres_attributes(host="127.0.0.1"))
    assert created.status_code == 201, created.text
    id_ = created.json()["data"]["id"]
    with Api.start(settings.with_overrides(datasource_allowed_networks="")) as narrowed:
        path = f"/datasources/{id_}"
        renamed = narrowed.patch(path, org.key, resource("datasources", id_, name="Renamed"))
        assert renamed.status_code == 200, renamed.text
        moved = narrowed.patch(path, org.key, resource("datasources", id_, port=5433))
        assert moved.status_code == 422, moved.text


def _postgres_claim(**overrides: object) -> lifecycle.Claim:
    values: dict = {
        "execution_id": "e",
        "attempt": 1,
        "organization_id": "o",
        "execution_type": "sql_query",
        "sql": "SELECT 1",
        "bound_parameters": [],
        "datasource_id": "d",
        "database_type": "postgres",
        "database": "warehouse",
        "data_time_zone": "UTC",
        "host": "localhost",
        "port": 5999,  # not the metadata DB's port, when that is PostgreSQL on loopback
        "username": "reader",
        "require_ssl": False,
    }
    return lifecycle.Claim(**{**values, **overrides})


def _worker(api, settings: Settings) -> DatasourceSpecs:
    """What the worker builds a claim's datasource spec with."""
    return DatasourceSpecs(settings, api.app.state.sessions)


def test_the_worker_hands_the_child_the_address_it_checked(api):
    """The child connects to the checked address (libpq ``hostaddr``); the name stays only for
    TLS. Connecting by name would let a second DNS answer choose the destination."""
    spec = _worker(api, api.settings).for_claim(_postgres_claim())
    assert spec.remote is not None
    assert (spec.remote.host, spec.remote.port) == ("localhost", 5999)
    assert spec.remote.address in ("127.0.0.1", "::1")


@pytest.mark.parametrize(
    ("policy", "host", "port"),
    [
        ("", "localhost", 5999),  # loopback no longer allowed: the policy changed since saving
        (LOOPBACK_NETWORKS, "169.254.169.254", 80),
        (LOOPBACK_NETWORKS, "::ffff:10.0.0.1", 5432),
    ],
)
def test_the_worker_checks_the_host_again_before_connecting(api, policy, host, port):
    strict = _worker(api, api.settings.with_overrides(datasource_allowed_networks=policy))
    with pytest.raises(QueryFailed) as refused:
        strict.for_claim(_postgres_claim(host=host, port=port))
    assert refused.value.code == "destination_not_allowed"


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_the_worker_refuses_the_metadata_database(api, settings):
    url = make_url(settings.database_url)
    with pytest.raises(QueryFailed) as refused:
        _worker(api, settings).for_claim(_postgres_claim(host=url.host, port=url.port or 5432))
    assert refused.value.code == "destination_not_allowed"
