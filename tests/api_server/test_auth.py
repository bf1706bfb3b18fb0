"""Authentication: one 401 for every bad credential; 403 for a missing permission."""

from __future__ import annotations

import pytest
from sqlalchemy import delete, update

from api_server.permissions import Permission
from api_server.services.api_keys import generate_secret, is_well_formed_secret
from shared.db.models import ApiKey


def _flip_last(secret: str) -> str:
    return secret[:-1] + ("A" if secret[-1] != "A" else "B")


def test_generated_secret_is_well_formed_and_checksummed():
    secret = generate_secret()
    assert secret.startswith("dfk_")
    assert is_well_formed_secret(secret)
    assert not is_well_formed_secret(_flip_last(secret))
    assert not is_well_formed_secret(secret[:-1])


@pytest.mark.parametrize(
    "make_header",
    [
        pytest.param(lambda key: None, id="missing-header"),
        pytest.param(lambda key: f"Bearer {key}", id="wrong-scheme"),
        pytest.param(lambda key: "Api", id="scheme-without-secret"),
        pytest.param(lambda key: "Api not-a-key", id="malformed-secret"),
        pytest.param(lambda key: f"Api {_flip_last(key)}", id="bad-checksum"),
        pytest.param(lambda key: f"Api {generate_secret()}", id="unknown-key"),
        pytest.param(lambda key: f"Api {key} extra", id="trailing-garbage"),
    ],
)
def test_bad_credentials_answer_the_same_401(api, make_header):
    org = api.create_org()
    header = make_header(org.key)
    headers = {"Authorization": header} if header is not None else {}
    baseline = api.client.get("/datasources")
    response = api.client.get("/datasources", headers=headers)
    assert response.status_code == 401
    assert response.content == baseline.content
    assert response.headers["www-authenticate"] == 'Api realm="dataferry"'
    assert response.json()["errors"][0]["code"] == "unauthorized"


def test_an_authorization_header_sent_twice_is_the_same_401(api):
    """A single field (RFC 9110 §11.6.2): a proxy keeping the other copy would have
    authenticated another caller than the first one the server read."""
    mine, theirs = api.create_org().key, api.create_org("B").key
    baseline = api.client.get("/api_key")
    for first, second in ((mine, theirs), (theirs, mine), (mine, mine), (mine, "dfk_x")):
        headers = [("Authorization", f"Api {first}"), ("Authorization", f"Api {second}")]
        response = api.client.get("/api_key", headers=headers)
        assert response.status_code == 401
        assert response.content == baseline.content


@pytest.mark.parametrize("how", ["disabled", "deleted"])
def test_disabled_or_deleted_key_answers_the_same_401(api, how):
    org = api.create_org()
    baseline = api.client.get("/api_key")
    with api.app.state.sessions.begin() as session:
        if how == "disabled":
            session.execute(update(ApiKey).values(enabled=False))
        else:
            session.execute(delete(ApiKey))
    response = api.get("/api_key", org.key)
    assert response.status_code == 401
    assert response.content == baseline.content


def test_scheme_is_case_insensitive(api):
    org = api.create_org()
    response = api.client.get("/api_key", headers={"Authorization": f"api {org.key}"})
    assert response.status_code == 200


def test_calling_key_is_described(api):
    org = api.create_org()
    key = api.create_key(org, [Permission.VIEW_DATASOURCES], [org.sample_datasource_id])
    data = api.get("/api_key", key).json()["data"]
    assert data["type"] == "api_keys"
    attributes = data["attributes"]
    assert attributes["permissions"] == ["View Datasources"]
    assert attributes["datasource_ids"] == [org.sample_datasource_id]
    assert attributes["organization_id"] == org.id
    assert attributes["prefix"] == key[:8]
    assert data["relationships"]["organization"]["data"] == {"type": "organizations", "id": org.id}
    assert key not in api.get("/api_key", key).text


def test_unrestricted_key_reports_null_datasources(api):
    org = api.create_org()
    data = api.get("/api_key", org.key).json()["data"]
    assert data["attributes"]["datasource_ids"] is None
    assert data["relationships"]["datasources"]["data"] is None
    assert set(data["attributes"]["permissions"]) == {p.value for p in Permission}


@pytest.mark.parametrize(
    ("permissions", "method", "path_kind", "expected"),
    [
        ([Permission.VIEW_DASHBOARDS], "GET", "collection", 403),
        ([Permission.VIEW_DASHBOARDS], "GET", "item", 403),
        ([Permission.VIEW_DATASOURCES], "GET", "collection", 200),
        ([Permission.VIEW_DATASOURCES], "GET", "item", 200),
        ([Permission.VIEW_DATASOURCES], "POST", "collection", 403),
        ([Permission.VIEW_DATASOURCES], "PATCH", "item", 403),
        ([Permission.VIEW_DATASOURCES], "DELETE", "item", 403),
        ([Permission.MANAGE_DATASOURCES], "GET", "collection", 200),
        ([Permission.MANAGE_DATASOURCES], "POST", "collection", 201),
        ([Permission.MANAGE_DATASOURCES], "PATCH", "item", 200),
        ([Permission.MANAGE_DATASOURCES], "DELETE", "item", 204),
        ([Permission.MANAGE_USERS, Permission.MANAGE_DASHBOARDS], "DELETE", "item", 403),
    ],
)
def test_permissions_decide_datasource_routes(api, permissions, method, path_kind, expected):
    org = api.create_org()
    target = api.create_datasource(org.key)
    key = api.create_key(org, permissions)
    path = "/datasources" if path_kind == "collection" else f"/datasources/{target['id']}"
    if method == "POST":
        body = {
            "data": {
                "type": "datasources",
                "attributes": {
                    "name": "n",
                    "database_type": "duckdb",
                    "database": api.duckdb_file(org),
                },
            }
        }
        response = api.post(path, key, body)
    elif method == "PATCH":
        body = {
            "data": {"type": "datasources", "id": target["id"], "attributes": {"name": "renamed"}}
        }
        response = api.patch(path, key, body)
    elif method == "DELETE":
        response = api.delete(path, key)
    else:
        response = api.get(path, key)
    assert response.status_code == expected, response.text
    if expected == 403:
        assert response.json()["errors"][0]["code"] == "permission_denied"
        assert (
            api.get(f"/datasources/{target['id']}", org.key).json()["data"]["attributes"]["name"]
            == "Shop"
        )
