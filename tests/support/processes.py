"""Real uvicorn processes of both servers, for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from api_server.cli.conventions import transaction
from api_server.services.organizations import create_organization
from shared.datapaths import ensure_organization_area
from shared.settings import Settings
from shared.state_secrets import ServerSecrets
from tests.support.client import DataferryClient
from tests.support.log_watch import LOG_FILES, remember

ROOT = Path(__file__).resolve().parents[2]
# Test servers (PostgreSQL, MariaDB, moto) listen on loopback, which the egress policy denies by
# default: every test deployment allows it explicitly, as `make run` does.
LOOPBACK_NETWORKS = "127.0.0.0/8,::1/128"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def socket_address(url: str) -> tuple[str, int]:
    """``(host, port)`` of an ``http://host:port`` URL, for raw-socket tests."""
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def clean_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The caller's environment without DATAFERRY_* settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATAFERRY_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra or {})
    return env


def run_cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "api_server", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


@dataclass
class Region:
    """One region's API and data server, running as child processes in ``cwd``."""

    cwd: Path
    env: dict[str, str]
    api_url: str
    data_url: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def settings(self) -> Settings:
        """The settings the region's servers read (their relative paths start at ``cwd``)."""
        return Settings.from_env(
            self.env, state_dir=self.cwd / self.env.get("DATAFERRY_STATE_DIR", "var")
        )

    def create_organization(self, name: str = "E2E") -> dict[str, str]:
        """What ``python -m api_server create-organization`` does, done in this process: the
        command's start-up costs a second of CPU, and every module makes organisations
        (tests/api_server/test_cli.py runs the command itself). A region running another
        checkout's code (bench/side_by_side.py) runs that checkout's command: its schema may be
        of another release, on which this one's refuses to run."""
        if self.env.get("PYTHONPATH") != str(ROOT):
            made = run_cli(self.env, self.cwd, "create-organization", "--name", name)
            assert made.returncode == 0, made.stderr
            created = json.loads(made.stdout)
            remember(created["api_key"])
            return {"organization_id": created["organization_id"], "api_key": created["api_key"]}
        settings = self.settings()
        with transaction(settings) as session:
            organization = create_organization(session, ServerSecrets.load(settings), name)
        remember(organization.api_key)
        return {"organization_id": organization.organization_id, "api_key": organization.api_key}

    @contextmanager
    def organization_client(self, name: str = "E2E") -> Iterator[DataferryClient]:
        """A client holding the key of a new organisation; its connections close afterwards."""
        credentials = self.create_organization(name)
        client = DataferryClient(
            self.api_url,
            self.data_url,
            credentials["api_key"],
            organization_id=credentials["organization_id"],
        )
        try:
            yield client
        finally:
            client.http.close()

    def area(self, organization_id: str) -> Path:
        """The organisation's file area in this region's (default) data root, made as the servers
        make it: where its file datasources' paths resolve."""
        return ensure_organization_area(self.cwd / "var" / "data", organization_id)

    def log(self) -> str:
        return (self.cwd / "servers.log").read_text(errors="replace")

    @property
    def data_server(self) -> subprocess.Popen[bytes]:
        return self.processes[1]

    def restart_data_server(self, sig: int = signal.SIGKILL) -> None:
        """Stop the data server (SIGKILL by default: no clean hand-back) and start a new one."""
        old = self.data_server
        old.send_signal(sig)
        old.wait(timeout=30)
        with open(self.cwd / "servers.log", "ab") as log:
            self.processes[1] = subprocess.Popen(
                [sys.executable, "-m", "data_server", "serve"],
                env=self.env,
                cwd=self.cwd,
                stdout=log,
                stderr=log,
            )
        _wait_ready(self.data_url, self)

    def data_server_children(self) -> list[int]:
        """Pids of the data server's child processes, whichever of its threads started them
        (Linux lists a child under that thread only)."""
        pids = []
        for listing in Path(f"/proc/{self.data_server.pid}/task").glob("*/children"):
            try:
                pids += [int(pid) for pid in listing.read_text().split()]
            except OSError:  # the thread ended meanwhile
                continue
        return pids

    def sandbox_children(self) -> list[int]:
        """Pids of the data server's sandbox child processes (not its warm-file filler)."""
        return [
            pid
            for pid in self.data_server_children()
            if _runs_module(pid, "data_server.sandbox_child")
        ]


def _runs_module(pid: int, module: str) -> bool:
    try:
        arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:  # it ended
        return False
    return module.encode() in arguments


@contextmanager
def running_region(cwd: Path, extra_env: dict[str, str] | None = None) -> Iterator[Region]:
    api_port, data_port = free_port(), free_port()
    env = clean_environment(
        {
            "DATAFERRY_API_PORT": str(api_port),
            "DATAFERRY_DATA_PORT": str(data_port),
            "DATAFERRY_SAMPLE_SCALE": "0.01",
            "DATAFERRY_DATASOURCE_ALLOWED_NETWORKS": LOOPBACK_NETWORKS,
            **(extra_env or {}),
        }
    )
    (cwd / "var" / "data").mkdir(parents=True, exist_ok=True)  # the default data root
    region = Region(cwd, env, f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{data_port}")
    LOG_FILES.add(cwd / "servers.log")
    log = open(cwd / "servers.log", "ab")  # noqa: SIM115 - closed in finally
    try:
        # Each server brings the schema up to date as it starts, as in production (two starting
        # together migrate once: tests/shared/test_migrations.py).
        for package in ("api_server", "data_server"):
            region.processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", package, "serve"],
                    env=env,
                    cwd=cwd,
                    stdout=log,
                    stderr=log,
                )
            )
        for url in (region.api_url, region.data_url):
            _wait_ready(url, region)
        yield region
    finally:
        for process in region.processes:
            process.send_signal(signal.SIGTERM)
        for process in region.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()  # reaped: a Popen dropped while running is an error here
        log.close()


def _wait_ready(url: str, region: Region, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in region.processes):
            raise AssertionError(f"a server exited during start-up:\n{region.log()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} not ready after {timeout} s:\n{region.log()}")
