"""The launcher behind ``make run`` stops every server on SIGINT or SIGTERM sent to it alone,
as a supervisor or ``kill`` sends them (Ctrl-C in a terminal signals the whole group instead)."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.log_watch import LOG_FILES, remember
from tests.support.processes import ROOT, clean_environment, free_port

pytestmark = pytest.mark.e2e

START_TIMEOUT_SECONDS = 180
STOP_TIMEOUT_SECONDS = 40


def _start_launcher_in_background(
    cwd: Path, log_path: Path, **settings: str
) -> subprocess.Popen[bytes]:
    """As ``python deploy/launch.py --demo &`` from a script: SIGINT starts out ignored."""
    env = clean_environment(
        {
            "DATAFERRY_API_PORT": str(free_port()),
            "DATAFERRY_DATA_PORT": str(free_port()),
            "DATAFERRY_SAMPLE_SCALE": "0.01",
            **settings,
        }
    )
    (cwd / "var" / "data").mkdir(parents=True)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited through exec
    try:
        with open(log_path, "wb") as log:
            return subprocess.Popen(
                [sys.executable, str(ROOT / "deploy" / "launch.py"), "--demo"],
                env=env,
                cwd=cwd,
                stdout=log,
                stderr=log,
            )
    finally:
        signal.signal(signal.SIGINT, previous)


def _wait_until_running(launcher: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while "Press Ctrl-C" not in log_path.read_text(errors="replace"):
        assert launcher.poll() is None, log_path.read_text(errors="replace")
        assert time.monotonic() < deadline, "the launcher did not start the servers"
        time.sleep(0.5)
    remember(*re.findall(r"API key \(keep it secret\): (\S+)", log_path.read_text()))


def _children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_to_the_launcher_alone_stops_both_servers(tmp_path, signum):
    log_path = tmp_path / "launcher.log"
    LOG_FILES.add(log_path)
    launcher = _start_launcher_in_background(tmp_path, log_path)
    try:
        _wait_until_running(launcher, log_path)
        servers = _children(launcher.pid)
        assert len(servers) == 2, servers
        launcher.send_signal(signum)
        assert launcher.wait(timeout=STOP_TIMEOUT_SECONDS) == 0
        assert [pid for pid in servers if Path(f"/proc/{pid}").exists()] == []
    finally:
        if launcher.poll() is None:
            launcher.terminate()
            launcher.wait(timeout=60)


def test_servers_listening_on_another_address_are_waited_for_there(tmp_path):
    """Found by the outside probe: the launcher asked 127.0.0.1 whether the servers were ready,
    whatever they listened on, and stopped them after 180 s when that was ::1."""
    if not socket.has_ipv6:
        pytest.skip("this machine has no IPv6, so no ::1 to listen on")
    log_path = tmp_path / "launcher.log"
    launcher = _start_launcher_in_background(
        tmp_path, log_path, DATAFERRY_API_HOST="::1", DATAFERRY_DATA_HOST="::1"
    )
    try:
        _wait_until_running(launcher, log_path)
        assert "API server http://[::1]:" in log_path.read_text()
    finally:
        launcher.send_signal(signal.SIGTERM)
        launcher.wait(timeout=STOP_TIMEOUT_SECONDS)


def test_a_state_directory_of_an_earlier_release_is_migrated_before_the_demo_is_made(tmp_path):
    """Found by the review: the demo organisation was made before the migration, and operator
    commands run on this release's schema only, so `make run` on the state directory of the
    release before stopped at once."""
    from alembic import command

    from shared.db.engine import create_metadata_engine
    from shared.db.migrate import alembic_config

    (tmp_path / "var").mkdir()
    engine = create_metadata_engine(f"sqlite:///{tmp_path / 'var' / 'dataferry.db'}")
    try:
        command.upgrade(alembic_config(engine), "0016")  # a release before this one's head
    finally:
        engine.dispose()
    log_path = tmp_path / "launcher.log"
    launcher = _start_launcher_in_background(tmp_path, log_path)
    try:
        _wait_until_running(launcher, log_path)
    finally:
        launcher.send_signal(signal.SIGTERM)
        launcher.wait(timeout=STOP_TIMEOUT_SECONDS)


def test_a_server_that_ends_stops_the_others_and_the_launcher_says_which_and_how(tmp_path):
    """It said only "a server stopped": with two regions, an operator could not tell which one's
    server, nor that it was killed (found by the outside probe)."""
    log_path = tmp_path / "launcher.log"
    LOG_FILES.add(log_path)
    launcher = _start_launcher_in_background(tmp_path, log_path)
    try:
        _wait_until_running(launcher, log_path)
        api_server, data_server = _children(launcher.pid)
        os.kill(data_server, signal.SIGKILL)
        assert launcher.wait(timeout=STOP_TIMEOUT_SECONDS) == 1
        assert not Path(f"/proc/{api_server}").exists()
        said = log_path.read_text(errors="replace")
        assert (
            f"region eu: the data server (pid {data_server}) ended, killed by SIGKILL; "
            "stopping the others"
        ) in said, said
    finally:
        if launcher.poll() is None:
            launcher.terminate()
            launcher.wait(timeout=60)


def _launch_module():
    spec = importlib.util.spec_from_file_location("launch", ROOT / "deploy" / "launch.py")
    assert spec is not None and spec.loader is not None
    launch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launch)
    return launch


@pytest.mark.parametrize(
    ("env", "api", "data"),
    [
        ({}, "http://127.0.0.1:8000", "http://127.0.0.1:8001"),
        (
            {
                "DATAFERRY_API_HOST": "0.0.0.0",  # noqa: S104 - a setting, not a bind
                "DATAFERRY_DATA_HOST": "::",
                "DATAFERRY_API_PORT": "9",
            },
            "http://127.0.0.1:9",
            "http://127.0.0.1:8001",
        ),
        (
            {
                "DATAFERRY_PUBLIC_API_URL": "https://api.example.com/analytics/",
                "DATAFERRY_PUBLIC_DATA_URL": "https://data.example.com",
            },
            "https://api.example.com/analytics",
            "https://data.example.com",
        ),
    ],
)
def test_the_banner_shows_the_urls_clients_use(env, api, data):
    """DATAFERRY_PUBLIC_API_URL did nothing at all (outside probe), and a wildcard bind address
    was printed as the URL to use (``http://0.0.0.0:8000``)."""
    shown = _launch_module().banner(env, {"organization_id": "o", "api_key": "k"})
    assert f"API server {api}, data server {data}\n" in shown
    assert f"export API={api} DATA={data} KEY=k" in shown


def test_an_empty_variable_is_left_out_of_the_servers_environment(tmp_path, monkeypatch):
    """The servers read an empty DATAFERRY_ variable as unset; the launcher, which reads the
    ports and the demo's networks itself, does too (an empty port made it wait for
    ``http://127.0.0.1:`` and report the servers as never ready)."""
    launch = _launch_module()
    monkeypatch.setenv("DATAFERRY_API_PORT", "")
    env_file = tmp_path / "region.env"
    env_file.write_text("DATAFERRY_DATASOURCE_ALLOWED_NETWORKS=\nDATAFERRY_REGION=us\n")
    env = launch.region_environment(env_file)
    assert "DATAFERRY_API_PORT" not in env
    assert "DATAFERRY_DATASOURCE_ALLOWED_NETWORKS" not in env
    assert env["DATAFERRY_REGION"] == "us"
