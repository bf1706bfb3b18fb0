"""The janitor on both result stores: expired results go, orphaned uploads go, and nothing that a
row still references is touched. Every sweep is idempotent."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from api_server.services import executions
from data_server import janitor
from shared.db.models import Datasource, Execution, utcnow
from shared.ids import new_resource_id
from shared.lifecycle import ExecutionType
from shared.results import (
    LocalResultStore,
    ResultGone,
    S3ResultStore,
    result_object_key,
    schema_object_key,
    variant_object_key,
)
from shared.tokens import Scope, new_data_key

LATER = time.time() + 2 * janitor.ORPHAN_GRACE_SECONDS  # every object is past the grace by then


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path, monkeypatch):
    if request.param == "local":
        return LocalResultStore(tmp_path / "results")
    object_store = request.getfixturevalue("object_store")
    for name, value in object_store.settings_env("s3://unused").items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    return S3ResultStore(
        object_store.new_bucket_url(), tmp_path / "scratch", endpoint_url=object_store.endpoint_url
    )


def _completed_execution(api, org, data_key: str, completed_hours_ago: float = 0) -> str:
    with api.app.state.sessions.begin() as session:
        datasource = session.get(Datasource, org.sample_datasource_id)
        execution = executions.create_system_execution(session, datasource, ExecutionType.SQL_QUERY)
        execution.status = "completed"
        execution.data_key = data_key
        execution.completed_at = utcnow() - timedelta(hours=completed_hours_ago)
        return execution.id


def _exists(store, key: str) -> bool:
    try:
        store.read_bytes(key)
    except ResultGone:
        return False
    return True


def test_orphans_go_and_referenced_objects_stay(api, store):
    org = api.create_org()
    kept_result = new_data_key(Scope.EXECUTION_RESULT)
    orphan_result = new_data_key(Scope.EXECUTION_RESULT)
    orphan_schema = new_data_key(Scope.DATASOURCE_SCHEMA)
    _completed_execution(api, org, kept_result)
    with api.app.state.sessions.begin() as session:
        kept_schema = session.get(Datasource, org.sample_datasource_id).schema_data_key
        if kept_schema is None:  # no refresh ran in process: record one as a worker would
            kept_schema = new_data_key(Scope.DATASOURCE_SCHEMA)
            session.execute(
                update(Datasource)
                .where(Datasource.id == org.sample_datasource_id)
                .values(schema_data_key=kept_schema)
            )
    keys = {
        "kept result": result_object_key(kept_result),
        "kept variant": variant_object_key(kept_result, "csv.gz"),
        "kept schema": schema_object_key(kept_schema),
        "orphan result": result_object_key(orphan_result),
        "orphan variant": variant_object_key(orphan_result, "json"),
        "other orphan variant": variant_object_key(orphan_result, "parquet"),
        "orphan schema": schema_object_key(orphan_schema),
    }
    for key in keys.values():
        store.put_bytes(key, b"x")

    sessions = api.app.state.sessions
    assert janitor.remove_orphaned_objects(sessions, store) == 0, "within the grace: kept"
    assert janitor.remove_orphaned_objects(sessions, store, now=LATER) == 4
    assert {name: _exists(store, key) for name, key in keys.items()} == {
        "kept result": True,
        "kept variant": True,
        "kept schema": True,
        "orphan result": False,
        "orphan variant": False,
        "other orphan variant": False,
        "orphan schema": False,
    }
    assert janitor.remove_orphaned_objects(sessions, store, now=LATER) == 0


def test_an_orphan_of_one_organisation_is_not_saved_by_a_row_of_another(api, store):
    """References are looked up by data key, which is random and never shared across rows."""
    first, second = api.create_org("A"), api.create_org("B")
    mine = new_data_key(Scope.EXECUTION_RESULT)
    _completed_execution(api, first, mine)
    orphan = new_data_key(Scope.EXECUTION_RESULT)
    _completed_execution(api, second, new_data_key(Scope.EXECUTION_RESULT))
    for data_key in (mine, orphan):
        store.put_bytes(result_object_key(data_key), b"x")
    assert janitor.remove_orphaned_objects(api.app.state.sessions, store, now=LATER) == 1
    assert _exists(store, result_object_key(mine))
    assert not _exists(store, result_object_key(orphan))


def test_an_object_whose_row_was_purged_is_an_orphan(api, store):
    """A purge commits first and deletes after: if that delete failed, the sweep finishes it."""
    org = api.create_org()
    purged, kept = new_data_key(Scope.EXECUTION_RESULT), new_data_key(Scope.EXECUTION_RESULT)
    purged_id = _completed_execution(api, org, purged)
    _completed_execution(api, org, kept)
    with api.app.state.sessions.begin() as session:
        session.get(Execution, purged_id).data_purged_at = utcnow()
    for data_key in (purged, kept):
        store.put_bytes(result_object_key(data_key), b"x")
    assert janitor.remove_orphaned_objects(api.app.state.sessions, store, now=LATER) == 1
    assert not _exists(store, result_object_key(purged))
    assert _exists(store, result_object_key(kept))


def test_expired_results_are_purged_once(api, store):
    org = api.create_org()
    expired, fresh = new_data_key(Scope.EXECUTION_RESULT), new_data_key(Scope.EXECUTION_RESULT)
    expired_id = _completed_execution(api, org, expired, completed_hours_ago=25)
    fresh_id = _completed_execution(api, org, fresh)
    for data_key in (expired, fresh):
        store.put_bytes(result_object_key(data_key), b"x")
    sessions, settings = api.app.state.sessions, api.settings

    assert janitor.purge_expired_results(sessions, store, settings) == 1
    assert janitor.purge_expired_results(sessions, store, settings) == 0
    assert not _exists(store, result_object_key(expired))
    assert _exists(store, result_object_key(fresh))
    with sessions() as session:
        assert session.get(Execution, expired_id).data_purged_at is not None
        assert session.get(Execution, fresh_id).data_purged_at is None


def test_a_full_sweep_with_orphans_runs_on_an_empty_store(api, store):
    janitor.sweep(api.app.state.sessions, store, api.settings, with_orphans=True)
    assert janitor.remove_orphaned_objects(api.app.state.sessions, store, now=LATER) == 0


def test_a_sweep_takes_batches_until_the_expired_are_gone(api, store, monkeypatch):
    """One batch a sweep fell behind for good once a region ran more executions a minute than a
    batch holds: expired rows and their results stayed, counted against the quota."""
    monkeypatch.setattr(janitor, "_BATCH", 2)
    org = api.create_org()
    keys = [new_data_key(Scope.EXECUTION_RESULT) for _ in range(5)]
    ids = [_completed_execution(api, org, key, completed_hours_ago=25) for key in keys]
    for data_key in keys:
        store.put_bytes(result_object_key(data_key), b"x")
    sessions = api.app.state.sessions
    with sessions.begin() as session:
        session.execute(
            update(Execution)
            .where(Execution.id.in_(ids[:3]))
            .values(created_at=utcnow() - timedelta(hours=25))
        )

    janitor.sweep(sessions, store, api.settings)

    assert not any(_exists(store, result_object_key(key)) for key in keys)
    with sessions() as session:
        left = {e.id: e for e in session.scalars(select(Execution).where(Execution.id.in_(ids)))}
    assert sorted(left) == sorted(ids[3:])  # the three created over a day ago are deleted
    assert all(e.data_purged_at is not None for e in left.values())


def test_a_sweep_stops_taking_batches_after_its_time(api, store, monkeypatch):
    monkeypatch.setattr(janitor, "_BATCH", 1)
    monkeypatch.setattr(janitor, "RETENTION_SECONDS_PER_SWEEP", 0)
    org = api.create_org()
    keys = [new_data_key(Scope.EXECUTION_RESULT) for _ in range(3)]
    for data_key in keys:
        _completed_execution(api, org, data_key, completed_hours_ago=25)
        store.put_bytes(result_object_key(data_key), b"x")

    janitor.sweep(api.app.state.sessions, store, api.settings)

    assert sum(_exists(store, result_object_key(key)) for key in keys) == 2


def test_a_file_no_key_names_is_left_alone_and_stops_no_sweep(api, store):
    """A name no key has (a desktop's .DS_Store, an editor's backup, a file system's own file)
    made every key check refuse it, and the sweep that listed it raised, every 5 s."""
    org = api.create_org()
    orphan, kept = new_data_key(Scope.EXECUTION_RESULT), new_data_key(Scope.EXECUTION_RESULT)
    _completed_execution(api, org, kept)
    for data_key in (orphan, kept):
        store.put_bytes(result_object_key(data_key), b"x")
    if isinstance(store, LocalResultStore):
        strays = [store.root / "results" / name for name in (".DS_Store", "a b", "r_x.arrow~")]
        for stray in strays:
            stray.write_bytes(b"not the store's")
    else:
        strays = []
        with store.fs.open_output_stream(f"{store.base}/results/.DS_Store") as stream:
            stream.write(b"not the store's")

    assert janitor.remove_orphaned_objects(api.app.state.sessions, store, now=LATER) == 1
    janitor.sweep(api.app.state.sessions, store, api.settings, with_orphans=True)

    assert not _exists(store, result_object_key(orphan))
    assert _exists(store, result_object_key(kept))
    assert all(stray.read_bytes() == b"not the store's" for stray in strays)


def test_a_place_a_deleted_datasource_left_goes_once_old_unless_another_reads_it(api):
    """Found by the outside probe: an API server killed between a datasource's deletion and the
    removal of its own place left the place for good, its files out of every listing but
    counted in the quota. The hourly sweep removes it; a live datasource's place, and one that
    another datasource reads (as the deletion itself would have left it), stay."""
    org = api.create_org()
    places = api.area(org) / "datasources"
    left, adopted = places / new_resource_id(), places / new_resource_id()
    for place in (left, adopted):
        place.mkdir(parents=True)
        (place / "orders.csv").write_text("id\n1\n")
    reader = api.create_datasource(
        org.key, name="adopter", database_type="files", database=f"datasources/{adopted.name}"
    )
    own = api.create_datasource(org.key, name="own", database_type="files", database=None)
    own_place = places / own["id"]
    own_place.mkdir(exist_ok=True)
    sessions, settings = api.app.state.sessions, api.settings
    assert janitor.remove_orphaned_places(sessions, settings) == 0  # too young yet
    later = time.time() + janitor.ORPHAN_GRACE_SECONDS + 1
    around = api.create_datasource(
        org.key, name="everything", database_type="files", database="datasources"
    )  # reads every place: while it does, none goes
    assert janitor.remove_orphaned_places(sessions, settings, now=later) == 0
    assert api.delete(f"/datasources/{around['id']}", org.key).status_code == 204
    assert janitor.remove_orphaned_places(sessions, settings, now=later) == 1
    assert not left.exists()
    assert adopted.is_dir() and own_place.is_dir()
    assert api.delete(f"/datasources/{reader['id']}", org.key).status_code == 204
    assert janitor.remove_orphaned_places(sessions, settings, now=later) == 1  # read by none now
    assert not adopted.exists() and own_place.is_dir()
