"""``Authorization: Api <secret>`` → Principal. Every failure is the same 401, whatever its cause."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from api_server.permissions import Permission, effective_permissions
from api_server.services import api_keys
from shared.errors import Unauthorized


@dataclass(frozen=True)
class Principal:
    """Who is calling: an API key of one organisation, with its permissions and datasource scope."""

    organization_id: str
    api_key_id: str
    permissions: frozenset[Permission]
    datasource_ids: frozenset[str] | None  # None: every datasource of the organisation

    def reaches_datasource(self, datasource_id: str) -> bool:
        return self.datasource_ids is None or datasource_id in self.datasource_ids


def unauthorized() -> Unauthorized:
    return Unauthorized(
        "A valid API key is required: send the header 'Authorization: Api <secret>'.",
        headers={"WWW-Authenticate": 'Api realm="dataferry"'},
    )


def authenticate(request: Request) -> Principal:
    """Resolve the calling key once per request; the result is cached on ``request.state``."""
    cached = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    secret = _secret_from_header(request.headers.get("authorization", ""))
    if secret is None:
        raise unauthorized()
    app_state = request.app.state
    with app_state.sessions() as session:
        key = api_keys.find_enabled_api_key(session, app_state.secrets, secret)
        if key is None:
            raise unauthorized()
        principal = Principal(
            organization_id=key.organization_id,
            api_key_id=key.id,
            permissions=effective_permissions(Permission(p) for p in key.permissions),
            datasource_ids=None if key.datasource_ids is None else frozenset(key.datasource_ids),
        )
    request.state.principal = principal
    return principal


def _secret_from_header(header: str) -> str | None:
    scheme, _, secret = header.strip().partition(" ")
    if scheme.lower() != "api":
        return None
    secret = secret.strip()
    return secret if api_keys.is_well_formed_secret(secret) else None
