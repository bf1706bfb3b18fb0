"""End-to-end figures for `make bench`: one run, every figure also as a ratio to the baseline.

Baseline: in-process DuckDB → Arrow streaming of a 10M-row result. Then, through real uvicorn
processes on 127.0.0.1: a ``SELECT *`` of it run to a stored result (run → completed), then the
data server's Arrow, JSON and NDJSON fetch of the stored result and its RSS growth meanwhile.
One-row latency and throughput are bench/latency_bench.py's: with a floor, both configurations
and the rate limit raised, which 16 clients need.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from big_result import DATABASE_FILE, RESULT_SQL, new_organization, region_with_big_table

from tests.support.client import DataferryClient


def baseline_rows_per_second(rows: int) -> float:
    connection = duckdb.connect()
    started = time.perf_counter()
    reader = connection.execute(RESULT_SQL.format(rows=rows)).to_arrow_reader(65536)
    total = sum(batch.num_rows for batch in reader)
    elapsed = time.perf_counter() - started
    assert total == rows
    return rows / elapsed


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def timed_fetch(
    client: DataferryClient, grant: dict, fmt: str, pid: int
) -> tuple[float, int, int, str]:
    """Seconds to stream the whole body, bytes received, peak RSS growth (KiB) meanwhile, and the
    content coding the server chose for what httpx accepts (gzip, deflate, br, zstd)."""
    before, peak, done = rss_kib(pid), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_kib(pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    headers = {"Authorization": f"Data {grant['data_access_token']}"}
    received = 0
    started = time.perf_counter()
    with client.http.stream(
        "GET",
        f"{client.data_url}/data/{grant['data_key']}",
        params={"format": fmt},
        headers=headers,
        timeout=600,
    ) as response:
        assert response.status_code == 200, response.read()
        coding = response.headers.get("content-encoding", "identity")
        for chunk in response.iter_raw(1 << 20):
            received += len(chunk)
    elapsed = time.perf_counter() - started
    done.set()
    sampler.join()
    return elapsed, received, max(0, peak[0] - before), coding


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000_000)
    args = parser.parse_args()

    baseline = baseline_rows_per_second(args.rows)
    print(f"baseline in-process DuckDB→Arrow   {baseline / 1e6:8.2f} M rows/s   ratio 1.00")

    with region_with_big_table(args.rows) as region:
        client = DataferryClient(
            region.api_url, region.data_url, new_organization(region)["api_key"]
        )
        created = client.create_duckdb_datasource("bench", DATABASE_FILE)
        started = time.perf_counter()
        execution = client.run(created, "SELECT * FROM big")
        done = client.wait_until_done(execution["execution_id"], timeout=600)
        assert done["execution_status"] == "completed", done
        run_seconds = time.perf_counter() - started
        print(
            f"execution of SELECT * ({args.rows:,} rows)   {args.rows / run_seconds / 1e6:8.2f} M rows/s   ratio {args.rows / run_seconds / baseline:.2f}   ({done['result_size'] / 1e6:.0f} MB stored)"
        )
        pid = region.data_server.pid
        for fmt in ("arrow", "json", "ndjson"):
            grant = client.grant(execution["execution_id"])
            seconds, size, growth, coding = timed_fetch(client, grant, fmt, pid)
            rate = args.rows / seconds
            print(
                f"data server fetch {fmt:7} {coding:9} {rate / 1e6:8.2f} M rows/s   ratio {rate / baseline:.2f}   ({size / 1e6:.0f} MB, RSS growth {growth / 1024:.0f} MB)"
            )


if __name__ == "__main__":
    main()
