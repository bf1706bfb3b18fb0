"""Who is calling: the Principal that authentication yields and every service is given.

Apart from ``api_server.auth`` (which reads it from a request) so that services, which take a
principal but never a request, import no web framework.
"""

from __future__ import annotations

from dataclasses import dataclass

from api_server.permissions import ALL_PERMISSIONS, Permission
from api_server.rate_limits import Policy
from shared.errors import Forbidden


@dataclass(frozen=True)
class Principal:
    """Who is calling: an API key of one organisation, with its permissions and datasource scope."""

    organization_id: str
    api_key_id: str
    permissions: frozenset[Permission]
    datasource_ids: frozenset[str] | None  # None: every datasource of the organisation
    rate_policy: Policy  # the organisation's request limits, applied by ``limit_rate``

    def reaches_datasource(self, datasource_id: str) -> bool:
        return self.datasource_ids is None or datasource_id in self.datasource_ids

    def require_every_datasource(self, refused: str) -> None:
        """403 for a key restricted to listed datasources: what is organisation-wide (a SQL
        snippet, a filter on no datasource, the audit log, a new datasource) serves datasources
        beyond its scope too. ``refused``: what it may not do, as "change SQL snippets"."""
        if self.datasource_ids is not None:
            raise Forbidden(
                f"A key restricted to listed datasources cannot {refused}.",
                code="datasource_scope_restricted",
            )

    def require_every_permission(self, refused: str) -> None:
        """403 for a key that lacks a permission: what records every key's actions (the audit
        log) would show it those of keys it may not administer (``services.api_keys.within_scope``)
        and activity in areas it may not view."""
        missing = sorted(ALL_PERMISSIONS - self.permissions)
        if missing:
            names = ", ".join(f"'{p.value}'" for p in missing)
            raise Forbidden(
                f"A key without every permission cannot {refused}; this one lacks {names}.",
                code="permission_scope_restricted",
            )
