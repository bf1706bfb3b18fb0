"""API key hygiene: list, disable, re-enable, delete (JSON:API and CLI), last_used_at, and the
scope a key administers (services.api_keys.within_scope)."""

from __future__ import annotations

import orjson
import pytest
from alembic import command
from sqlalchemy import select, text

from api_server.permissions import Permission
from shared.db.engine import create_metadata_engine
from shared.db.migrate import alembic_config, upgrade_to_head
from shared.db.models import ApiKey
from tests.support.factories import resource


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


def _operator_of(api, operator_command):
    """The operator commands, on the API's own state directory and metadata database."""
    return operator_command(
        {
            "DATAFERRY_STATE_DIR": str(api.settings.state_dir),
            "DATAFERRY_DATABASE_URL": api.settings.database_url,
        }
    )


def test_cli_disables_enables_and_deletes_a_key(api, operator_command):
    org = api.create_org()
    worker = api.create_key(org, [Permission.VIEW_DATASOURCES])
    worker_id = _key_id(api, worker)
    cli = _operator_of(api, operator_command)

    disabled = cli("disable-api-key", "--id", worker_id)
    assert disabled.returncode == 0
    assert orjson.loads(disabled.stdout) == {"id": worker_id, "action": "api_key.disable"}
    assert api.get("/datasources", worker).status_code == 401
    assert cli("enable-api-key", "--id", worker_id).returncode == 0
    assert api.get("/datasources", worker).status_code == 200
    assert cli("delete-api-key", "--id", worker_id).returncode == 0
    assert api.get("/datasources", worker).status_code == 401
    again = cli("delete-api-key", "--id", worker_id)
    assert again.returncode == 2
    assert "No API key" in again.stderr
    actions = [e["attributes"]["action"] for e in api.get("/audit_events", org.key).json()["data"]]
    assert actions[:3] == ["api_key.delete", "api_key.enable", "api_key.disable"]


def test_cli_key_creation_and_organisation_limits_are_audited(api, operator_command):
    """A key holding every permission, made by an operator, once left no trace in the
    organisation's audit log; nor did a change of its rate limits (outside probe)."""
    org = api.create_org()
    cli = _operator_of(api, operator_command)
    created = cli("create-api-key", "--organization", org.id, "--permissions", ",".join(Permission))
    assert created.returncode == 0, created.stderr
    key_id = orjson.loads(created.stdout)["id"]
    limited = cli("set-organization-limits", "--organization", org.id, "--per-minute", "500")
    assert limited.returncode == 0, limited.stderr
    events = api.get("/audit_events?filter[method]=CLI", org.key).json()["data"]
    assert [
        (e["attributes"]["action"], e["attributes"]["resource_id"], e["attributes"]["api_key_id"])
        for e in events
    ] == [("organization.limits", org.id, None), ("api_key.create", key_id, None)]


# ---------------------------------------------------------------------------- scope


def _four_ways(api, caller, key_id):
    """Get, disable, enable and delete another key: the statuses, in that order."""
    return [
        api.get(f"/api_keys/{key_id}", caller).status_code,
        _patch(api, caller, key_id, enabled=False).status_code,
        _patch(api, caller, key_id, enabled=True).status_code,
        api.delete(f"/api_keys/{key_id}", caller).status_code,
    ]


def test_a_restricted_key_reaches_only_keys_within_its_datasources(api):
    org = api.create_org()
    sample = org.sample_datasource_id
    other = api.create_datasource(org.key, name="Other")["id"]
    admin = api.create_key(org, [Permission.MANAGE_USERS, Permission.VIEW_DATASOURCES], [sample])
    narrower = api.create_key(org, [Permission.VIEW_DATASOURCES], [sample])
    wider = {
        "unrestricted": org.key,
        "both datasources": api.create_key(org, [Permission.VIEW_DATASOURCES], [sample, other]),
        "the other datasource": api.create_key(org, [Permission.VIEW_DATASOURCES], [other]),
    }
    wider_ids = {name: _key_id(api, secret) for name, secret in wider.items()}

    listed = api.get("/api_keys", admin).json()
    assert {item["id"] for item in listed["data"]} == {_key_id(api, admin), _key_id(api, narrower)}
    assert listed["meta"]["total"] == 2
    for name, key_id in wider_ids.items():
        assert _four_ways(api, admin, key_id) == [404, 404, 404, 404], name
        assert api.get("/api_key", wider[name]).status_code == 200, f"{name} was changed"
    assert _four_ways(api, admin, _key_id(api, narrower)) == [200, 200, 200, 204]


def test_a_key_reaches_no_key_holding_a_permission_it_lacks(api):
    org = api.create_org()
    admin = api.create_key(org, [Permission.MANAGE_USERS])
    stronger = api.create_key(org, [Permission.VIEW_USERS, Permission.MANAGE_DATASOURCES])
    weaker = api.create_key(org, [Permission.VIEW_USERS])  # implied by Manage Users: within
    listed = api.get("/api_keys", admin).json()
    assert {item["id"] for item in listed["data"]} == {_key_id(api, admin), _key_id(api, weaker)}
    assert listed["meta"]["total"] == 2
    assert _four_ways(api, admin, _key_id(api, stronger)) == [404, 404, 404, 404]
    assert api.get("/api_key", stronger).status_code == 200
    assert _four_ways(api, admin, _key_id(api, weaker)) == [200, 200, 200, 204]


def test_keys_cannot_be_created_over_the_api(api):
    """No key can mint a wider one: creating keys is the operator's (create-api-key) alone."""
    org = api.create_org()
    document = resource("api_keys", name="wider", permissions=[p.value for p in Permission])
    assert api.post("/api_keys", org.key, document).status_code == 405


# ---------------------------------------------------------------------------- operator's disable


def test_an_operator_disabled_key_is_enabled_again_only_by_the_operator(api, operator_command):
    org = api.create_org()
    worker = api.create_key(org, [Permission.VIEW_DATASOURCES])
    worker_id = _key_id(api, worker)
    cli = _operator_of(api, operator_command)
    assert cli("disable-api-key", "--id", worker_id).returncode == 0

    for refused in (
        _patch(api, org.key, worker_id, enabled=True),
        _patch(api, org.key, worker_id, name="renamed", enabled=True),
        api.delete(f"/api_keys/{worker_id}", org.key),
    ):
        assert refused.status_code == 409, refused.text
        assert refused.json()["errors"][0]["code"] == "disabled_by_operator"
    assert api.get("/datasources", worker).status_code == 401
    shown = api.get(f"/api_keys/{worker_id}", org.key).json()["data"]["attributes"]
    assert shown["enabled"] is False and shown["name"] == "test key"
    assert _patch(api, org.key, worker_id, name="quarantined").status_code == 200

    assert cli("enable-api-key", "--id", worker_id).returncode == 0
    assert api.get("/datasources", worker).status_code == 200
    # Disabled over the API, a key is enabled again over the API.
    assert _patch(api, org.key, worker_id, enabled=False).status_code == 200
    assert _patch(api, org.key, worker_id, enabled=True).status_code == 200
    assert api.get("/datasources", worker).status_code == 200


def test_upgrading_keeps_an_earlier_operator_disable_held(database_url):
    """Revision 0005 marks a key as the operator's when the audit log holds its CLI disable."""
    engine = create_metadata_engine(database_url)
    command.downgrade(alembic_config(engine), "0004")
    now = "CURRENT_TIMESTAMP"
    with engine.begin() as connection:
        connection.execute(
            text(f"INSERT INTO organizations (id, name, created_at, updated_at) "
                 f"VALUES ('org', 'O', {now}, {now})")
        )  # fmt: skip
        for key_id, enabled in (("by-cli", False), ("by-api", False), ("re-enabled", True)):
            connection.execute(
                text(
                    "INSERT INTO api_keys (id, organization_id, name, secret_hash, secret_prefix, "
                    "permissions, restricted_to_datasources, enabled, created_at, updated_at) "
                    f"VALUES (:id, 'org', 'k', :id, 'dfk_', '[]', false, :enabled, {now}, {now})"
                ),
                {"id": key_id, "enabled": enabled},
            )
        for key_id in ("by-cli", "re-enabled"):
            connection.execute(
                text(
                    "INSERT INTO audit_events (id, organization_id, action, method, path, "
                    f"resource_id, status, created_at) VALUES (:id, 'org', 'api_key.disable', "
                    f"'CLI', 'python -m api_server api_key.disable', :id, 0, {now})"
                ),
                {"id": key_id},
            )
    upgrade_to_head(engine)
    with engine.connect() as connection:
        held = connection.execute(text("SELECT id, disabled_by_operator FROM api_keys")).all()
    engine.dispose()
    assert {key_id: bool(flag) for key_id, flag in held} == {
        "by-cli": True,
        "by-api": False,
        "re-enabled": False,
    }
