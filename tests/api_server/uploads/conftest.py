"""Fixtures of the upload tests; their helpers are in tests/support/uploads.py."""

from __future__ import annotations

import pytest

from shared.settings import Settings


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The suite's, with small limits, so that the refusals need only small bodies."""
    return settings.with_overrides(max_upload_mb=1, max_organization_storage_mb=2)
