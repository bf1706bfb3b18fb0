"""A result is on disk before its execution says completed: the sandbox writes and syncs the
file, the store renames it and syncs the directory entry (issue 13 keeps this guarantee)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import duckdb
import pytest

from data_server import engine
from data_server.engine import DatasourceSpec, QueryJob
from shared.results import LocalResultStore
from tests.support.factories import SANDBOX_LIMITS

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads descriptors' paths in /proc/self/fd"
)


@pytest.fixture
def synced(monkeypatch) -> list[str]:
    """The paths ``os.fsync`` was called on, in order; each call still reaches the kernel."""
    paths: list[str] = []
    real = os.fsync

    def recording(fd: int) -> None:
        paths.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", recording)
    return paths


def test_the_sandbox_syncs_a_result_file_before_it_answers(tmp_path, synced):
    with duckdb.connect(str(tmp_path / "empty.duckdb")):
        pass
    result = tmp_path / "result.arrow"
    job = QueryJob(
        DatasourceSpec("duckdb", str(tmp_path / "empty.duckdb")),
        "SELECT 1 AS one",
        None,
        SANDBOX_LIMITS,
        str(result),
        str(tmp_path),
    )
    assert engine.run_query(job).rows == 1
    assert str(result) in synced


@pytest.mark.parametrize("already", [True, False])
def test_publishing_syncs_the_file_unless_its_writer_did_and_always_the_directory(
    tmp_path, synced, already
):
    store = LocalResultStore(tmp_path / "store")
    local = store.temp_path("written")
    local.write_bytes(b"result")
    store.publish(local, "results/r_abc.arrow", synced=already)
    directory = str((tmp_path / "store" / "results").resolve())
    assert synced == ([] if already else [str(local.resolve())]) + [directory]
    assert Path(directory, "r_abc.arrow").read_bytes() == b"result"
