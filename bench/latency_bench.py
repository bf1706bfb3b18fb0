"""One-row latency figures for `make bench`, in both configurations, servers as `make run` starts
them (no tuning variable; the one raised policy limit, the rate limit, is printed).

For each configuration (embedded: SQLite; scale-out: PostgreSQL, when DATAFERRY_TEST_POSTGRES_URL
is set), through real uvicorn processes on 127.0.0.1:

- the four-request path (run → ``GET /executions/{id}?wait`` → grant → first byte of the data,
  the rest read too, as a client keeping its connections does):
  p50 with 1 client; executions/s and p50/p99 with 16 clients, each a process of its own;
- the two-request run-and-wait path (``POST …/executions?wait`` → the grant's ``data_url``, read
  whole): p50 with 1 client.

Every figure is also printed as a ratio to the issue's target (≤ 1.00 for latencies, ≥ 1.00 for
throughput meets it), and to the floor (``x floor``; for 16 clients, of the p99): the same
clients making the same requests, in the same pattern, to a Starlette app that does nothing
(bench/floor_app.py), served by uvicorn with its h11 protocol and with httptools (its fastest,
which dataferry's servers use). What the floor takes of a target is not left for any work: keys,
the metadata database, the query. Each 1-client four-request figure is preceded by the CPU time
each process spent per execution (API server, data server, its sandbox children, and this
process's client, which shares the machine), measured once the region's start-up work is
done (``settled``): wall times swing with whatever else runs on a shared machine, CPU per
execution much less, and 200 executions/s on two cores leave 10 ms of it for everything, clients
included. The 16-client figure also gives how busy the machine was meanwhile (every process,
every core): near 100%, that rate is what the CPU per execution allows, and no hand-off between
the servers is what holds it back.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from shared.settings import Settings
from shared.web.http_limits import uvicorn_options
from tests.support.client import DataferryClient
from tests.support.postgres import POSTGRES_ENV, postgres_url_from_env
from tests.support.processes import Region, free_port, running_region

# 16 clients send ~4 requests per execution, hundreds per second: the default per-key limit
# (600/min) would answer most of them 429.
RAISED = {"DATAFERRY_RATE_LIMIT_PER_MINUTE": "1000000", "DATAFERRY_RATE_LIMIT_PER_HOUR": "10000000"}
ONE_ROW_SQL = "SELECT 1 AS one"
TARGET_P50_SECONDS = 0.010
TARGET_RUN_AND_WAIT_P50_SECONDS = 0.005
TARGET_EXECUTIONS_PER_SECOND = 200
TARGET_P99_SECONDS = 0.100
HERE = Path(__file__).resolve().parent
# uvicorn's HTTP/1.1 protocols; dataferry's servers run one (``served_protocol``).
FLOOR_PROTOCOLS = ("h11", "httptools")


@dataclass(frozen=True)
class Figures:
    """One configuration's figures, in seconds and executions per second."""

    p50: float
    rate: float
    p99: float
    run_and_wait_p50: float


_REGIONS = itertools.count()  # a schema of its own for each region this process starts


@contextmanager
def region_of(configuration: str, code: Path | None = None) -> Iterator[Region]:
    """A region of ``configuration``; ``code``: a checkout whose servers it runs (they import
    from there first) instead of this one's."""
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(RAISED)
        if code is not None:
            env["PYTHONPATH"] = str(code)
        if configuration == "scale-out":
            schema = f"dataferry_bench_{os.getpid()}_{next(_REGIONS)}"
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
    return first_byte(client, url, headers) - started


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


@contextmanager
def floor_servers(protocol: str) -> Iterator[tuple[str, str, dict[str, int]]]:
    """Two processes of bench/floor_app.py, in the API server's and the data server's places:
    their URLs and pids."""
    ports = [free_port(), free_port()]
    command = [sys.executable, "-m", "uvicorn", "--app-dir", str(HERE), "floor_app:app"]
    quiet = ["--no-access-log", "--log-level", "warning", "--http", protocol]
    processes = [
        subprocess.Popen([*command, *quiet, "--host", "127.0.0.1", "--port", str(port)])
        for port in ports
    ]
    try:
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        for url in urls:
            _wait_for(f"{url}/data")
        yield urls[0], urls[1], {"API server": processes[0].pid, "data server": processes[1].pid}
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=20)


def _wait_for(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)


def four_floor_requests(client: DataferryClient, _datasource_id: str) -> float:
    """The four requests of ``four_requests``, answered by an app that does nothing."""
    started = time.perf_counter()
    body = {"sql_query": ONE_ROW_SQL, "parameters": {}}
    client.http.post(f"{client.api_url}/executions", json=body, headers=client.headers)
    client.http.get(f"{client.api_url}/executions", headers=client.headers)
    client.http.get(f"{client.api_url}/executions", headers=client.headers)
    return first_byte(client, f"{client.data_url}/data", client.headers) - started


def first_byte(client: DataferryClient, url: str, headers: dict[str, str]) -> float:
    """When the first bytes of ``url``'s answer arrived. The rest is read too (of one row, it
    came with them), as a client reading its results does: a response left unread closes its
    connection, and every fetch would pay for a new one, which a client's pool keeps."""
    with client.http.stream("GET", url, headers=headers) as response:
        chunks = response.iter_raw()
        next(chunks, b"")  # an empty body has no first bytes: its end is when it arrived
        arrived = time.perf_counter()
        for _ in chunks:
            pass
    return arrived


def two_floor_requests(client: DataferryClient, _datasource_id: str) -> float:
    """The two requests of ``run_and_wait``, answered by an app that does nothing."""
    started = time.perf_counter()
    body = {"sql_query": ONE_ROW_SQL, "parameters": {}}
    client.http.post(f"{client.api_url}/executions", json=body, headers=client.headers)
    client.http.get(f"{client.data_url}/data")
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


CLIENT_PROCESSES = 16


def measure_in_processes(
    first: DataferryClient,
    datasource_id: str,
    path: Callable[[DataferryClient, str], float],
    runs: int,
) -> tuple[list[float], float]:
    """Samples of ``runs`` executions spread over 16 client processes, each with its own
    interpreter and connections, as separate applications have (16 threads of this process
    wait on its one interpreter lock: the tail they measured was partly their own), and the
    wall time from the first one's start to the last one's end."""
    shares = [
        (first.api_url, first.data_url, first.key, datasource_id, path, share)
        for share in (
            runs // CLIENT_PROCESSES + (n < runs % CLIENT_PROCESSES)
            for n in range(CLIENT_PROCESSES)
        )
    ]
    # The children inherit this process's heap and its collector's counts: each then ran a full
    # collection over all of that heap at the same execution, and for 0.6-0.9 s the machine was
    # theirs (sampled per process: the sixteen clients busy, both servers idle), every client
    # stalled mid-request (p99 0.8-1.1 s once the floors had been measured). Frozen first, the
    # inherited heap is left out of their collections: no execution above 0.3 s, p99 0.22 s.
    gc.collect()
    gc.freeze()
    try:
        with multiprocessing.get_context("fork").Pool(CLIENT_PROCESSES) as pool:
            results = pool.map(_client_process, shares)
    finally:
        gc.unfreeze()
    samples = [sample for _, _, each in results for sample in each]
    return samples, max(end for _, end, _ in results) - min(start for start, _, _ in results)


def _client_process(
    share: tuple[str, str, str, str, Callable[[DataferryClient, str], float], int],
) -> tuple[float, float, list[float]]:
    """One client process's executions: (its start, its end, their samples)."""
    api_url, data_url, key, datasource_id, path, runs = share
    client = DataferryClient(api_url, data_url, key)
    try:
        path(client, datasource_id)  # its connections, warmed
        started = time.perf_counter()
        samples = [path(client, datasource_id) for _ in range(runs)]
        return started, time.perf_counter(), samples
    finally:
        client.http.close()


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Busy:
    share: float = 0.0


@contextmanager
def machine_busy() -> Iterator[Busy]:
    """The share of the machine's CPU time, all cores, that was not idle while the block ran:
    near 100% for 16 clients, the rate is what the CPU per execution allows, not what waits
    between the servers leave (the clients' processes count too)."""

    def idle_and_total() -> tuple[int, int]:
        with open("/proc/stat") as handle:
            ticks = [int(field) for field in handle.readline().split()[1:]]
        # idle and iowait, of all but guest and guest_nice (already in user and nice)
        return ticks[3] + ticks[4], sum(ticks[:8])

    busy = Busy()
    idle_before, total_before = idle_and_total()
    yield busy
    idle_after, total_after = idle_and_total()
    spent = max(1, total_after - total_before)
    busy.share = 1 - (idle_after - idle_before) / spent


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
    spent = {name: after[name] - before[name] for name in after if not name.startswith("child")}
    children = [after[name] - before.get(name, 0.0) for name in after if name.startswith("child")]
    if children:
        spent["sandbox children"] = sum(children)
    print(
        f"{label}   CPU per execution:"
        + "".join(f" {name} {ms / executions:5.1f} ms," for name, ms in spent.items())
        + f" in all {sum(spent.values()) / executions:5.1f} ms"
    )


def with_cpu(
    label: str, sample: Callable[[], dict[str, float]], executions: int
) -> Callable[[Callable[[], None]], None]:
    """Wraps a measurement: the CPU per execution over it of the servers (``sample``) and of
    this process, the client, which shares the two cores with them, is printed after it."""

    def with_clients() -> dict[str, float]:
        return {**sample(), "bench client": time.process_time() * 1000}

    def around(measure_it: Callable[[], None]) -> None:
        before = with_clients()
        measure_it()
        print_cpu_per_execution(label, before, with_clients(), executions)

    return around


def figures(
    label: str,
    first: DataferryClient,
    datasource_id: str,
    paths: tuple[Callable[[DataferryClient, str], float], Callable[[DataferryClient, str], float]],
    runs: int,
    floor: Figures | None,
    on_first: Callable[[Callable[[], None]], None],
) -> Figures:
    """The three figures of one server pair (dataferry's or the floor's), printed with their
    ratios to the targets and, for dataferry's, to ``floor``. ``on_first`` wraps the 1-client
    four-request figure (the servers' CPU per execution is taken around it: ``with_cpu``)."""
    four, two = paths
    samples: list[float] = []

    def one_client() -> None:
        samples.extend(measure([first], datasource_id, four, runs)[0])

    on_first(one_client)
    p50 = statistics.median(samples)
    with machine_busy() as busy:
        many, wall = measure_in_processes(first, datasource_id, four, runs * 4)
    rate, p99 = len(many) / wall, percentile(many, 0.99)
    run_and_wait_p50 = statistics.median(measure([first], datasource_id, two, runs)[0])
    result = Figures(p50, rate, p99, run_and_wait_p50)

    def to_floor(name: str) -> str:
        if floor is None:
            return ""
        ratio = getattr(result, name) / getattr(floor, name)
        return f"   {ratio:5.1f}x floor"

    print(
        f"{label} 4 requests, 1 client    p50 {p50 * 1000:7.1f} ms"
        f"   ratio to 10 ms target {p50 / TARGET_P50_SECONDS:.2f}{to_floor('p50')}"
    )
    print(
        f"{label} 4 requests, 16 clients  {rate:7.1f} executions/s"
        f"   p50 {statistics.median(many) * 1000:7.1f} ms   p99 {p99 * 1000:7.1f} ms"
        f"   ratio to targets: {rate / TARGET_EXECUTIONS_PER_SECOND:.2f} (200/s),"
        f" {p99 / TARGET_P99_SECONDS:.2f} (p99 100 ms){to_floor('p99')}"
        f"   machine {busy.share:.0%} busy"
    )
    print(
        f"{label} 2 requests, 1 client    p50 {run_and_wait_p50 * 1000:7.1f} ms"
        f"   ratio to 5 ms target {run_and_wait_p50 / TARGET_RUN_AND_WAIT_P50_SECONDS:.2f}"
        f"{to_floor('run_and_wait_p50')}"
    )
    return result


def floor_figures(runs: int) -> Figures:
    """The floor under each protocol; the one dataferry's servers use is returned."""
    measured = {}
    for protocol in FLOOR_PROTOCOLS:
        with floor_servers(protocol) as (api_url, data_url, pids):
            client = DataferryClient(api_url, data_url, "dfk_floor")
            try:
                label = f"floor {protocol:9} nothing,"
                paths = (four_floor_requests, two_floor_requests)
                cpu = with_cpu(label, lambda: {k: cpu_ms(pid) for k, pid in pids.items()}, runs + 1)
                measured[protocol] = figures(label, client, "", paths, runs, None, cpu)
            finally:
                client.http.close()
    return measured[served_protocol()]


def served_protocol() -> str:
    """The uvicorn protocol dataferry's servers run (shared/web/http_limits.py)."""
    served = uvicorn_options(Settings())["http"]
    return "httptools" if issubclass(served, HttpToolsProtocol) else "h11"


def settled(region: Region, client: DataferryClient, datasource_id: str) -> None:
    """Return once the region's start-up work is done, so that none of it is charged to the
    executions measured next: the sandbox children import DuckDB and Arrow as the data server
    starts (about 0.4 s of CPU each), and its warm scratch files are filled two seconds later
    (data_server.warm_files). A few executions first, then until the servers and every child of
    the data server are quiet for a moment (at most ``SETTLE_SECONDS``)."""
    for _ in range(SETTLE_EXECUTIONS):
        four_requests(client, datasource_id)
    deadline = time.monotonic() + SETTLE_SECONDS
    spent = _all_cpu_ms(region)
    while time.monotonic() < deadline:
        time.sleep(QUIET_SECONDS)
        spent, before = _all_cpu_ms(region), spent
        if spent - before < QUIET_CPU_MS:
            return
    print(f"  (the servers were still busy {SETTLE_SECONDS:.0f} s after starting)")


SETTLE_EXECUTIONS = 5
SETTLE_SECONDS = 60.0
QUIET_SECONDS = 0.5
QUIET_CPU_MS = 20.0


def _all_cpu_ms(region: Region) -> float:
    """CPU so far of both servers and every child of the data server (its warm-file filler
    included)."""
    pids = [region.processes[0].pid, region.data_server.pid, *region.data_server_children()]
    return sum(cpu_ms(pid) for pid in pids)


def bench(configuration: str, runs: int, floor: Figures) -> None:
    with region_of(configuration) as region, region.organization_client("Bench") as client:
        label = f"{configuration:9} one-row,"
        datasource_id = sample_datasource(client)
        settled(region, client, datasource_id)
        cpu = with_cpu(label, lambda: server_cpu_ms(region), runs + 1)  # + the warm-up one
        paths = (four_requests, run_and_wait)
        figures(label, client, datasource_id, paths, runs, floor, cpu)


def print_raised_limits() -> None:
    print("policy limits raised for the bench: " + " ".join(f"{k}={v}" for k, v in RAISED.items()))


def in_each_configuration(bench_one: Callable[[str], None]) -> None:
    """``bench_one("embedded")``, then ``bench_one("scale-out")`` where PostgreSQL is configured
    (else a line that says why not)."""
    bench_one("embedded")
    if os.environ.get(POSTGRES_ENV):
        bench_one("scale-out")
    else:
        print(f"scale-out: skipped, set {POSTGRES_ENV} to a PostgreSQL URL")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=100, help="executions per 1-client figure")
    args = parser.parse_args()
    print_raised_limits()
    floor = floor_figures(args.runs)
    in_each_configuration(lambda configuration: bench(configuration, args.runs, floor))


if __name__ == "__main__":
    main()
