"""`make bench`: the Python client's Arrow download against curl, same result, same run.

Through real uvicorn processes on 127.0.0.1: one 10M-row execution, then rounds that alternate
``curl -o /dev/null`` of its Arrow result (the data server's own pace, nothing kept) with
``Client.executions.result(id).to_arrow()`` (the transfer and a pyarrow Table; the grant is asked
for before, as ``Client.query`` does) and, for scale, ``curl -o`` into a memory-backed file
(keeping the bytes, as a client must). The figure is the ratio of the medians to the first;
issue 15's target is ≥ 0.8. On a 2-core machine the client's CPU (writing ~430 MB into fresh
memory) competes with the data server's, so the ratio moves with whatever else runs.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from big_result import DATABASE_FILE, new_organization, region_with_big_table
from dataferry_client import Client

TARGET = 0.8
SHM = Path("/dev/shm")  # noqa: S108 - memory-backed; the bench makes a private directory in it
CPU: list[float] = []


def curl_seconds(client: Client, execution_id: str, output: str = "/dev/null") -> float:
    grant = client.executions.grant(execution_id)
    url = f"{client.config.data_url}/data/{grant.data_key}?format=arrow"
    started = time.perf_counter()
    subprocess.run(
        ["curl", "-sS", "--fail", "-o", output, url, "-H", f"Authorization: Data {grant.data_access_token}"],
        check=True,
    )  # fmt: skip
    elapsed = time.perf_counter() - started
    if output != "/dev/null":
        Path(output).unlink()
    return elapsed


def client_seconds(client: Client, execution_id: str, rows: int) -> float:
    result = client.executions.result(execution_id)  # the grant, as Client.query asks for it
    started, cpu = time.perf_counter(), time.process_time()
    table = result.to_arrow()
    elapsed = time.perf_counter() - started
    CPU.append(time.process_time() - cpu)
    assert table.num_rows == rows
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with (
        region_with_big_table(args.rows) as region,
        Client(
            region.api_url, new_organization(region)["api_key"], data_url=region.data_url
        ) as client,
    ):
        datasource = client.datasources.create(
            name="bench", database_type="duckdb", database=DATABASE_FILE
        )
        started = time.perf_counter()
        result = client.query(datasource.id, "SELECT * FROM big", timeout=600)
        print(
            f"Client.query of {args.rows:,} rows (run and wait)   {time.perf_counter() - started:6.2f} s"
            f"   ({result.execution.result_size / 1e6:.0f} MB stored)"
        )
        curl, kept, python = [], [], []
        with tempfile.TemporaryDirectory(dir=SHM if SHM.is_dir() else None) as in_memory:
            for _ in range(args.rounds):
                curl.append(curl_seconds(client, result.execution_id))
                python.append(client_seconds(client, result.execution_id, args.rows))
                kept.append(curl_seconds(client, result.execution_id, f"{in_memory}/r.arrows"))
        curl_rate = args.rows / statistics.median(curl)
        client_rate = args.rows / statistics.median(python)
        ratio = client_rate / curl_rate
        print(
            f"curl -o /dev/null (Arrow)              {curl_rate / 1e6:8.2f} M rows/s   (median of {args.rounds})"
        )
        print(
            f"Client…result(id).to_arrow()           {client_rate / 1e6:8.2f} M rows/s   ratio {ratio:.2f} to curl (target ≥ {TARGET})"
        )
        print(
            f"  for scale: curl -o <tmpfs file> (keeps the bytes, as the client must) "
            f"{args.rows / statistics.median(kept) / 1e6:.2f} M rows/s; "
            f"client ratio to it {statistics.median(kept) / statistics.median(python):.2f}"
        )
        print(
            f"  client CPU per to_arrow: median {statistics.median(CPU):.2f} s "
            f"(wall {statistics.median(python):.2f} s; curl wall {statistics.median(curl):.2f} s)"
        )
        print(
            f"  per round, client/curl: {', '.join(f'{c / p:.2f}' for c, p in zip(curl, python, strict=True))}"
        )
        if ratio < TARGET:
            print(
                f"  below the target of {TARGET}: curl to /dev/null keeps no bytes, the client "
                "writes every one into memory (compare the tmpfs line)"
            )


if __name__ == "__main__":
    main()
