"""`make bench`: the one-row execution path of an organisation with a long history, against the
same organisation's path when it had none, in each configuration, servers as `make run` starts
them (the raised rate limit is printed).

A deployment keeps every execution for ``DATAFERRY_EXECUTION_RETENTION_HOURS``: an organisation
that runs a query a second keeps some 86,000 of them at the default 24 hours. Every claim and
every run reads that organisation's unfinished executions; were any of their statements to read
its finished ones too, each execution would slow down as the history grows (a claim's slot
check once took 13 ms with 50,000, under SQLite's write lock; tests/shared/test_queue_history.py
counts what each statement reads). Here the four-request path (run → wait → grant → first
byte, bench/latency_bench.py's) is measured with one client on a fresh organisation, then again
after ``--history`` finished executions were added to its table directly (running them through
the API would take most of an hour), analysed as autovacuum would on PostgreSQL. The figure is
the ratio of the two p50s: about 1.0 when nothing reads the history.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from latency_bench import (
    four_requests,
    in_each_configuration,
    measure,
    print_raised_limits,
    region_of,
    sample_datasource,
    settled,
)

from shared.db.engine import create_metadata_engine
from tests.support.history import add_finished_executions


def bench(configuration: str, runs: int, history: int) -> None:
    with region_of(configuration) as region, region.organization_client("Bench") as client:
        datasource_id = sample_datasource(client)
        settled(region, client, datasource_id)
        fresh = statistics.median(measure([client], datasource_id, four_requests, runs)[0])
        settings = region.settings()
        engine = create_metadata_engine(settings.database_url)
        try:
            add_finished_executions(engine, datasource_id, history)
        finally:
            engine.dispose()
        settled(region, client, datasource_id)
        kept = statistics.median(measure([client], datasource_id, four_requests, runs)[0])
        print(
            f"{configuration:9} one-row, 4 requests, 1 client   p50 {fresh * 1000:6.1f} ms fresh,"
            f" {kept * 1000:6.1f} ms with {history:,} finished executions:"
            f" ratio {kept / fresh:.2f} (about 1.0: nothing reads the history)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=200, help="executions per figure")
    parser.add_argument("--history", type=int, default=50_000, help="finished executions added")
    args = parser.parse_args()
    print_raised_limits()
    in_each_configuration(lambda configuration: bench(configuration, args.runs, args.history))


if __name__ == "__main__":
    main()
