"""Fixtures of the ``/data/{data_key}`` HTTP tests, in process: settings with CORS for one origin,
a stored result and a data server client holding a token for it.
"""

from __future__ import annotations

import logging

import pytest

from shared.results import open_result_store
from shared.settings import Settings
from tests.support.data_http import data_client, publish_result


@pytest.fixture(autouse=True)
def quiet_client_logs():
    """The test client logs each URL it requests, and some here hold a token (``?token=``): keep
    them out of the log tests/contract/test_logs_hold_no_secrets.py reads, which is the servers'."""
    loggers = [logging.getLogger(name) for name in ("httpx", "httpx2")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    yield
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)


@pytest.fixture
def settings(tmp_path):
    return Settings(state_dir=tmp_path, sample_scale=0.001, cors_origins="https://notebook.example")


@pytest.fixture
def stored(settings):
    """A result of 50,000 rows in the local store, as a worker publishes it."""
    return publish_result(open_result_store(settings))


@pytest.fixture
def data(settings, stored):
    with data_client(settings, stored) as client:
        yield client
