"""Retention: results are deleted once expired, executions once invisible. Idempotent; safe to run
on every data server at once (deleting a deleted object is a no-op). Like every other deleter, it
first commits the rows' change (a lifecycle transition) and then deletes the objects
(``delete_stored_data``): a failed delete leaves an object no live row offers, which the orphan
sweep removes."""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Row, select, true
from sqlalchemy.orm import Session, sessionmaker

from shared import lifecycle
from shared.datapaths import (
    FILE_DATABASE_TYPES,
    PLACES_FOLDER,
    held_paths,
    reads_in_or_around,
    remove_own_place,
)
from shared.db.models import Datasource, Execution
from shared.ids import is_resource_id
from shared.results import ResultStore, data_key_of, delete_stored_data
from shared.scratch import LOCK_NAME, is_process_directory, sweep_dead
from shared.settings import Settings

logger = logging.getLogger(__name__)

STALE_SCRATCH_SECONDS = 24 * 3600
ORPHAN_GRACE_SECONDS = 3600
_BATCH = 500
# A sweep takes batches of expired results, then of expired executions, until one comes back
# short, both together for at most this long (the maintenance thread reaps expired leases
# between sweeps): one batch a sweep (a minute) fell behind for good as soon as a region ran
# more than 500 executions a minute, its rows and result files kept past their retention and
# counted against the organisations' quotas.
RETENTION_SECONDS_PER_SWEEP = 10.0


def sweep(
    sessions: sessionmaker[Session],
    store: ResultStore,
    settings: Settings,
    *,
    with_orphans: bool = False,
) -> None:
    """``with_orphans`` adds a listing of the whole store: the caller asks for it rarely."""
    deadline = time.monotonic() + RETENTION_SECONDS_PER_SWEEP
    expired_results = _until_short(
        lambda: purge_expired_results(sessions, store, settings), deadline
    )
    deleted_executions = _until_short(
        lambda: delete_expired_executions(sessions, store, settings), deadline
    )
    removed_scratch = remove_stale_scratch(store)
    orphans = 0
    if with_orphans:
        orphans = remove_orphaned_objects(sessions, store)
        orphans += remove_orphaned_places(sessions, settings)
    if expired_results or deleted_executions or removed_scratch or orphans:
        logger.info(
            "janitor results=%d executions=%d scratch=%d orphans=%d",
            expired_results,
            deleted_executions,
            removed_scratch,
            orphans,
        )


def _until_short(batch: Callable[[], int], deadline: float) -> int:
    """Runs ``batch`` (once at least) until it handles fewer than ``_BATCH`` (none left, or
    another data server took them) or ``deadline`` passes; how many it handled in all."""
    handled = 0
    while True:
        done = batch()
        handled += done
        if done < _BATCH or time.monotonic() >= deadline:
            return handled


def purge_expired_results(
    sessions: sessionmaker[Session], store: ResultStore, settings: Settings
) -> int:
    data_keys = lifecycle.expire_results(sessions, settings, _BATCH)
    delete_stored_data(store, results=data_keys)
    return len(data_keys)


def delete_expired_executions(
    sessions: sessionmaker[Session], store: ResultStore, settings: Settings
) -> int:
    data_keys = lifecycle.delete_expired_executions(sessions, settings, _BATCH)
    delete_stored_data(store, results=data_keys)
    return len(data_keys)


def remove_orphaned_objects(
    sessions: sessionmaker[Session], store: ResultStore, now: float | None = None
) -> int:
    """Delete objects that no live row references and that are older than
    ``ORPHAN_GRACE_SECONDS``: uploads whose commit never happened (a crash between the two, a
    fenced-off attempt that died before its own clean-up), and objects whose row was purged or
    deleted but whose delete failed. No row offers their data keys, so nothing can be granted
    them again; the grace keeps an upload whose commit is still coming."""
    cutoff = (time.time() if now is None else now) - ORPHAN_GRACE_SECONDS
    removed = 0
    for prefix, column, live in (
        ("results/", Execution.data_key, Execution.data_purged_at.is_(None)),
        ("schemas/", Datasource.schema_data_key, true()),
    ):
        keys = store.keys_older_than(prefix, cutoff)
        for start in range(0, len(keys), _BATCH):
            by_data_key: dict[str, list[str]] = {}  # a result has its variants beside it
            for key in keys[start : start + _BATCH]:
                by_data_key.setdefault(data_key_of(key), []).append(key)
            with sessions() as session:
                referenced = set(
                    session.scalars(select(column).where(column.in_(by_data_key), live))
                )
            for data_key, objects in by_data_key.items():
                if data_key not in referenced:
                    for key in objects:
                        store.delete(key)
                        removed += 1
    return removed


def remove_orphaned_places(
    sessions: sessionmaker[Session], settings: Settings, now: float | None = None
) -> int:
    """Remove a deleted datasource's own place (``datasources/<id>``, and what uploads put
    there) that its deletion left, older than ``ORPHAN_GRACE_SECONDS``: the API server removes
    it once the deletion committed, and a server that died in between left it for good, out of
    every listing but counted in the quota (found by the outside probe). One that another file
    datasource of the organisation reads, in or around it, stays, as the deletion would have
    left it (``reads_in_or_around``)."""
    data_root = settings.data_root
    if not data_root.is_dir():
        return 0
    cutoff = (time.time() if now is None else now) - ORPHAN_GRACE_SECONDS
    removed = 0
    for area in data_root.iterdir():
        places = area / PLACES_FOLDER
        if not is_resource_id(area.name) or area.is_symlink() or not places.is_dir():
            continue
        live = {row.id for row in _datasources(sessions, area.name)}
        for place in places.iterdir():
            owner = place.name.split(".", 1)[0]
            if owner in live or not is_resource_id(owner):
                continue
            try:
                young = place.lstat().st_mtime > cutoff
            except FileNotFoundError:  # removed meanwhile (another data server's janitor)
                continue
            # Asked again just before it goes: a datasource may have been made to read it since.
            if young or _held(sessions, area, owner, place):
                continue
            remove_own_place(data_root, area.name, f"{PLACES_FOLDER}/{place.name}")
            removed += 1
    return removed


def _datasources(sessions: sessionmaker[Session], organization_id: str) -> list[Row[Any]]:
    """The organisation's datasources (of any type: one that became another keeps its place)."""
    with sessions() as session:
        return list(
            session.execute(
                select(Datasource.id, Datasource.database_type, Datasource.database).where(
                    Datasource.organization_id == organization_id
                )
            )
        )


def _held(sessions: sessionmaker[Session], area: Path, owner: str, place: Path) -> bool:
    """Whether the place's datasource (``owner``) exists again, or another file datasource of
    the area's organisation reads in or around it."""
    datasources = _datasources(sessions, area.name)
    held = [
        path
        for row in datasources
        if row.database_type in FILE_DATABASE_TYPES
        for path in held_paths(area, row.id, row.database_type, row.database)
    ]
    return owner in {row.id for row in datasources} or reads_in_or_around(place.resolve(), held)


def remove_stale_scratch(store: ResultStore) -> int:
    """The scratch directories of processes that are gone, at once (shared/scratch.py); any
    other scratch entry once a day old: what a live server's crashed attempt left (a sandbox
    killed mid-write), an interrupted directory making. A live attempt renews nothing here, so
    be generous."""
    live, removed = sweep_dead(store.scratch_dir)
    cutoff = time.time() - STALE_SCRATCH_SECONDS
    for path in _scratch_entries(store.scratch_dir, live):
        try:
            if path.stat().st_mtime < cutoff:
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                removed += 1
        except OSError:  # gone meanwhile, or not ours to remove: the next pass looks again
            continue
    return removed


def _scratch_entries(root: Path, live: list[Path]) -> Iterator[Path]:
    """Entries of the shared space but processes' directories (their lock alone decides: one
    whose lock could not be read this time may be a live process's, however old), then the
    entries of the live ones but their locks."""
    for path in root.iterdir():
        if not is_process_directory(path):
            yield path
    for directory in live:
        with contextlib.suppress(OSError):  # its process went meanwhile, or it is not readable
            yield from (path for path in directory.iterdir() if path.name != LOCK_NAME)
