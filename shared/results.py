"""The result store: where finished results and schemas live until they expire.

Two implementations behind one interface: a local directory (the embedded default) and an
S3-compatible bucket (``DATAFERRY_RESULTS_URL=s3://bucket/prefix``), through pyarrow's S3
filesystem. Either way an object is published whole — a local file by rename after fsync, an S3
object by a PUT or multipart upload that becomes visible only once complete — so a reader never
sees a partial result; deletes are idempotent. Workers always write a result to local scratch
space first (``scratch_dir``, in a directory of the writing process's own that goes when the
process does: shared/scratch.py) and publish it from there.

Next to a result's Arrow file the data server may store *variants*: the result encoded once in
another representation (a format, its options, a content coding), published the same way, so
that ranges and ETags of it are stable (docs/result-formats.md). Their names come from the
closed catalogue ``VARIANTS``, which makes them enumerable per data key and lets
``delete_stored_data`` remove them with the result.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

from shared.errors import ConfigurationError, NotFound, ServiceUnavailable
from shared.scratch import ScratchSpace
from shared.settings import Settings

logger = logging.getLogger(__name__)


class ResultGone(NotFound):
    code = "result_gone"


class ResultStore(Protocol):
    scratch: ScratchSpace

    @property
    def scratch_dir(self) -> Path:
        """The scratch space this process shares with the others of its machine."""

    def temp_path(self, name: str) -> Path:
        """Local scratch space for a result being written, in this process's own directory."""

    def publish(self, local_path: Path, key: str, *, synced: bool = False) -> None:
        """Move a finished local file into the store under ``key``; atomic for readers.
        ``synced``: the file is already on disk (its writer called fsync)."""

    def put_bytes(self, key: str, data: bytes) -> None: ...

    def open(self, key: str) -> pa.NativeFile:
        """A random-access reader; ResultGone if the object does not exist."""

    def read_bytes(self, key: str) -> bytes: ...

    def size(self, key: str) -> int | None:
        """The object's size in bytes; None if it does not exist."""

    def delete(self, key: str) -> None:
        """Remove the object; no error if it is already gone."""

    def keys_older_than(self, prefix: str, cutoff: float) -> list[str]:
        """Keys directly under ``prefix`` (``results/``) last written before ``cutoff`` (epoch).
        A name no key has (``.DS_Store``, an editor's or a file system's file) is not the
        store's: it is left out, and left alone."""

    def check(self) -> None:
        """Raise if the store cannot be used (readiness)."""


UPLOAD_CHUNK_BYTES = 8 * 1024 * 1024


def result_object_key(data_key: str) -> str:
    return f"results/{data_key}.arrow"


def schema_object_key(data_key: str) -> str:
    return f"schemas/{data_key}.json"


# Every variant a result may have: the representations (a format and its options) and, for the
# text ones, a content coding. data_server/representations.py names its variants from these.
BINARY_VARIANTS = ("arrows", "arrows.lz4", "arrows.zstd", "parquet")
TEXT_VARIANTS = ("json", "records.json", "ndjson", "csv")
CODING_SUFFIXES = {"gzip": "gz", "zstd": "zst", "br": "br"}
VARIANTS = frozenset(
    [*BINARY_VARIANTS, *TEXT_VARIANTS]
    + [f"{text}.{suffix}" for text in TEXT_VARIANTS for suffix in CODING_SUFFIXES.values()]
)


def variant_object_key(data_key: str, variant: str) -> str:
    """Where a result's variant lives: beside the Arrow file, so data_key_of maps it back."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown result variant {variant!r}")
    return f"results/{data_key}.v.{variant}"


def stored_variants(store: ResultStore, data_key: str) -> dict[str, int]:
    """The variants stored for a result, with their sizes in bytes (for storage accounting)."""
    sizes = {name: store.size(variant_object_key(data_key, name)) for name in sorted(VARIANTS)}
    return {name: size for name, size in sizes.items() if size is not None}


# What a key may be: a directory of the store, alone or with one name of letters, digits, '-',
# '_' and single dots, as the object key functions make them. Checked by its spelling, so no
# key reaches outside the store (no '..', no '/' in a name, nothing absolute) without resolving
# its path on every use: that cost an lstat per component, 43 us a key on the measuring machine
# against 2 us now, and 90% of a janitor sweep. Only the servers write into the store, never a
# link, so a key's path is its file.
_STORED_KEY = re.compile(r"(?:results|schemas)(?:/(?:[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*)?)?")


def is_stored_key(key: str) -> bool:
    return _STORED_KEY.fullmatch(key) is not None


def checked_key(key: str) -> str:
    """``key`` without a trailing '/', if it is one a store holds; else ``ResultGone``."""
    if not is_stored_key(key):
        raise ResultGone("No such result.")
    return key.rstrip("/")


def data_key_of(object_key: str) -> str:
    """The data key an object key was made from (the inverse of the object key functions)."""
    return object_key.rsplit("/", 1)[-1].split(".", 1)[0]


def delete_stored_data(
    store: ResultStore,
    *,
    results: Iterable[str | None] = (),
    schemas: Iterable[str | None] = (),
) -> None:
    """The one way to delete what executions stored: result objects with every variant, and
    schema objects, by data key.

    Callers first commit the change that makes every row forget the keys (purged, deleted or
    never completed), then call this: a key a row no longer offers cannot be granted again, so
    nothing can be served once its object is gone. A store that fails here is logged, not raised:
    the change is committed already, and the janitor's orphan sweep deletes what is left."""
    keys = [
        key
        for data_key in results
        if data_key
        for key in (
            result_object_key(data_key),
            *(variant_object_key(data_key, name) for name in sorted(VARIANTS)),
        )
    ] + [schema_object_key(k) for k in schemas if k]
    for key in keys:
        try:
            store.delete(key)
        except OSError as exc:
            logger.warning(
                "result store delete failed (%s); the orphan sweep retries", type(exc).__name__
            )


class LocalResultStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.scratch = ScratchSpace(root / "tmp")
        for sub in ("results", "schemas", "tmp"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        # Resolved once; a key is joined to it as checked_key spells it, never resolved.
        self._resolved_root = root.resolve()

    @property
    def scratch_dir(self) -> Path:
        return self.scratch.root

    def _path(self, key: str) -> Path:
        return self._resolved_root / checked_key(key)

    def temp_path(self, name: str) -> Path:
        """A scratch file on the store's filesystem, so that publishing is a rename."""
        return self.scratch.path(name)

    def publish(self, local_path: Path, key: str, *, synced: bool = False) -> None:
        """The file made durable (unless ``synced`` already: a second fsync of a written file
        cost every execution 45 µs), renamed, and its new directory entry made durable."""
        target = self._path(key)
        if not synced:
            with open(local_path, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(local_path, target)
        _fsync_dir(target.parent)

    def put_bytes(self, key: str, data: bytes) -> None:
        tmp = self.temp_path(f"{os.getpid()}-{os.urandom(6).hex()}")
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        self.publish(tmp, key, synced=True)

    def open(self, key: str) -> pa.NativeFile:
        try:
            return pa.OSFile(str(self._path(key)), "rb")  # read per batch: RSS stays flat
        except FileNotFoundError:
            raise ResultGone("This result is no longer available.") from None

    def read_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise ResultGone("This result is no longer available.") from None

    def size(self, key: str) -> int | None:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            return None

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

    def keys_older_than(self, prefix: str, cutoff: float) -> list[str]:
        keys = []
        for path in self._path(prefix).iterdir():
            with contextlib.suppress(FileNotFoundError):  # deleted meanwhile
                key = f"{prefix.rstrip('/')}/{path.name}"
                if is_stored_key(key) and path.is_file() and path.stat().st_mtime < cutoff:
                    keys.append(key)
        return keys

    def check(self) -> None:
        probe = self.temp_path(f".probe-{os.getpid()}")
        probe.write_bytes(b"ok")
        probe.unlink()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class S3ResultStore:
    """Objects under ``s3://bucket/prefix``; credentials come from the usual AWS variables."""

    def __init__(
        self, url: str, scratch_dir: Path, endpoint_url: str = "", region: str = ""
    ) -> None:
        parsed = urlsplit(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ConfigurationError(
                f"DATAFERRY_RESULTS_URL must look like s3://bucket/prefix, not {url!r}"
            )
        self.base = f"{parsed.netloc}/{parsed.path.strip('/')}".rstrip("/")
        options: dict[str, Any] = {}
        if endpoint_url:
            endpoint = urlsplit(endpoint_url)
            options |= {"endpoint_override": endpoint.netloc, "scheme": endpoint.scheme or "https"}
        if region:
            options["region"] = region
        self.fs = pafs.S3FileSystem(**options)
        self.scratch = ScratchSpace(scratch_dir)
        scratch_dir.mkdir(parents=True, exist_ok=True)

    @property
    def scratch_dir(self) -> Path:
        return self.scratch.root

    def _path(self, key: str) -> str:
        return f"{self.base}/{checked_key(key)}"

    def temp_path(self, name: str) -> Path:
        return self.scratch.path(name)

    def publish(self, local_path: Path, key: str, *, synced: bool = False) -> None:
        """Upload (``synced`` changes nothing: the object is durable once uploaded), then drop
        the local file; the object appears only when the upload completes.
        (``compression=None``: pyarrow would otherwise compress keys ending in ``.zst``, ``.gz``
        or ``.lz4`` once more.)"""
        with (
            open(local_path, "rb") as source,
            self.fs.open_output_stream(self._path(key), compression=None) as target,
        ):
            while chunk := source.read(UPLOAD_CHUNK_BYTES):
                target.write(chunk)
        local_path.unlink(missing_ok=True)

    def put_bytes(self, key: str, data: bytes) -> None:
        with self.fs.open_output_stream(self._path(key), compression=None) as target:
            target.write(data)

    def open(self, key: str) -> pa.NativeFile:
        """Ranged reads on demand: a result is streamed, never downloaded whole first."""
        try:
            return self.fs.open_input_file(self._path(key))
        except FileNotFoundError:
            raise ResultGone("This result is no longer available.") from None

    def read_bytes(self, key: str) -> bytes:
        with self.open(key) as handle:
            return handle.read()

    def size(self, key: str) -> int | None:
        info = self.fs.get_file_info(self._path(key))
        return info.size if info.type == pafs.FileType.File else None

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_file(self._path(key))

    def keys_older_than(self, prefix: str, cutoff: float) -> list[str]:
        directory = self._path(prefix.rstrip("/"))
        found = self.fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True))
        keys = (
            (f"{prefix.rstrip('/')}/{info.base_name}", info)
            for info in found
            if info.type == pafs.FileType.File
        )
        return [
            key
            for key, info in keys
            if is_stored_key(key) and info.mtime is not None and info.mtime.timestamp() < cutoff
        ]

    def check(self) -> None:
        info = self.fs.get_file_info(self.base.split("/", 1)[0])
        if info.type == pafs.FileType.NotFound:
            raise ServiceUnavailable("the result bucket does not exist")


def open_result_store(settings: Settings) -> LocalResultStore | S3ResultStore:
    if settings.results_url:
        return S3ResultStore(
            settings.results_url,
            settings.state_dir / "scratch",
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
        )
    return LocalResultStore(settings.results_dir)
