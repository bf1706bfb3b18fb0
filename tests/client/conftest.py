"""One region for the client's tests (session-scoped: starting servers is the slow part).

Its data tokens live 1 s (plus the 5 s clock leeway), so a result read again after 6 s needs a
new grant: the expired-token test relies on that, every other test is indifferent to it.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from dataferry_client import Client

from tests.support.processes import Region, clean_environment, run_cli, running_region

SAMPLE = "Sample Data"
DATAFERRY = Path(sys.executable).with_name("dataferry")  # the installed console script


@dataclass(frozen=True)
class Organization:
    api_url: str
    data_url: str
    api_key: str = field(repr=False)
    organization_id: str
    sample_id: str

    def client(self, **options: Any) -> Client:
        return Client(self.api_url, self.api_key, **({"data_url": self.data_url} | options))

    def env(self, home: Path) -> dict[str, str]:
        """A command's environment: this organisation's settings, an empty config home."""
        return command_environment(
            home,
            DATAFERRY_API_URL=self.api_url,
            DATAFERRY_API_KEY=self.api_key,
            DATAFERRY_DATA_URL=self.data_url,
        )


@pytest.fixture(scope="session")
def client_region(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Region]:
    env = {
        "DATAFERRY_DATA_TOKEN_TTL_SECONDS": "1",
        "DATAFERRY_POLL_INTERVAL_SECONDS": "0.05",
        "DATAFERRY_QUERY_TIMEOUT_SECONDS": "20",
        "DATAFERRY_WORKER_PROCESSES": "2",
        "DATAFERRY_LEASE_SECONDS": "3",  # heartbeats, which notice cancels, every second
    }
    with running_region(tmp_path_factory.mktemp("client-region"), env) as region:
        yield region


def new_organization(region: Region, name: str = "Client") -> Organization:
    credentials = region.create_organization(name)
    with Client(region.api_url, credentials["api_key"]) as client:
        sample = client.datasources.list(name=SAMPLE)[0]
    return Organization(
        region.api_url,
        region.data_url,
        credentials["api_key"],
        credentials["organization_id"],
        sample.id,
    )


@pytest.fixture(scope="session")
def org(client_region: Region) -> Organization:
    return new_organization(client_region)


@pytest.fixture
def dataferry(org: Organization) -> Iterator[Client]:
    with org.client() as client:
        yield client


def set_limits(region: Region, organization_id: str, *args: str) -> None:
    result = run_cli(
        region.env, region.cwd, "set-organization-limits", "--organization", organization_id, *args
    )
    assert result.returncode == 0, result.stderr


def command_environment(home: Path, **settings: str) -> dict[str, str]:
    """The caller's environment without DATAFERRY_* settings but ``settings``, ``home`` as the
    config home (where profiles.toml lives)."""
    return clean_environment({"XDG_CONFIG_HOME": str(home), **settings})


def run_dataferry(
    env: dict[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``dataferry *args`` as a user runs it, in ``env``."""
    return subprocess.run(
        [str(DATAFERRY), *args], env=env, input=stdin, capture_output=True, text=True, timeout=120
    )


def run_command(
    org: Organization, home: Path, *args: str, stdin: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    return run_dataferry(org.env(home) | env, *args, stdin=stdin)
