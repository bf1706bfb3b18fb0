"""Warm scratch files (data_server/warm_files.py): prepared at idle priority in a child process,
taken whole, cut to what was written, kept out of an encoding's way, and never left behind."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from data_server import warm_files
from data_server.growing_files import GrowingFile
from data_server.warm_files import WarmFiles
from shared.scratch import ScratchSpace, sweep_dead
from tests.support.warm_files import make_prompt

FILE_BYTES = 2 * 1024 * 1024
MAKE_IDLE = warm_files._make_idle  # made a no-op below for every test but its own


@pytest.fixture(autouse=True)
def prompt(monkeypatch):
    make_prompt(monkeypatch.setattr)


def wait_until(condition: Callable[[], bool], what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def ready(scratch: Path) -> list[Path]:
    """Whole warm files."""
    return sorted(path for path in scratch.glob("prepared-*") if path.is_file())


@pytest.fixture
def warm(tmp_path) -> Iterator[WarmFiles]:
    files = WarmFiles(tmp_path, 2 * FILE_BYTES, file_bytes=FILE_BYTES)
    files.start()
    wait_until(lambda: len(ready(tmp_path)) == 2, "two warm files")
    yield files
    files.close()


def filler_pid(warm: WarmFiles) -> int | None:
    filler = warm._filler
    return filler.pid if filler is not None and filler.poll() is None else None


def running_filler(warm: WarmFiles) -> int:
    """The filler's pid, once the keeper thread has started it."""
    wait_until(lambda: filler_pid(warm) is not None, "the filler")
    pid = filler_pid(warm)
    assert pid is not None
    return pid


def process_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_a_server_gets_whole_files_of_the_size_asked_and_no_more_than_asked(warm, tmp_path):
    assert [path.stat().st_size for path in ready(tmp_path)] == [FILE_BYTES, FILE_BYTES]
    assert not list(tmp_path.glob(".preparing-*"))
    time.sleep(0.3)
    assert len(ready(tmp_path)) == 2  # the filler stopped at the count


def test_a_taken_file_is_moved_to_its_new_name_and_replaced(warm, tmp_path):
    target = tmp_path / "variant-1"
    assert warm.take_as(target)
    assert target.stat().st_size == FILE_BYTES
    assert len(ready(tmp_path)) == 1
    warm.refill()
    wait_until(lambda: len(ready(tmp_path)) == 2, "the taken file's replacement")


def test_with_none_ready_nothing_is_taken(tmp_path):
    files = WarmFiles(tmp_path, 0)  # turned off: never a filler, never a file
    files.start()
    assert not files.take_as(tmp_path / "variant-1")
    assert files._filler is None
    assert not (tmp_path / "variant-1").exists()


def test_a_taken_file_is_cut_to_what_the_encoding_wrote(warm, tmp_path):
    target = tmp_path / "variant-1"
    assert warm.take_as(target)
    growing = GrowingFile(target, prepared=True)
    reader = growing.join()
    growing.write(b"a" * 1000)
    growing.write(b"b" * 300_000)
    growing.begin()
    growing.end_here()
    growing.finish()

    async def body() -> bytes:
        return b"".join([chunk async for chunk in reader.chunks()])

    assert asyncio.run(body()) == b"a" * 1000 + b"b" * 300_000
    growing.close()
    assert target.read_bytes() == b"a" * 1000 + b"b" * 300_000


def test_the_filler_runs_at_idle_priority(tmp_path, monkeypatch):
    monkeypatch.setattr(warm_files, "_make_idle", MAKE_IDLE)
    files = WarmFiles(tmp_path, 64 * FILE_BYTES, file_bytes=FILE_BYTES)
    files.start()
    try:  # looked at while it starts: at idle priority, on a busy machine, that can be long
        wait_until(lambda: (files._starting or files._filler) is not None, "the filler")
        filler = files._starting or files._filler
        assert filler is not None
        assert os.sched_getscheduler(filler.pid) == os.SCHED_IDLE
    finally:
        files.close()


def test_the_filler_waits_while_an_encoding_writes(tmp_path):
    files = WarmFiles(tmp_path, 256 * FILE_BYTES, file_bytes=FILE_BYTES)  # long enough to watch
    files.start()
    try:
        pid = running_filler(files)
        with files.writing():
            wait_until(lambda: process_state(pid) == "T", "the filler to stop")
            count = len(ready(tmp_path))
            time.sleep(0.3)
            assert len(ready(tmp_path)) == count
            with files.writing():  # a second encoding at once: still stopped when it ends
                pass
            assert process_state(pid) == "T"
        wait_until(lambda: process_state(pid) != "T", "the filler to go on")
    finally:
        files.close()


def test_a_filler_started_during_an_encoding_starts_stopped(warm, tmp_path):
    first = running_filler(warm)
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: filler_pid(warm) is None, "the filler's end")
    assert warm.take_as(tmp_path / "variant-1")
    with warm.writing():
        warm.refill()  # the keeper finds it gone and starts another
        wait_until(lambda: filler_pid(warm) not in (None, first), "a new filler")
        pid = running_filler(warm)
        wait_until(lambda: process_state(pid) == "T", "the new filler to stop")
    wait_until(lambda: len(ready(tmp_path)) == 2, "the new filler's file")


def test_closing_during_an_encoding_ends_the_stopped_filler(tmp_path):
    files = WarmFiles(tmp_path, 256 * FILE_BYTES, file_bytes=FILE_BYTES)
    files.start()
    pid = running_filler(files)
    with files.writing():
        wait_until(lambda: process_state(pid) == "T", "the filler to stop")
        files.close()
    assert not Path(f"/proc/{pid}").exists()
    assert not list(tmp_path.glob("prepared-*"))


# What the fixture above does for this process, done in a server process's own.
SERVER_PREAMBLE = """
import sys, time
from pathlib import Path
from data_server import warm_files
from tests.support.warm_files import make_prompt
make_prompt()
"""

SERVER_KILLED_MID_ENCODING = """
from data_server.warm_files import WarmFiles
files = WarmFiles(Path(sys.argv[1]), 256 * 2**21, file_bytes=2**21)
files.start()
while files._filler is None:
    time.sleep(0.01)
with files.writing():
    print(files._filler.pid, flush=True)
    time.sleep(60)
"""


@contextmanager
def _server(script: str, scratch: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A server process running ``script`` on ``scratch``, and the first line it prints; killed
    at the end if it still runs."""
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER_PREAMBLE + script, str(scratch)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert server.stdout is not None
        yield server, server.stdout.readline().strip()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        if server.stdout is not None:
            server.stdout.close()


def test_a_filler_kept_stopped_ends_with_its_server_killed_outright(tmp_path):
    """An encoding kept it stopped, so it could read no end of its pipe: it ends all the same."""
    with _server(SERVER_KILLED_MID_ENCODING, tmp_path) as (server, line):
        pid = int(line)
        wait_until(lambda: process_state(pid) == "T", "the filler to stop")
        server.kill()
        server.wait()
        wait_until(lambda: not Path(f"/proc/{pid}").exists(), "the filler's end")


def test_the_files_of_a_server_killed_outright_go_with_its_scratch_directory(tmp_path):
    """They live in its process's own directory (shared/scratch.py), which the next sweep of
    the space removes once the kernel has let go of its lock."""
    with _server(SERVER_IN_ITS_OWN_DIRECTORY, tmp_path) as (server, line):
        directory = Path(line)
        assert directory.parent == tmp_path
        wait_until(lambda: len(ready(directory)) == 2, "its warm files")
        assert sweep_dead(tmp_path) == ([directory], 0)
        server.kill()
        server.wait()
        assert sweep_dead(tmp_path) == ([], 1)
        assert list(tmp_path.iterdir()) == []


SERVER_IN_ITS_OWN_DIRECTORY = """
from shared.scratch import ScratchSpace
space = ScratchSpace(Path(sys.argv[1]))  # held: its lock lives as long as it does
directory = space.own_directory()
files = warm_files.WarmFiles(directory, 2 * 2**21, file_bytes=2**21)
files.start()
print(directory, flush=True)
time.sleep(60)
"""


def test_warm_files_leave_the_scratch_space_its_reserve(tmp_path, monkeypatch):
    space = os.statvfs(tmp_path)
    free, size = space.f_bavail * space.f_frsize, space.f_blocks * space.f_frsize
    for kept in (warm_files._Kept(free, 0.0), warm_files._Kept(0, free / size)):
        assert not warm_files._fill_one(tmp_path, FILE_BYTES, kept)
        assert list(tmp_path.iterdir()) == []
    assert warm_files._fill_one(tmp_path, FILE_BYTES, warm_files._Kept(0, 0.0))
    assert len(ready(tmp_path)) == 1


def test_a_filler_without_its_scratch_space_says_so_in_one_line(tmp_path):
    missing = tmp_path / "gone"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "data_server.warm_files",
            str(missing),
            "1024",
            "1",
            "0",
            "0",
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        timeout=30,
    )
    assert run.returncode == 0
    assert run.stderr.strip().startswith("warm scratch files:")
    assert "Traceback" not in run.stderr


def test_closing_stops_the_filler_and_removes_the_servers_files(tmp_path):
    files = WarmFiles(tmp_path, 256 * FILE_BYTES, file_bytes=FILE_BYTES)
    files.start()
    pid = running_filler(files)
    files.close()
    assert not Path(f"/proc/{pid}").exists() or process_state(pid) == "Z"
    assert not list(tmp_path.glob("prepared-*"))
    assert not list(tmp_path.glob(".preparing-*"))


def test_servers_sharing_a_scratch_space_keep_their_own_files(tmp_path):
    """As servers in separate containers on one volume do: each fills its own process
    directory, takes only from it, and stops without touching the other's."""
    spaces = [ScratchSpace(tmp_path) for _ in range(2)]
    one_dir, other_dir = (space.own_directory() for space in spaces)
    one = WarmFiles(one_dir, 2 * FILE_BYTES, file_bytes=FILE_BYTES)
    other = WarmFiles(other_dir, 2 * FILE_BYTES, file_bytes=FILE_BYTES)
    one.start()
    other.start()
    try:
        wait_until(lambda: len(ready(one_dir)) == len(ready(other_dir)) == 2, "two files each")
        others = set(ready(other_dir))
        for n in range(2):
            assert one.take_as(one_dir / f"variant-{n}")
        assert not one.take_as(one_dir / "variant-2")  # none of its own left
        assert set(ready(other_dir)) == others
        one.close()
        assert set(ready(other_dir)) == others
    finally:
        one.close()
        other.close()


def test_a_taken_file_is_new_to_the_janitor(warm, tmp_path):
    """The janitor removes scratch files a day old: a file prepared days ago and taken now is
    not one of them."""
    two_days_ago = time.time() - 2 * 86_400
    for path in ready(tmp_path):
        os.utime(path, (two_days_ago, two_days_ago))
    target = tmp_path / "variant-1"
    assert warm.take_as(target)
    assert time.time() - target.stat().st_mtime < 60


def test_a_filler_killed_from_outside_is_reaped_and_replaced(warm, tmp_path, monkeypatch):
    monkeypatch.setattr(warm_files, "_WATCH_SECONDS", 0.1)
    warm.refill()  # the keeper now waits with the patched period
    first = running_filler(warm)
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: filler_pid(warm) not in (None, first), "a new filler")
    wait_until(lambda: not Path(f"/proc/{first}").exists(), "the killed filler to be reaped")


def _filler(scratch: Path, count: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "data_server.warm_files",
            *map(str, (scratch, FILE_BYTES, count, 0, 0)),  # no reserve
        ],
        stdin=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
    )


def test_a_filler_whose_pipe_closes_ends(tmp_path):
    """Its server stopped (or died, which closes the pipe too): once its files are there, it
    ends instead of waiting to be asked again."""
    filler = _filler(tmp_path, 2)
    try:
        wait_until(lambda: len(ready(tmp_path)) == 2, "its files")
        assert filler.poll() is None  # waiting to be asked again
        assert filler.stdin is not None
        filler.stdin.close()
        assert filler.wait(timeout=30) == 0
    finally:
        if filler.poll() is None:
            filler.kill()
            filler.wait()


def test_a_filler_asked_while_busy_still_makes_up_the_count(warm, tmp_path):
    """Taken one after another, faster than it fills: every take is made up in the end."""
    for n in range(2):
        assert warm.take_as(tmp_path / f"variant-{n}")
        warm.refill()
    wait_until(lambda: len(ready(tmp_path)) == 2, "both replacements")
    assert filler_pid(warm) is not None  # the same filler, waiting


def test_only_warm_files_are_taken_or_removed(tmp_path):
    """A warm sandbox's scratch directory (``warm-<pid>-<n>``) and a result being written share
    the server's directory: neither is ever taken as a warm file, nor removed at close."""
    sandbox_scratch = tmp_path / "warm-4242-1"
    sandbox_scratch.mkdir()
    being_written = tmp_path / "0123-1.arrow"
    being_written.write_bytes(b"x")
    files = WarmFiles(tmp_path, 2 * FILE_BYTES, file_bytes=FILE_BYTES)
    files.start()
    try:
        wait_until(lambda: len(ready(tmp_path)) == 2, "the warm files")
        for n in range(2):
            assert files.take_as(tmp_path / f"variant-{n}")
        assert not files.take_as(tmp_path / "variant-2")
    finally:
        files.close()
    assert sandbox_scratch.is_dir() and being_written.read_bytes() == b"x"


def test_a_server_that_stops_within_the_delay_never_starts_a_filler(tmp_path, monkeypatch):
    monkeypatch.setattr(warm_files, "FILL_DELAY_SECONDS", 30.0)
    started: list[object] = []
    monkeypatch.setattr(warm_files.subprocess, "Popen", lambda *a, **k: started.append(a))
    files = WarmFiles(tmp_path, 2 * FILE_BYTES, file_bytes=FILE_BYTES)
    files.start()
    time.sleep(0.2)
    files.close()  # at once, not after the delay
    assert started == []
    assert list(tmp_path.iterdir()) == []


def test_after_the_delay_the_filler_starts_by_itself(tmp_path, monkeypatch):
    monkeypatch.setattr(warm_files, "FILL_DELAY_SECONDS", 0.3)
    files = WarmFiles(tmp_path, 2 * FILE_BYTES, file_bytes=FILE_BYTES)
    began = time.monotonic()
    files.start()
    try:
        wait_until(lambda: len(ready(tmp_path)) == 2, "the warm files")
        assert time.monotonic() - began >= 0.3
    finally:
        files.close()


def test_a_large_first_fetch_within_the_delay_starts_the_filler_at_once(tmp_path, monkeypatch):
    monkeypatch.setattr(warm_files, "FILL_DELAY_SECONDS", 30.0)
    files = WarmFiles(tmp_path, 2 * FILE_BYTES, file_bytes=FILE_BYTES)
    files.start()
    try:
        assert not files.take_as(tmp_path / "variant-1")
        files.refill()  # as a large first fetch does
        wait_until(lambda: len(ready(tmp_path)) == 2, "the warm files", seconds=20)
    finally:
        files.close()
