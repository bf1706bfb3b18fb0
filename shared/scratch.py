"""Scratch space that no dead process keeps: each process writes its scratch files (results being
written, a query's spill files, representations being encoded) in a directory of its own,
``run-<tag>``, whose lock file it holds locked for as long as it lives. The kernel lets go of the
lock when the process dies however it dies, so any server sharing the scratch space can tell a
dead process's directory from a live one and remove it at once (``sweep_dead``), instead of
leaving a killed server's gigabytes of spill files to the janitor's day-old rule.

The tag is random, not the process id, which servers in separate containers sharing the space
may have in common. A directory is made and locked under a hidden name, then renamed: a sweep
never sees one unlocked while its process lives. Children started with ``exec`` (the sandboxes)
do not inherit the lock (descriptors are close-on-exec); they exit when their parent does.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import threading
import weakref
from pathlib import Path

logger = logging.getLogger(__name__)

_LIVE = "run-"
_MAKING = ".run-"  # made and locked under this name, then renamed to run-<tag>
_REMOVING = ".gone-"  # a dead one, renamed away from other sweeps while it is removed
LOCK_NAME = "lock"


class ScratchSpace:
    """A process's own directory in a shared scratch space, made on first use. Its lock lives
    as long as this object: whoever writes in the directory keeps the object (a server's store
    holds it for the server's life), not just the directory's path."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._own: Path | None = None
        self._guard = threading.Lock()

    def path(self, name: str) -> Path:
        return self.own_directory() / name

    def own_directory(self) -> Path:
        with self._guard:
            if self._own is None:
                self._own, lock = _make_own_directory(self.root)
                weakref.finalize(self, os.close, lock)  # a space dropped (a test's) lets go
            return self._own


def _make_own_directory(root: Path) -> tuple[Path, int]:
    """``run-<tag>``, and the descriptor holding its lock; on failure nothing half made is
    left, nor a descriptor per retry."""
    tag = os.urandom(6).hex()
    making = root / f"{_MAKING}{tag}"
    making.mkdir(mode=0o700)
    fd: int | None = None
    try:
        fd = os.open(making / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        own = root / f"{_LIVE}{tag}"
        os.rename(making, own)
    except BaseException:
        if fd is not None:
            os.close(fd)
        shutil.rmtree(making, ignore_errors=True)
        raise
    return own, fd


def directories(root: Path) -> list[Path]:
    """Every process's directory in the space: live ones, and dead ones not yet swept."""
    return sorted(root.glob(f"{_LIVE}*"))


def is_process_directory(path: Path) -> bool:
    """Whether ``path`` is named as a process's directory: only its lock decides its fate."""
    return path.name.startswith(_LIVE)


def sweep_dead(root: Path) -> tuple[list[Path], int]:
    """Removes the directories of processes that are gone (and what an interrupted removal
    left); the directories of live ones, and how many it removed. An entry this module did not
    make (its lock a directory, a link or another user's) is logged and left alone: one odd
    entry never stops a server from starting, nor the sweep of the others."""
    live: list[Path] = []
    removed = 0
    for directory in directories(root):
        try:
            if _held(directory):
                live.append(directory)
                continue
            # Its process is gone, and no process takes a dead one's lock again: hidden from
            # other sweeps (one of which may win this rename) before it is removed.
            tag = directory.name.removeprefix(_LIVE)
            os.rename(directory, root / f"{_REMOVING}{tag}-{os.urandom(4).hex()}")
            removed += 1
        except (FileNotFoundError, NotADirectoryError):  # another sweep took it
            continue
        except OSError as error:
            logger.warning("scratch: %s left alone (%s)", directory, error.strerror or error)
    for gone in root.glob(f"{_REMOVING}*"):
        shutil.rmtree(gone, ignore_errors=True)
    return live, removed


def _held(directory: Path) -> bool:
    """Whether a live process holds the directory's lock."""
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
