"""What one organisation's large file area costs another organisation, in the embedded
configuration (SQLite), servers as ``make run`` starts them (the one raised policy limit, the
rate limit, is printed).

The storage quota counts an organisation's files by a walk of its area (up to
AREA_WALK_MAX_AGE_SECONDS old, unless the API changed the area since) when a result is stored.
Organisation A has ``--files`` files in its area and runs one-row executions back to back;
organisation B meanwhile runs one-row executions (run → wait → grant → data) and its p50 and p99
are printed, and as ratios to B's figures with A idle (the peer in the same run). The walk is
made before the organisation's lock is taken: under it, it held SQLite's write lock, and every
other organisation's writes waited for it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from latency_bench import (
    four_requests,
    percentile,
    print_raised_limits,
    region_of,
    sample_datasource,
)


def fill(area: Path, files: int) -> None:
    for folder in range(files // 1000 + 1):
        place = area / "files" / f"part-{folder}"
        place.mkdir(parents=True, exist_ok=True)
        for n in range(min(1000, files - folder * 1000)):
            (place / f"{n}.csv").write_bytes(b"a\n1\n")


def b_figures(client, datasource_id: str, runs: int) -> tuple[float, float]:
    samples = [four_requests(client, datasource_id) for _ in range(runs)]
    return statistics.median(samples), percentile(samples, 0.99)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=60)
    args = parser.parse_args()
    print_raised_limits()
    with (
        region_of("embedded") as region,
        region.organization_client("A") as a,
        region.organization_client("B") as b,
    ):
        fill(region.area(a.organization_id), args.files)
        a_source, b_source = sample_datasource(a), sample_datasource(b)
        four_requests(b, b_source)
        alone = b_figures(b, b_source, args.runs)
        stop = threading.Event()
        a_runs = []

        def a_loop() -> None:
            while not stop.is_set():
                a_runs.append(four_requests(a, a_source))

        busy = threading.Thread(target=a_loop)
        busy.start()
        try:
            beside = b_figures(b, b_source, args.runs)
        finally:
            stop.set()
            busy.join()
        print(
            f"A: {args.files:,} files, one-row executions back to back, p50 "
            f"{statistics.median(a_runs) * 1000:.1f} ms ({len(a_runs)} runs)"
        )
        print(f"B alone:   p50 {alone[0] * 1000:7.1f} ms   p99 {alone[1] * 1000:7.1f} ms")
        print(
            f"B beside A: p50 {beside[0] * 1000:7.1f} ms   p99 {beside[1] * 1000:7.1f} ms"
            f"   ratios to B alone: p50 {beside[0] / alone[0]:.2f}, p99 {beside[1] / alone[1]:.2f}"
        )


if __name__ == "__main__":
    main()
