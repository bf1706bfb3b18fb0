"""Scratch space that no dead process keeps (shared/scratch.py): each process writes in a locked
directory of its own; a sweep removes a killed process's directory at once and never a live
one's. The janitor applies the sweep, and its day-old rule to everything else."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from data_server import janitor
from shared.results import LocalResultStore
from shared.scratch import LOCK_NAME, ScratchSpace, sweep_dead

ROOT = Path(__file__).resolve().parents[2]
# A process that writes a scratch file in its own directory, says where, and waits to be killed.
WRITER = """
import sys, time
from pathlib import Path
from shared.scratch import ScratchSpace
space = ScratchSpace(Path(sys.argv[1]))  # held: its lock lives as long as it does
path = space.path("spill.tmp")
path.write_bytes(b"x" * 4096)
print(path, flush=True)
time.sleep(120)
"""
DAY_AGO = time.time() - janitor.STALE_SCRATCH_SECONDS - 60


def _writer(root: Path) -> tuple[subprocess.Popen[str], Path]:
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(root)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert process.stdout is not None
    return process, Path(process.stdout.readline().strip())


def _killed(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    if process.stdout is not None:
        process.stdout.close()


def test_a_killed_process_scratch_goes_at_the_next_sweep_and_a_live_one_stays(tmp_path):
    alive, alive_file = _writer(tmp_path)
    killed, killed_file = _writer(tmp_path)
    try:
        assert alive_file.parent != killed_file.parent  # each its own directory
        live, removed = sweep_dead(tmp_path)
        assert (sorted(live), removed) == (sorted([alive_file.parent, killed_file.parent]), 0)
        _killed(killed)
        live, removed = sweep_dead(tmp_path)
        assert (live, removed) == ([alive_file.parent], 1)
        assert not killed_file.parent.exists()
        assert alive_file.read_bytes() == b"x" * 4096
        assert sorted(p.name for p in tmp_path.iterdir()) == [alive_file.parent.name]
    finally:
        _killed(alive)
    assert sweep_dead(tmp_path) == ([], 1)
    assert list(tmp_path.iterdir()) == []


def test_this_process_keeps_one_directory_and_its_own_sweep_leaves_it(tmp_path):
    space = ScratchSpace(tmp_path)
    first, second = space.path("a"), space.path("b")
    assert first.parent == second.parent == space.own_directory()
    assert first.parent.parent == tmp_path and (first.parent / LOCK_NAME).is_file()
    assert sweep_dead(tmp_path) == ([first.parent], 0)
    assert first.parent.is_dir()


def test_what_an_interrupted_removal_left_goes_and_a_directory_being_made_stays(tmp_path):
    """A ``.gone-`` directory is a dead process's already hidden from other sweeps; a
    ``.run-`` one may be a live process's, not yet locked: only the janitor's day-old rule
    removes it."""
    (tmp_path / ".gone-0123456789ab" / "spill").mkdir(parents=True)
    (tmp_path / ".run-ba9876543210").mkdir()
    assert sweep_dead(tmp_path) == ([], 0)
    assert [p.name for p in tmp_path.iterdir()] == [".run-ba9876543210"]


def test_the_janitor_removes_a_dead_process_scratch_at_once_and_old_entries_of_live_ones(
    tmp_path,
):
    store = LocalResultStore(tmp_path / "results")
    alive, alive_file = _writer(store.scratch_dir)
    killed, killed_file = _writer(store.scratch_dir)
    try:
        _killed(killed)
        stale_entry = alive_file.parent / "crashed-attempt"  # a sandbox killed mid-write, say
        stale_entry.mkdir()
        stale_loose = store.scratch_dir / ".run-ba9876543210"  # a making interrupted long ago
        stale_loose.mkdir()
        for old in (stale_entry, stale_loose, alive_file.parent, alive_file.parent / LOCK_NAME):
            os.utime(old, (DAY_AGO, DAY_AGO))
        assert janitor.remove_stale_scratch(store) == 3
        assert not killed_file.parent.exists()  # not a day old: gone because its process is
        assert not stale_entry.exists() and not stale_loose.exists()
        # The live process's directory and lock stay, however old, and so does its fresh file.
        assert alive_file.is_file() and (alive_file.parent / LOCK_NAME).is_file()
        assert sweep_dead(store.scratch_dir) == ([alive_file.parent], 0)
    finally:
        _killed(alive)


def test_a_space_dropped_by_its_process_lets_go_of_its_directory(tmp_path):
    """A store made and dropped (a test's, a command's) does not hold its lock, nor a
    descriptor, for the rest of the process."""
    space = ScratchSpace(tmp_path)
    directory = space.own_directory()
    assert sweep_dead(tmp_path) == ([directory], 0)
    del space
    gc.collect()
    assert sweep_dead(tmp_path) == ([], 1)


def test_odd_entries_are_left_alone_and_the_others_still_swept(tmp_path):
    """Entries no process of ours made (an operator's mistake): a lock that is a directory, a
    lock that is a link to itself, a hidden leftover of the same name. Before, each stopped the
    sweep (and with it a data server's start) with an exception."""
    (tmp_path / "run-000aaa" / LOCK_NAME).mkdir(parents=True)
    (tmp_path / "run-000bbb").mkdir()
    (tmp_path / "run-000bbb" / LOCK_NAME).symlink_to(LOCK_NAME)
    space = ScratchSpace(tmp_path)
    dead = space.own_directory().rename(tmp_path / "run-zzzzzzzzzzzz")
    (dead / "spill.tmp").write_bytes(b"x")
    (tmp_path / ".gone-zzzzzzzzzzzz").mkdir()  # the name its removal once took
    (tmp_path / ".gone-zzzzzzzzzzzz" / "left").write_bytes(b"x")
    del space
    gc.collect()
    assert sweep_dead(tmp_path) == ([], 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run-000aaa", "run-000bbb"]


def test_a_directory_whose_lock_cannot_be_read_is_never_taken_for_a_day_old_entry(
    tmp_path, monkeypatch
):
    """Out of descriptors, say: its lock tells nothing this time, and an idle process's
    directory may well be a day old. Before, the day-old rule then removed a live one."""
    store = LocalResultStore(tmp_path / "results")
    in_flight = store.temp_path("1234-1.arrow")
    in_flight.write_bytes(b"x")
    os.utime(in_flight.parent, (DAY_AGO, DAY_AGO))
    real_open = os.open

    def exhausted(path, *args, **kwargs):
        if str(path).endswith(f"/{LOCK_NAME}"):
            raise OSError(24, "Too many open files")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("shared.scratch.os.open", exhausted)
    assert janitor.remove_stale_scratch(store) == 0
    assert in_flight.read_bytes() == b"x"
