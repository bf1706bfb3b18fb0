"""A worker's check before a run counts an organisation's files by a walk of its area at most
AREA_WALK_MAX_AGE_SECONDS old that saw the area's current generation (raised by every upload and
deletion through the API); the check under the organisation's lock counts a walk made just before
it, and walks again under it only if the API changed the area in between."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from shared import organization_rows, storage_quota
from shared.datapaths import organization_area
from shared.db.migrate import upgrade_to_head
from shared.db.models import Organization
from shared.organization_rows import note_area_changed, stored_bytes_and_area_generation
from shared.settings import Settings
from shared.storage_quota import (
    AREA_WALK_MAX_AGE_SECONDS,
    AreaSizes,
    locked_storage_usage,
    usage_and_walk_as_read,
    walk_again,
    walk_area,
)


@pytest.fixture
def walks(monkeypatch) -> list[Path]:
    """The folders walked, in order."""
    walked: list[Path] = []
    real_walk = storage_quota.tree_bytes

    def counted(folder):
        walked.append(folder)
        return real_walk(folder)

    monkeypatch.setattr(storage_quota, "tree_bytes", counted)
    return walked


def test_a_walk_is_reused_only_within_the_age_asked_for(tmp_path, walks):
    clock = [100.0]
    sizes = AreaSizes(lambda: clock[0])
    (tmp_path / "a.csv").write_bytes(b"x" * 10)

    assert sizes.bytes_of(tmp_path, 10, 0) == 10
    (tmp_path / "b.csv").write_bytes(b"x" * 5)
    clock[0] = 109.9
    assert sizes.bytes_of(tmp_path, 10, 0) == 10  # the walk of 9.9 s ago
    assert sizes.bytes_of(tmp_path, 0, 0) == 15  # a check that must be fresh walks again
    clock[0] = 120.0
    (tmp_path / "c.csv").write_bytes(b"x")
    assert sizes.bytes_of(tmp_path, 10, 0) == 16  # 10 s after the last walk: walked again
    assert len(walks) == 3


def test_a_walk_of_another_generation_is_not_reused(tmp_path, walks):
    sizes = AreaSizes(lambda: 0.0)
    (tmp_path / "a.csv").write_bytes(b"x" * 10)
    assert sizes.bytes_of(tmp_path, 10, 4) == 10
    (tmp_path / "b.csv").write_bytes(b"x" * 5)  # an upload, which raised the generation
    assert sizes.bytes_of(tmp_path, 10, 5) == 15
    assert sizes.bytes_of(tmp_path, 10, 5) == 15  # that walk again
    assert len(walks) == 2


def test_the_walks_remembered_are_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(AreaSizes, "MOST_AREAS", 3)
    sizes = AreaSizes(lambda: 0.0)
    for n in range(7):
        (tmp_path / str(n)).mkdir()
        sizes.bytes_of(tmp_path / str(n), 10, 0)
    assert len(sizes._walked) <= 3


@pytest.fixture
def organization(tmp_path, monkeypatch):
    """(settings, sessions, organisation id, its area) on a fresh SQLite database, with walks
    remembered by a fresh AreaSizes."""
    monkeypatch.setattr(storage_quota, "_area_sizes", AreaSizes())
    settings = Settings(state_dir=tmp_path / "state")
    engine = create_engine(f"sqlite:///{tmp_path / 'metadata.db'}")
    upgrade_to_head(engine)
    sessions = sessionmaker(engine)
    with sessions.begin() as session:
        created = Organization(name="Acme")
        session.add(created)
        session.flush()
        organization_id = created.id
    area = organization_area(settings.data_root, organization_id)
    area.mkdir(parents=True)
    (area / "a.csv").write_bytes(b"x" * 100)
    yield settings, sessions, organization_id, area
    engine.dispose()


def test_the_check_under_the_lock_walks_only_if_the_api_changed_the_area_since(
    organization, walks, monkeypatch
):
    """Walking under the organisation's lock would hold up its other writers (on SQLite every
    writer of the region) for as long as the walk takes: the walk comes before it."""
    settings, sessions, organization_id, area = organization
    walked = walk_area(sessions, settings, organization_id)
    assert walked.files_bytes == 100 and walks == [area]
    with sessions.begin() as session:
        usage = locked_storage_usage(session, settings, organization_id, walked)
    assert usage.files_bytes == 100
    assert walks == [area]  # none under the lock


def test_an_upload_committed_between_the_walk_and_the_lock_is_counted(organization, walks):
    settings, sessions, organization_id, area = organization
    walked = walk_area(sessions, settings, organization_id)
    (area / "b.csv").write_bytes(b"x" * 50)  # another upload commits meanwhile
    with sessions.begin() as session:
        note_area_changed(session, organization_id)
    with sessions.begin() as session:
        usage = locked_storage_usage(session, settings, organization_id, walked)
    assert usage.files_bytes == 150
    assert len(walks) == 2  # walked again under the lock


def test_storing_a_representation_walks_before_it_takes_the_lock(organization, walks, monkeypatch):
    settings, sessions, organization_id, _ = organization
    walks_at_lock = []
    real_lock = organization_rows.lock_organization

    def lock(session, organization_id, **counting):
        walks_at_lock.append(len(walks))
        return real_lock(session, organization_id, **counting)

    monkeypatch.setattr(storage_quota, "lock_organization", lock)
    assert not storage_quota.charge_representation(
        sessions, settings, organization_id, "r_x", "json", 1
    )
    assert walks_at_lock == [1] and len(walks) == 1


def test_the_check_before_a_run_reuses_a_walk_until_the_api_changes_the_area(organization, walks):
    settings, sessions, organization_id, area = organization

    def before_a_run() -> int:
        usage, _ = _as_a_claim_reads(settings, sessions, organization_id)
        return usage.files_bytes

    assert before_a_run() == 100
    assert before_a_run() == 100
    assert len(walks) == 1
    (area / "a.csv").unlink()  # a deletion through the API: room made counts at once
    with sessions.begin() as session:
        note_area_changed(session, organization_id)
    assert before_a_run() == 0
    assert len(walks) == 2


def test_the_walk_before_a_run_serves_its_result_unless_the_api_changed_the_area(
    organization, walks
):
    """A quick run's result is checked by the walk made before it ran, for the generation read
    then (no second read); a change the API made meanwhile moves the generation on, and the
    check under the lock walks again."""
    settings, sessions, organization_id, area = organization
    _, before_run = _as_a_claim_reads(settings, sessions, organization_id)
    again = walk_again(settings, organization_id, before_run, max_age=AREA_WALK_MAX_AGE_SECONDS)
    assert again == before_run and again.files_bytes == 100
    assert len(walks) == 1
    (area / "a.csv").unlink()
    with sessions.begin() as session:
        note_area_changed(session, organization_id)
    with sessions.begin() as session:
        usage = locked_storage_usage(session, settings, organization_id, again)
    assert usage.files_bytes == 0
    assert len(walks) == 2


def _as_a_claim_reads(settings, sessions, organization_id):
    """The check before a run, from the counter and generation read as a worker's claim reads
    them (shared.lifecycle.claims)."""
    with sessions.begin() as session:
        results, generation = stored_bytes_and_area_generation(
            session.connection(), organization_id
        )
    return usage_and_walk_as_read(
        settings, organization_id, results, generation, max_age=AREA_WALK_MAX_AGE_SECONDS
    )
