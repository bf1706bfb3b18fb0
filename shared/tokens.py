"""Data access tokens (DESIGN.md §3): EdDSA JWTs bound to one data key, one scope, one region.

The API server mints them with the region's private key; the data server verifies them with the
public keys alone. Every way a token can be wrong ends in the same ``Unauthorized``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shared.errors import ConfigurationError, Unauthorized
from shared.settings import Settings

ALGORITHM = "EdDSA"
TOKEN_TYPE = "dataferry-data+jwt"  # noqa: S105 - a JWT "typ", not a secret
REQUIRED_CLAIMS = ["iss", "aud", "sub", "org", "scope", "iat", "nbf", "exp", "jti"]
CLOCK_LEEWAY_SECONDS = 5


class Scope(StrEnum):
    EXECUTION_RESULT = "execution_result"
    DATASOURCE_SCHEMA = "datasource_schema"


@dataclass(frozen=True)
class DataGrant:
    """What a verified token allows: this organisation may read this data key, in this scope."""

    organization_id: str
    data_key: str
    scope: Scope
    expires_at: int


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


# ---------------------------------------------------------------- keys


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_key: Ed25519PrivateKey


def _kid_of(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def keys_dir(settings: Settings) -> Path:
    return settings.state_dir / "keys" / settings.region


def load_signing_key(settings: Settings) -> SigningKey:
    """The operator's key file, or one generated once into the state dir (its public half beside it)."""
    if settings.signing_key_file is not None:
        private = _read_private_key(settings.signing_key_file)
    else:
        directory = keys_dir(settings)
        path = directory / "signing-key.pem"
        if not path.exists():
            _generate_key_pair(directory, path)
        private = _read_private_key(path)
    public = private.public_key()
    kid = _kid_of(public)
    public_path = keys_dir(settings) / f"{kid}.pub.pem"
    if not public_path.exists():
        _write_atomically(public_path, _public_pem(public), mode=0o644)
    return SigningKey(kid=kid, private_key=private)


def _read_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot read the signing key {path}: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigurationError(f"the signing key {path} is not an Ed25519 key")
    return key


def _generate_key_pair(directory: Path, path: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with contextlib.suppress(FileExistsError):  # another process generated it first: use theirs
        _write_atomically(path, pem, mode=0o600, exclusive=True)


def _public_pem(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _write_atomically(path: Path, content: bytes, *, mode: int, exclusive: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if exclusive and path.exists():
        raise FileExistsError(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())
    if exclusive:
        try:
            os.link(tmp, path)
        finally:
            tmp.unlink()
    else:
        tmp.replace(path)


def load_public_keys(settings: Settings) -> dict[str, Ed25519PublicKey]:
    """Every public key published in the region's key directory, by kid."""
    keys: dict[str, Ed25519PublicKey] = {}
    for path in sorted(keys_dir(settings).glob("*.pub.pem")):
        key = serialization.load_pem_public_key(path.read_bytes())
        if isinstance(key, Ed25519PublicKey):
            keys[_kid_of(key)] = key
    return keys


def jwks(public_keys: dict[str, Ed25519PublicKey]) -> dict[str, Any]:
    return {
        "keys": [
            {
                "kty": "OKP",
                "crv": "Ed25519",
                "alg": ALGORITHM,
                "use": "sig",
                "kid": kid,
                **_okp_x(key),
            }
            for kid, key in sorted(public_keys.items())
        ]
    }


def _okp_x(key: Ed25519PublicKey) -> dict[str, str]:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"x": base64.urlsafe_b64encode(raw).rstrip(b"=").decode()}


def public_keys_from_jwks(document: dict[str, Any]) -> dict[str, Ed25519PublicKey]:
    keys: dict[str, Ed25519PublicKey] = {}
    for entry in document.get("keys", []):
        if entry.get("kty") != "OKP" or entry.get("crv") != "Ed25519" or "x" not in entry:
            continue
        raw = base64.urlsafe_b64decode(entry["x"] + "=" * (-len(entry["x"]) % 4))
        key = Ed25519PublicKey.from_public_bytes(raw)
        if entry.get("kid") == _kid_of(key):
            keys[entry["kid"]] = key
    return keys


# ---------------------------------------------------------------- mint and verify


def mint_data_token(
    signing_key: SigningKey,
    settings: Settings,
    *,
    organization_id: str,
    data_key: str,
    scope: Scope,
) -> str:
    now = int(time.time())
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
    headers = {"kid": signing_key.kid, "typ": TOKEN_TYPE}
    return jwt.encode(claims, signing_key.private_key, algorithm=ALGORITHM, headers=headers)


def invalid_token() -> Unauthorized:
    return Unauthorized(
        "A valid data access token for this data is required: "
        "send 'Authorization: Data <token>' as issued by GET /executions/{id}/data.",
        code="invalid_data_token",
        headers={"WWW-Authenticate": 'Data realm="dataferry"'},
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
    """Check signature, algorithm, type, every claim, region, key digest and scope; else 401."""
    try:
        header = jwt.get_unverified_header(token)
        key = public_keys.get(header.get("kid", ""))
        if key is None or header.get("alg") != ALGORITHM or header.get("typ") != TOKEN_TYPE:
            raise invalid_token()
        claims = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            audience=audience(settings),
            issuer=issuer(settings),
            leeway=CLOCK_LEEWAY_SECONDS,
            options={"require": REQUIRED_CLAIMS, "verify_nbf": True, "verify_iat": True},
        )
    except jwt.PyJWTError:
        raise invalid_token() from None
    digest_ok = isinstance(claims.get("sub"), str) and hmac.compare_digest(
        claims["sub"], data_key_digest(data_key)
    )
    if (
        not digest_ok
        or claims.get("scope") != scope.value
        or not isinstance(claims.get("org"), str)
    ):
        raise invalid_token()
    return DataGrant(claims["org"], data_key, scope, int(claims["exp"]))
