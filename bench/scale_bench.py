"""Scale figure for `make bench`: executions per second on PostgreSQL with 1 and 2 data servers.

Each data server is a `python -m data_server work` process with 2 sandbox children, sharing one
PostgreSQL schema and one result directory. The workers are started and warmed up first, then
EXECUTIONS one-row queries are queued at once and timed until the last is completed. The figure
that matters is the ratio of the two runs; on this shared 2-core machine, 2 processes compete for
the same cores, so the ratio shows the queue's overhead rather than hardware scaling.
Needs DATAFERRY_TEST_POSTGRES_URL (as `make test` on CI does); skipped without it.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.cluster import cluster_on_postgres
from tests.support.postgres import POSTGRES_ENV, fresh_postgres_schema

EXECUTIONS = 600


def executions_per_second(processes: int) -> float:
    with (
        tempfile.TemporaryDirectory() as tmp,
        cluster_on_postgres(Path(tmp), fresh_postgres_schema) as cluster,
    ):
        for _ in range(processes):
            cluster.start_worker()
        warm = cluster.queue("SELECT 0 AS warm", count=4 * processes)
        cluster.wait_until(lambda: cluster.all_terminal(warm), 120, "the warm-up")
        ids = cluster.queue("SELECT 1 AS one", count=EXECUTIONS)
        started = time.perf_counter()
        cluster.wait_until(lambda: cluster.all_terminal(ids), 600, "the measured executions")
        elapsed = time.perf_counter() - started
        assert {row.status for row in cluster.rows(ids)} == {"completed"}
        return EXECUTIONS / elapsed


def main() -> None:
    if not os.environ.get(POSTGRES_ENV):
        print(f"scale: skipped, set {POSTGRES_ENV} to a PostgreSQL URL")
        return
    one = executions_per_second(1)
    two = executions_per_second(2)
    print(f"{EXECUTIONS} one-row executions on PostgreSQL, LISTEN/NOTIFY pick-up:")
    print(f"  1 data server process:  {one:7.1f} executions/s  (1.00)")
    print(f"  2 data server processes: {two:7.1f} executions/s  ({two / one:.2f})")


if __name__ == "__main__":
    main()
