"""The API server's whole URL map."""

from __future__ import annotations

from api_server.endpoints import (
    api_keys,
    audit_events,
    datasource_actions,
    datasource_files,
    datasources,
    executions,
    keys,
    sql_snippets,
)
from api_server.openapi import build_document
from shared.health import database_answers, health_routes
from shared.metrics import metrics_route
from shared.routing import openapi_routes, resource_route

routes = [
    metrics_route(),
    *health_routes(("database", database_answers)),
    resource_route("/.well-known/jwks.json", GET=keys.jwks_document),
    resource_route("/api_key", GET=api_keys.show_calling_api_key),
    resource_route("/api_keys", GET=api_keys.list_api_keys),
    resource_route(
        "/api_keys/{id}",
        GET=api_keys.show_api_key,
        PATCH=api_keys.update_api_key,
        DELETE=api_keys.delete_api_key,
    ),
    resource_route("/audit_events", GET=audit_events.list_audit_events),
    resource_route(
        "/datasources", GET=datasources.list_datasources, POST=datasources.create_datasource
    ),
    resource_route(
        "/datasources/{id}",
        GET=datasources.show_datasource,
        PATCH=datasources.update_datasource,
        DELETE=datasources.delete_datasource,
    ),
    resource_route("/datasources/{id}/executions", POST=executions.run_execution),
    resource_route("/datasources/{id}/test_connection", POST=datasource_actions.test_connection),
    resource_route("/datasources/{id}/refresh", POST=datasource_actions.refresh_datasource),
    resource_route("/datasources/{id}/schema", GET=datasource_actions.datasource_schema),
    resource_route("/datasources/{id}/files", GET=datasource_files.list_datasource_files),
    resource_route(
        "/datasources/{id}/files/{name:path}",
        GET=datasource_files.show_datasource_file,
        PUT=datasource_files.upload_datasource_file,
        DELETE=datasource_files.delete_datasource_file,
    ),
    resource_route(
        "/datasources/{id}/database_file",
        GET=datasource_files.show_database_file,
        PUT=datasource_files.upload_database_file,
    ),
    resource_route(
        "/executions/{id}", GET=executions.show_execution, DELETE=executions.delete_execution
    ),
    resource_route("/executions/{id}/data", GET=executions.execution_data),
    resource_route("/executions/{id}/cancel", POST=executions.cancel_execution),
    resource_route(
        "/sql_snippets", GET=sql_snippets.list_sql_snippets, POST=sql_snippets.create_sql_snippet
    ),
    resource_route(
        "/sql_snippets/{id}",
        GET=sql_snippets.show_sql_snippet,
        PATCH=sql_snippets.update_sql_snippet,
        DELETE=sql_snippets.delete_sql_snippet,
    ),
    *openapi_routes(build_document),
]
