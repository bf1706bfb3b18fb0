"""The API server's whole URL map, derived from its declared operations."""

from __future__ import annotations

from api_server.openapi import operations
from api_server.resource_layer.operations import routes as declared_routes

routes = declared_routes(operations())
