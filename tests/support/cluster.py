"""A region's queue on PostgreSQL with real worker processes, for scale-out tests and benchmarks.

Workers are ``python -m data_server work`` processes sharing one PostgreSQL schema and one result
directory, as several data server machines share a database and a bucket.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from sqlalchemy import func, select

from api_server.services import organizations
from data_server.sample import ensure_sample_database
from shared.db.engine import create_metadata_engine, create_session_factory
from shared.db.migrate import upgrade_to_head
from shared.db.models import Datasource, Execution
from shared.lifecycle import TERMINAL_STATUSES
from shared.notifications import announce_new_work
from shared.settings import Settings
from shared.state_secrets import ServerSecrets
from tests.support.processes import LOOPBACK_NETWORKS, clean_environment


class Cluster:
    """One region's metadata DB and state directory, and the worker processes started on it."""

    def __init__(self, url: str, state_dir: Path) -> None:
        self.url = url
        self.state_dir = state_dir
        self.settings = Settings(
            state_dir=state_dir,
            database_url=url,
            sample_scale=0.001,
            datasource_allowed_networks=LOOPBACK_NETWORKS,
        )
        self.engine = create_metadata_engine(url)
        self.sessions = create_session_factory(self.engine)
        self.workers: list[subprocess.Popen[bytes]] = []
        self.app_name = f"dataferry-test-{uuid.uuid4().hex[:8]}"

    def env(self, **extra: str) -> dict[str, str]:
        return clean_environment(
            {
                "DATAFERRY_STATE_DIR": str(self.state_dir),
                "DATAFERRY_DATABASE_URL": self.url,
                "DATAFERRY_SAMPLE_SCALE": "0.001",
                "DATAFERRY_DATASOURCE_ALLOWED_NETWORKS": LOOPBACK_NETWORKS,
                "DATAFERRY_WORKER_PROCESSES": "2",
                "DATAFERRY_LEASE_SECONDS": "2",
                # A worker stopped inside a transaction holds the reaper no longer than this.
                "DATAFERRY_IDLE_TRANSACTION_SECONDS": "5",
                # Workers that tests kill and start by the dozen, never serving a large first
                # fetch: no warm scratch files to prepare (data_server/warm_files.py).
                "DATAFERRY_WARM_SCRATCH_MB": "0",
                "PGAPPNAME": self.app_name,  # lets a test find (and cut) the workers' connections
                **extra,
            }
        )

    def start_worker(self, program: str = "", **extra: str) -> subprocess.Popen[bytes]:
        """``python -m data_server work``, or ``program`` (Python code) run before it."""
        log = open(self.state_dir / "workers.log", "ab")  # noqa: SIM115 - lives with the process
        command = [sys.executable, "-m", "data_server", "work"]
        if program:
            command = [
                sys.executable,
                "-c",
                f"{program}\nfrom data_server.__main__ import main\nmain(['work'])",
            ]
        process = subprocess.Popen(
            command,
            env=self.env(**extra),
            cwd=self.state_dir,
            stdout=log,
            stderr=log,
        )
        log.close()
        self.workers.append(process)
        return process

    def stop_workers(self) -> None:
        for process in self.workers:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGCONT)
                process.terminate()
        for process in self.workers:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()  # reaped: a Popen dropped while running is an error here
        self.workers.clear()

    def queue(self, sql: str, count: int = 1) -> list[str]:
        with self.sessions.begin() as session:
            datasource = session.scalars(select(Datasource).limit(1)).one()
            ids = [str(uuid.uuid4()) for _ in range(count)]
            session.add_all(
                Execution(
                    id=execution_id,
                    organization_id=datasource.organization_id,
                    datasource_id=datasource.id,
                    execution_type="sql_query",
                    sql_query=sql,
                    expanded_sql=sql,
                    bound_parameters=[],
                )
                for execution_id in ids
            )
            announce_new_work(session)
        return ids

    def rows(self, ids: list[str]) -> list[Execution]:
        with self.sessions() as session:
            return list(session.scalars(select(Execution).where(Execution.id.in_(ids))))

    def wait_until(self, condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                log = (self.state_dir / "workers.log").read_text(errors="replace")[-3000:]
                raise AssertionError(f"gave up waiting for {what}\n{log}")
            time.sleep(0.2)

    def all_terminal(self, ids: list[str]) -> bool:
        with self.sessions() as session:
            done = session.scalar(
                select(func.count())
                .select_from(Execution)
                .where(Execution.id.in_(ids), Execution.status.in_(TERMINAL_STATUSES))
            )
        return done == len(ids)

    def holder_pid(self, execution_id: str) -> int | None:
        """The pid of the worker process whose lease the execution is under, if running."""
        row = self.rows([execution_id])[0]
        if row.status != "running" or not row.lease_owner:
            return None
        return int(row.lease_owner.split(":")[1])

    def result_files(self) -> list[Path]:
        return sorted((self.state_dir / "results" / "results").glob("*.arrow"))


@contextmanager
def cluster_on_postgres(
    tmp_path: Path, schema_factory: Callable[[str], AbstractContextManager[str]]
) -> Iterator[Cluster]:
    """``schema_factory(name)`` gives the URL of an empty PostgreSQL schema of that name."""
    schema = f"dataferry_scale_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with schema_factory(schema) as url:
        cluster = Cluster(url, tmp_path)
        upgrade_to_head(cluster.engine)
        ensure_sample_database(tmp_path, 0.001)
        with cluster.sessions.begin() as session:
            organizations.create_organization(session, ServerSecrets.load(cluster.settings), "S")
        try:
            yield cluster
        finally:
            cluster.stop_workers()
            cluster.engine.dispose()
