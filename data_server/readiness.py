"""What the data server's ``/readyz`` checks: it can serve results only when each of these works."""

from __future__ import annotations

from starlette.requests import Request

from data_server.sample import sample_database_path
from shared.errors import ServiceUnavailable
from shared.settings import Settings
from shared.web.health import database_answers


def sample_is_generated(request: Request) -> None:
    settings: Settings = request.app.state.settings
    if not sample_database_path(settings.state_dir, settings.sample_scale).exists():
        raise ServiceUnavailable("the sample datasource has not been generated yet")


def result_store_works(request: Request) -> None:
    request.app.state.result_store.check()


def public_keys_loaded(request: Request) -> None:
    if len(request.app.state.keyring) == 0:
        request.app.state.keyring.reload()
        if len(request.app.state.keyring) == 0:
            raise ServiceUnavailable("no public key to verify data tokens with")


READINESS = (
    ("database", database_answers),
    ("result_store", result_store_works),
    ("public_keys", public_keys_loaded),
    ("sample_datasource", sample_is_generated),
)
