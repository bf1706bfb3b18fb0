"""The data server's whole URL map, derived from its declared operations."""

from __future__ import annotations

from data_server.openapi import operations
from shared.web.operations import routes as declared_routes

routes = declared_routes(operations())
