"""Scratch files whose pages are already in memory, for the first encoding of a large
representation to write into.

Writing a file of new pages costs far more than overwriting pages that are already cached: on a
virtual machine each page the guest has not touched lately is a trip to the hypervisor (on the
2-core VM this project is measured on, 140 MB took 0.33 to 0.54 s of system time into new pages and
0.01 to 0.04 s over cached ones). A first fetch of JSON or NDJSON writes its representation while
the client waits, so that cost was on its path; here it is paid beforehand, at idle priority.

A data server keeps up to ``warm_scratch_mb`` of such files in its scratch space, each
``WARM_FILE_BYTES`` at most: allocated (``fallocate``: no data written, nothing for the disk to
do) and read through once, which puts zeroed pages in the page cache. A clean cached page costs
nothing to keep: under memory pressure the kernel drops it, and an overwrite then simply finds
new pages. An encoding that takes one renames it to its own scratch name, overwrites it from the
start and truncates it to what it wrote (``GrowingFile``); the pages past that are freed.

The filling runs in a child process at ``SCHED_IDLE``, which the kernel runs only on a CPU that
would otherwise idle: a thread of the server itself would hold the server's GIL while starved.
It starts shortly after the server, fills up to the count (never into the scratch space's
reserve), then waits on a pipe for the server to ask again (after a take); when the pipe closes
it ends, and a parent-death signal ends it if the server is killed while it is stopped. The
files live in the server process's own scratch directory (shared/scratch.py), so a server
killed outright leaves none for long: its directory goes at the next sweep, with them.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

_logger = logging.getLogger(__name__)

WARM_FILE_BYTES = 128 * 1024 * 1024
# Results whose Arrow file is smaller than this have their representations written into new
# pages as before: a warm file taken for them would have most of its prepared pages thrown away.
WARM_WORTH_BYTES = 16 * 1024 * 1024
# Warm files never take the scratch space's last few bytes: a file is prepared only if this
# much (or this share of the filesystem, whichever is more) stays free after it, for results.
FREE_BYTES_KEPT = 2 * 1024 * 1024 * 1024
FREE_SHARE_KEPT = 0.2
# The filler starts this long after its server unless a large first fetch asks sooner: not during
# the server's own start-up work, and not at all for a server that lives less and serves no large
# first fetch (the test suite starts hundreds).
FILL_DELAY_SECONDS = 2.0
_READ_BYTES = 1024 * 1024
_PR_SET_PDEATHSIG = 1
# How often the keeper looks whether its filler died (the OOM killer, an operator): it then reaps
# it and starts another.
_WATCH_SECONDS = 5.0
_BOUND = b"b"  # what a filler says once its parent's end will end it
# Names of their own: a warm sandbox's scratch directory is "warm-<pid>-<n>" (warm_sandboxes.py).
_PREFIX = "prepared-"
_FILLING = ".preparing-"


class WarmFiles:
    """A data server's warm scratch files, in its own scratch directory: ``start``, ``take_as``
    one, ``close`` at shutdown.

    One thread of its own (the keeper) starts the filler and asks it for more, so that no
    request waits on a process start or a pipe, and so that the filler's parent-death signal
    is tied to a thread that lives as long as this object (Linux sends it when the thread that
    started the child ends)."""

    def __init__(
        self, directory: Path, total_bytes: int, file_bytes: int = WARM_FILE_BYTES
    ) -> None:
        self._dir = directory
        self._file_bytes = min(file_bytes, total_bytes)
        self._count = kept_count(total_bytes, file_bytes)
        self._guard = threading.Lock()
        self._filler: subprocess.Popen[bytes] | None = None
        self._writers = 0
        self._requests: queue.SimpleQueue[bool] = queue.SimpleQueue()  # False: stop
        self._keeper: threading.Thread | None = None
        self._starting: subprocess.Popen[bytes] | None = None  # until it says it is bound
        self._closing = False

    def start(self) -> None:
        """Starts the keeper, which starts filling soon (``_keep``)."""
        if self._count:
            self._keeper = threading.Thread(target=self._keep, name="warm-files", daemon=True)
            self._keeper.start()

    def take_as(self, path: Path) -> bool:
        """Moves a warm file to ``path`` (a new scratch name, to be overwritten from its start
        and cut to its new length); False when none is ready, and the caller creates ``path``
        itself. Either way the caller calls ``refill`` next."""
        if not self._count:
            return False
        for ready in sorted(self._dir.glob(f"{_PREFIX}*")):
            try:
                os.utime(ready)  # new to the janitor, which removes scratch files a day old
                os.rename(ready, path)
            except FileNotFoundError:  # the janitor took it, or another request did
                continue
            return True
        return False

    def refill(self) -> None:
        """Asks for the count to be made up; returns at once."""
        if self._keeper is not None:
            self._requests.put(True)

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Around a large encoding's writes: the filler waits meanwhile (``SIGSTOP``). Its
        page faults, even at idle priority, slowed the encoding's own writes by more than a
        warm file saved them: 1M rows of NDJSON served at 1.1 to 1.4 M rows/s with the filler
        running, 2.3 to 3.0 with it stopped, on the 2-core VM this project is measured on."""
        self._count_writer(+1)
        try:
            yield
        finally:
            self._count_writer(-1)

    def _count_writer(self, change: int) -> None:
        with self._guard:
            self._writers += change
            first, last = change > 0 and self._writers == 1, change < 0 and self._writers == 0
            filler = self._filler
        if (first or last) and filler is not None:
            _signal(filler, signal.SIGSTOP if first else signal.SIGCONT)

    def close(self) -> None:
        """Stops the keeper and the filler, and removes this server's warm files."""
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            with self._guard:
                self._closing = True
                fillers = [self._filler, self._starting]
            self._requests.put(False)
            for filler in fillers:  # stopped, or still starting at idle priority: never waited on
                if filler is not None:
                    _signal(filler, signal.SIGKILL)
            keeper.join()
        for pattern in (f"{_PREFIX}*", f"{_FILLING}*"):
            for path in self._dir.glob(pattern):
                path.unlink(missing_ok=True)

    def _keep(self) -> None:
        """The keeper: each request becomes a line to the filler, started (again) if needed.
        The first filling starts ``FILL_DELAY_SECONDS`` after the server, or at the first
        request if sooner (a large first fetch came)."""
        try:
            first = self._requests.get(timeout=FILL_DELAY_SECONDS)
        except queue.Empty:
            first = True
        try:
            request: bool | None = first
            while request is not False:
                filler = self._filler
                died = filler is not None and filler.poll() is not None  # killed from outside
                if died or (request and (filler is None or not _ask(filler))):
                    self._start_filler()
                try:
                    request = self._requests.get(timeout=_WATCH_SECONDS)
                except queue.Empty:
                    request = None  # no request: only see that the filler is still there
        finally:
            with self._guard:
                filler, self._filler = self._filler, None
            if filler is not None:
                _end(filler)

    def _start_filler(self) -> None:
        """A new filler, made known (to be stopped while large encodings write) only once it
        has said it will end with this server: one stopped before that could outlive it."""
        with self._guard:
            ended, self._filler = self._filler, None
            if self._closing:
                return
        if ended is not None:  # a filler ends only if it crashed or was killed: reap it
            _end(ended)
        try:
            started = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "data_server.warm_files",
                    str(self._dir),
                    str(self._file_bytes),
                    str(self._count),
                    str(FREE_BYTES_KEPT),
                    str(FREE_SHARE_KEPT),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                cwd=Path(__file__).resolve().parent.parent,
            )
        except OSError:  # no process to spare: encodings write into new pages meanwhile
            _logger.warning("could not start the warm scratch filler", exc_info=True)
            return
        _make_idle(started.pid)
        with self._guard:
            self._starting = None if self._closing else started
        if self._starting is None:  # closing already: not worth waiting for its interpreter
            _signal(started, signal.SIGKILL)
        assert started.stdout is not None
        bound = started.stdout.read(1) == _BOUND
        started.stdout.close()
        with self._guard:
            self._starting = None
            if bound and not self._closing:
                self._filler = started
                if self._writers:
                    _signal(started, signal.SIGSTOP)
                return
        _end(started)


def _ask(filler: subprocess.Popen[bytes]) -> bool:
    """One line to a running filler; False when it has just ended. (It may be stopped or
    starved for a while: then the line waits in the pipe, and only this thread waits.)"""
    assert filler.stdin is not None
    try:
        filler.stdin.write(b"\n")
        filler.stdin.flush()
    except BrokenPipeError:
        return False
    return True


def _make_idle(pid: int) -> None:
    """From here on the filler runs only on a CPU that would otherwise idle: set by this process
    as soon as the child exists, not by the child once its interpreter has started."""
    try:
        os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
    except OSError:  # a sandbox that refuses it: the lowest niceness instead
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, pid, 19)


def _end(process: subprocess.Popen[bytes]) -> None:
    """Kills it if it still runs (stopped or not), reaps it, and closes our end of its pipe."""
    _signal(process, signal.SIGKILL)
    process.wait()
    if process.stdin is not None:
        process.stdin.close()


def _signal(process: subprocess.Popen[bytes], number: int) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):  # it has just ended
            os.kill(process.pid, number)


def kept_count(total_bytes: int, file_bytes: int = WARM_FILE_BYTES) -> int:
    """How many warm files a budget of ``total_bytes`` keeps: whole files, or one smaller file
    when the budget is less than one."""
    size = min(file_bytes, total_bytes)
    return total_bytes // size if size > 0 else 0


def ready_count(directory: Path) -> int:
    """Warm files ready in a server's scratch directory (a benchmark waits for a new server's
    to be ready, as those of a server that has run a while are)."""
    return len(list(directory.glob(f"{_PREFIX}*")))


def fill(directory: Path, file_bytes: int, count: int, kept: _Kept) -> None:
    """Prepares warm files in ``directory`` up to ``count``, then waits on standard input for a line
    asking it to look again; ends when that input ends (its server closed it or is gone). Each
    file is filled under a temporary name and renamed when whole, so a server only ever takes a
    whole one. (Its server's death ends it too: the parent-death signal.)"""
    while True:
        while ready_count(directory) < count:
            if not _fill_one(directory, file_bytes, kept):
                break
        if not os.read(0, 4096):  # every line waiting counts as one: look once
            return


class _Kept(NamedTuple):
    """The scratch space's reserve: bytes, and a share of the filesystem (the larger holds)."""

    bytes: int
    share: float


def _fill_one(directory: Path, file_bytes: int, kept: _Kept) -> bool:
    """One more warm file, if the scratch space keeps its reserve free afterwards."""
    name = os.urandom(6).hex()
    filling = directory / f"{_FILLING}{name}"
    try:
        space = os.statvfs(directory)
        free, size = space.f_bavail * space.f_frsize, space.f_blocks * space.f_frsize
        if free - file_bytes < max(kept.bytes, size * kept.share):
            return False
        fd = os.open(filling, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.posix_fallocate(fd, 0, file_bytes)
            position = 0
            while position < file_bytes:
                position += len(os.pread(fd, _READ_BYTES, position)) or file_bytes
        finally:
            os.close(fd)
        os.rename(filling, directory / f"{_PREFIX}{name}")
    except OSError as error:  # no room, or no scratch space: try again when asked next
        filling.unlink(missing_ok=True)
        print(f"warm scratch files: {error.strerror or error}", file=sys.stderr)
        return False
    return True


def main() -> None:
    directory, file_bytes, count, bytes_kept, share_kept = sys.argv[1:6]
    # Ctrl-C in a terminal reaches the whole process group: this process ends with its server
    # (its input closes, or the parent-death signal), not with a traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _end_with_parent()
    try:
        os.write(1, _BOUND)
    except BrokenPipeError:  # its server went away while it started
        return
    kept = _Kept(int(bytes_kept), float(share_kept))
    fill(Path(directory), int(file_bytes), int(count), kept)


def _end_with_parent() -> None:
    """SIGKILL when the thread that started this process ends: its server killed outright
    while an encoding kept this process stopped would otherwise leave it stopped for good."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the pipe's end still ends it
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


if __name__ == "__main__":
    main()
