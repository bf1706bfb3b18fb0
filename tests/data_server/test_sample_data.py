"""The sample DuckDB file: generated whole, and no draft left behind by a writer that died."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import duckdb
import pytest

from data_server import sample
from data_server.sample import ensure_sample_database, sample_database_path

SCALE = 0.001


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_draft_of_a_writer_that_died_is_removed_by_the_next_generation(tmp_path):
    target = sample_database_path(tmp_path, SCALE)
    target.parent.mkdir(parents=True)
    dead = target.with_name(f".{target.name}.{_dead_pid()}.tmp")
    dead.write_bytes(b"half a database")
    dead.with_name(dead.name + ".wal").write_bytes(b"wal")
    alive = target.with_name(f".{target.name}.{os.getppid()}.tmp")  # its writer still runs
    alive.write_bytes(b"being written")

    path = ensure_sample_database(tmp_path, SCALE)

    assert sorted(p.name for p in target.parent.iterdir()) == sorted([path.name, alive.name])
    with duckdb.connect(str(path), read_only=True) as connection:
        assert connection.execute("SELECT count(*) FROM countries").fetchone() == (8,)


def test_a_generation_that_fails_leaves_no_draft(tmp_path, monkeypatch):
    monkeypatch.setattr(sample, "_SCRIPT", "CREATE TABLE t AS SELECT 1; SELECT * FROM missing;")
    with pytest.raises(duckdb.CatalogException):
        ensure_sample_database(tmp_path, SCALE)
    assert list(sample_database_path(tmp_path, SCALE).parent.iterdir()) == []


def test_a_writer_killed_mid_generation_leaves_nothing_the_next_one_keeps(tmp_path):
    """SIGKILL runs no clean-up: the next generation removes the dead writer's draft."""
    code = (
        "import sys; from pathlib import Path; from data_server.sample import "
        "ensure_sample_database; ensure_sample_database(Path(sys.argv[1]), 0.5)"
    )
    folder = sample_database_path(tmp_path, 0.5).parent
    writer = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)])
    try:
        for _ in range(2000):  # until the draft exists (bounded: 20 s)
            if writer.poll() is not None or (folder.is_dir() and any(folder.iterdir())):
                break
            time.sleep(0.01)
    finally:
        writer.kill()
        writer.wait()
    if not any(folder.glob("*.tmp")):
        pytest.skip("the writer finished before it was killed")
    path = ensure_sample_database(tmp_path, 0.5)
    assert [p.name for p in folder.iterdir()] == [path.name]


def test_threads_of_one_process_generating_at_once_all_get_the_whole_file(tmp_path):
    """They used to share one draft (named by the pid): one thread's generation found the
    tables of another's, or its draft renamed away (the schemathesis world hit both)."""
    barrier = threading.Barrier(4)
    answers: list[object] = []

    def generate() -> None:
        barrier.wait()
        try:
            answers.append(ensure_sample_database(tmp_path, SCALE))
        except Exception as error:  # the failure is what the test looks for
            answers.append(error)

    threads = [threading.Thread(target=generate) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert answers == [sample_database_path(tmp_path, SCALE)] * 4
    with duckdb.connect(str(answers[0]), read_only=True) as connection:
        assert connection.execute("SELECT count(*) FROM customers").fetchone()[0] > 0
    assert list((tmp_path / "sample").glob("*.tmp")) == []
