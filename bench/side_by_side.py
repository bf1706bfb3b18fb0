"""Two revisions of dataferry side by side: is a change faster, on a machine too noisy to tell
from two runs one after the other?

Each revision gets a region of its own (a ``git worktree`` of it, servers started as ``make run``
starts them, the rate limit raised as latency_bench.py raises it), both running at once; batches
of one-row executions go to each in turn, alternating which goes first, so that whatever else
the machine does falls on both alike. Printed per revision, over the batches: executions/s and
p50 (median and minimum), and the CPU per execution of its API server, data server and sandbox
children (median and minimum: other load only ever adds to a batch's figures); and the p99 of
every execution of its batches together (the 16-client target bounds it).

    .venv/bin/python bench/side_by_side.py BASE NEW [--path four|wait|16] [--batch N]
        [--rounds N] [--configuration embedded|scale-out]

``four``: run → wait → grant → first byte, 1 client; ``wait``: run-and-wait → data, 1 client;
``16``: the four requests from 16 client processes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import latency_bench as bench

from tests.support.client import DataferryClient
from tests.support.processes import Region

ROOT = Path(__file__).resolve().parent.parent
PATHS: dict[str, Callable[[DataferryClient, str], float]] = {
    "four": bench.four_requests,
    "wait": bench.run_and_wait,
    "16": bench.four_requests,
}


@dataclass
class Batch:
    rate: float
    samples: list[float]
    api_ms: float
    data_ms: float
    children_ms: float

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.samples) * 1000


@contextmanager
def worktree(revision: str) -> Iterator[Path]:
    """A checkout of ``revision`` beside the repository's own, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="dataferry-side-") as parent:
        path = Path(parent) / "tree"
        git = ["git", "-C", str(ROOT)]
        subprocess.run([*git, "worktree", "add", "-q", "--detach", str(path), revision], check=True)
        try:
            yield path
        finally:
            subprocess.run([*git, "worktree", "remove", "--force", str(path)], check=False)


def one_batch(
    region: Region, client: DataferryClient, datasource_id: str, path: str, size: int
) -> Batch:
    before = bench.server_cpu_ms(region)
    if path == "16":
        samples, wall = bench.measure_in_processes(client, datasource_id, PATHS[path], size)
        executions = len(samples)
    else:
        samples, wall = bench.measure([client], datasource_id, PATHS[path], size)
        executions = len(samples) + 1  # measure's warm-up execution
    after = bench.server_cpu_ms(region)
    spent = {name: (after[name] - before.get(name, 0.0)) / executions for name in after}
    return Batch(
        rate=len(samples) / wall,
        samples=samples,
        api_ms=spent["API server"],
        data_ms=spent["data server"],
        children_ms=sum(ms for name, ms in spent.items() if name.startswith("child")),
    )


def report(label: str, batches: list[Batch]) -> None:
    def both(values: list[float]) -> str:
        return f"{statistics.median(values):7.2f} {min(values):7.2f}"

    print(
        f"{label:>14} {both([b.rate for b in batches])}  {both([b.p50_ms for b in batches])}"
        f"  {both([b.api_ms for b in batches])}  {both([b.data_ms for b in batches])}"
        f"  {both([b.children_ms for b in batches])}"
        f"  {bench.percentile([x for b in batches for x in b.samples], 0.99) * 1000:9.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("base")
    parser.add_argument("new")
    parser.add_argument("--path", choices=sorted(PATHS), default="four")
    parser.add_argument("--batch", type=int, default=60, help="executions per batch")
    parser.add_argument("--rounds", type=int, default=10, help="batches per revision")
    parser.add_argument("--configuration", choices=("embedded", "scale-out"), default="embedded")
    args = parser.parse_args()
    if args.configuration == "scale-out" and not os.environ.get(bench.POSTGRES_ENV):
        sys.exit(f"scale-out needs {bench.POSTGRES_ENV} (a PostgreSQL URL)")
    bench.print_raised_limits()
    with ExitStack() as stack:
        sides = []
        # Labelled by side, not revision: the same one twice (a check of the method) stays two.
        for label, revision in (("base", args.base), ("new", args.new)):
            tree = stack.enter_context(worktree(revision))
            region = stack.enter_context(bench.region_of(args.configuration, tree))
            client = stack.enter_context(region.organization_client("Side by side"))
            sides.append((f"{label} {revision}", region, client, bench.sample_datasource(client)))
        for _, region, client, datasource_id in sides:
            bench.settled(region, client, datasource_id)
        batches: dict[str, list[Batch]] = {side: [] for side, *_ in sides}
        for round_ in range(args.rounds):
            for side, region, client, datasource_id in sides[:: 1 if round_ % 2 == 0 else -1]:
                batches[side].append(
                    one_batch(region, client, datasource_id, args.path, args.batch)
                )
    print(
        f"{args.configuration}, path {args.path}, {args.rounds} batches of {args.batch} each;"
        " median and minimum over the batches"
    )
    print(
        f"{'side':>14} {'executions/s':>15}  {'p50 ms':>15}  {'API CPU ms':>15}"
        f"  {'data CPU ms':>15}  {'children ms':>15}  {'p99 ms':>9}"
    )
    for side, rows in batches.items():
        report(side[:14], rows)


if __name__ == "__main__":
    main()
