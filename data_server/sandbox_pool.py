"""A small pool of reusable sandbox child processes, and the watchdog that keeps them honest.

Each call runs in a child (``data_server.sandbox_child``) on a locked DuckDB instance: a fresh one,
or the one the child kept warm from the last execution of the same datasource (``warm_sandboxes``);
a query goes to the idle child whose warm instance fits it, if there is one. The child interrupts
its own query at the time limit; the watchdog here kills it if that does not work within a grace
period, if its memory grows past the limit, or if the caller cancels. A killed or crashed child is
replaced, so one bad query costs one execution, never the server.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from data_server.engine import QueryJob, QueryOutcome
from data_server.framing import CANCEL_SIGNAL, READY, read_frame, write_frame
from data_server.sandbox import CONNECT_TIMEOUT_EXIT_STATUS, DatasourceSpec, Limits
from data_server.sql_check import QueryFailed
from data_server.warm_sandboxes import affinity_of, remove_warm_temp_dirs
from shared.execution_states import ErrorCode

logger = logging.getLogger(__name__)

KILL_GRACE_SECONDS = 1.5
# How long a cancelled call may take to end its remote query (a second connection to the server)
# before its child is killed regardless.
CANCEL_GRACE_SECONDS = 3.0
# A new child imports DuckDB and pyarrow before it can take a call: seconds on a loaded machine,
# which must not count against its first call's time limit (a three-second limit failed a
# connection test as timed out so). It says when it is ready; one that is not ready within this
# long is taken for broken.
CHILD_START_SECONDS = 60.0
WATCH_INTERVAL_SECONDS = 0.05
# Python, DuckDB and Arrow themselves, on top of DuckDB's own memory limit.
BASE_RSS_MB = 300
_CHILD_ENVIRONMENT = ("PATH", "HOME", "LANG", "LC_ALL", "PYTHONPATH", "VIRTUAL_ENV", "TZ", "TMPDIR")


def memory_cap_of(memory_limit_mb: int) -> float:
    """The resident size, in MiB, past which the watchdog kills a child: DuckDB's own limit does
    not bound everything it holds (a body without a length is read whole, whatever the limit)."""
    return memory_limit_mb * 1.5 + BASE_RSS_MB


class _Child:
    """One sandbox process and the two pipes to it."""

    def __init__(self, scratch_root: str | None) -> None:
        self.scratch_root = scratch_root  # where its warm instances' scratch directories are
        to_child_read, self.to_child = os.pipe()
        self.from_child, from_child_write = os.pipe()
        environment = {key: os.environ[key] for key in _CHILD_ENVIRONMENT if key in os.environ}
        environment["PYTHONPATH"] = os.pathsep.join(
            filter(
                None, [str(Path(__file__).resolve().parent.parent), environment.get("PYTHONPATH")]
            )
        )
        try:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "data_server.sandbox_child",
                    str(to_child_read),
                    str(from_child_write),
                ],
                pass_fds=(to_child_read, from_child_write),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                env=environment,
            )
        except BaseException:
            for fd in (to_child_read, self.to_child, self.from_child, from_child_write):
                os.close(fd)
            raise
        os.close(to_child_read)
        os.close(from_child_write)
        self._pipes_open = True
        self.warm_for: str | None = None  # the affinity of the instance it may have kept warm
        self._wait_ready(CHILD_START_SECONDS)

    @property
    def pid(self) -> int:
        return self.process.pid

    def _wait_ready(self, seconds: float) -> None:
        """Until the child has imported what it runs calls with (QueryFailed if it died, or is
        not ready within ``seconds``)."""
        poller = select.poll()
        poller.register(self.from_child, select.POLLIN | select.POLLHUP | select.POLLERR)
        if not poller.poll(seconds * 1000) or read_frame(self.from_child) != READY:
            raise _crashed(self)

    def rss_mb(self) -> float:
        try:
            with open(f"/proc/{self.pid}/statm", "rb") as handle:
                resident_pages = int(handle.read().split()[1])
        except (OSError, IndexError, ValueError):
            return 0.0
        return resident_pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.close_pipes()
        if self.scratch_root is not None:
            remove_warm_temp_dirs(Path(self.scratch_root), self.pid)

    def end_call_then_kill(self, grace_seconds: float) -> None:
        """Ask the child to end its call (``CANCEL_SIGNAL``), wait up to ``grace_seconds`` for
        its answer, then kill it: killed at once, it left a MySQL server running its query, for
        as long as the query takes."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(CANCEL_SIGNAL)
            poller = select.poll()
            poller.register(self.from_child, select.POLLIN | select.POLLHUP | select.POLLERR)
            poller.poll(grace_seconds * 1000)
        self.kill()

    def close_pipes(self) -> None:
        """Idempotent: closing a descriptor twice could close one another thread just opened."""
        if self._pipes_open:
            self._pipes_open = False
            os.close(self.to_child)
            os.close(self.from_child)


class SandboxPool:
    """At most ``size`` children; ``run`` and friends are thread-safe and block for a free child."""

    def __init__(self, size: int, scratch_root: str | None = None) -> None:
        self.size = size
        self.scratch_root = scratch_root
        self._idle: list[_Child] = []
        self._children = 0
        self._closed = False
        self._available = threading.Condition()
        self._start_warm_up()

    # ------------------------------------------------------------------ public operations

    def run(self, job: QueryJob, cancel_event: threading.Event | None = None) -> QueryOutcome:
        affinity = affinity_of(job.datasource)
        request = {"op": "query", "job": job}  # orjson writes dataclasses itself
        value = self._call(request, job.limits, cancel_event, affinity=affinity)
        return QueryOutcome(**value)

    def schema_of(
        self, spec: DatasourceSpec, limits: Limits, cancel_event: threading.Event | None = None
    ) -> dict[str, Any]:
        return self._call_with_scratch("schema", spec, limits, cancel_event)

    def check_connection(
        self, spec: DatasourceSpec, limits: Limits, cancel_event: threading.Event | None = None
    ) -> None:
        self._call_with_scratch("check", spec, limits, cancel_event)

    def child_pids(self) -> list[int]:
        with self._available:
            return [child.pid for child in self._idle]

    def close(self) -> None:
        """Stop every idle child; busy ones are killed by their watchdogs as calls return."""
        with self._available:
            self._closed = True
            idle, self._idle = self._idle, []
            self._children -= len(idle)
            self._available.notify_all()
        for child in idle:
            child.close_pipes()  # EOF: the child leaves its loop
            try:
                child.process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                child.kill()

    # ------------------------------------------------------------------ internals

    def _call_with_scratch(
        self, operation: str, spec: DatasourceSpec, limits: Limits, cancel: threading.Event | None
    ) -> Any:
        scratch = tempfile.mkdtemp(prefix="dataferry-", dir=self.scratch_root)
        try:
            request = {"op": operation, "spec": spec, "limits": limits}
            return self._call({**request, "temp_dir": scratch}, limits, cancel)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _call(
        self,
        request: dict[str, Any],
        limits: Limits,
        cancel: threading.Event | None,
        affinity: str | None = None,
    ) -> Any:
        """``affinity``: a query's, to find the child whose warm instance may serve it (the
        child itself decides whether it can)."""
        child = self._acquire(affinity)
        healthy = False
        try:
            try:
                write_frame(child.to_child, orjson.dumps(request))
            except OSError:
                raise _crashed(child) from None
            reply = self._watch(child, limits, cancel)
            healthy = True
            if request["op"] == "query":  # the child keeps a succeeded query's instance if it may
                child.warm_for = affinity if reply["ok"] else None
        finally:
            self._release(child, healthy)
        if not reply["ok"]:
            raise QueryFailed(reply["code"], reply["message"])
        return reply["value"]

    def _watch(self, child: _Child, limits: Limits, cancel: threading.Event | None) -> dict:
        """Wait for the reply, killing the child on cancel, overtime, overuse of memory or death."""
        kill_at = time.monotonic() + limits.timeout_seconds + KILL_GRACE_SECONDS
        memory_cap_mb = memory_cap_of(limits.memory_limit_mb)
        poller = select.poll()
        poller.register(child.from_child, select.POLLIN | select.POLLHUP | select.POLLERR)
        while True:
            if poller.poll(WATCH_INTERVAL_SECONDS * 1000):
                frame = read_frame(child.from_child)
                if frame is None:
                    raise _crashed(child)
                return orjson.loads(frame)
            if cancel is not None and cancel.is_set():
                child.end_call_then_kill(CANCEL_GRACE_SECONDS)
                raise QueryFailed(ErrorCode.CANCELLED, "The execution was cancelled.")
            if time.monotonic() > kill_at:
                child.kill()
                raise QueryFailed(ErrorCode.TIMEOUT, "The query exceeded its time limit.")
            if child.rss_mb() > memory_cap_mb:
                child.kill()
                raise QueryFailed(
                    "out_of_memory",
                    f"The query exceeded its memory limit of {limits.memory_limit_mb} MB.",
                )
            if child.process.poll() is not None:
                raise _crashed(child)

    def _acquire(self, affinity: str | None = None) -> _Child:
        """An idle child that is still alive, else a new one once there is room: a child that
        died while idle (the kernel's OOM killer, an operator's kill) is dropped here rather than
        handed a query it can only fail as crashed."""
        while True:
            with self._available:
                if self._closed:
                    raise QueryFailed(
                        ErrorCode.WORKER_STOPPING, "The data server is shutting down."
                    )
                if self._idle:
                    child = self._idle.pop(_pick(self._idle, affinity))
                    if child.process.poll() is None:
                        return child
                    self._children -= 1  # its place is free: for this loop or a waiter
                    self._available.notify()
                elif self._children < self.size:
                    self._children += 1
                    break
                else:
                    self._available.wait()
                    continue
            logger.warning("sandbox child %d died while idle; dropped", child.pid)
            child.kill()  # reaps it and closes its pipes
        try:
            return _Child(self.scratch_root)
        except BaseException:
            with self._available:
                self._children -= 1
                self._available.notify()
            raise

    def _release(self, child: _Child, healthy: bool) -> None:
        alive = healthy and child.process.poll() is None
        if not alive:
            child.kill()
        with self._available:
            if alive and not self._closed:
                self._idle.append(child)
            else:
                self._children -= 1
                if alive:
                    child.kill()
            self._available.notify()
        if not alive:
            self._start_warm_up()

    def _start_warm_up(self) -> None:
        threading.Thread(target=self._warm_up, name="sandbox-warm-up", daemon=True).start()

    def _warm_up(self) -> None:
        """Start the children ahead of the first query, so it does not pay for their start-up."""
        while True:
            with self._available:
                if self._closed or self._children >= self.size:
                    return
                self._children += 1
            try:
                child = _Child(self.scratch_root)
            except (OSError, QueryFailed):
                logger.exception("could not start a sandbox child")
                with self._available:
                    self._children -= 1
                return
            self._release(child, healthy=True)


def _pick(idle: list[_Child], affinity: str | None) -> int:
    """The idle child warm for ``affinity``; else one warm for nothing; else the one idle the
    longest (its warm instance the least likely to be wanted again)."""
    for wanted in (affinity, None) if affinity is not None else (None,):
        for index in range(len(idle) - 1, -1, -1):
            if idle[index].warm_for == wanted:
                return index
    return 0


def _crashed(child: _Child) -> QueryFailed:
    child.kill()
    status = child.process.returncode
    if status == CONNECT_TIMEOUT_EXIT_STATUS:  # the child gave up on a connect (engine)
        return QueryFailed(
            "connection_timed_out",
            "The database did not accept the connection within the connect timeout.",
        )
    how = f"signal {-status}" if status is not None and status < 0 else f"exit status {status}"
    logger.warning("sandbox child %d died (%s)", child.pid, how)
    return QueryFailed(ErrorCode.WORKER_CRASHED, f"The query process died unexpectedly ({how}).")
