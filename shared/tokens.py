"""Data access tokens (DESIGN.md §3): EdDSA JWTs bound to one data key, one scope, one region.

The API server mints them with the region's private key; the data server verifies them with the
public keys alone. Every way a token can be wrong ends in the same ``Unauthorized``, except one:
a token that would be valid in every other respect but has expired is told apart
(``token_expired``), so a client knows to ask for a fresh grant. Telling it apart needs a valid
signature, so forgeries stay indistinguishable from each other. The keys themselves (files,
rotation, JWK Set) are ``shared.signing_keys``'.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from shared.errors import Unauthorized
from shared.settings import Settings
from shared.signing_keys import ALGORITHM, SigningKey, SigningKeyring

TOKEN_TYPE = "dataferry-data+jwt"  # noqa: S105 - a JWT "typ", not a secret
REQUIRED_CLAIMS = ["iss", "aud", "sub", "org", "scope", "iat", "nbf", "exp", "jti"]
CLOCK_LEEWAY_SECONDS = 5
# The query parameter of a grant's data_url that carries the token (never logged: the access log
# writes the path alone).
URL_TOKEN_PARAMETER = "token"  # noqa: S105 - a parameter name, not a token


class Scope(StrEnum):
    EXECUTION_RESULT = "execution_result"
    DATASOURCE_SCHEMA = "datasource_schema"


# A schema grant's schema, asked for by name (Get Datasource Schema's ``?name=``): a client that
# fetches the data key as Cluvio's reference says, without repeating the name, gets that schema.
SCHEMA_CLAIM = "schema"


@dataclass(frozen=True)
class DataGrant:
    """What a verified token allows: this organisation may read this data key, in this scope;
    a schema grant asked for one schema by name narrows its document to it (``schema_name``)."""

    organization_id: str
    data_key: str
    scope: Scope
    expires_at: int
    schema_name: str | None = None


def issuer(settings: Settings) -> str:
    return f"dataferry:{settings.region}:api"


def audience(settings: Settings) -> str:
    return f"dataferry:{settings.region}:data"


def data_key_digest(data_key: str) -> str:
    return hashlib.sha256(data_key.encode()).hexdigest()


def new_data_key(scope: Scope) -> str:
    """160 random bits; the prefix tells results from schemas before any storage is read."""
    prefix = "r" if scope is Scope.EXECUTION_RESULT else "s"
    return f"{prefix}_{secrets.token_urlsafe(20)}"


def scope_of_data_key(data_key: str) -> Scope | None:
    prefix, _, rest = data_key.partition("_")
    if len(rest) != 27 or not all(c.isalnum() or c in "-_" for c in rest):
        return None
    return {"r": Scope.EXECUTION_RESULT, "s": Scope.DATASOURCE_SCHEMA}.get(prefix)


# ---------------------------------------------------------------- mint and verify


def mint_data_token(
    signer: SigningKey | SigningKeyring,
    settings: Settings,
    *,
    organization_id: str,
    data_key: str,
    scope: Scope,
    schema_name: str | None = None,
    now: float | None = None,
) -> str:
    """Signed by the given key, or by the keyring's key of the moment; ``schema_name`` (a
    schema grant's) travels as the ``schema`` claim."""
    now = int(time.time() if now is None else now)
    signing_key = signer if isinstance(signer, SigningKey) else signer.signing_key(now)
    claims = {
        "iss": issuer(settings),
        "aud": audience(settings),
        "sub": data_key_digest(data_key),
        "org": organization_id,
        "scope": scope.value,
        "iat": now,
        "nbf": now,
        "exp": now + settings.data_token_ttl_seconds,
        "jti": secrets.token_urlsafe(12),
    }
    if schema_name is not None:
        claims[SCHEMA_CLAIM] = schema_name
    headers = {"kid": signing_key.kid, "typ": TOKEN_TYPE}
    return jwt.encode(claims, signing_key.private_key, algorithm=ALGORITHM, headers=headers)


def invalid_token() -> Unauthorized:
    return Unauthorized(
        "A valid data access token for this data is required: "
        "send 'Authorization: Data <token>' as issued by GET /executions/{id}/data.",
        code="invalid_data_token",
        headers={"WWW-Authenticate": 'Data realm="dataferry"'},
    )


def expired_token() -> Unauthorized:
    return Unauthorized(
        "This data access token has expired: ask the API server for a fresh grant.",
        code="token_expired",
        headers={"WWW-Authenticate": 'Data realm="dataferry", error="invalid_token"'},
    )


class KeyLookup(Protocol):
    def get(self, kid: str) -> Ed25519PublicKey | None: ...


def verify_data_token(
    token: str,
    public_keys: KeyLookup,
    settings: Settings,
    *,
    data_key: str,
    scope: Scope,
) -> DataGrant:
    """Check signature, algorithm, type, every claim, region, key digest and scope; else 401
    (``token_expired`` only for a token that passes every check but its expiry)."""
    try:
        claims = _decode(token, public_keys, settings, verify_exp=True)
    except jwt.ExpiredSignatureError:
        claims = _decode(token, public_keys, settings, verify_exp=False)
        _check_binding(claims, data_key, scope)
        raise expired_token() from None
    _check_binding(claims, data_key, scope)
    schema_name = claims.get(SCHEMA_CLAIM)
    return DataGrant(claims["org"], data_key, scope, int(claims["exp"]), schema_name)


def unverified_header(token: str) -> dict[str, Any]:
    """The token's header, not yet trusted: which key and type it claims ({} when it is no JWT
    header). Read from the first segment alone, strictly (base64url without padding, a JSON
    object); PyJWT's ``get_unverified_header`` decodes and checks all three segments, which cost
    as much as verifying, and ``jwt.decode`` does that again. The signature, checked next,
    covers this segment."""
    segment = token.partition(".")[0]
    if not _BASE64URL.fullmatch(segment):
        return {}
    try:
        raw = binascii.a2b_base64(
            segment.translate(_FROM_BASE64URL) + "=" * (-len(segment) % 4), strict_mode=True
        )
        header = orjson.loads(raw)
    except (ValueError, binascii.Error):  # orjson.JSONDecodeError is a ValueError
        return {}
    return header if isinstance(header, dict) else {}


def key_id(header: dict[str, Any]) -> str:
    """The key a token's header names ("" when it names none: no key is named "")."""
    kid = header.get("kid", "")
    return kid if isinstance(kid, str) else ""


_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
_FROM_BASE64URL = str.maketrans("-_", "+/")


def _decode(
    token: str, public_keys: KeyLookup, settings: Settings, *, verify_exp: bool
) -> dict[str, Any]:
    """The verified claims; ExpiredSignatureError passes only when ``verify_exp`` (it is raised
    after the signature has been checked); every other failure is the one 401."""
    try:
        header = unverified_header(token)
        key = public_keys.get(key_id(header))
        if key is None or header.get("alg") != ALGORITHM or header.get("typ") != TOKEN_TYPE:
            raise invalid_token()
        return jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            audience=audience(settings),
            issuer=issuer(settings),
            leeway=CLOCK_LEEWAY_SECONDS,
            options={
                "require": REQUIRED_CLAIMS,
                "verify_nbf": True,
                "verify_iat": True,
                "verify_exp": verify_exp,
            },
        )
    except jwt.ExpiredSignatureError:
        if verify_exp:
            raise
        raise invalid_token() from None
    except jwt.PyJWTError:
        raise invalid_token() from None


def _check_binding(claims: dict[str, Any], data_key: str, scope: Scope) -> None:
    digest_ok = isinstance(claims.get("sub"), str) and hmac.compare_digest(
        claims["sub"], data_key_digest(data_key)
    )
    schema_name = claims.get(SCHEMA_CLAIM)
    if (
        not digest_ok
        or claims.get("scope") != scope.value
        or not isinstance(claims.get("org"), str)
        or not (
            schema_name is None
            or (scope is Scope.DATASOURCE_SCHEMA and isinstance(schema_name, str))
        )
    ):
        raise invalid_token()
