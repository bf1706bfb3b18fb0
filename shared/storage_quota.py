"""What an organisation stores, counted against ``DATAFERRY_MAX_ORGANIZATION_STORAGE_MB``.

Three things count: every regular file in the organisation's area (uploads and files an operator
put there; an upload still arriving counts once it commits, ``tree_bytes``), the stored
results of its executions that are still retained (``result_size``: the Arrow file), and those
results' other stored representations (``variants_size``: each format and coding a client fetched,
counted once, by name, however many data servers encoded it; docs/result-formats.md). Not counted: folders an operator granted from outside the area (symlinks
are not followed) and schema documents.

Writers of results and representations check the quota under the organisation's row lock
(``locked_storage_usage``), so concurrent executions of one organisation take turns at the check
and cannot overshoot it together.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.datapaths import organization_area
from shared.db.engine import autocommit
from shared.db.models import Execution
from shared.errors import PayloadTooLarge
from shared.organization_rows import (
    count_stored_bytes,
    lock_organization,
    note_area_changed,
    stored_bytes_and_area_generation,
)
from shared.settings import Settings

MIB = 1024 * 1024


class StorageQuotaExceeded(PayloadTooLarge):
    code = "storage_quota_exceeded"


@dataclass(frozen=True)
class StorageUsage:
    files_bytes: int
    results_bytes: int
    quota_bytes: int

    @property
    def used_bytes(self) -> int:
        return self.files_bytes + self.results_bytes

    @property
    def remaining_bytes(self) -> int:
        return max(0, self.quota_bytes - self.used_bytes)

    def as_meta(self) -> dict[str, int]:
        return {
            "used_bytes": self.used_bytes,
            "quota_bytes": self.quota_bytes,
            "files_bytes": self.files_bytes,
            "results_bytes": self.results_bytes,
        }

    def exceeded_message(self) -> str:
        """Why an execution's result cannot be stored (its ``error_message``)."""
        return (
            f"The result would take the organisation past its storage quota: "
            f"{self.used_bytes / MIB:.1f} MiB of {self.quota_bytes / MIB:.0f} MiB are in use. "
            "Purge results (DELETE /executions/{id}) or delete files, then run it again."
        )

    def refusal(self, upload_bytes: int) -> StorageQuotaExceeded:
        """413 for an upload of ``upload_bytes`` that does not fit; its body may be unread, so
        the connection closes."""
        return StorageQuotaExceeded(
            f"The upload ({upload_bytes / MIB:.1f} MiB) would take the organisation past its "
            f"storage quota: {self.used_bytes / MIB:.1f} MiB of {self.quota_bytes / MIB:.0f} MiB "
            "are in use (DATAFERRY_MAX_ORGANIZATION_STORAGE_MB). Delete files, or purge results "
            "(DELETE /executions/{id}), to make room.",
            headers={"Connection": "close"},
        )


# An upload is written to a temporary file beside its target, renamed into place when whole
# (api_server/services/uploads.py). Until then it is not stored data: the commit counts it.
UPLOAD_TEMP_PREFIX, UPLOAD_TEMP_SUFFIX = ".upload-", ".part"


def is_upload_in_flight(name: str) -> bool:
    return name.startswith(UPLOAD_TEMP_PREFIX) and name.endswith(UPLOAD_TEMP_SUFFIX)


def tree_bytes(folder: Path) -> int:
    """Bytes of every regular file below ``folder`` but uploads still arriving (their commit
    counts each: several at once that do not all fit then keep those committed first); symlinks
    are neither followed nor counted."""
    total = 0
    pending = [str(folder)]
    while pending:
        try:
            entries = list(os.scandir(pending.pop()))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:  # removed while we looked: it no longer counts
                continue
            if stat.S_ISDIR(info.st_mode):
                pending.append(entry.path)
            elif stat.S_ISREG(info.st_mode) and not is_upload_in_flight(entry.name):
                total += info.st_size
    return total


# How old a walk of an organisation's area a worker's checks (before a run, and when it stores
# the result) may count its files by (walking is O(files), 44 to 65 ms for 10,000 of them), if it
# saw the area's current generation, which every change the API makes to the area raises
# (``organization_rows.note_area_changed``): what uploads and deletions did is counted at once,
# files an operator copied in by hand within this many seconds. An upload's check walks afresh.
AREA_WALK_MAX_AGE_SECONDS = 10.0


class AreaSizes:
    """The bytes of each organisation's area as last walked in this process, and the generation
    of the area that walk saw, for checks that may count by a recent walk of that generation."""

    MOST_AREAS = 10_000  # beyond: forget them all (an area's next check walks again)

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._walked: dict[Path, tuple[float, int, int]] = {}  # (when, generation, bytes)
        self._lock = threading.Lock()

    def bytes_of(self, area: Path, max_age: float, generation: int) -> int:
        """The bytes of a walk younger than ``max_age`` that saw ``generation``, or of a walk
        now; ``generation`` must have been read before this call, so that a change committed
        during the walk raises it past what is recorded."""
        with self._lock:
            walked = self._walked.get(area)
        now = self._clock()
        if walked is not None and now - walked[0] < max_age and walked[1] == generation:
            return walked[2]
        size = tree_bytes(area)
        with self._lock:
            if len(self._walked) >= self.MOST_AREAS:
                self._walked.clear()
            self._walked[area] = (now, generation, size)
        return size


_area_sizes = AreaSizes()


def storage_usage(
    session: Session, settings: Settings, organization_id: str, *, files_max_age: float = 0.0
) -> StorageUsage:
    """What the organisation stores; its files by a walk of its area at most ``files_max_age``
    seconds old that saw its current generation (0: walked now, as an upload's own check needs).
    """
    results, generation = stored_bytes_and_area_generation(session, organization_id)
    return _usage(
        settings, _area_bytes(settings, organization_id, generation, files_max_age), results
    )


def _area_bytes(settings: Settings, organization_id: str, generation: int, max_age: float) -> int:
    area = organization_area(settings.data_root, organization_id)
    return _area_sizes.bytes_of(area, max_age, generation)


def _usage(settings: Settings, files_bytes: int, results_bytes: int) -> StorageUsage:
    return StorageUsage(
        files_bytes=files_bytes,
        # Never below 0, should the counter have been taken below it (recount-storage mends it).
        results_bytes=max(0, results_bytes),
        quota_bytes=settings.max_organization_storage_mb * MIB,
    )


@dataclass(frozen=True)
class AreaWalk:
    """A walk of an organisation's area and the generation it saw (read before it)."""

    generation: int
    files_bytes: int


def walk_area(
    sessions: sessionmaker[Session],
    settings: Settings,
    organization_id: str,
    *,
    max_age: float = 0.0,
) -> AreaWalk:
    """A walk of the organisation's area, for ``locked_storage_usage``: made before the
    caller's transaction, which then takes the organisation's lock only to check and record.
    A walk under the lock would hold up the organisation's other writers, and on SQLite every
    writer of the region, for as long as it takes (minutes for millions of files). ``max_age``:
    as in ``storage_usage`` (0: walked now, as an upload's check needs)."""
    with autocommit(sessions.kw["bind"]).connect() as connection:  # no BEGIN, no ROLLBACK
        _, generation = stored_bytes_and_area_generation(connection, organization_id)
    return AreaWalk(generation, _area_bytes(settings, organization_id, generation, max_age))


def usage_and_walk_as_read(
    settings: Settings,
    organization_id: str,
    results_bytes: int,
    generation: int,
    *,
    max_age: float,
) -> tuple[StorageUsage, AreaWalk]:
    """``storage_usage`` from the organisation's stored-results counter and area generation as
    the caller read them (a worker's claim, under the organisation's lock), with the walk it
    counted the files by: a worker's check before a run, whose walk serves again
    (``walk_again``) when the result is stored."""
    walked = AreaWalk(generation, _area_bytes(settings, organization_id, generation, max_age))
    return _usage(settings, walked.files_bytes, results_bytes), walked


def walk_again(
    settings: Settings, organization_id: str, walked: AreaWalk, *, max_age: float
) -> AreaWalk:
    """``walked``, walked again if it is older than ``max_age``, for the same generation (read
    before the first walk, so still one read before this one): a worker storing a quick query's
    result reads no generation a second time. Should the API have changed the area since,
    ``locked_storage_usage`` sees the generation move and walks again."""
    generation = walked.generation
    return AreaWalk(generation, _area_bytes(settings, organization_id, generation, max_age))


def locked_storage_usage(
    session: Session,
    settings: Settings,
    organization_id: str,
    walked: AreaWalk,
    *,
    storing: int = 0,
) -> StorageUsage:
    """What the organisation stores, under its row lock (the database's write lock on SQLite),
    which the caller's transaction holds until it ends: what is counted stays true until the
    caller has recorded what it stores. The locked row carries the counter: no second read.
    Its files are ``walked`` (``walk_area``, just before), unless an upload or a deletion
    committed since, which moved the area's generation on: then the area is walked again, under
    the lock. ``storing``: the bytes of a result the caller is about to record, counted in the
    organisation's stored bytes by the statement that locks it (one statement fewer for each
    result); the usage returned is as before them, and the caller takes them off again
    (``count_stored_bytes``) if it records nothing."""
    organization = lock_organization(
        session, organization_id, adding=("stored_results_bytes", storing)
    )
    generation = organization.area_generation
    files_bytes = walked.files_bytes
    if generation != walked.generation:
        files_bytes = _area_bytes(settings, organization_id, generation, 0.0)
    return _usage(settings, files_bytes, organization.stored_results_bytes - storing)


def note_area_changed_now(sessions: sessionmaker[Session], organization_id: str) -> None:
    """``note_area_changed`` in a transaction of its own, after files were removed: the next
    check counts them gone instead of reusing a walk that saw them."""
    with sessions.begin() as session:
        note_area_changed(session, organization_id)


def charge_representation(
    sessions: sessionmaker[Session],
    settings: Settings,
    organization_id: str,
    data_key: str,
    variant: str,
    size: int,
) -> bool:
    """Count the representation ``variant`` of ``size`` bytes that is about to be stored beside
    the result ``data_key``; whether to store it. False (nothing counted) if it does not fit the
    quota or the result is gone: then it is served once and not kept. Counted already (another
    data server encoded it at the same time): True, counted once, and stored again in its place,
    the same bytes."""
    walked = walk_area(sessions, settings, organization_id)
    with sessions.begin() as session:
        usage = locked_storage_usage(session, settings, organization_id, walked)  # orders charges
        counted = session.execute(
            select(Execution.id, Execution.counted_variants).where(
                Execution.organization_id == organization_id,
                Execution.data_key == data_key,
                Execution.data_purged_at.is_(None),
            )
        ).first()
        if counted is None:
            return False
        variants = list(counted.counted_variants or [])
        if variant in variants:
            return True
        if size > usage.remaining_bytes:
            return False
        session.execute(
            update(Execution)
            .where(Execution.id == counted.id)
            .values(
                variants_size=Execution.variants_size + size,
                counted_variants=[*variants, variant],
            )
            .execution_options(synchronize_session=False)
        )
        count_stored_bytes(session, organization_id, size)
        return True
