"""EU and US side by side through the launcher behind ``make run-regions``: nothing crosses over.

The region files of deploy/regions are used as they are, except for ports and state directories
(free ones, so the test never collides with a running ``make run``).
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.support.client import DataferryClient
from tests.support.log_watch import LOG_FILES, remember
from tests.support.processes import ROOT, clean_environment, free_port

pytestmark = pytest.mark.e2e


def _region_file(tmp_path, name: str) -> tuple:
    values = dict(
        line.split("=", 1)
        for line in (ROOT / "deploy" / "regions" / f"{name}.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    api, data = free_port(), free_port()
    values |= {
        "DATAFERRY_STATE_DIR": str(tmp_path / name),
        "DATAFERRY_API_PORT": str(api),
        "DATAFERRY_DATA_PORT": str(data),
        "DATAFERRY_PUBLIC_API_URL": f"http://127.0.0.1:{api}",
        "DATAFERRY_PUBLIC_DATA_URL": f"http://127.0.0.1:{data}",
        "DATAFERRY_SAMPLE_SCALE": "0.01",
    }
    path = tmp_path / f"{name}.env"
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return path, values


@pytest.fixture(scope="module")
def regions(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("regions")
    files = {name: _region_file(tmp_path, name) for name in ("eu", "us")}
    log_path = tmp_path / "launcher.log"
    LOG_FILES.add(log_path)
    command = [sys.executable, str(ROOT / "deploy" / "launch.py"), "--demo"]
    for path, _ in files.values():
        command += ["--env-file", str(path)]
    with open(log_path, "wb") as log:
        launcher = subprocess.Popen(
            command, env=clean_environment(), cwd=tmp_path, stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + 240
        while "Press Ctrl-C" not in log_path.read_text(errors="replace"):
            assert launcher.poll() is None, log_path.read_text(errors="replace")
            assert time.monotonic() < deadline, "the regions did not start"
            time.sleep(0.5)
        keys = re.findall(r"API key \(keep it secret\): (\S+)", log_path.read_text())
        remember(*keys)
        clients = {
            name: DataferryClient(
                values["DATAFERRY_PUBLIC_API_URL"], values["DATAFERRY_PUBLIC_DATA_URL"], key
            )
            for (name, (_, values)), key in zip(files.items(), keys, strict=True)
        }
        yield clients
        for client in clients.values():
            client.http.close()
    finally:
        launcher.send_signal(signal.SIGTERM)
        launcher.wait(timeout=60)
    assert launcher.returncode == 0


def _status(url: str, header: str) -> int:
    return httpx.get(url, headers={"Authorization": header}, timeout=30).status_code


def test_each_region_answers_its_own_key_only(regions):
    eu, us = regions["eu"], regions["us"]
    assert _status(f"{eu.api_url}/api_key", f"Api {eu.key}") == 200
    assert _status(f"{us.api_url}/api_key", f"Api {us.key}") == 200
    assert _status(f"{us.api_url}/api_key", f"Api {eu.key}") == 401
    assert _status(f"{eu.api_url}/api_key", f"Api {us.key}") == 401


@pytest.mark.parametrize(("home", "away"), [("eu", "us"), ("us", "eu")])
def test_a_data_token_works_only_in_the_region_that_minted_it(regions, home, away):
    client = regions[home]
    sample = httpx.get(f"{client.api_url}/datasources", headers=client.headers).json()["data"][0]
    execution = client.run(sample["id"], "SELECT 1 AS one")
    assert client.wait_until_done(execution["execution_id"])["execution_status"] == "completed"
    grant = client.grant(execution["execution_id"])
    token = f"Data {grant['data_access_token']}"
    assert _status(f"{client.data_url}/data/{grant['data_key']}", token) == 200
    assert _status(f"{regions[away].data_url}/data/{grant['data_key']}", token) == 401


def test_regions_keep_their_own_keys_and_metadata(regions):
    jwks = {
        name: {key["kid"] for key in httpx.get(f"{c.api_url}/.well-known/jwks.json").json()["keys"]}
        for name, c in regions.items()
    }
    assert jwks["eu"] and jwks["us"] and not jwks["eu"] & jwks["us"]
