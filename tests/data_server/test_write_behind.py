"""Result files and representations start their disk write as they grow (data_server/write_behind.py)."""

from __future__ import annotations

import itertools
import sys
from dataclasses import replace

import duckdb
import pytest

from data_server import engine, write_behind
from data_server.engine import DatasourceSpec, QueryJob
from data_server.growing_files import GrowingFile
from data_server.write_behind import WRITE_BEHIND_BYTES, WriteBehind
from tests.support.factories import SANDBOX_LIMITS

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="sync_file_range is Linux's"
)


@pytest.fixture
def started(monkeypatch) -> list[tuple[int, int, int]]:
    """The stretches whose disk write was started, as (descriptor, offset, length); the kernel
    is still asked, and must accept each."""
    calls: list[tuple[int, int, int]] = []
    real = write_behind._sync_file_range

    def recording(fd: int, offset: int, length: int, flags: int) -> int:
        calls.append((fd, offset, length))
        assert real(fd, offset, length, flags) == 0
        return 0

    monkeypatch.setattr(write_behind, "_sync_file_range", recording)
    return calls


def test_each_stretch_is_started_once_it_is_written_in_full(tmp_path, started):
    with open(tmp_path / "file", "wb", buffering=0) as sink:
        fd = sink.fileno()
        behind = WriteBehind(fd)
        sink.write(b"x" * (WRITE_BEHIND_BYTES - 1))
        behind.after_write(WRITE_BEHIND_BYTES - 1)
        assert started == []
        sink.write(b"x" * (WRITE_BEHIND_BYTES + 1))
        behind.after_write(2 * WRITE_BEHIND_BYTES)
        sink.write(b"x" * 10)
        behind.after_write(2 * WRITE_BEHIND_BYTES + 10)
    assert started == [(fd, 0, 2 * WRITE_BEHIND_BYTES)]


def test_a_result_file_starts_its_disk_write_as_it_grows(tmp_path, started):
    rows = 3 * WRITE_BEHIND_BYTES // 8  # 8-byte integers: three stretches of Arrow data
    limits = replace(SANDBOX_LIMITS, max_result_rows=rows, max_result_bytes=10 * rows)
    with duckdb.connect(str(tmp_path / "empty.duckdb")):
        pass
    job = QueryJob(
        DatasourceSpec("duckdb", str(tmp_path / "empty.duckdb")),
        f"SELECT range AS n FROM range({rows})",
        None,
        limits,
        str(tmp_path / "out.arrow"),
        str(tmp_path / "scratch"),
    )
    assert engine.run_query(job).rows == rows
    stretches = [(offset, length) for _, offset, length in started]
    assert len(stretches) >= 2 and stretches[0][0] == 0
    assert all(
        offset + length == following
        for (offset, length), (following, _) in itertools.pairwise(stretches)
    )


def test_a_representation_starts_its_disk_write_as_it_is_encoded(tmp_path, started):
    growing = GrowingFile(tmp_path / "variant")
    part = b"y" * (WRITE_BEHIND_BYTES // 4)
    for _ in range(9):
        growing.write(part)
    growing.close()
    assert [(offset, length) for _, offset, length in started] == [
        (0, WRITE_BEHIND_BYTES),
        (WRITE_BEHIND_BYTES, WRITE_BEHIND_BYTES),
    ]
