"""Start the API server and data server of one region or more, and stop them all on Ctrl-C.

``make run`` calls ``python deploy/launch.py --demo``: migrate, create the demo organisation once,
start both servers, wait until they are ready, print the API key and a curl example.
``make run-regions`` passes ``--env-file`` once per region (deploy/regions/eu.env, us.env): each
region gets its own state directory, metadata DB, result store, secrets and signing keys.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: the project's packages are beside its folder
READY_TIMEOUT_SECONDS = 180
# The demo's datasources may reach databases on this machine; a deployment allows none by default.
DEMO_ALLOWED_NETWORKS = "127.0.0.0/8,::1/128"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def interrupt(signum: int, _frame: object) -> None:
    """SIGINT and SIGTERM both stop everything. Installed explicitly for SIGINT too: a launcher
    started in the background by a non-interactive shell inherits SIGINT ignored, and Python then
    leaves it ignored, so a supervisor's ``kill -INT`` did nothing."""
    raise KeyboardInterrupt


def read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def run_json(env: dict[str, str], *args: str) -> dict[str, str]:
    output = subprocess.run(
        [sys.executable, "-m", "api_server", *args],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(output.stdout)


def wait_ready(url: str, processes: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in processes):
            raise SystemExit("a server exited during start-up; see its log above")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:  # noqa: S310
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise SystemExit(f"{url} did not become ready within {READY_TIMEOUT_SECONDS} s")


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()


def banner(env: dict[str, str], credentials: dict[str, str]) -> str:
    """What the region's clients use: its public URLs (DATAFERRY_PUBLIC_API_URL and
    DATAFERRY_PUBLIC_DATA_URL, by default the servers' addresses), as the servers derive them."""
    from shared.settings import Settings  # the servers started with these settings: valid

    settings = Settings.from_env(env)
    api, data = settings.public_api_url, settings.public_data_url
    return (
        "\n"
        f"dataferry region {region_name(env)} is running: "
        f"API server {api}, data server {data}\n"
        f"demo organisation: {credentials['organization_id']}\n"
        f"API key (keep it secret): {credentials['api_key']}\n"
        "datasources may also reach: "
        f"{env.get('DATAFERRY_DATASOURCE_ALLOWED_NETWORKS') or 'public addresses only'}\n\n"
        "Try it:\n"
        f"  export API={api} DATA={data} KEY={credentials['api_key']} "
        f"ORG={credentials['organization_id']}\n"
        '  curl -s -H "Authorization: Api $KEY" $API/datasources\n'
    )


def region_environment(env_file: Path | None) -> dict[str, str]:
    """The servers' environment; an empty DATAFERRY_ variable is left out, as the servers read
    it as unset (the addresses and the demo's networks below then take their defaults too)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if env_file:
        env.update(read_env_file(env_file))
    env = {key: value for key, value in env.items() if value or not key.startswith("DATAFERRY_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


SERVERS = ("api_server", "data_server")


def migrate(env: dict[str, str]) -> None:
    """First of all: the operator commands (the demo organisation's) run on this release's schema
    only, and a state directory of an earlier release's is at an earlier one."""
    subprocess.run([sys.executable, "-m", "api_server", "migrate"], env=env, check=True)


def start_region(env: dict[str, str]) -> list[subprocess.Popen[bytes]]:
    return [
        subprocess.Popen([sys.executable, "-m", server, "serve"], env=env) for server in SERVERS
    ]


def ended(process: subprocess.Popen[bytes], env: dict[str, str]) -> str:
    """Which server of which region ended, and how: a region's name, its server and the signal
    or exit status, as an operator looks for it in the log."""
    server = next(name for name in SERVERS if name in process.args)
    status = process.returncode or 0
    how = f"killed by {_signal_name(-status)}" if status < 0 else f"exit status {status}"
    return f"region {region_name(env)}: the {server.replace('_', ' ')} (pid {process.pid}) ended, {how}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:  # a real-time signal has no name of its own
        return f"signal {number}"


def region_name(env: dict[str, str]) -> str:
    return env.get("DATAFERRY_REGION", "eu")  # the servers' default region


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--env-file",
        type=Path,
        action="append",
        help="settings of one region (KEY=VALUE lines); repeat for several regions",
    )
    parser.add_argument("--demo", action="store_true", help="create/reuse the demo organisation")
    args = parser.parse_args()

    environments = [region_environment(path) for path in args.env_file or [None]]
    if args.demo:
        for env in environments:
            env.setdefault("DATAFERRY_DATASOURCE_ALLOWED_NETWORKS", DEMO_ALLOWED_NETWORKS)
    processes: list[subprocess.Popen[bytes]] = []
    for signum in STOP_SIGNALS:
        signal.signal(signum, interrupt)
    try:
        banners = []
        for env in environments:
            migrate(env)
            credentials = run_json(env, "ensure-demo-organization") if args.demo else None
            processes += start_region(env)
            if credentials:
                banners.append(banner(env, credentials))
        from shared.settings import Settings  # valid: migrate took them

        for env in environments:  # where they listen, as this host reaches it (::1, say)
            settings = Settings.from_env(env)
            wait_ready(settings.api_local_url, processes)
            wait_ready(settings.data_local_url, processes)
        if banners:
            print("".join(banners), flush=True)
            print(
                "\nREADME.md walks through the whole API. Press Ctrl-C to stop every server.",
                flush=True,
            )
        while all(p.poll() is None for p in processes):
            time.sleep(0.5)
        for index, process in enumerate(processes):
            if process.poll() is not None:
                region = environments[index // len(SERVERS)]
                print(f"{ended(process, region)}; stopping the others", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except subprocess.CalledProcessError as failed:  # e.g. a setting refused: its line, no trace
        sys.stderr.write(failed.stderr or "")  # captured by run_json; migrate's is already out
        return failed.returncode
    finally:
        for signum in STOP_SIGNALS:  # a second signal must not cut the stopping short
            signal.signal(signum, signal.SIG_IGN)
        stop(processes)


if __name__ == "__main__":
    sys.exit(main())
