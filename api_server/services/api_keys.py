"""API keys: ``dfk_<random>_<checksum>``, shown once, stored as HMAC-SHA256 with the pepper."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, select, update
from sqlalchemy.orm import Session

from api_server.permissions import Permission
from api_server.principals import Principal
from api_server.services.listing import CollectionQuery, list_page
from shared.db.engine import locked_to_change, write_lock_on_sqlite
from shared.db.models import ApiKey, ApiKeyDatasource, Datasource, Organization, utcnow
from shared.errors import Conflict, NotFound
from shared.secret_shapes import API_KEY_SHAPE
from shared.state_secrets import ServerSecrets

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_RANDOM_LENGTH = 40  # 40 base62 characters: about 238 bits
_SECRET_PATTERN = re.compile(rf"^{API_KEY_SHAPE}$")


def _checksum(random_part: str) -> str:
    value = zlib.crc32(random_part.encode())
    digits = []
    for _ in range(6):
        value, digit = divmod(value, 62)
        digits.append(_BASE62[digit])
    return "".join(reversed(digits))


def generate_secret() -> str:
    random_part = "".join(secrets.choice(_BASE62) for _ in range(_RANDOM_LENGTH))
    return f"dfk_{random_part}_{_checksum(random_part)}"


def is_well_formed_secret(secret: str) -> bool:
    """Format and checksum: rejects typos and truncations before any database work."""
    match = _SECRET_PATTERN.match(secret)
    return match is not None and hmac.compare_digest(_checksum(match.group(1)), match.group(2))


def hash_secret(server_secrets: ServerSecrets, secret: str) -> str:
    return hmac.new(server_secrets.api_key_pepper, secret.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Caller:
    """What authenticating a request needs of the calling key and its organisation."""

    api_key_id: str
    organization_id: str
    permissions: list[str]
    datasource_ids: list[str] | None  # None: every datasource of the organisation
    rate_limit_per_minute: int | None  # None: the region's default
    rate_limit_per_hour: int | None
    last_used_at: datetime | None


# Every request authenticates: its statements are built once and bound per call (building one
# costs more than SQLite answering it).
_CALLER_BY_DIGEST = (
    select(
        ApiKey.id,
        ApiKey.organization_id,
        ApiKey.secret_hash,
        ApiKey.enabled,
        ApiKey.permissions,
        ApiKey.restricted_to_datasources,
        ApiKey.last_used_at,
        Organization.rate_limit_per_minute,
        Organization.rate_limit_per_hour,
    )
    .join(Organization, Organization.id == ApiKey.organization_id)
    .where(ApiKey.secret_hash == bindparam("digest"))
)
_GRANTED_DATASOURCES = select(ApiKeyDatasource.datasource_id).where(
    ApiKeyDatasource.api_key_id == bindparam("api_key_id")
)


def find_caller(
    connection: Connection, server_secrets: ServerSecrets, secret: str
) -> Caller | None:
    """The enabled key holding ``secret``, with its organisation's limits, in one statement (a
    second one only for a key restricted to datasources): every request pays for it, so it
    reads rows on a connection, not model objects through a session (half the time)."""
    digest = hash_secret(server_secrets, secret)
    row = connection.execute(_CALLER_BY_DIGEST, {"digest": digest}).first()
    if row is None or not hmac.compare_digest(row.secret_hash, digest) or not row.enabled:
        return None
    datasource_ids = None
    if row.restricted_to_datasources:
        datasource_ids = list(connection.scalars(_GRANTED_DATASOURCES, {"api_key_id": row.id}))
    return Caller(
        api_key_id=row.id,
        organization_id=row.organization_id,
        permissions=row.permissions,
        datasource_ids=datasource_ids,
        rate_limit_per_minute=row.rate_limit_per_minute,
        rate_limit_per_hour=row.rate_limit_per_hour,
        last_used_at=row.last_used_at,
    )


_ENABLED = select(ApiKey.enabled).where(ApiKey.id == bindparam("api_key_id"))
# Whether the key bound as ``api_key_id`` still exists and is enabled, as a column of another read
# (NULL when it was deleted).
ENABLED_NOW = _ENABLED.scalar_subquery()


def still_enabled(connection: Connection, api_key_id: str) -> bool:
    """Whether the key still exists and is enabled: asked again before handing out something
    after a wait, during which it may have been deleted or disabled."""
    return bool(connection.scalar(_ENABLED, {"api_key_id": api_key_id}))


# last_used_at is written at most this often per key, not on every request.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def note_use(connection: Connection, caller: Caller) -> None:
    now = utcnow()
    if caller.last_used_at is None or now - caller.last_used_at >= LAST_USED_RESOLUTION:
        connection.execute(
            update(ApiKey).where(ApiKey.id == caller.api_key_id).values(last_used_at=now)
        )
        connection.commit()


def create_api_key(
    session: Session,
    server_secrets: ServerSecrets,
    *,
    organization_id: str,
    name: str,
    permissions: Sequence[Permission],
    datasource_ids: Sequence[str] | None = None,
) -> tuple[ApiKey, str]:
    """Create a key and return it with its plaintext secret, which is never stored."""
    if datasource_ids is not None:
        _check_datasources_belong(session, organization_id, datasource_ids)
    secret = generate_secret()
    key = ApiKey(
        organization_id=organization_id,
        name=name,
        secret_hash=hash_secret(server_secrets, secret),
        secret_prefix=secret[:8],
        permissions=[p.value for p in permissions],
        restricted_to_datasources=datasource_ids is not None,
        datasource_grants=[
            ApiKeyDatasource(datasource_id=d) for d in dict.fromkeys(datasource_ids or [])
        ],
    )
    session.add(key)
    session.flush()
    return key, secret


def _check_datasources_belong(
    session: Session, organization_id: str, datasource_ids: Sequence[str]
) -> None:
    found = set(
        session.scalars(
            select(Datasource.id).where(
                Datasource.organization_id == organization_id, Datasource.id.in_(datasource_ids)
            )
        )
    )
    missing = [d for d in datasource_ids if d not in found]
    if missing:
        raise NotFound(f"No datasource {missing[0]} in this organisation.")


# ---------------------------------------------------------------------------- administration
#
# A key administers only keys within its own scope: keys of its organisation whose datasource
# restriction is at least as narrow as its own (an unrestricted key's scope is every datasource;
# a restricted key's is the datasources it lists, so it never reaches an unrestricted key) and
# whose permissions it holds itself. Any other key answers 404, like one that does not exist, so a
# restricted key can neither see, disable, re-enable nor delete a key that reaches further.

_KEY_NOT_FOUND = "No API key with this id exists."


def within_scope(principal: Principal, key: ApiKey) -> bool:
    """The one definition of "a key the caller may administer" (see above)."""
    if key.organization_id != principal.organization_id:
        return False
    if principal.datasource_ids is not None and (
        key.datasource_ids is None or not set(key.datasource_ids) <= principal.datasource_ids
    ):
        return False
    held = {str(p) for p in principal.permissions}  # includes what Manage implies
    return set(key.permissions) <= held


def list_keys(
    session: Session, principal: Principal, query: CollectionQuery
) -> tuple[list[ApiKey], int]:
    """Only keys within scope, so neither the rows nor the total reveal the others."""
    keys = session.scalars(
        select(ApiKey).where(ApiKey.organization_id == principal.organization_id)
    ).all()
    in_scope = [key.id for key in keys if within_scope(principal, key)]
    return list_page(session, ApiKey, ApiKey.id.in_(in_scope), query, ApiKey.created_at.asc())


def get_key(
    session: Session, principal: Principal, key_id: str, *, for_update: bool = False
) -> ApiKey:
    """404 alike for an unknown key, a key of another organisation and one outside scope.
    ``for_update``: to change or delete it, locked until the transaction ends (SQLite's write
    lock first), so that what is checked (the operator's hold, that it still exists) stays true
    until then."""
    statement = select(ApiKey).where(
        ApiKey.organization_id == principal.organization_id, ApiKey.id == key_id
    )
    key = session.scalar(locked_to_change(session, statement) if for_update else statement)
    if key is None or not within_scope(principal, key):
        raise NotFound(_KEY_NOT_FOUND)
    return key


def update_key(session: Session, key: ApiKey, changes: dict[str, Any]) -> ApiKey:
    """The API's change: enabling a key the operator disabled is refused (409)."""
    if changes.get("enabled") is True and key.disabled_by_operator:
        raise _held_by_operator("enabled")
    for name, value in changes.items():
        setattr(key, name, value)
    session.flush()
    return key


def delete_key(session: Session, key: ApiKey) -> None:
    """The API's delete: a key the operator disabled is kept until the operator decides."""
    if key.disabled_by_operator:
        raise _held_by_operator("deleted")
    session.delete(key)
    session.flush()


def _held_by_operator(verb: str) -> Conflict:
    return Conflict(
        f"An operator disabled this API key; it can be {verb} only by an operator "
        "(enable-api-key or delete-api-key), not over the API.",
        code="disabled_by_operator",
    )


# ---------------------------------------------------------------------------- operator (CLI)


def find_key_anywhere(session: Session, key_id: str) -> ApiKey:
    """The operator's view (CLI): any organisation's key by id, locked to change it."""
    write_lock_on_sqlite(session)
    key = session.get(ApiKey, key_id, with_for_update={"key_share": True})
    if key is None:
        raise NotFound(_KEY_NOT_FOUND)
    return key


def set_enabled_by_operator(session: Session, key: ApiKey, enabled: bool) -> None:
    """disable-api-key / enable-api-key: the operator's disable holds against the API."""
    key.enabled = enabled
    key.disabled_by_operator = not enabled
    session.flush()


def delete_key_by_operator(session: Session, key: ApiKey) -> None:
    session.delete(key)
    session.flush()
