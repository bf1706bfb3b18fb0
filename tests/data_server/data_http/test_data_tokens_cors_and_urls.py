"""Who may fetch ``/data/{data_key}`` and how it is addressed: the token in the URL works like the
header, an expired token is told apart from forgeries, CORS for configured origins only, a
repeated parameter is 400 and a trailing slash 404.
"""

from __future__ import annotations

import time

import jwt
import pytest
from starlette.testclient import TestClient

from data_server.app import create_app
from shared.settings import Settings
from shared.signing_keys import ALGORITHM
from shared.tokens import TOKEN_TYPE
from tests.support.data_http import IDENTITY, data_token, get_result


def test_token_in_the_url_works_like_the_header(data):
    del data.headers["Authorization"]
    url = f"/data/{data.data_key}?token={data.token}&format=csv"
    answer = data.get(url, headers=IDENTITY)
    assert answer.content == _get_with_header(data)
    # Tenant data served inline, as a browser reads a data_url: never sniffed as HTML.
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert data.get(f"/data/{data.data_key}?format=csv").status_code == 401


def _get_with_header(data):
    return data.get(
        f"/data/{data.data_key}",
        params={"format": "csv"},
        headers={**IDENTITY, "Authorization": f"Data {data.token}"},
    ).content


def test_an_authorization_header_sent_twice_is_refused(data):
    token = data.headers["Authorization"]
    doubled = [("Authorization", token), ("Authorization", token)]
    answer = data.get(f"/data/{data.data_key}", headers=doubled)
    assert answer.status_code == 401
    assert answer.json()["errors"][0]["code"] == "invalid_data_token"


def test_expired_token_is_told_apart_and_forgeries_are_not(data, settings):
    del data.headers["Authorization"]
    expired = data_token(settings, data.data_key, now=time.time() - 3600)
    response = data.get(f"/data/{data.data_key}?token={expired}")
    assert response.status_code == 401
    assert response.json()["errors"][0]["code"] == "token_expired"
    claims = jwt.decode(expired, options={"verify_signature": False})
    forged = jwt.encode(claims, "k" * 32, algorithm="HS256", headers={"typ": TOKEN_TYPE})
    other_forged = jwt.encode({**claims, "exp": int(time.time()) + 60}, "k" * 32, algorithm="HS256")
    bodies = {
        data.get(f"/data/{data.data_key}?token={token}").content
        for token in (forged, other_forged, "x.y.z", expired[:-4] + "AAAA")
    }
    assert len(bodies) == 1
    assert b"invalid_data_token" in bodies.pop()
    assert ALGORITHM == "EdDSA"


def _preflight(data, changed: dict[str, str] | None = None):
    """A browser's preflight from the configured origin for a GET, with ``changed`` headers."""
    headers = {
        "Origin": "https://notebook.example",
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization, range, if-none-match",
        **(changed or {}),
    }
    return data.options(f"/data/{data.data_key}", headers=headers)


def test_cors_preflight_and_exposed_headers_for_configured_origins(data):
    origin = {"Origin": "https://notebook.example"}
    preflight = _preflight(data)
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://notebook.example"
    response = get_result(data, "csv", origin)
    exposed = response.headers["access-control-expose-headers"].lower()
    for name in ("content-length", "content-range", "accept-ranges", "etag"):
        assert name in exposed
    other = get_result(data, "csv", {"Origin": "https://elsewhere.example"})
    assert "access-control-allow-origin" not in other.headers


@pytest.mark.parametrize(
    ("asked", "refused"),
    [
        ({"Origin": "https://evil.example"}, "origin"),
        ({"Origin": "null"}, "origin"),
        ({"Access-Control-Request-Method": "DELETE"}, "method"),
        ({"Access-Control-Request-Headers": "authorization, x-secret"}, "headers"),
    ],
)
def test_a_refused_cors_preflight_is_a_json_api_error(data, asked, refused):
    preflight = _preflight(data, asked)
    assert preflight.status_code == 400
    assert preflight.headers["content-type"] == "application/vnd.api+json"
    (error,) = preflight.json()["errors"]
    assert error["code"] == "cors_preflight_refused" and refused in error["detail"]
    if refused == "origin":
        assert "access-control-allow-origin" not in preflight.headers
    assert int(preflight.headers["content-length"]) == len(preflight.content)


def test_cors_is_off_by_default(tmp_path, stored):
    settings = Settings(state_dir=tmp_path, sample_scale=0.001)
    with TestClient(create_app(settings)) as client:
        preflight = client.options(
            "/data/x",
            headers={"Origin": "https://notebook.example", "Access-Control-Request-Method": "GET"},
        )
        assert "access-control-allow-origin" not in preflight.headers


@pytest.mark.parametrize("query", ["format=csv&format=json", "offset=1&offset=2"])
def test_a_repeated_parameter_is_400_naming_it(data, query):
    response = data.get(f"/data/{data.data_key}?{query}")
    assert response.status_code == 400
    assert response.json()["errors"][0]["source"]["parameter"] == query.split("=")[0]


def test_a_trailing_slash_is_a_404_not_a_redirect_to_the_host_header(data):
    response = data.get(
        f"/data/{data.data_key}/", headers={"Host": "evil.example"}, follow_redirects=False
    )
    assert response.status_code == 404
    assert "location" not in response.headers
