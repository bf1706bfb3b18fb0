"""A sandbox child's warm instance: the locked DuckDB instance of its last execution, kept for the
next execution of the same datasource, because opening, attaching and locking one costs tens of
milliseconds and a one-row query on it well under one.

An instance is reused only when everything it was built from is the same: the owner (organisation
and datasource, which the worker sets; none means no reuse), the whole datasource spec (type,
path, time zone), the limits it was configured with, and the files behind it as they are now
(device, inode, size and modification time of the file, or of the folder and each file in it). A
datasource changed in any of these, or a file replaced or rewritten, gets a fresh instance, and
the stale one is closed. Only local file datasources are kept (``REUSABLE_DATABASE_TYPES``).

One warm instance per child at most (its buffer pool stays within the memory limit the watchdog
allows for one execution); it is closed after an execution that fails in any way, after
``IDLE_SECONDS`` without use, after ``MAX_AGE_SECONDS`` in all, and with the child. Each
execution on it runs in a client context of its own (``Sandbox.session``). Its scratch directory
is its own, beside the executions' (the janitor sweeps one a killed child leaves).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
import orjson

from data_server.sandbox import REUSABLE_DATABASE_TYPES, DatasourceSpec, Limits, Sandbox
from data_server.sql_check import BASE_CONFIG

IDLE_SECONDS = 10.0
MAX_AGE_SECONDS = 300.0

FileIdentity = tuple[tuple[str, int, int, int, int], ...]


@dataclass(frozen=True)
class WarmKey:
    """Everything an instance was built from; equal keys, equal instances."""

    owner: str
    spec: bytes
    configured: tuple[int, int, int]  # threads, memory and temp space limits
    files: FileIdentity


def affinity_of(spec: DatasourceSpec) -> str | None:
    """Which warm instance could serve ``spec``: the pool sends a job to the child that ran the
    same last; None when ``spec`` is never served warm."""
    if not spec.owner or spec.database_type not in REUSABLE_DATABASE_TYPES:
        return None
    return orjson.dumps(spec).decode()


def warm_key(spec: DatasourceSpec, limits: Limits) -> WarmKey | None:
    affinity = affinity_of(spec)
    files = _file_identity(spec) if affinity is not None else None
    if affinity is None or files is None:
        return None
    configured = (limits.threads, limits.memory_limit_mb, limits.max_temp_directory_size_mb)
    return WarmKey(spec.owner, affinity.encode(), configured, files)


def _file_identity(spec: DatasourceSpec) -> FileIdentity | None:
    """What the files behind ``spec`` are now; None if one is missing (a fresh instance then
    reports it as it always does)."""
    paths = [Path(spec.path)]
    if spec.database_type == "files":
        try:
            paths += sorted(Path(spec.path).iterdir())
        except OSError:
            return None
    elif spec.database_type == "sqlite":  # committed writes may wait in the write-ahead log
        wal = Path(spec.path + "-wal")
        paths += [wal] if wal.exists() else []
    identity = []
    for path in paths:
        try:
            found = path.stat()  # through a link: its target's identity
        except OSError:
            return None
        identity.append((str(path), found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns))
    return tuple(identity)


class WarmSandboxes:
    """Hands out sandboxes to one child's executions, one at a time; keeps the last one warm."""

    def __init__(self) -> None:
        self._warm: tuple[WarmKey, Sandbox, float] | None = None  # key, instance, opened at
        self._last_used = 0.0
        self._used: list[Sandbox] = []  # to close once the execution's reply is sent
        self._own_temp_dirs: set[str] = set()
        self._spare: duckdb.DuckDBPyConnection | None = None
        self._opened = 0

    @contextmanager
    def lease(
        self, spec: DatasourceSpec, limits: Limits, temp_dir: str
    ) -> Iterator[tuple[Sandbox, bool]]:
        """A sandbox for one execution and whether it was warm; kept afterwards only if the
        execution succeeded and ``spec`` may be served warm."""
        key = warm_key(spec, limits)
        reused = self._warm is not None and self._warm[0] == key
        if not reused:  # closed now: two instances' buffers could outgrow the memory cap
            self._close_warm()
        if self._warm is not None:
            sandbox, opened_at = self._warm[1], self._warm[2]
            self._warm = None
        else:
            sandbox, opened_at = self._open(spec, limits, temp_dir, key), time.monotonic()
        try:
            yield sandbox, reused
        except BaseException:
            self._done_with(sandbox, spec)
            raise
        if key is None:
            self._done_with(sandbox, spec)
        else:
            self._warm, self._last_used = (key, sandbox, opened_at), time.monotonic()

    def _done_with(self, sandbox: Sandbox, spec: DatasourceSpec) -> None:
        """Closed after the reply, off the critical path; but one that holds a connection to a
        remote database or bucket is closed at once, so that a datasource's connections never
        outnumber its running executions (``max_concurrent_executions`` bounds them)."""
        if spec.remote is not None or spec.object_storage is not None:
            self._close(sandbox)
        else:
            self._used.append(sandbox)

    def _open(
        self, spec: DatasourceSpec, limits: Limits, temp_dir: str, key: WarmKey | None
    ) -> Sandbox:
        if key is not None:  # a scratch directory of its own: the execution's goes with it
            self._opened += 1
            temp_dir = str(Path(temp_dir).parent / f"{_warm_prefix(os.getpid())}{self._opened}")
            self._own_temp_dirs.add(temp_dir)
        spare, self._spare = self._spare, None
        try:
            return Sandbox(spec, limits, temp_dir, connection=spare)
        except BaseException:
            self._remove_temp_dir(temp_dir)
            raise

    def seconds_until_idle(self) -> float | None:
        """How long the child may wait for its next call before ``tidy`` has work; None: ever."""
        if self._warm is None:
            return None
        return max(0.0, self._last_used + IDLE_SECONDS - time.monotonic())

    def tidy(self) -> None:
        """Work kept off an execution's critical path (the child calls it before it reads the
        next call): close what was used once, or has idled or aged out, open the warm
        instance's next session, and open a bare instance for the next execution that finds
        nothing warm."""
        now = time.monotonic()
        if self._warm is not None and (
            now - self._last_used >= IDLE_SECONDS or now - self._warm[2] >= MAX_AGE_SECONDS
        ):
            self._close_warm()
        while self._used:
            self._close(self._used.pop())
        if self._warm is not None:
            try:
                self._warm[1].prepare_session()
            except duckdb.Error:  # the instance is unwell: the next execution opens a fresh one
                self._close_warm()
        if self._spare is None:
            self._spare = duckdb.connect(":memory:", config=dict(BASE_CONFIG))

    def close(self) -> None:
        self._close_warm()
        while self._used:
            self._close(self._used.pop())
        if self._spare is not None:
            self._spare.close()
            self._spare = None

    def _close_warm(self) -> None:
        if self._warm is not None:
            sandbox, self._warm = self._warm[1], None
            self._close(sandbox)

    def _close(self, sandbox: Sandbox) -> None:
        sandbox.close()
        self._remove_temp_dir(sandbox.temp_dir)

    def _remove_temp_dir(self, temp_dir: str) -> None:
        if temp_dir in self._own_temp_dirs:
            self._own_temp_dirs.discard(temp_dir)
            shutil.rmtree(temp_dir, ignore_errors=True)


def _warm_prefix(pid: int) -> str:
    return f"warm-{pid}-"


def remove_warm_temp_dirs(parent: Path, pid: int) -> None:
    """The scratch directories the warm instances of child ``pid`` made in ``parent``, the
    execution's scratch directory's: a child that is killed (cancel, time limit) leaves them
    behind, and they would stay as long as their data server."""
    for directory in parent.glob(f"{_warm_prefix(pid)}*"):
        shutil.rmtree(directory, ignore_errors=True)
