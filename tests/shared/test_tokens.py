"""Data access tokens: every bad token is the same 401, decided before any storage is touched."""

from __future__ import annotations

import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.testclient import TestClient

from data_server.app import create_app as create_data_app
from shared.errors import Unauthorized
from shared.results import ResultGone
from shared.settings import Settings
from shared.signing_keys import ALGORITHM, SigningKey, SigningKeyring
from shared.tokens import (
    TOKEN_TYPE,
    Scope,
    audience,
    data_key_digest,
    issuer,
    mint_data_token,
    new_data_key,
    unverified_header,
    verify_data_token,
)

RESULT_KEY = new_data_key(Scope.EXECUTION_RESULT)
SCHEMA_KEY = new_data_key(Scope.DATASOURCE_SCHEMA)


class StoreSpy:
    """An empty store that records every call, so a test can see whether storage was touched."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattr__(self, name):
        def record(*args, **kwargs):
            self.calls.append(name)
            raise ResultGone("This result is no longer available.")

        return record


@pytest.fixture
def settings(tmp_path):
    return Settings(state_dir=tmp_path, sample_scale=0.001)


@pytest.fixture
def signing_key(settings):
    return SigningKeyring(settings).signing_key()


@pytest.fixture
def data_client(settings, signing_key):
    app = create_data_app(settings)
    spy = StoreSpy()
    app.state.result_store = spy
    with TestClient(app, raise_server_exceptions=False) as client:
        client.spy = spy
        yield client


def _claims(settings, **overrides):
    now = int(time.time())
    claims = {
        "iss": issuer(settings),
        "aud": audience(settings),
        "sub": data_key_digest(RESULT_KEY),
        "org": "abcd-efgh-ijkl",
        "scope": "execution_result",
        "iat": now,
        "nbf": now,
        "exp": now + 60,
        "jti": "j1",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _sign(claims, key: SigningKey, **header):
    headers = {"kid": key.kid, "typ": TOKEN_TYPE, **header}
    return jwt.encode(claims, key.private_key, algorithm=ALGORITHM, headers=headers)


def _bad_tokens(settings, key):
    other = Ed25519PrivateKey.generate()
    public_pem = key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    other_region = settings.with_overrides(region="us")
    now = int(time.time())
    yield "absent", None
    yield "wrong-scheme", ("Bearer", _sign(_claims(settings), key))
    yield "malformed", ("Data", "not.a.jwt")
    yield "garbage", ("Data", "x" * 500)
    # An expired token is told apart (token_expired) only when it is genuine in every other way.
    expired = {"iat": now - 600, "nbf": now - 600, "exp": now - 300}
    yield (
        "expired-wrong-signature",
        ("Data", _sign(_claims(settings, **expired), SigningKey(key.kid, other))),
    )
    yield (
        "expired-other-data-key",
        (
            "Data",
            _sign(
                _claims(
                    settings, sub=data_key_digest(new_data_key(Scope.EXECUTION_RESULT)), **expired
                ),
                key,
            ),
        ),
    )
    yield (
        "expired-wrong-audience",
        ("Data", _sign(_claims(settings, aud=audience(other_region), **expired), key)),
    )
    yield "not-yet-valid", ("Data", _sign(_claims(settings, nbf=now + 300, exp=now + 600), key))
    yield "wrong-signature", ("Data", _sign(_claims(settings), SigningKey(key.kid, other)))
    yield (
        "alg-hs256",
        (
            "Data",
            jwt.encode(
                _claims(settings),
                "k" * 32,
                algorithm="HS256",
                headers={"kid": key.kid, "typ": TOKEN_TYPE},
            ),
        ),
    )
    yield (
        "alg-none",
        (
            "Data",
            jwt.encode(
                _claims(settings),
                None,
                algorithm="none",
                headers={"kid": key.kid, "typ": TOKEN_TYPE},
            ),
        ),
    )
    yield "alg-confusion", ("Data", _hs256_with_public_key(_claims(settings), public_pem, key.kid))
    yield "unknown-kid", ("Data", _sign(_claims(settings), SigningKey("0123456789abcdef", other)))
    # A key id that is no string names no key (it is no dictionary key either).
    yield "object-kid", ("Data", "eyJraWQiOnt9fQ.e30.AA")
    yield "list-kid", ("Data", "eyJraWQiOltdfQ.e30.AA")
    yield "wrong-typ", ("Data", _sign(_claims(settings), key, typ="JWT"))
    yield "wrong-audience", ("Data", _sign(_claims(settings, aud=audience(other_region)), key))
    yield "wrong-issuer", ("Data", _sign(_claims(settings, iss=issuer(other_region)), key))
    yield (
        "other-data-key",
        (
            "Data",
            _sign(
                _claims(settings, sub=data_key_digest(new_data_key(Scope.EXECUTION_RESULT))), key
            ),
        ),
    )
    yield (
        "schema-token-for-result",
        (
            "Data",
            mint_data_token(
                key,
                settings,
                organization_id="o",
                data_key=RESULT_KEY,
                scope=Scope.DATASOURCE_SCHEMA,
            ),
        ),
    )
    # A schema name belongs to a schema grant only, and is a name.
    yield "result-token-naming-a-schema", ("Data", _sign(_claims(settings, schema="main"), key))
    for claim in ("iss", "aud", "sub", "org", "scope", "iat", "nbf", "exp", "jti"):
        yield (
            f"missing-{claim}",
            ("Data", _sign({k: v for k, v in _claims(settings).items() if k != claim}, key)),
        )


def _hs256_with_public_key(claims, public_pem, kid):
    import base64
    import hashlib
    import hmac
    import json

    def b64(data):
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "kid": kid, "typ": TOKEN_TYPE}).encode())
    payload = b64(json.dumps(claims).encode())
    signature = hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(signature)}"


def _result_token(signing_key, settings) -> str:
    return mint_data_token(
        signing_key,
        settings,
        organization_id="o",
        data_key=RESULT_KEY,
        scope=Scope.EXECUTION_RESULT,
    )


def test_a_schema_grant_carries_its_schema_name_and_nothing_else_does(settings, signing_key):
    keys = {signing_key.kid: signing_key.private_key.public_key()}

    def verified(token: str):
        return verify_data_token(
            token, keys, settings, data_key=SCHEMA_KEY, scope=Scope.DATASOURCE_SCHEMA
        )

    named = mint_data_token(
        signing_key,
        settings,
        organization_id="o",
        data_key=SCHEMA_KEY,
        scope=Scope.DATASOURCE_SCHEMA,
        schema_name="main",
    )
    assert verified(named).schema_name == "main"
    schema_claims = _claims(settings, sub=data_key_digest(SCHEMA_KEY), scope="datasource_schema")
    assert verified(_sign(schema_claims, signing_key)).schema_name is None
    for not_a_name in (1, ["main"], {"n": 1}):
        with pytest.raises(Unauthorized):
            verified(_sign({**schema_claims, "schema": not_a_name}, signing_key))


def test_valid_token_passes_authorisation(data_client, settings, signing_key):
    token = _result_token(signing_key, settings)
    response = data_client.get(f"/data/{RESULT_KEY}", headers={"Authorization": f"Data {token}"})
    # Authorisation passed, so the handler went to storage: the spy proves the order of work.
    assert data_client.spy.calls == ["open"]
    assert response.status_code == 404


def test_every_bad_token_is_one_401_before_storage(data_client, settings, signing_key):
    baseline = data_client.get(f"/data/{RESULT_KEY}")
    assert baseline.status_code == 401
    assert baseline.json()["errors"][0]["code"] == "invalid_data_token"
    cases = list(_bad_tokens(settings, signing_key))
    assert len(cases) >= 25
    for name, credentials in cases:
        headers = (
            {} if credentials is None else {"Authorization": f"{credentials[0]} {credentials[1]}"}
        )
        response = data_client.get(f"/data/{RESULT_KEY}", headers=headers)
        assert response.status_code == 401, name
        assert response.content == baseline.content, name
        assert response.headers["www-authenticate"] == 'Data realm="dataferry"'
    assert data_client.spy.calls == []


@pytest.mark.parametrize(
    "data_key", ["not-a-key", "r_short", "x_" + "a" * 27, "../../etc/passwd", "r_" + "a" * 26 + "!"]
)
def test_malformed_data_key_is_the_same_401(data_client, settings, signing_key, data_key):
    baseline = data_client.get(f"/data/{RESULT_KEY}")
    token = mint_data_token(
        signing_key, settings, organization_id="o", data_key=data_key, scope=Scope.EXECUTION_RESULT
    )
    response = data_client.get(f"/data/{data_key}", headers={"Authorization": f"Data {token}"})
    assert response.status_code in (401, 404)
    if response.status_code == 401:
        assert response.content == baseline.content
    assert data_client.spy.calls == []


def test_token_lifetime_defaults_to_120_seconds(settings, signing_key):
    token = _result_token(signing_key, settings)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 120
    assert set(claims) == {"iss", "aud", "sub", "org", "scope", "iat", "nbf", "exp", "jti"}
    assert RESULT_KEY not in token
    assert jwt.get_unverified_header(token) == {
        "alg": "EdDSA",
        "kid": signing_key.kid,
        "typ": TOKEN_TYPE,
    }


def test_the_unverified_header_is_read_as_pyjwt_reads_it_or_not_at_all(settings, signing_key):
    """Read from the first segment alone (which key to verify with); anything that is not
    strict base64url of a JSON object there is no header."""
    token = _result_token(signing_key, settings)
    assert unverified_header(token) == jwt.get_unverified_header(token)
    header = token.partition(".")[0]
    for malformed in ("", ".", "abc", "W10.x", "!!!!.x.y", f"{header}=.x", f"{header[:-1]}+.x",
                      f"{header[:-1]}/.x", f" {header}.x", f"{header[:-2]}.x"):  # fmt: skip
        assert unverified_header(malformed) == {}, malformed
