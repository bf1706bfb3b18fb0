"""API key hygiene: list, disable, re-enable, delete (JSON:API and CLI), and last_used_at."""

from __future__ import annotations

import orjson
import pytest
from sqlalchemy import select

from api_server.__main__ import main as cli
from api_server.permissions import Permission
from shared.db.models import ApiKey
from tests.factories import resource


def _patch(api, key, key_id, **attributes):
    return api.patch(f"/api_keys/{key_id}", key, resource("api_keys", key_id, **attributes))


def _key_id(api, secret):
    return api.get("/api_key", secret).json()["data"]["id"]


def test_manage_users_lists_the_organisations_keys_only(api):
    org, other = api.create_org("A"), api.create_org("B")
    api.create_key(org, [Permission.VIEW_DATASOURCES])
    listed = api.get("/api_keys?sort=created_at", org.key)
    assert listed.status_code == 200, listed.text
    assert listed.json()["meta"]["total"] == 2
    ids = {item["id"] for item in listed.json()["data"]}
    assert _key_id(api, other.key) not in ids
    assert all(item["links"]["self"] == f"/api_keys/{item['id']}" for item in listed.json()["data"])
    assert "secret_hash" not in listed.text and org.key not in listed.text


def test_disable_then_enable_then_delete(api):
    org = api.create_org()
    worker = api.create_key(org, [Permission.VIEW_DATASOURCES])
    worker_id = _key_id(api, worker)

    disabled = _patch(api, org.key, worker_id, enabled=False)
    assert disabled.status_code == 200 and disabled.json()["data"]["attributes"]["enabled"] is False
    assert api.get("/datasources", worker).status_code == 401

    assert _patch(api, org.key, worker_id, enabled=True).status_code == 200
    assert api.get("/datasources", worker).status_code == 200

    assert api.delete(f"/api_keys/{worker_id}", org.key).status_code == 204
    assert api.get("/datasources", worker).status_code == 401
    assert api.get(f"/api_keys/{worker_id}", org.key).status_code == 404


@pytest.mark.parametrize(
    ("attributes", "pointer"),
    [
        ({"enabled": "no"}, "/data/attributes/enabled"),
        ({"enabled": None}, "/data/attributes/enabled"),
        ({"permissions": ["Manage Users"]}, "/data/attributes/permissions"),
        ({"last_used_at": "2026-01-01T00:00:00Z"}, "/data/attributes/last_used_at"),
        ({"secret": "x"}, "/data/attributes/secret"),
    ],
)
def test_bad_changes_are_422_and_change_nothing(api, attributes, pointer):
    org = api.create_org()
    key_id = _key_id(api, org.key)
    answer = _patch(api, org.key, key_id, **attributes)
    assert answer.status_code == 422, answer.text
    assert answer.json()["errors"][0]["source"]["pointer"] == pointer
    assert api.get(f"/api_keys/{key_id}", org.key).json()["data"]["attributes"]["enabled"] is True


def test_without_manage_users_every_key_route_is_403(api):
    org = api.create_org()
    viewer = api.create_key(org, [Permission.VIEW_USERS, Permission.MANAGE_DATASOURCES])
    key_id = _key_id(api, org.key)
    assert api.get("/api_keys", viewer).status_code == 403
    assert api.get(f"/api_keys/{key_id}", viewer).status_code == 403
    assert _patch(api, viewer, key_id, enabled=False).status_code == 403
    assert api.delete(f"/api_keys/{key_id}", viewer).status_code == 403
    assert api.get("/datasources", org.key).status_code == 200  # nothing changed


def test_a_key_of_another_organisation_is_404_for_every_operation(api):
    org, other = api.create_org("A"), api.create_org("B")
    foreign = _key_id(api, other.key)
    assert api.get(f"/api_keys/{foreign}", org.key).status_code == 404
    assert _patch(api, org.key, foreign, enabled=False).status_code == 404
    assert api.delete(f"/api_keys/{foreign}", org.key).status_code == 404
    assert api.get("/datasources", other.key).status_code == 200


def test_last_used_at_is_recorded_without_a_write_per_request(api):
    org = api.create_org()
    key_id = _key_id(api, org.key)

    def last_used():
        with api.app.state.sessions() as session:
            return session.scalar(select(ApiKey.last_used_at).where(ApiKey.id == key_id))

    first = last_used()
    assert first is not None
    for _ in range(5):
        api.get("/api_key", org.key)
    assert last_used() == first  # within the minute: no further writes


def test_cli_disables_enables_and_deletes_a_key(api, monkeypatch, capsys):
    org = api.create_org()
    worker = api.create_key(org, [Permission.VIEW_DATASOURCES])
    worker_id = _key_id(api, worker)
    monkeypatch.setenv("DATAFERRY_STATE_DIR", str(api.settings.state_dir))
    monkeypatch.setenv("DATAFERRY_DATABASE_URL", api.settings.database_url)

    assert cli(["disable-api-key", "--id", worker_id]) == 0
    assert orjson.loads(capsys.readouterr().out) == {"id": worker_id, "action": "api_key.disable"}
    assert api.get("/datasources", worker).status_code == 401
    assert cli(["enable-api-key", "--id", worker_id]) == 0
    assert api.get("/datasources", worker).status_code == 200
    assert cli(["delete-api-key", "--id", worker_id]) == 0
    assert api.get("/datasources", worker).status_code == 401
    assert cli(["delete-api-key", "--id", worker_id]) == 2
    assert "No API key" in capsys.readouterr().err
    actions = [e["attributes"]["action"] for e in api.get("/audit_events", org.key).json()["data"]]
    assert actions[:3] == ["api_key.delete", "api_key.enable", "api_key.disable"]
