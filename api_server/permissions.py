"""Permissions, named as Cluvio names them, and the one call that checks them."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Protocol

from shared.errors import Forbidden, Unprocessable


class Permission(StrEnum):
    VIEW_DATASOURCES = "View Datasources"
    MANAGE_DATASOURCES = "Manage Datasources"
    VIEW_DASHBOARDS = "View Dashboards"
    MANAGE_DASHBOARDS = "Manage Dashboards"
    VIEW_ALERTS = "View Alerts"
    MANAGE_ALERTS = "Manage Alerts"
    VIEW_USERS = "View Users"
    MANAGE_USERS = "Manage Users"


# Holding a Manage permission grants the View permission of the same area.
_IMPLIED = {
    Permission.MANAGE_DATASOURCES: Permission.VIEW_DATASOURCES,
    Permission.MANAGE_DASHBOARDS: Permission.VIEW_DASHBOARDS,
    Permission.MANAGE_ALERTS: Permission.VIEW_ALERTS,
    Permission.MANAGE_USERS: Permission.VIEW_USERS,
}

ALL_PERMISSIONS = frozenset(Permission)


def effective_permissions(granted: Iterable[Permission]) -> frozenset[Permission]:
    granted = set(granted)
    return frozenset(granted | {_IMPLIED[p] for p in granted if p in _IMPLIED})


def parse_permissions(names: Iterable[str]) -> list[Permission]:
    """Exact Cluvio spelling; an unknown name is refused rather than silently dropped."""
    parsed: list[Permission] = []
    for raw in names:
        name = raw.strip()
        try:
            permission = Permission(name)
        except ValueError:
            known = ", ".join(p.value for p in Permission)
            raise Unprocessable(
                f"Unknown permission {name!r}; known: {known}.", code="unknown_permission"
            ) from None
        if permission not in parsed:
            parsed.append(permission)
    if not parsed:
        raise Unprocessable("At least one permission is required.", code="unknown_permission")
    return parsed


class HasPermissions(Protocol):
    """Anything that carries a permission set (a Principal)."""

    @property
    def permissions(self) -> frozenset[Permission]: ...


def require(principal: HasPermissions, *any_of: Permission) -> None:
    """Raise 403 unless the principal holds at least one of ``any_of``."""
    if not any(p in principal.permissions for p in any_of):
        needed = " or ".join(f"'{p.value}'" for p in any_of)
        raise Forbidden(f"This API key lacks the {needed} permission.", code="permission_denied")
