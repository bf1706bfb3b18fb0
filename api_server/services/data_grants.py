"""Data grants: what Get Execution Data, Get Datasource Schema and run-and-wait hand out.

A grant is a data key, a short-lived token for it and ``data_url``, the data key's URL on the
region's public data-server address with the token in its query, for clients that cannot send
an ``Authorization`` header (URL readers such as polars, DuckDB, pandas; a browser). The token in
the URL is the same token, with the same claims and expiry, as in ``data_access_token``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from api_server.services.executions import data_available
from shared.db.models import Execution
from shared.settings import Settings
from shared.signing_keys import SigningKeyring
from shared.tokens import URL_TOKEN_PARAMETER, Scope, mint_data_token


def data_url(settings: Settings, data_key: str, token: str) -> str:
    return f"{settings.public_data_url}/data/{quote(data_key)}?{URL_TOKEN_PARAMETER}={quote(token)}"


def grant_data(
    signing_keys: SigningKeyring,
    settings: Settings,
    *,
    organization_id: str,
    data_key: str,
    scope: Scope,
    data_timestamp: int | None = None,
    schema_name: str | None = None,
) -> dict[str, Any]:
    """The grant document; ``data_timestamp`` (when the data was produced) for results only,
    ``schema_name`` (the one schema its document holds) for schemas only."""
    token = mint_data_token(
        signing_keys,
        settings,
        organization_id=organization_id,
        data_key=data_key,
        scope=scope,
        schema_name=schema_name,
    )
    grant: dict[str, Any] = {"data_key": data_key, "data_access_token": token}
    if data_timestamp is not None:
        grant["data_timestamp"] = data_timestamp
    grant["data_url"] = data_url(settings, data_key, token)
    return grant


def grant_execution_data(
    signing_keys: SigningKeyring, settings: Settings, execution: Execution
) -> dict[str, Any] | None:
    """Get Execution Data's grant for a completed execution; None before completion or after a
    failure; 404 ``result_gone`` once its data expired or was purged."""
    if not data_available(execution, settings):
        return None
    assert execution.data_key is not None and execution.completed_at is not None
    return grant_data(
        signing_keys,
        settings,
        organization_id=execution.organization_id,
        data_key=execution.data_key,
        scope=Scope.EXECUTION_RESULT,
        data_timestamp=int(execution.completed_at.timestamp()),
    )
