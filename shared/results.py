"""The result store: where finished results and schemas live until they expire.

An interface with a local-directory implementation; an S3-compatible one plugs in behind the same
methods. Objects are published whole (temporary name → fsync → rename), so a reader never sees a
partial result, and deletes are idempotent.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Protocol

import pyarrow as pa

from shared.errors import NotFound
from shared.settings import Settings


class ResultGone(NotFound):
    code = "result_gone"


class ResultStore(Protocol):
    def publish(self, local_path: Path, key: str) -> None:
        """Move a finished local file into the store under ``key``; atomic for readers."""

    def put_bytes(self, key: str, data: bytes) -> None: ...

    def open(self, key: str) -> pa.NativeFile:
        """A random-access reader; ResultGone if the object does not exist."""

    def read_bytes(self, key: str) -> bytes: ...

    def delete(self, key: str) -> None:
        """Remove the object; no error if it is already gone."""

    def check(self) -> None:
        """Raise if the store cannot be used (readiness)."""


def result_object_key(data_key: str) -> str:
    return f"results/{data_key}.arrow"


def schema_object_key(data_key: str) -> str:
    return f"schemas/{data_key}.json"


class LocalResultStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        for sub in ("results", "schemas", "tmp"):
            (root / sub).mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()) or ".." in Path(key).parts:
            raise ResultGone("No such result.")
        return path

    def temp_path(self, name: str) -> Path:
        """A scratch file on the store's filesystem, so that publishing is a rename."""
        return self.root / "tmp" / name

    def publish(self, local_path: Path, key: str) -> None:
        target = self._path(key)
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
        self.publish(tmp, key)

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

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

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


def open_result_store(settings: Settings) -> LocalResultStore:
    return LocalResultStore(settings.results_dir)
