"""A worker's check before a run counts an organisation's files by a walk of its area at most
AREA_WALK_MAX_AGE_SECONDS old; every other check walks it afresh."""

from __future__ import annotations

from shared import storage_quota
from shared.storage_quota import AreaSizes


def test_a_walk_is_reused_only_within_the_age_asked_for(tmp_path, monkeypatch):
    walks: list[object] = []
    real_walk = storage_quota.tree_bytes

    def counted(folder):
        walks.append(folder)
        return real_walk(folder)

    monkeypatch.setattr(storage_quota, "tree_bytes", counted)
    clock = [100.0]
    sizes = AreaSizes(lambda: clock[0])
    (tmp_path / "a.csv").write_bytes(b"x" * 10)

    assert sizes.bytes_of(tmp_path, 10) == 10
    (tmp_path / "b.csv").write_bytes(b"x" * 5)
    clock[0] = 109.9
    assert sizes.bytes_of(tmp_path, 10) == 10  # the walk of 9.9 s ago
    assert sizes.bytes_of(tmp_path, 0) == 15  # a check that must be fresh walks again
    clock[0] = 120.0
    (tmp_path / "c.csv").write_bytes(b"x")
    assert sizes.bytes_of(tmp_path, 10) == 16  # 10 s after the last walk: walked again
    assert len(walks) == 3


def test_the_walks_remembered_are_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(AreaSizes, "MOST_AREAS", 3)
    sizes = AreaSizes(lambda: 0.0)
    for n in range(7):
        (tmp_path / str(n)).mkdir()
        sizes.bytes_of(tmp_path / str(n), 10)
    assert len(sizes._walked) <= 3
