"""Uploads into a datasource's files: decided before the body is read, committed by one rename.

An upload is decided first (who may write, which file, how many bytes it may have: the per-file
limit and what the organisation's storage quota leaves), then written to a temporary file beside
its target (``.upload-<random>.part``: the engine's views, the listing and the storage count
ignore it), checked to parse in a child process (``api_server.file_check``), and committed by one
rename under the organisation's area lock, after the quota is checked again: what is stored plus
this upload (of several uploads that do not all fit, those committed first are kept). The rename
is the commit: a reader, or a concurrent upload of the same name, sees one whole file or the
other, never a torn one. A refused, failed or abandoned upload removes its temporary file: it
writes nothing. One whose server died leaves it behind, holding no lock any more, and the next
upload into the folder removes it (``ORPHANED_TEMP_SECONDS``).

Directory operations go through a file descriptor of the folder resolved (and confined to the
area) when the upload began, so a path changed meanwhile cannot redirect them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import time
from dataclasses import dataclass, replace
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from api_server.file_check import FileNotParsable, check_file
from api_server.principals import Principal
from api_server.services import api_keys
from api_server.services.datasource_files import (
    DatasourceUnavailable,
    FileEntry,
    FileNameTaken,
    check_file_name,
    entry_of,
    find_datasource,
    locate_for_writing,
    queue_refresh,
    refuse_writing_beyond_scope,
    scan,
)
from shared.datapaths import area_locked
from shared.db.models import Datasource
from shared.errors import (
    Conflict,
    NotFound,
    PayloadTooLarge,
    PreconditionFailed,
    ServiceUnavailable,
    UnsupportedMediaType,
    unauthorized,
)
from shared.file_formats import DATABASE_FILE_FORMATS, FileKind, accepted_media_types
from shared.organization_rows import note_area_changed
from shared.settings import Settings
from shared.storage_quota import (
    MIB,
    UPLOAD_TEMP_PREFIX,
    UPLOAD_TEMP_SUFFIX,
    StorageUsage,
    is_upload_in_flight,
    locked_storage_usage,
    storage_usage,
    walk_area,
)

# Each upload holds a (shared) flock on its temporary file until it ends, so a temporary file
# nobody holds belongs to an upload that died with its server (SIGKILL, a crash): the next upload
# into its folder removes it, once it is left untouched this long (an upload of a server that
# takes no such lock, during a rolling upgrade, keeps a pace of 64 KiB per 30 s). Where the file
# system cannot tell (flock unsupported), only one this old is taken for dead.
ORPHANED_TEMP_SECONDS = 600
STALE_TEMP_SECONDS = 24 * 3600


class UploadTooLarge(PayloadTooLarge):
    code = "upload_too_large"


@dataclass(frozen=True)
class UploadTarget:
    """Everything decided before the body is read."""

    datasource_id: str
    organization_id: str
    area: Path
    folder: Path
    name: str
    kind: FileKind
    file_limit: int  # DATAFERRY_MAX_UPLOAD_MB
    quota_limit: int  # what the quota leaves for this file (a replaced file's bytes included)
    usage: StorageUsage
    views: bool  # a files datasource's folder: one file per view name
    # If-Match: * (True: replace only) or If-None-Match: * (False: create only); None: either.
    must_exist: bool | None = None
    # Who writes: asked again at the commit, that its key is still enabled and, if restricted to
    # listed datasources, that none beyond them reads the file.
    writer: Principal | None = None
    # The datasource's type and path as decided: a change before the commit (a PATCH of its
    # ``database``) moved it away from ``folder``, where nothing of it would read the file.
    reads: tuple[str, str | None] = ("", None)

    def check_condition(self, exists: bool) -> None:
        """412 when the request's condition on the file's existence does not hold."""
        if self.must_exist is not None and exists != self.must_exist:
            held = "does not exist" if self.must_exist else "exists"
            raise PreconditionFailed(
                f"{self.name} {held}: the request's "
                f"{'If-Match' if self.must_exist else 'If-None-Match'}: * does not hold."
            )

    @property
    def max_bytes(self) -> int:
        return min(self.file_limit, self.quota_limit)

    def refusal(self, size: int) -> PayloadTooLarge:
        """Why ``size`` bytes are too many (the per-file limit, else the quota)."""
        if size > self.file_limit:
            return UploadTooLarge(
                f"A file may have at most {self.file_limit // MIB} MiB (DATAFERRY_MAX_UPLOAD_MB).",
                headers={"Connection": "close"},
            )
        return self.usage.refusal(size)


def prepare_file_upload(
    session: Session,
    principal: Principal,
    settings: Settings,
    datasource_id: str,
    name: str,
    content_type: str | None,
    declared_length: int | None,
) -> UploadTarget:
    """Decide a file upload into a files datasource: 404, 409, 422, 415, then 413."""
    ds = find_datasource(session, principal, datasource_id, database_file=False)
    name, kind = check_file_name(name)
    location = locate_for_writing(session, settings, principal, ds)
    target = _target(session, settings, ds, location.area, location.folder, name, kind,
                     content_type, declared_length, views=True)  # fmt: skip
    return replace(target, writer=principal)


def prepare_database_upload(
    session: Session,
    principal: Principal,
    settings: Settings,
    datasource_id: str,
    content_type: str | None,
    declared_length: int | None,
) -> UploadTarget:
    """Decide the upload of a duckdb or sqlite datasource's database file."""
    ds = find_datasource(session, principal, datasource_id, database_file=True)
    location = locate_for_writing(session, settings, principal, ds)
    kind = DATABASE_FILE_FORMATS[ds.database_type]
    target = _target(session, settings, ds, location.area, location.folder,
                     location.file_name or "", kind, content_type, declared_length,
                     views=False)  # fmt: skip
    return replace(target, writer=principal)


def _target(
    session: Session,
    settings: Settings,
    ds: Datasource,
    area: Path,
    folder: Path,
    name: str,
    kind: FileKind,
    content_type: str | None,
    declared_length: int | None,
    *,
    views: bool,
) -> UploadTarget:
    media = (content_type or "").partition(";")[0].strip().lower()
    accepted = accepted_media_types(kind)
    if media not in accepted:
        raise UnsupportedMediaType(f"Send {name!r} as Content-Type: {' or '.join(accepted)}.")
    replaced = _existing_size(folder, name)
    if views:
        _check_view_name_free(folder, name)
    usage = storage_usage(session, settings, ds.organization_id)
    target = UploadTarget(
        datasource_id=ds.id,
        organization_id=ds.organization_id,
        area=area,
        folder=folder,
        name=name,
        kind=kind,
        file_limit=settings.max_upload_mb * MIB,
        quota_limit=usage.remaining_bytes + (replaced or 0),
        usage=usage,
        views=views,
        reads=(ds.database_type, ds.database),
    )
    if declared_length is not None and declared_length > target.max_bytes:
        raise target.refusal(declared_length)
    return target


def _existing_size(folder: Path, name: str) -> int | None:
    """The size of the file an upload replaces; None if there is none. Only a regular file is
    replaced: a folder or a link of that name is not the upload's to overwrite."""
    try:
        info = (folder / name).lstat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DatasourceUnavailable(f"The file cannot be replaced ({exc.strerror}).") from None
    if not stat.S_ISREG(info.st_mode):
        raise FileNameTaken(f"{name!r} exists and is not a regular file: it is not replaced.")
    return info.st_size


def _check_view_name_free(folder: Path, name: str) -> None:
    """A view is named after its file's stem (case-insensitively): two files may not share one."""
    stem = name.rsplit(".", 1)[0].lower()
    for other in scan(folder):
        if other.name != name and other.name.rsplit(".", 1)[0].lower() == stem:
            raise FileNameTaken(
                f"{other.name!r} already provides the view {stem!r}; delete it first, or "
                "upload under its name."
            )


class Upload:
    """The temporary file of one upload, beside its target, created exclusively."""

    def __init__(self, target: UploadTarget) -> None:
        self.target = target
        self.size = 0
        self.committed = False
        self.temp_name = f"{UPLOAD_TEMP_PREFIX}{os.urandom(12).hex()}{UPLOAD_TEMP_SUFFIX}"
        try:
            self.dir_fd = os.open(target.folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise DatasourceUnavailable(
                f"The datasource's folder cannot be opened ({exc.strerror})."
            ) from None
        try:
            _remove_orphaned_temporaries(self.dir_fd)
            self.fd: int | None = os.open(
                self.temp_name,
                os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=self.dir_fd,
            )
            # Shared, so that it never stands in the way of the read locks a DuckDB or SQLite
            # file's check takes (NFS carries flock as such locks); readable for the same reason.
            with contextlib.suppress(OSError):  # flock unsupported: the age rule alone decides
                fcntl.flock(self.fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self.dir_fd)
            raise _storage_failed(exc) from None
        except BaseException:
            os.close(self.dir_fd)
            raise

    @property
    def temp_path(self) -> Path:
        return self.target.folder / self.temp_name

    def admit(self, size: int) -> None:
        """Count ``size`` more bytes before they are written: 413 past the limits."""
        if self.size + size > self.target.max_bytes:
            raise self.target.refusal(self.size + size)
        self.size += size

    def write(self, data: bytes | bytearray) -> None:
        assert self.fd is not None
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError as exc:  # the disk is full, say: the server's trouble, not the file's
            raise _storage_failed(exc) from None

    def finish(self) -> None:
        """Everything written is on disk. The descriptor stays open, and with it the lock that
        tells other uploads this one is alive, until ``close``."""
        assert self.fd is not None
        try:
            os.fsync(self.fd)
        except OSError as exc:
            raise _storage_failed(exc) from None

    def stored(self) -> os.stat_result:
        """The file as written, by its descriptor: by its name, it may be gone already."""
        assert self.fd is not None
        return os.fstat(self.fd)

    def close(self) -> None:
        """Release the descriptors; an uncommitted temporary file is removed (before its lock
        goes, so that no other upload takes it for an orphan meanwhile)."""
        if not self.committed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.temp_name, dir_fd=self.dir_fd)
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        os.close(self.dir_fd)


def _storage_failed(exc: OSError) -> ServiceUnavailable:
    return ServiceUnavailable(
        f"The server could not store the file ({exc.strerror or 'I/O error'}); nothing was "
        "changed.",
        code="storage_unavailable",
    )


def _remove_orphaned_temporaries(dir_fd: int) -> None:
    """Remove the temporary files of uploads that died with their server (``_is_orphaned``)."""
    now = time.time()
    for entry in os.scandir(dir_fd):
        if not is_upload_in_flight(entry.name):
            continue
        with contextlib.suppress(OSError):
            age = now - entry.stat(follow_symlinks=False).st_mtime
            if age > ORPHANED_TEMP_SECONDS and _is_orphaned(entry.name, dir_fd, age):
                os.unlink(entry.name, dir_fd=dir_fd)


def _is_orphaned(name: str, dir_fd: int, age: float) -> bool:
    """No upload holds the file's lock (or, where locks cannot be taken, it is a day old)."""
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    fd = os.open(name, flags, dir_fd=dir_fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # a live upload holds it
    except OSError:
        return age > STALE_TEMP_SECONDS
    finally:
        os.close(fd)
    return True


def _refuse_if_datasource_went(upload: Upload, *, exists: bool) -> None:
    """404 when the datasource was deleted during the upload: its row is gone, or its folder
    with the temporary file (a delete removes the row, then the folder)."""
    try:
        os.stat(upload.temp_name, dir_fd=upload.dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        exists = False
    if not exists:
        raise NotFound(
            "The datasource was deleted while the file was uploaded; nothing was stored."
        )


def _refuse_if_datasource_moved(target: UploadTarget, datasource: Datasource) -> None:
    """409 when the datasource reads elsewhere now: stored where it read, the file would be
    out of every listing, answered with a Location that is a 404, and counted in the quota
    (found by the outside probe)."""
    if (datasource.database_type, datasource.database) != target.reads:
        raise Conflict(
            "The datasource's database (its path) changed while the file was uploaded; nothing "
            "was stored. Upload it again.",
            code="datasource_changed",
        )


@dataclass(frozen=True)
class Committed:
    entry: FileEntry
    created: bool
    refresh_execution_id: str | None
    usage: StorageUsage


def commit_upload(sessions: sessionmaker[Session], settings: Settings, upload: Upload) -> Committed:
    """Check the file parses (422), then, under the area lock, the quota again (413) and the view
    name, and rename it into place; a refresh of the datasource is queued."""
    target = upload.target
    upload.finish()
    if upload.size == 0:
        raise FileNotParsable(f"{target.name} is empty.")
    try:
        check_file(upload.temp_path, target.kind.format, target.name)
    except FileNotParsable:
        _refuse_if_datasource_went(upload, exists=True)  # its folder (and the file) went
        raise
    # The area lock orders uploads (so the walk made under it stays true for this one); the
    # organisation's row lock, held until the file is in place, orders this upload against a
    # result being stored, which checks the quota under it.
    with area_locked(target.area):
        walked = walk_area(sessions, settings, target.organization_id)  # before the row lock
        with sessions.begin() as session:
            usage = locked_storage_usage(session, settings, target.organization_id, walked)
            datasource = session.get(Datasource, target.datasource_id)
            _refuse_if_datasource_went(upload, exists=datasource is not None)
            if datasource is not None:
                _refuse_if_datasource_moved(target, datasource)
            if target.writer is not None:
                # A body may take long to arrive: the key that began it may be gone by now.
                if not api_keys.still_enabled(session.connection(), target.writer.api_key_id):
                    raise unauthorized()
                refuse_writing_beyond_scope(
                    session, settings, target.writer, target.datasource_id,
                    target.folder / target.name,
                )  # fmt: skip
            replaced = _existing_size(target.folder, target.name)
            target.check_condition(replaced is not None)  # decided here, under the lock
            # The usage counts the file this one replaces, and no upload still arriving.
            if usage.used_bytes + upload.size - (replaced or 0) > usage.quota_bytes:
                raise usage.refusal(upload.size)
            if target.views:
                _check_view_name_free(target.folder, target.name)
            os.rename(
                upload.temp_name, target.name, src_dir_fd=upload.dir_fd, dst_dir_fd=upload.dir_fd
            )
            upload.committed = True
            os.fsync(upload.dir_fd)
            note_area_changed(session, target.organization_id)
    return Committed(
        # A DELETE of the same name may have come in between: read by name, the file was gone
        # (a 500, found by the outside probe).
        entry=entry_of(target.name, target.kind.format.value, upload.stored()),
        created=replaced is None,
        refresh_execution_id=queue_refresh(sessions, target.datasource_id),
        usage=replace(usage, files_bytes=usage.files_bytes + upload.size - (replaced or 0)),
    )
