"""The data server's whole URL map."""

from __future__ import annotations

from starlette.requests import Request

from data_server.sample import sample_database_path
from shared.errors import ServiceUnavailable
from shared.health import database_answers, health_routes
from shared.settings import Settings


def sample_is_generated(request: Request) -> None:
    settings: Settings = request.app.state.settings
    if not sample_database_path(settings.state_dir, settings.sample_scale).exists():
        raise ServiceUnavailable("the sample datasource has not been generated yet")


routes = [
    *health_routes(("database", database_answers), ("sample_datasource", sample_is_generated)),
]
