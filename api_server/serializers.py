"""Model → JSON:API resource, with an explicit attribute allow-list per type."""

from __future__ import annotations

from typing import Any

from api_server.services.datasource_files import FileEntry
from shared.db.models import ApiKey, AuditEvent, Datasource, Execution, SqlSnippet
from shared.lifecycle import ExecutionStatus, ExecutionType

DATASOURCE_ATTRIBUTES = (
    "name",
    "database_type",
    "connection_mode",
    "host",
    "port",
    "username",
    "database",
    "ssh_tunnel_host",
    "ssh_tunnel_port",
    "ssh_tunnel_user",
    "s3_region",
    "data_time_zone",
    "require_ssl",
    "verify_ssl",
    "enabled",
    "max_concurrent_executions",
    "update_schema_nightly",
    "update_schema_row_counts",
    "created_at",
    "updated_at",
    "schema_updated_at",
    "default_schema_name",
    "server_version",
    "total_row_count",
    "total_row_count_exact",
)
DATASOURCE_FIELDS = (*DATASOURCE_ATTRIBUTES, "agents")


def datasource(ds: Datasource) -> dict[str, Any]:
    """The password is write-only: it is decrypted only by the data server, for the sandbox
    child that connects, and never sent back (not even to the key that set it)."""
    attributes = {name: getattr(ds, name) for name in DATASOURCE_ATTRIBUTES}
    return {
        "type": "datasources",
        "id": ds.id,
        "attributes": attributes,
        "relationships": {"agents": {"data": []}},
        "links": {"self": f"/datasources/{ds.id}"},
    }


API_KEY_ATTRIBUTES = (
    "name",
    "prefix",
    "permissions",
    "datasource_ids",
    "organization_id",
    "enabled",
    "created_at",
    "last_used_at",
)


def api_key(key: ApiKey, self_link: str = "/api_key") -> dict[str, Any]:
    datasource_ids = key.datasource_ids
    relationships: dict[str, Any] = {
        "organization": {"data": {"type": "organizations", "id": key.organization_id}},
        "datasources": {
            "data": None
            if datasource_ids is None
            else [{"type": "datasources", "id": d} for d in datasource_ids]
        },
    }
    return {
        "type": "api_keys",
        "id": key.id,
        "attributes": {
            "name": key.name,
            "prefix": key.secret_prefix,
            "permissions": list(key.permissions),
            "datasource_ids": datasource_ids,
            "organization_id": key.organization_id,
            "enabled": key.enabled,
            "created_at": key.created_at,
            "last_used_at": key.last_used_at,
        },
        "relationships": relationships,
        "links": {"self": self_link},
    }


EXECUTION_ATTRIBUTES = (
    "result_columns",
    "result_rows",
    "result_size",
    "result_truncated",
    "created_at",
    "updated_at",
    "started_at",
    "completed_at",
)


# DuckDB's messages may quote a value as it saw it ("invalid date field format: …"), so with bound
# values the message is shown to the key that ran the query only, as the values themselves are.
WITHHELD_ERROR_MESSAGE = (
    "The execution failed (see error_code). Its message may quote bound parameter values, so "
    "only the API key that ran it sees the message."
)


def execution(ex: Execution, *, show_query: bool = False) -> dict[str, Any]:
    """``show_query``: the SQL that ran, its bound values and the full error message, for the key
    that ran it only."""
    attributes: dict[str, Any] = {
        "execution_id": ex.id,
        "execution_type": ex.execution_type,
        "execution_status": ex.status,
        **{name: getattr(ex, name) for name in EXECUTION_ATTRIBUTES},
    }
    if ex.status in (ExecutionStatus.FAILED, ExecutionStatus.CANCELLED):
        attributes["error_code"] = ex.error_code
        attributes["error_message"] = (
            ex.error_message if show_query or not ex.bound_parameters else WITHHELD_ERROR_MESSAGE
        )
    elif ex.cancel_requested:
        attributes["cancel_requested"] = True
    if show_query and ex.execution_type == ExecutionType.SQL_QUERY:
        attributes["expanded_sql"] = ex.expanded_sql
        attributes["bound_parameters"] = ex.bound_parameters
    return {
        "type": "executions",
        "id": ex.id,
        "attributes": attributes,
        "relationships": {"datasource": {"data": {"type": "datasources", "id": ex.datasource_id}}},
        "links": {"self": f"/executions/{ex.id}"},
    }


SQL_SNIPPET_ATTRIBUTES = ("name", "description", "sql", "created_at", "updated_at")


def sql_snippet(snippet: SqlSnippet) -> dict[str, Any]:
    link = {"type": "sql_snippets", "id": snippet.id}
    return {
        "type": "sql_snippets",
        "id": snippet.id,
        "attributes": {name: getattr(snippet, name) for name in SQL_SNIPPET_ATTRIBUTES},
        # Cluvio's changelog (2024-06-04) adds this relationship to every SqlSnippet object.
        "relationships": {"sql_snippet": {"data": link}},
        "links": {"self": f"/sql_snippets/{snippet.id}"},
    }


AUDIT_EVENT_ATTRIBUTES = (
    "action",
    "method",
    "path",
    "resource_id",
    "status",
    "api_key_id",
    "remote_addr",
    "request_id",
    "created_at",
)


def audit_event(event: AuditEvent) -> dict[str, Any]:
    key = None if event.api_key_id is None else {"type": "api_keys", "id": event.api_key_id}
    return {
        "type": "audit_events",
        "id": event.id,
        "attributes": {name: getattr(event, name) for name in AUDIT_EVENT_ATTRIBUTES},
        "relationships": {"api_key": {"data": key}},
    }


DATASOURCE_FILE_ATTRIBUTES = ("name", "format", "size", "modified_at")


def datasource_file(entry: FileEntry, self_link: str) -> dict[str, Any]:
    """A file of a datasource; its id is its name (unique within the datasource)."""
    return {
        "type": "datasource_files",
        "id": entry.name,
        "attributes": {name: getattr(entry, name) for name in DATASOURCE_FILE_ATTRIBUTES},
        "links": {"self": self_link},
    }
