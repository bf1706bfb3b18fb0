"""What the egress policy tests (tests/shared/egress/) share: the pointer a refusal names, settings
to check against, and the refusal a destination gets.
"""

from __future__ import annotations

import pytest

from shared.egress import check_destination
from shared.errors import ServiceUnavailable, Unprocessable
from shared.settings import Settings

POINTER = "/data/attributes/host"


def policy_settings(**overrides: str) -> Settings:
    """Settings with an SQLite metadata DB (no network service of ours) unless overridden."""
    return Settings(**overrides)


def refusal(host: str, port: int, settings: Settings) -> Unprocessable:
    with pytest.raises(Unprocessable) as caught:
        check_destination(host, port, settings, pointer=POINTER)
    assert caught.value.pointer == POINTER
    assert caught.value.status == 422 or isinstance(caught.value, ServiceUnavailable)
    return caught.value
