"""What the storage-quota check costs each execution as an organisation's stored results grow.

A worker reads the organisation's storage use twice per execution: before the query runs (to cap
the result) and under the organisation's lock when it stores it. It used to sum the sizes of
every stored result of the organisation; it now reads a counter on the organisation's row
(shared/organization_rows.py). For 0, 10,000 and 100,000 stored results of one organisation (and
as many of another), this times ``storage_usage`` as the worker calls it, and, as the peer in the
same run, the sum it replaced; the ratio is the check's cost over the old sum's. On SQLite, and on
PostgreSQL when DATAFERRY_TEST_POSTGRES_URL is set.

The organisation's files are counted by walking its area. Then, with 10,000 files there, it times
the worker's checks (before a run, and when a result is stored), which may count them by a walk up
to AREA_WALK_MAX_AGE_SECONDS old, against the fresh walk every check made before (and an upload's
check still makes).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.datapaths import organization_area
from shared.db.engine import create_metadata_engine
from shared.db.migrate import upgrade_to_head
from shared.db.models import Datasource, Execution, Organization
from shared.settings import Settings
from shared.storage_quota import AREA_WALK_MAX_AGE_SECONDS, storage_usage
from tests.support.postgres import POSTGRES_ENV, fresh_postgres_schema

STORED_RESULTS = (0, 10_000, 100_000)
ROUNDS = 30
RESULT_BYTES = 4096
AREA_FILES = 10_000


def old_sum(session: Session, organization_id: str) -> int:
    """The sum each execution ran twice before the counter."""
    stored = func.coalesce(Execution.result_size, 0) + Execution.variants_size
    return int(
        session.scalar(
            select(func.coalesce(func.sum(stored), 0)).where(
                Execution.organization_id == organization_id,
                Execution.data_key.is_not(None),
                Execution.data_purged_at.is_(None),
            )
        )
        or 0
    )


def seed(sessions: sessionmaker[Session], organization_id: str, datasource_id: str, n: int) -> None:
    now = datetime.now(UTC)
    rows = [
        {
            "id": str(uuid.uuid4()),
            "organization_id": organization_id,
            "datasource_id": datasource_id,
            "execution_type": "sql_query",
            "status": "completed",
            "sql_query": "SELECT 1",
            "parameters": {},
            "created_at": now,
            "updated_at": now,
            "completed_at": now,
            "result_size": RESULT_BYTES,
            "result_truncated": False,
            "data_key": f"r_{uuid.uuid4().hex}",
            "attempt": 1,
            "cancel_requested": False,
        }
        for _ in range(n)
    ]
    with sessions.begin() as session:
        for start in range(0, n, 5_000):
            session.execute(insert(Execution), rows[start : start + 5_000])
        session.execute(
            update(Organization)
            .where(Organization.id == organization_id)
            .values(stored_results_bytes=Organization.stored_results_bytes + n * RESULT_BYTES)
        )


def median_ms(call: Callable[[], object]) -> float:
    samples = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1000


@contextmanager
def database(configuration: str, tmp: Path) -> Iterator[str]:
    if configuration == "sqlite":
        yield f"sqlite:///{tmp / 'metadata.db'}"
        return
    with fresh_postgres_schema(f"dataferry_quota_bench_{os.getpid()}") as url:
        yield url


def bench(configuration: str) -> None:
    with tempfile.TemporaryDirectory() as tmp, database(configuration, Path(tmp)) as url:
        engine = create_metadata_engine(url)
        upgrade_to_head(engine)
        sessions = sessionmaker(engine)
        settings = Settings(state_dir=Path(tmp) / "state", database_url=url)
        ids = []
        with sessions.begin() as session:
            for name in ("measured", "neighbour"):
                organization = Organization(name=name)
                session.add(organization)
                session.flush()
                datasource = Datasource(
                    organization_id=organization.id, name="sample", database_type="sample"
                )
                session.add(datasource)
                session.flush()
                ids.append((organization.id, datasource.id))
        measured = ids[0][0]
        seeded = 0
        for stored in STORED_RESULTS:
            for organization_id, datasource_id in ids:
                seed(sessions, organization_id, datasource_id, stored - seeded)
            seeded = stored
            with sessions() as session:
                usage = storage_usage(session, settings, measured)
                assert usage.results_bytes == old_sum(session, measured)
                check = median_ms(lambda: storage_usage(session, settings, measured))
                peer = median_ms(lambda: old_sum(session, measured))
            print(
                f"{configuration:8} {stored:7,} stored results: quota check {check:6.2f} ms, "
                f"the sum it replaced {peer:6.2f} ms, ratio {check / peer:.2f}",
                flush=True,
            )
        if configuration == "sqlite":
            files_in_the_area(sessions, settings, measured)
        engine.dispose()


def files_in_the_area(sessions: sessionmaker[Session], settings: Settings, org: str) -> None:
    area = organization_area(settings.data_root, org)
    for folder in range(20):
        (area / f"part-{folder}").mkdir(parents=True)
        for n in range(AREA_FILES // 20):
            (area / f"part-{folder}" / f"{n}.csv").write_bytes(b"a\n1\n")
    with sessions() as session:
        before_run = median_ms(
            lambda: storage_usage(session, settings, org, files_max_age=AREA_WALK_MAX_AGE_SECONDS)
        )
        fresh = median_ms(lambda: storage_usage(session, settings, org))
    print(
        f"sqlite   {AREA_FILES:,} files in the area: check before a run {before_run:6.2f} ms, "
        f"with a fresh walk {fresh:6.2f} ms, ratio {before_run / fresh:.2f}",
        flush=True,
    )


if __name__ == "__main__":
    bench("sqlite")
    if os.environ.get(POSTGRES_ENV):
        bench("postgres")
    else:
        print(f"postgres skipped: set {POSTGRES_ENV}")
