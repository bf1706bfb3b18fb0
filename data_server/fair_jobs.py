"""Threads that run each organisation's jobs in turn, for the data server's first encodings.

A plain pool runs jobs in the order they came: one organisation that asks for many large first
fetches at once takes every thread, and another organisation's small one waits behind all of
them. Here a free thread takes the oldest job of the organisation with the fewest jobs running,
and among those, of the one that has started the fewest since it last had nothing to do: an
organisation's jobs queue behind each other rather than in front of another's, even on one
thread. No organisation runs on every thread at once (one is kept for the others, when there are
two or more), so another organisation's job starts at once instead of waiting for a long one to
end; the threads are for waiting on I/O and sharing the cores, so one kept free costs little.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import Counter, deque
from collections.abc import Callable

logger = logging.getLogger(__name__)


class FairJobs:
    def __init__(self, threads: int, name: str) -> None:
        self._waiting: dict[str, deque[tuple[int, Callable[[], None]]]] = {}
        self._running: Counter[str] = Counter()
        self._started: Counter[str] = Counter()  # while the organisation has jobs
        self._arrivals = itertools.count()
        self._condition = threading.Condition()
        self._closed = False
        self._most_threads, self._name = threads, name
        self._share = max(1, threads - 1)  # the most one organisation runs at once
        self._threads: list[threading.Thread] = []  # started as jobs need them
        self._idle = 0  # threads waiting for a job
        self._queued = 0  # jobs waiting for a thread

    def submit(self, organization_id: str, job: Callable[[], None]) -> None:
        """Queue ``job`` (which handles its own errors); RuntimeError once shut down."""
        with self._condition:
            if self._closed:
                raise RuntimeError("the encoding threads are shut down")
            queue = self._waiting.setdefault(organization_id, deque())
            queue.append((next(self._arrivals), job))
            self._queued += 1
            self._condition.notify()
            if self._queued > self._idle and len(self._threads) < self._most_threads:
                thread = threading.Thread(
                    target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()

    def shutdown(self) -> None:
        """Jobs not started never will; running ones finish on their own."""
        with self._condition:
            self._closed = True
            self._waiting.clear()
            self._queued = 0
            self._condition.notify_all()

    def _work(self) -> None:
        while True:
            with self._condition:
                while not self._closed and not self._startable():
                    self._idle += 1
                    self._condition.wait()
                    self._idle -= 1
                if self._closed:
                    return
                organization_id, job = self._take()
                self._running[organization_id] += 1
            try:
                job()
            except BaseException:  # a job handles its own errors; this thread must go on
                logger.exception("an encoding job failed")
            finally:
                with self._condition:
                    self._running[organization_id] -= 1
                    if not self._running[organization_id]:
                        del self._running[organization_id]
                        if organization_id not in self._waiting:  # idle: its turns start over
                            del self._started[organization_id]

    def _startable(self) -> list[str]:
        """Organisations with a job waiting and fewer than their share running."""
        return [owner for owner in self._waiting if self._running[owner] < self._share]

    def _take(self) -> tuple[str, Callable[[], None]]:
        """The oldest job of the organisation with the fewest running, then the fewest started
        (the caller holds the condition, and some organisation is startable)."""
        organization_id = min(
            self._startable(),
            key=lambda owner: (
                self._running[owner],
                self._started[owner],
                self._waiting[owner][0][0],
            ),
        )
        self._started[organization_id] += 1
        queue = self._waiting[organization_id]
        _, job = queue.popleft()
        self._queued -= 1
        if not queue:
            del self._waiting[organization_id]
        return organization_id, job
