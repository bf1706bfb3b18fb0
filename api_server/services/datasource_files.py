"""The files of a datasource in its organisation's area: where they are, listed, deleted.

A ``files`` datasource's folder holds the files it makes views of; a ``duckdb`` or ``sqlite``
datasource has one database file. Every request resolves the datasource's path again, confined to
the organisation's area (``shared.datapaths``), and writes go only into the area itself, never into
a folder an operator granted. Uploads are ``uploads``.
"""

from __future__ import annotations

import errno
import operator
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session, sessionmaker

from api_server.principals import Principal
from api_server.services import datasources, executions
from api_server.services.listing import CollectionQuery
from shared.datapaths import (
    FILE_DATABASE_TYPES,
    ensure_organization_area,
    normalize_datasource_path,
    resolve_datasource_path,
    shared_folder_name,
)
from shared.db.engine import one_of
from shared.db.models import Datasource, Execution
from shared.errors import AppError, Conflict, NotFound, Unprocessable
from shared.file_formats import (
    DATABASE_FILE_FORMATS,
    GLOB_CHARACTERS,
    FileKind,
    holds_glob_characters,
    view_file_kind,
)
from shared.lifecycle import ExecutionStatus, ExecutionType
from shared.settings import Settings
from shared.shared_folders import granted_folder
from shared.storage_quota import StorageUsage, note_area_changed_now, storage_usage

MAX_NAME_BYTES = 255
_FILES_TYPE = "files"


class InvalidFileName(Unprocessable):
    code = "invalid_file_name"


class FileNotFound(NotFound):
    code = "file_not_found"


class WrongDatabaseType(Conflict):
    code = "wrong_database_type"


class DatasourceReadOnly(Conflict):
    code = "datasource_read_only"


class DatasourceUnavailable(Conflict):
    code = "datasource_unavailable"


class FileNameTaken(Conflict):
    code = "file_name_taken"


@dataclass(frozen=True)
class FileEntry:
    name: str
    format: str
    size: int
    modified_at: datetime


# ---------------------------------------------------------------------------- names


def check_file_name(name: str) -> tuple[str, FileKind]:
    """One path segment a files datasource reads: the name as stored (NFC) and its kind.

    The characters follow the datasource path rules (``shared.datapaths``: no backslash, control,
    invisible or look-alike characters, nothing NFKC would change); on top of those a name is a
    single segment (no ``/``), does not start with a dot (``.``, ``..`` and the temporary files
    of uploads), holds no glob syntax (``shared.file_formats.GLOB_CHARACTERS``), fits a file
    system's 255 bytes, and has a suffix the views read.
    """
    if "/" in name:
        raise InvalidFileName(
            "A file name is one path segment: it may not hold '/'.", parameter="name"
        )
    if name != name.strip():
        raise InvalidFileName("A file name may not start or end with a space.", parameter="name")
    if name.startswith("."):
        raise InvalidFileName("A file name may not start with a dot.", parameter="name")
    if holds_glob_characters(name):
        raise InvalidFileName(
            f"A file name may not hold any of {' '.join(sorted(GLOB_CHARACTERS))}: DuckDB would "
            "read it as a pattern matching other files.",
            parameter="name",
        )
    try:
        normalized = normalize_datasource_path(name)  # NFC: the name as stored
    except AppError as exc:
        raise InvalidFileName(exc.detail, parameter="name") from None
    if normalized.startswith("."):
        raise InvalidFileName("A file name may not start with a dot.", parameter="name")
    if len(normalized.encode()) > MAX_NAME_BYTES:
        raise InvalidFileName(
            f"A file name takes at most {MAX_NAME_BYTES} bytes (UTF-8).", parameter="name"
        )
    kind = view_file_kind(normalized)
    if kind is None:
        raise InvalidFileName(
            "Only Parquet, CSV, TSV, JSON and NDJSON files (.parquet, .csv, .tsv, .json, "
            ".jsonl, .ndjson) become views of a files datasource.",
            parameter="name",
            code="unsupported_file_type",
        )
    return normalized, kind


# ---------------------------------------------------------------------------- locations


@dataclass(frozen=True)
class Location:
    """Where a datasource's file (or files) live, resolved and confined."""

    area: Path
    folder: Path
    file_name: str | None = None  # the database file of a duckdb or sqlite datasource


def find_datasource(
    session: Session, principal: Principal, datasource_id: str, *, database_file: bool
) -> Datasource:
    ds = datasources.get_datasource(session, principal, datasource_id)
    if database_file and ds.database_type not in DATABASE_FILE_FORMATS:
        raise WrongDatabaseType(
            "Only a duckdb or sqlite datasource has a database file; a files datasource takes "
            "its files at /datasources/{id}/files/{name}."
        )
    if not database_file and ds.database_type != _FILES_TYPE:
        raise WrongDatabaseType(
            "Only a files datasource holds files; a duckdb or sqlite datasource takes its "
            "database at /datasources/{id}/database_file."
        )
    return ds


def locate(session: Session, settings: Settings, ds: Datasource, *, writing: bool) -> Location:
    """The datasource's folder (and database file name), as its path resolves right now.

    Writes go only into the organisation's own area: a folder granted by the operator
    (``shared/<name>/…``) is read-only.
    """
    relative = ds.database or ""
    if writing and shared_folder_name(relative) is not None:
        raise DatasourceReadOnly(
            "This datasource reads a shared folder granted by the operator, which is read-only."
        )
    area = ensure_organization_area(settings.data_root, ds.organization_id)
    want_dir = FILE_DATABASE_TYPES[ds.database_type]

    def granted(name: str) -> Path | None:
        return granted_folder(session, settings, ds.organization_id, name)

    def resolve(value: str, directory: bool) -> Path:
        return resolve_datasource_path(
            settings.data_root,
            ds.organization_id,
            value,
            want_dir=directory,
            granted_folder=granted,
        ).path

    try:
        if want_dir:
            return Location(area, resolve(relative, True))
        try:
            path = resolve(relative, False)
        except AppError:  # the file is gone: its folder decides where an upload puts it
            parent, _, name = relative.rpartition("/")
            return Location(area, resolve(parent, True) if parent else area, name)
        return Location(area, path.parent, path.name)
    except AppError as exc:
        raise DatasourceUnavailable(f"The datasource's path is not usable: {exc.detail}") from exc


def locate_for_writing(
    session: Session, settings: Settings, principal: Principal, ds: Datasource
) -> Location:
    """Where an upload or a delete goes (``locate``), unless a datasource beyond the scope of a
    key restricted to listed datasources reads there too (a key of the whole organisation
    pointed both at one place): the restricted key would fill, replace or delete that one's
    data through its own."""
    location = locate(session, settings, ds, writing=True)
    target = location.folder / location.file_name if location.file_name else location.folder
    refuse_writing_beyond_scope(session, settings, principal, ds.id, target)
    return location


def refuse_writing_beyond_scope(
    session: Session, settings: Settings, principal: Principal, datasource_id: str, target: Path
) -> None:
    """403 for a key restricted to listed datasources when one beyond them reads ``target``:
    asked when a write is decided and again when an upload commits, as the organisation's key
    may point another datasource there meanwhile."""
    if datasources.read_beyond_scope(session, settings, principal, datasource_id, target.resolve()):
        principal.require_every_datasource("change files a datasource beyond them reads too")


# ---------------------------------------------------------------------------- reading


def list_files(
    session: Session,
    principal: Principal,
    settings: Settings,
    datasource_id: str,
    query: CollectionQuery,
) -> tuple[list[FileEntry], int, StorageUsage]:
    """A page of the files the datasource's views read, and the organisation's storage usage."""
    ds = find_datasource(session, principal, datasource_id, database_file=False)
    folder = locate(session, settings, ds, writing=False).folder
    entries = list(scan(folder))
    for name, descending in reversed(query.sort or [("name", False)]):  # a stable sort per key
        entries.sort(key=operator.attrgetter(name), reverse=descending)
    page = entries[query.offset : query.offset + query.page_size]
    return page, len(entries), storage_usage(session, settings, ds.organization_id)


def get_file(
    session: Session, principal: Principal, settings: Settings, datasource_id: str, name: str
) -> FileEntry:
    ds = find_datasource(session, principal, datasource_id, database_file=False)
    name, _ = check_file_name(name)
    folder = locate(session, settings, ds, writing=False).folder
    entry = file_entry(folder, name)
    if entry is None:
        raise FileNotFound(f"The datasource has no file named {name!r}.")
    return entry


def get_database_file(
    session: Session, principal: Principal, settings: Settings, datasource_id: str
) -> FileEntry:
    ds = find_datasource(session, principal, datasource_id, database_file=True)
    location = locate(session, settings, ds, writing=False)
    entry = file_entry(location.folder, location.file_name or "", ds.database_type)
    if entry is None:
        raise FileNotFound("The datasource's database file does not exist (upload one).")
    return entry


def scan(folder: Path) -> Iterator[FileEntry]:
    try:
        names = [entry.name for entry in os.scandir(folder)]
    except OSError:
        return
    for name in names:
        try:
            stored, _ = check_file_name(name)
        except AppError:
            continue  # neither a view nor a file uploads manage: not listed
        if stored == name and (entry := file_entry(folder, name)) is not None:
            yield entry


def file_entry(folder: Path, name: str, file_format: str | None = None) -> FileEntry | None:
    """The file's metadata, or None if it is not a file. A symlink is followed only as far as
    the engine follows it, within the folder: one that leads out of it (into another
    organisation's area, say) is no file of this datasource, and its target's size and time are
    not shown."""
    if not name:
        return None
    try:
        target = (folder / name).resolve(strict=True)
        if not target.is_relative_to(folder.resolve(strict=True)):
            return None
        info = target.stat()
    except (OSError, RuntimeError):  # gone, a loop of links, no access
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    kind = view_file_kind(name)
    return entry_of(name, file_format or (kind.format.value if kind else "unknown"), info)


def entry_of(name: str, file_format: str, info: os.stat_result) -> FileEntry:
    return FileEntry(
        name=name,
        format=file_format,
        size=info.st_size,
        modified_at=datetime.fromtimestamp(info.st_mtime, UTC),
    )


# ---------------------------------------------------------------------------- deleting


@dataclass(frozen=True)
class Deleted:
    refresh_execution_id: str | None
    usage: StorageUsage


def delete_file(
    sessions: sessionmaker[Session],
    principal: Principal,
    settings: Settings,
    datasource_id: str,
    name: str,
) -> Deleted:
    with sessions() as session:
        ds = find_datasource(session, principal, datasource_id, database_file=False)
        name, _ = check_file_name(name)
        location = locate_for_writing(session, settings, principal, ds)
        organization_id = ds.organization_id
    try:
        dir_fd = os.open(location.folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise DatasourceUnavailable(f"The folder cannot be opened ({exc.strerror}).") from None
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if not stat.S_ISREG(info.st_mode) and not stat.S_ISLNK(info.st_mode):
            raise FileNotFound(f"The datasource has no file named {name!r}.")
        os.unlink(name, dir_fd=dir_fd)
        os.fsync(dir_fd)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise DatasourceUnavailable(f"The file cannot be deleted ({exc.strerror}).") from None
        raise FileNotFound(f"The datasource has no file named {name!r}.") from None
    finally:
        os.close(dir_fd)
    note_area_changed_now(sessions, organization_id)
    with sessions() as session:
        usage = storage_usage(session, settings, organization_id)
    return Deleted(queue_refresh(sessions, datasource_id), usage)


_QUEUED_REFRESH = (
    select(Execution.id)
    .where(
        Execution.datasource_id == bindparam("datasource_id"),
        one_of(Execution.status, [ExecutionStatus.STARTING]),
        Execution.execution_type == ExecutionType.DATASOURCE_REFRESH,
        Execution.cancel_requested.is_(False),  # a refresh being cancelled serves no change
    )
    .limit(1)
)


def queue_refresh(sessions: sessionmaker[Session], datasource_id: str) -> str | None:
    """A refresh after the files changed, so the recorded schema follows; None if the
    datasource is disabled (it refreshes when enabled) or was deleted meanwhile. One already
    queued and not yet started serves: it lists the folder once claimed, after this change (the
    change is in place before this runs, and a claim seen as queued here commits after this
    read began). Uploads of 400 files at once queued 400 refreshes, each listing the whole
    growing folder, and the datasource's own queries waited behind them."""
    with sessions.begin() as session:
        ds = session.get(Datasource, datasource_id)
        if ds is None or not ds.enabled:
            return None
        queued = session.scalar(_QUEUED_REFRESH, {"datasource_id": ds.id})
        if queued is not None:
            return queued
        try:
            execution = executions.create_system_execution(
                session, ds, ExecutionType.DATASOURCE_REFRESH
            )
        except NotFound:  # deleted since it was read
            return None
        return execution.id
