"""Where the JSON formats' encoding time goes: each column's texts (data_server/json_text.py)
and the row bodies of one slice, per row, on the issue's 7-column table.

Thread CPU time, best of ``--repeats`` runs: on this shared machine wall time swings by a third
from minute to minute, the CPU one thread spends much less. Ratios are to Arrow's cast of the
same column to text (a kernel in C++), run in the same loop.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.formats_bench import RESULT_SQL
from data_server import encoders, json_text


def per_row(work: Callable[[], Any], rows: int, repeats: int) -> float:
    """Nanoseconds of this thread's CPU per row, best of ``repeats``."""
    work()
    best = float("inf")
    for _ in range(repeats):
        started = time.thread_time()
        work()
        best = min(best, time.thread_time() - started)
    return best / rows * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=50_000, help="rows of the slice")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    table = duckdb.sql(RESULT_SQL.format(rows=args.rows)).to_arrow_table()
    batch = table.combine_chunks().to_batches()[0]
    rows = batch.num_rows
    print(f"{rows} rows, thread CPU per row, best of {args.repeats}")
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        texts = per_row(
            lambda c=column: json_text.column_fragment(c, encoders._json_values), rows, args.repeats
        )
        cast = per_row(lambda c=column: pc.cast(c, pa.string()), rows, args.repeats)
        print(
            f"  column {name:6} {column.type!s:14} {texts:6.1f} ns   ratio to Arrow's cast {texts / cast:.2f}"
        )
    for fmt, keys, prefix, suffix in (
        ("json", None, ",", ""),
        ("ndjson", batch.schema.names, "", "\n"),
    ):
        body = per_row(
            lambda k=keys, p=prefix, s=suffix: json_text.rows_body(
                batch, encoders._json_values, keys=k, prefix=p, suffix=s
            ),
            rows,
            args.repeats,
        )
        print(f"  rows of {fmt:6} {body:6.1f} ns   ({1e3 / body:.2f} M rows/s on one thread)")


if __name__ == "__main__":
    main()
