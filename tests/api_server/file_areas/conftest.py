"""The world of the file area tests: organisations A and B in both servers in process, each with
a DuckDB file and a folder in its area, links from A's area into B's, and a shared folder granted
to B alone. One per module, as before the split.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select
from starlette.testclient import TestClient

from data_server.app import create_app as create_data_app
from shared import shared_folders
from shared.db.engine import create_metadata_engine
from shared.db.migrate import upgrade_to_head
from shared.db.models import Execution
from shared.settings import Settings
from tests.support.factories import Api
from tests.support.file_areas import B_SECRET, World, write_csv_folder, write_duckdb_table


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("file-areas")
    settings = Settings(
        state_dir=base / "state",
        sample_scale=0.001,
        max_datasources=100,
        rate_limit_per_minute=1_000_000,
        rate_limit_per_hour=10_000_000,
        max_running_executions=10_000,
        worker_processes=1,
        poll_interval_seconds=0.05,
    )
    engine = create_metadata_engine(settings.database_url)
    upgrade_to_head(engine)
    engine.dispose()
    with (
        TestClient(create_data_app(settings, run_workers=True)) as data,
        Api.start(settings) as api,
    ):
        a, b = api.create_org("A"), api.create_org("B")
        a_area, b_area = api.area(a), api.area(b)
        write_duckdb_table(a_area / "a.duckdb", "A")
        write_csv_folder(a_area / "afiles", "A")
        write_duckdb_table(b_area / "b.duckdb", B_SECRET)
        write_csv_folder(b_area / "bfiles", B_SECRET)
        (a_area / "link-to-b.duckdb").symlink_to(b_area / "b.duckdb")
        (a_area / "link-to-b-area").symlink_to(b_area)
        (a_area / "link-to-b-files").symlink_to(b_area / "bfiles")
        # B alone holds a shared folder named "bonly".
        b_shared = base / "b-shared"
        b_shared.mkdir()
        write_duckdb_table(b_shared / "b.duckdb", B_SECRET)
        with api.app.state.sessions.begin() as session:
            shared_folders.grant_shared_folder(session, settings, b.id, "bonly", str(b_shared))
        a_duckdb = api.create_datasource(a.key, name="A own", database="a.duckdb")["id"]
        a_runtime = api.create_datasource(a.key, name="A runtime", database="a.duckdb")["id"]
        _settle(api)
        yield World(api, data, settings, base, a, b, a_area, b_area, a_duckdb, a_runtime)


def _settle(api: Api) -> None:
    """Wait for the refreshes that creating organisations and datasources queued, so that the
    tables stay still while a test compares them."""
    deadline = time.monotonic() + 60
    while True:
        with api.app.state.sessions() as session:
            busy = session.scalar(
                select(func.count())
                .select_from(Execution)
                .where(Execution.status.in_(("starting", "running")))
            )
        if not busy:
            return
        assert time.monotonic() < deadline, f"{busy} executions still unfinished"
        time.sleep(0.05)
