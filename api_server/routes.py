"""The API server's whole URL map."""

from __future__ import annotations

from api_server.endpoints import api_keys, datasources
from shared.health import database_answers, health_routes
from shared.routing import resource_route

routes = [
    *health_routes(("database", database_answers)),
    resource_route("/api_key", GET=api_keys.show_calling_api_key),
    resource_route(
        "/datasources", GET=datasources.list_datasources, POST=datasources.create_datasource
    ),
    resource_route(
        "/datasources/{id}",
        GET=datasources.show_datasource,
        PATCH=datasources.update_datasource,
        DELETE=datasources.delete_datasource,
    ),
]
