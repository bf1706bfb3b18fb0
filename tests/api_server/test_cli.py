"""The operator commands print exactly one JSON object on stdout; errors go to stderr."""

from __future__ import annotations

import json

import pytest

from tests.support.processes import clean_environment, run_cli


@pytest.fixture
def cli(tmp_path):
    env = clean_environment({"DATAFERRY_STATE_DIR": str(tmp_path / "state")})

    def run(*args):
        return run_cli(env, tmp_path, *args)

    return run


def _one_json_object(stdout: str) -> dict:
    lines = stdout.splitlines()
    assert len(lines) == 1, stdout
    return json.loads(lines[0])


def test_create_organization_then_keys(cli):
    created = cli("create-organization", "--name", "Acme")
    assert created.returncode == 0, created.stderr
    org = _one_json_object(created.stdout)
    assert set(org) == {"organization_id", "api_key"}
    assert org["api_key"].startswith("dfk_")
    key = cli(
        "create-api-key",
        "--organization",
        org["organization_id"],
        "--permissions",
        "View Datasources, Manage Dashboards",
        "--name",
        "reporting",
    )
    assert key.returncode == 0, key.stderr
    assert set(_one_json_object(key.stdout)) == {"id", "api_key"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--permissions", "Do Everything"], "Unknown permission"),
        (["--permissions", ""], "At least one permission"),
        (["--permissions", "View Datasources", "--datasources", "zzzz-zzzz-zzzz"], "No datasource"),
    ],
)
def test_create_api_key_refuses_bad_input(cli, args, message):
    org = _one_json_object(cli("create-organization", "--name", "Acme").stdout)
    result = cli("create-api-key", "--organization", org["organization_id"], *args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert message in result.stderr


def test_create_api_key_for_unknown_organization_fails(cli):
    cli("migrate")
    result = cli(
        "create-api-key", "--organization", "zzzz-zzzz-zzzz", "--permissions", "View Datasources"
    )
    assert result.returncode == 2 and result.stdout == ""


def test_demo_organization_is_created_once(cli):
    first = _one_json_object(cli("ensure-demo-organization").stdout)
    second = _one_json_object(cli("ensure-demo-organization").stdout)
    assert first == second
