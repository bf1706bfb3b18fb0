"""The README's curl walkthrough, run verbatim against real uvicorn processes of both servers."""

from __future__ import annotations

import re
import subprocess

import httpx
import pytest

from tests.support.processes import ROOT, running_region

pytestmark = pytest.mark.e2e


def walkthrough_blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## API walkthrough", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.DOTALL)
    # The first block is the export line with the placeholder key; the test sets API, DATA, KEY
    # and ORG.
    return [block for block in blocks if "dfk_…" not in block]


@pytest.fixture(scope="module")
def region(tmp_path_factory):
    with running_region(tmp_path_factory.mktemp("region")) as started:
        yield started


def test_readme_walkthrough_runs_verbatim(region):
    blocks = walkthrough_blocks()
    assert len(blocks) >= 5
    credentials = region.create_organization()
    env = {
        **region.env,
        "API": region.api_url,
        "DATA": region.data_url,
        "KEY": credentials["api_key"],
        "ORG": credentials["organization_id"],
    }
    script = "set -euo pipefail\n" + "\n".join(blocks)
    result = subprocess.run(
        ["bash", "-c", script], env=env, cwd=region.cwd, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "created datasource" in result.stdout
    assert '"type":"datasource_files","id":"customers.csv"' in result.stdout  # the upload
    assert '"execution_status":"completed"' in result.stdout
    assert '"rows":[[1,' in result.stdout  # the JSON fetch of the query's rows
    assert '"order_id","amount"' in result.stdout  # the CSV fetch
    assert '"bound_parameters":["2"]' in result.stdout  # the run with an ad hoc Cluvio filter
    assert '"meta":{"reused":true}' in result.stdout  # a dashboard run inside its window
    assert '"values":[2],"value_names":["Second"]' in result.stdout  # a filter's options
    assert '"value_not_in_options"' in result.stdout  # restricted to them
    assert "path_traversal" in result.stdout
    assert credentials["api_key"] not in region.log()


@pytest.mark.parametrize("server", ["api_url", "data_url"])
def test_both_servers_answer_health_and_readiness(region, server):
    base = getattr(region, server)
    assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{base}/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    missing = httpx.get(f"{base}/nope")
    assert missing.status_code == 404 and missing.json()["errors"][0]["code"] == "not_found"
