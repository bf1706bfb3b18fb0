"""``Authorization: Api <secret>`` → Principal. Every failure is the same 401, whatever its cause."""

from __future__ import annotations

from starlette.requests import Request

from api_server.permissions import Permission, effective_permissions
from api_server.principals import Principal
from api_server.rate_limits import Policy
from api_server.services import api_keys
from shared.errors import TooManyRequests, unauthorized
from shared.settings import Settings
from shared.web.request_headers import authorization


def authenticate(request: Request) -> Principal:
    """Resolve the calling key once per request; the result is cached on ``request.state``.
    Counting the request against its limits is the next, separate step: ``limit_rate``."""
    cached = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    header = authorization(request)
    secret = None if header is None else _secret_from_header(header)
    if secret is None:
        raise unauthorized()
    app_state = request.app.state
    with app_state.read_engine.connect() as connection:  # note_use's update commits on its own
        caller = api_keys.find_caller(connection, app_state.secrets, secret)
        if caller is None:
            raise unauthorized()
        api_keys.note_use(connection, caller)
    settings: Settings = app_state.settings
    principal = Principal(
        organization_id=caller.organization_id,
        api_key_id=caller.api_key_id,
        permissions=effective_permissions(Permission(p) for p in caller.permissions),
        datasource_ids=None if caller.datasource_ids is None else frozenset(caller.datasource_ids),
        rate_policy=Policy(
            per_minute=caller.rate_limit_per_minute or settings.rate_limit_per_minute,
            per_hour=caller.rate_limit_per_hour or settings.rate_limit_per_hour,
        ),
    )
    request.state.principal = principal
    # What a key is answered is its own (a data grant's token, a new key's secret): no cache on
    # the way may keep it (found by the outside probe on Get Execution Data).
    request.state.response_headers = {"Cache-Control": "no-store"}
    return principal


def limit_rate(request: Request, principal: Principal) -> None:
    """Count this request against the key's limits (429 past them). Every response to the
    request carries the key's standing (shared.web.middleware adds it)."""
    decision = request.app.state.rate_limiter.hit(principal.api_key_id, principal.rate_policy)
    request.state.response_headers = {**request.state.response_headers, **decision.headers()}
    if not decision.allowed:
        window = decision.tightest
        raise TooManyRequests(
            f"This API key may make {window.limit} requests per {window.name}; "
            f"try again in {decision.headers()['Retry-After']} s.",
        )


def _secret_from_header(header: str) -> str | None:
    scheme, _, secret = header.strip().partition(" ")
    if scheme.lower() != "api":
        return None
    secret = secret.strip()
    return secret if api_keys.is_well_formed_secret(secret) else None
