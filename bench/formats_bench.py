"""Result formats: encoder throughput in process, then server-bound rates through a real data
server, each as a ratio to the in-process baseline.

Baseline: in-process DuckDB streaming the result as Arrow batches. Then:

1. the stored Arrow IPC file encoded in every format by ``data_server.encoders.encode_result``
   (the data server's code path minus the socket and the store);
2. a real data server (``python -m data_server serve --no-workers``) on 127.0.0.1, once its warm
   scratch files are ready: for each format, with and without ``Accept-Encoding`` /
   ``?compression=``, ``--repeats`` fresh publications of the result (a new data key and token
   each), each fetched whole twice by curl to /dev/null, server-bound as the issue measured (the
   first fetch materialises the representation, the second serves the stored one); the median
   rate of each (the first's range too), when the first byte of a first fetch came (as a share of
   its whole time: the time to first byte a reader of a fresh result sees), bytes on the wire;
3. two clients fetching one large result as JSON at once (``--memory-rows``, about 1 GB by
   default), the data server's RSS growth sampled from /proc (the issue's "1 GB result" figure).
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlencode

import duckdb
import httpx
import polars
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data_server.encoders import encode_result, warm_up
from data_server.formats import TEXT_FORMATS, ResultFormat
from data_server.warm_files import kept_count, ready_count
from shared.db.engine import create_metadata_engine, create_session_factory
from shared.db.models import Datasource, Execution, Organization
from shared.organization_rows import count_stored_bytes
from shared.results import open_result_store, result_object_key
from shared.scratch import directories
from shared.settings import Settings
from shared.signing_keys import SigningKeyring
from shared.tokens import Scope, mint_data_token, new_data_key

ROOT = Path(__file__).resolve().parent.parent
# The table: ints, doubles, strings and timestamps, seven columns.
RESULT_SQL = (
    "SELECT range AS id, range * 7 AS qty, (range * 0.37)::DOUBLE AS price,"
    " ((range % 1000) / 3.0)::DOUBLE AS score, 'name ' || range AS name,"
    " 'city ' || (range % 50) AS city,"
    " TIMESTAMP '2024-01-01' + INTERVAL (range) SECOND AS at FROM range({rows})"
)
WIDE_SQL = "SELECT range AS id, repeat('x', 200) || range AS padding FROM range({rows})"
SERVED = [
    ("arrow", {}, {}),
    ("arrow", {"compression": "zstd"}, {}),
    ("parquet", {}, {}),
    ("csv", {}, {}),
    ("csv", {}, {"Accept-Encoding": "zstd"}),
    ("json", {}, {}),
    ("json", {}, {"Accept-Encoding": "gzip"}),
    ("json", {}, {"Accept-Encoding": "zstd"}),
    ("json", {}, {"Accept-Encoding": "br"}),
    ("records", {}, {}),
    ("ndjson", {}, {}),
    ("ndjson", {}, {"Accept-Encoding": "zstd"}),
]

BENCH_ORGANIZATION = "benc-horg-anis"
CURL = shutil.which("curl")


def _write_arrow(connection: duckdb.DuckDBPyConnection, sql: str, path: Path) -> None:
    reader = connection.execute(sql).to_arrow_reader(65536)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, reader.schema) as writer:
        for batch in reader:
            writer.write_batch(batch)


def in_process(connection: duckdb.DuckDBPyConnection, rows: int, path: Path) -> float:
    started = time.perf_counter()
    reader = connection.execute(RESULT_SQL.format(rows=rows)).to_arrow_reader(65536)
    assert sum(batch.num_rows for batch in reader) == rows
    baseline = rows / (time.perf_counter() - started)
    print(f"baseline in-process DuckDB→Arrow {baseline / 1e6:8.2f} M rows/s   ratio 1.00")
    warm_up()  # what a data server does when it starts: the first encoding would pay for it
    threads = Settings.model_fields["encode_threads"].default
    with ThreadPoolExecutor(threads) as pool:
        for fmt in ResultFormat:
            for label, encoders in (("", None), (f"{threads} threads", pool)):
                if encoders is not None and fmt not in TEXT_FORMATS:
                    continue
                started = time.perf_counter()
                chunks = encode_result(pa.OSFile(str(path), "rb"), fmt, pool=encoders)
                size = sum(map(len, chunks))
                _print_rate(f"encode {fmt.name_in_query} {label}", rows, started, baseline, size)
    _native_peer(path, rows, baseline)
    return baseline


def _print_rate(label: str, rows: int, started: float, baseline: float, size: int) -> None:
    rate = rows / (time.perf_counter() - started)
    print(
        f"{label:32} {rate / 1e6:8.2f} M rows/s   ratio {rate / baseline:.2f}   ({size / 1e6:.0f} MB)"
    )


def _native_peer(path: Path, rows: int, baseline: float) -> None:
    """Polars' NDJSON writer (Rust, its own value mapping: no ISO ``T``, no fixed precision)
    over the same table: what a native encoder does on this machine today."""
    table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
    frame = polars.from_arrow(table)
    assert isinstance(frame, polars.DataFrame)
    sink = io.BytesIO()
    started = time.perf_counter()
    frame.write_ndjson(sink)
    _print_rate("peer: polars write_ndjson", rows, started, baseline, len(sink.getvalue()))


class DataServer:
    """A data server without workers on 127.0.0.1, serving results published into its store."""

    def __init__(self, state_dir: Path) -> None:
        port = _free_port()
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("DATAFERRY_")},
            "PYTHONPATH": str(ROOT),
            "DATAFERRY_STATE_DIR": str(state_dir),
            "DATAFERRY_DATA_PORT": str(port),
            "DATAFERRY_SAMPLE_SCALE": "0.001",
            "DATAFERRY_LOG_LEVEL": "WARNING",
        }
        self.settings = Settings.from_env(self.env)
        self.url = f"http://127.0.0.1:{port}"
        self.store = open_result_store(self.settings)
        self.signing_keys = SigningKeyring(
            self.settings
        )  # the key pair, before the server reads it
        self.process = subprocess.Popen(
            [sys.executable, "-m", "data_server", "serve", "--no-workers"],
            env=self.env,
            cwd=state_dir,
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("the data server did not become ready")

    def publish(self, path: Path) -> tuple[str, str]:
        data_key = new_data_key(Scope.EXECUTION_RESULT)
        self.store.publish(path, result_object_key(data_key))
        self._record(data_key, path)
        token = mint_data_token(
            self.signing_keys,
            self.settings,
            organization_id=BENCH_ORGANIZATION,
            data_key=data_key,
            scope=Scope.EXECUTION_RESULT,
        )
        return data_key, token

    def _record(self, data_key: str, path: Path) -> None:
        """The completed execution a worker would have written: stored representations are
        counted on it, and its bytes on its organisation (the data server migrated the database
        when it started)."""
        size = self.store.size(result_object_key(data_key))
        engine = create_metadata_engine(self.settings.database_url)
        with create_session_factory(engine).begin() as session:
            if session.get(Organization, BENCH_ORGANIZATION) is None:
                session.add(Organization(id=BENCH_ORGANIZATION, name="bench"))
                session.flush()
                session.add(
                    Datasource(
                        id="benc-hdat-asrc",
                        organization_id=BENCH_ORGANIZATION,
                        name="bench",
                        database_type="duckdb",
                    )
                )
            session.add(
                Execution(
                    id=str(uuid.uuid4()),
                    organization_id=BENCH_ORGANIZATION,
                    datasource_id="benc-hdat-asrc",
                    execution_type="sql_query",
                    status="completed",
                    data_key=data_key,
                    result_size=size,
                )
            )
            session.flush()
            count_stored_bytes(session, BENCH_ORGANIZATION, size)
        engine.dispose()

    @property
    def warm_files_kept(self) -> int:
        return kept_count(self.settings.warm_scratch_mb * 1024 * 1024)

    def wait_for_warm_files(self, timeout: float = 30.0) -> int:
        """How many warm scratch files the server has ready, once it has all it keeps (or after
        ``timeout``): a fresh result's first fetch on a server that had a moment since the last
        one finds them all (data_server/warm_files.py)."""
        deadline = time.monotonic() + timeout
        while True:
            ready = sum(map(ready_count, directories(self.store.scratch_dir)))
            if ready >= self.warm_files_kept or time.monotonic() > deadline:
                return ready
            time.sleep(0.2)

    def rss(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _fetch(url: str, token: str, params: dict, headers: dict) -> tuple[float, float, int]:
    """Seconds to the whole body, seconds to its first byte, and its size. curl writing to
    /dev/null, as the issue measured (server-bound: a Python client would take a share of these
    two cores); httpx where curl is missing."""
    headers = {"Accept-Encoding": "identity", **headers, "Authorization": f"Data {token}"}
    url = f"{url}?{urlencode(params)}"
    if CURL is None:
        return _fetch_with_httpx(url, headers)
    written = subprocess.run(
        [
            CURL,
            "--silent",
            "--fail",
            "--output",
            "/dev/null",
            "--write-out",
            "%{time_starttransfer} %{time_total} %{size_download}",
            url,
            *(arg for name, value in headers.items() for arg in ("--header", f"{name}: {value}")),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return float(written[1]), float(written[0]), int(written[2])


def _fetch_with_httpx(url: str, headers: dict) -> tuple[float, float, int]:
    started = time.perf_counter()
    first_byte = None
    size = 0
    with httpx.stream("GET", url, headers=headers, timeout=600) as response:
        response.raise_for_status()
        for chunk in response.iter_raw(1 << 20):
            if first_byte is None:
                first_byte = time.perf_counter() - started
            size += len(chunk)
    whole = time.perf_counter() - started
    return whole, whole if first_byte is None else first_byte, size


def served(server: DataServer, path: Path, rows: int, baseline: float, repeats: int) -> None:
    """Each variant fetched ``repeats`` times from a fresh publication of the same result (a
    new data key, so each first fetch materialises anew), medians printed: one first fetch is
    one sample of a machine whose speed swings from minute to minute."""
    client = "curl to /dev/null" if CURL else "httpx (no curl found)"
    print(
        f"\nserved by a real data server to {client}, {repeats} fresh results per variant"
        " (first fetch materialises, then served as stored):"
    )
    short_of_warm = 0
    for fmt, params, headers in SERVED:
        label = fmt + "".join(f" {v}" for v in [*params.values(), *headers.values()])
        firsts, first_bytes, agains, size = [], [], [], 0
        for _ in range(repeats):
            short_of_warm += server.wait_for_warm_files() < server.warm_files_kept
            copy = path.with_name(f"copy-{uuid.uuid4().hex}.arrow")
            shutil.copyfile(path, copy)
            data_key, token = server.publish(copy)
            url = f"{server.url}/data/{data_key}"
            first, first_byte, size = _fetch(url, token, {"format": fmt, **params}, headers)
            again, _, _ = _fetch(url, token, {"format": fmt, **params}, headers)
            firsts.append(first)
            first_bytes.append(first_byte / first)
            agains.append(again)
        first, again = statistics.median(firsts), statistics.median(agains)
        print(
            f"{label:20} first {rows / first / 1e6:7.2f} M rows/s"
            f" ({rows / max(firsts) / 1e6:.2f} to {rows / min(firsts) / 1e6:.2f};"
            f" ratio {rows / first / baseline:.2f}, first byte after"
            f" {statistics.median(first_bytes):4.0%} of it)"
            f"   stored {rows / again / 1e6:7.2f} M rows/s (ratio {rows / again / baseline:.2f})"
            f"   {size / 1e6:8.1f} MB on the wire"
        )
    print(f"first fetches that found fewer warm scratch files than kept: {short_of_warm}")


def memory(server: DataServer, connection: duckdb.DuckDBPyConnection, rows: int, tmp: Path) -> None:
    path = tmp / "wide.arrow"
    _write_arrow(connection, WIDE_SQL.format(rows=rows), path)
    data_key, token = server.publish(path)
    url = f"{server.url}/data/{data_key}"
    baseline, peak, sizes = server.rss(), 0, []

    def fetch() -> None:
        sizes.append(_fetch(url, token, {"format": "json"}, {})[2])

    threads = [threading.Thread(target=fetch) for _ in range(2)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        peak = max(peak, server.rss())
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    print(
        f"\ntwo clients fetching one {sizes[0] / 1e9:.2f} GB JSON result at once ({elapsed:.1f} s):"
        f" data server RSS {baseline / 1e6:.0f} MB → peak {peak / 1e6:.0f} MB"
        f" (growth {(peak - baseline) / 1e6:.0f} MB)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5, help="fresh results per variant")
    parser.add_argument(
        "--memory-rows",
        type=int,
        default=4_500_000,
        help="rows of the result two clients fetch as JSON at once (about 1 GB); 0: skip it",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name, duckdb.connect() as connection:
        tmp = Path(tmp_name)
        path = tmp / "result.arrow"
        _write_arrow(connection, RESULT_SQL.format(rows=args.rows), path)
        baseline = in_process(connection, args.rows, path)
        server = DataServer(tmp / "state")
        try:
            served(server, path, args.rows, baseline, args.repeats)
            if args.memory_rows:
                memory(server, connection, args.memory_rows, tmp)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
