"""Encoder throughput without HTTP: each result format against in-process DuckDB → Arrow.

Baseline: in-process DuckDB streaming the result as Arrow batches. Then the stored Arrow IPC file
is encoded in every format by ``data_server.formats.encode_result`` (the data server's code path
minus the socket), and each rate is printed as a ratio to the baseline.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data_server.formats import ResultFormat, encode_result

RESULT_SQL = (
    "SELECT range AS id, range * 0.5 AS amount, 'name' || range AS name,"
    " DATE '2024-01-01' + (range % 365)::INTEGER AS day FROM range({rows})"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000_000)
    args = parser.parse_args()
    rows = args.rows

    with tempfile.TemporaryDirectory() as tmp, duckdb.connect() as connection:
        path = str(Path(tmp) / "result.arrow")
        started = time.perf_counter()
        reader = connection.execute(RESULT_SQL.format(rows=rows)).to_arrow_reader(65536)
        with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, reader.schema) as writer:
            for batch in reader:
                writer.write_batch(batch)
        stored = time.perf_counter() - started

        started = time.perf_counter()
        reader = connection.execute(RESULT_SQL.format(rows=rows)).to_arrow_reader(65536)
        assert sum(batch.num_rows for batch in reader) == rows
        baseline = rows / (time.perf_counter() - started)
        print(f"baseline in-process DuckDB→Arrow {baseline / 1e6:8.2f} M rows/s   ratio 1.00")
        print(
            f"store as Arrow IPC file          {rows / stored / 1e6:8.2f} M rows/s"
            f"   ratio {rows / stored / baseline:.2f}"
        )
        for fmt in ResultFormat:
            started = time.perf_counter()
            size = sum(map(len, encode_result(pa.OSFile(path, "rb"), fmt)))
            rate = rows / (time.perf_counter() - started)
            print(
                f"encode {fmt.name_in_query:8}                 {rate / 1e6:8.2f} M rows/s"
                f"   ratio {rate / baseline:.2f}   ({size / 1e6:.0f} MB)"
            )


if __name__ == "__main__":
    main()
