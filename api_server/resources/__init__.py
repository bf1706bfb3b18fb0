"""The API server's resources, one module each: its type, its operations and their thin handlers.

``OPERATION_SETS`` is the one list the URL map, the OpenAPI document, the audit log and the
authorisation-matrix test read.
"""

from __future__ import annotations

from api_server.resource_layer.operations import Operation, Operations
from api_server.resources import (
    api_keys,
    audit_events,
    dashboard_backups,
    dashboard_groups,
    dashboards,
    datasource_actions,
    datasource_files,
    datasources,
    executions,
    filters,
    keys,
    reports,
    sql_snippets,
)

OPERATION_SETS: tuple[Operations, ...] = (
    api_keys.OPERATIONS,
    audit_events.OPERATIONS,
    datasources.OPERATIONS,
    datasource_actions.OPERATIONS,
    datasource_files.OPERATIONS,
    executions.OPERATIONS,
    dashboards.OPERATIONS,
    dashboard_groups.OPERATIONS,
    dashboard_backups.OPERATIONS,
    sql_snippets.OPERATIONS,
    reports.OPERATIONS,
    filters.OPERATIONS,
    keys.OPERATIONS,
)


def all_operations() -> list[Operation]:
    return [op for operations in OPERATION_SETS for op in operations.operations]
