"""One-row latency figures for `make bench`, in both configurations, servers as `make run` starts
them (no tuning variable; the one raised policy limit, the rate limit, is printed).

For each configuration (embedded: SQLite; scale-out: PostgreSQL, when DATAFERRY_TEST_POSTGRES_URL
is set), through real uvicorn processes on 127.0.0.1:

- the four-request path (run → ``GET /executions/{id}?wait`` → grant → first byte of the data):
  p50 with 1 client; executions/s and p50/p99 with 16 clients;
- the two-request run-and-wait path (``POST …/executions?wait`` → the grant's ``data_url``, read
  whole): p50 with 1 client.

Every figure is also printed as a ratio to the issue's target (≤ 1.00 for latencies, ≥ 1.00 for
throughput meets it). The 1-client four-request line is followed by the CPU time each server
process spent per execution (API server, data server, its sandbox children): wall times swing with
whatever else runs on a shared machine, CPU per execution much less, and 200 executions/s on two
cores leave 10 ms of it for everything.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.client import DataferryClient
from tests.support.postgres import POSTGRES_ENV, postgres_url_from_env
from tests.support.processes import Region, running_region

# 16 clients send ~4 requests per execution, hundreds per second: the default per-key limit
# (600/min) would answer most of them 429.
RAISED = {"DATAFERRY_RATE_LIMIT_PER_MINUTE": "1000000", "DATAFERRY_RATE_LIMIT_PER_HOUR": "10000000"}
ONE_ROW_SQL = "SELECT 1 AS one"
TARGET_P50_SECONDS = 0.010
TARGET_RUN_AND_WAIT_P50_SECONDS = 0.005
TARGET_EXECUTIONS_PER_SECOND = 200
TARGET_P99_SECONDS = 0.100


@contextmanager
def region_of(configuration: str) -> Iterator[Region]:
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(RAISED)
        if configuration == "scale-out":
            schema = f"dataferry_bench_{os.getpid()}"
            url = postgres_url_from_env(schema)
            assert url is not None
            with _schema(url, schema):
                env["DATAFERRY_DATABASE_URL"] = url
                with running_region(Path(tmp), env) as region:
                    yield region
            return
        with running_region(Path(tmp), env) as region:
            yield region


@contextmanager
def _schema(url: str, schema: str) -> Iterator[None]:
    from sqlalchemy import text

    from shared.db.engine import create_metadata_engine

    engine = create_metadata_engine(url)
    with engine.begin() as connection:
        connection.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield
    finally:
        with engine.begin() as connection:
            connection.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        engine.dispose()


def sample_datasource(client: DataferryClient) -> str:
    listed = client.http.get(f"{client.api_url}/datasources", headers=client.headers).json()
    return next(d["id"] for d in listed["data"] if d["attributes"]["database_type"] == "sample")


def four_requests(client: DataferryClient, datasource_id: str) -> float:
    """run → wait → grant → first byte, as a Cluvio client does it."""
    started = time.perf_counter()
    execution = client.run(datasource_id, ONE_ROW_SQL)
    done = client.execution(execution["execution_id"], wait=30)
    assert done["execution_status"] == "completed", done
    grant = client.grant(execution["execution_id"])
    headers = {"Authorization": f"Data {grant['data_access_token']}"}
    url = f"{client.data_url}/data/{grant['data_key']}"
    with client.http.stream("GET", url, headers=headers) as response:
        next(response.iter_raw(1))
    return time.perf_counter() - started


def run_and_wait(client: DataferryClient, datasource_id: str) -> float:
    """``POST …?wait`` → the grant's ``data_url``: two requests."""
    started = time.perf_counter()
    answer = client.http.post(
        f"{client.api_url}/datasources/{datasource_id}/executions",
        params={"wait": 30},
        json={"sql_query": ONE_ROW_SQL, "parameters": {}},
        headers=client.headers,
        timeout=60,
    )
    document = answer.json()
    assert document["data"]["attributes"]["execution_status"] == "completed", document
    fetched = client.http.get(document["meta"]["data_url"])
    assert fetched.status_code == 200, fetched.text
    return time.perf_counter() - started


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def measure(
    clients: list[DataferryClient],
    datasource_id: str,
    path: Callable[[DataferryClient, str], float],
    runs: int,
) -> tuple[list[float], float]:
    """Samples of ``runs`` executions spread over the clients, and the wall time of them all."""
    for client in clients:  # warm each client's connections
        path(client, datasource_id)
    started = time.perf_counter()
    with ThreadPoolExecutor(len(clients)) as pool:
        samples = list(
            pool.map(lambda n: path(clients[n % len(clients)], datasource_id), range(runs))
        )
    return samples, time.perf_counter() - started


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_ms(pid: int) -> float:
    """User plus system CPU time of one process so far (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) * 1000 / _CLOCK_TICKS


def server_cpu_ms(region: Region) -> dict[str, float]:
    """CPU so far of the API server, the data server and each sandbox child (by pid)."""
    return {
        "API server": cpu_ms(region.processes[0].pid),
        "data server": cpu_ms(region.data_server.pid),
        **{f"child {pid}": cpu_ms(pid) for pid in region.sandbox_children()},
    }


def print_cpu_per_execution(
    label: str, before: dict[str, float], after: dict[str, float], executions: int
) -> None:
    children = sum(after[k] - before.get(k, 0.0) for k in after if k.startswith("child"))
    spent = {
        "API server": after["API server"] - before["API server"],
        "data server": after["data server"] - before["data server"],
        "sandbox children": children,
    }
    print(
        f"{label}   CPU per execution:"
        + "".join(f" {name} {ms / executions:5.1f} ms," for name, ms in spent.items())
        + f" in all {sum(spent.values()) / executions:5.1f} ms"
    )


def bench(configuration: str, runs: int) -> None:
    with region_of(configuration) as region, region.organization_client("Bench") as client:
        datasource_id = sample_datasource(client)
        label = f"{configuration:9}"

        before = server_cpu_ms(region)
        samples, _ = measure([client], datasource_id, four_requests, runs)
        after = server_cpu_ms(region)
        p50 = statistics.median(samples)
        print(
            f"{label} one-row, 4 requests, 1 client    p50 {p50 * 1000:7.1f} ms"
            f"   ratio to 10 ms target {p50 / TARGET_P50_SECONDS:.2f}"
        )
        print_cpu_per_execution(label, before, after, runs + 1)  # + the warm-up execution

        clients = [DataferryClient(region.api_url, region.data_url, client.key) for _ in range(16)]
        try:
            samples, wall = measure(clients, datasource_id, four_requests, runs * 4)
        finally:
            for each in clients:
                each.http.close()
        rate, p99 = len(samples) / wall, percentile(samples, 0.99)
        print(
            f"{label} one-row, 4 requests, 16 clients  {rate:7.1f} executions/s"
            f"   p50 {statistics.median(samples) * 1000:7.1f} ms   p99 {p99 * 1000:7.1f} ms"
            f"   ratio to targets: {rate / TARGET_EXECUTIONS_PER_SECOND:.2f} (200/s),"
            f" {p99 / TARGET_P99_SECONDS:.2f} (p99 100 ms)"
        )

        samples, _ = measure([client], datasource_id, run_and_wait, runs)
        p50 = statistics.median(samples)
        print(
            f"{label} run-and-wait, 2 requests         p50 {p50 * 1000:7.1f} ms"
            f"   ratio to 5 ms target {p50 / TARGET_RUN_AND_WAIT_P50_SECONDS:.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=100, help="executions per 1-client figure")
    args = parser.parse_args()
    print("policy limits raised for the bench: " + " ".join(f"{k}={v}" for k, v in RAISED.items()))
    bench("embedded", args.runs)
    if os.environ.get(POSTGRES_ENV):
        bench("scale-out", args.runs)
    else:
        print(f"scale-out: skipped, set {POSTGRES_ENV} to a PostgreSQL URL")


if __name__ == "__main__":
    main()
