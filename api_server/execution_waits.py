"""Waiting for an execution to end without holding a thread: ``?wait`` of Get Execution and Run
Execution, and Test Connection.

One listener per API-server process, started by the app's lifespan, receives "execution X ended"
(``shared.notifications``: ``LISTEN`` on an asyncio PostgreSQL connection, or the SQLite mailbox
socket served by the event loop) and wakes X's waiters. A waiter is an ``asyncio.Event``, so a
parked request costs memory, never a thread, and thousands of them never slow other requests.

A notification is only a hint: a waiter re-reads its row when woken and at its deadline. Whenever
the listener (re)starts, every waiter re-reads once (something may have ended while nobody
listened); while nothing listens (before start-up, between reconnects, without a transport),
waiters re-read every ``UNLISTENED_RECHECK_SECONDS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine

from shared.db.engine import connection_bounds
from shared.notifications import Lines, Mailbox, Topic, mailbox_directory

logger = logging.getLogger(__name__)
T = TypeVar("T")

UNLISTENED_RECHECK_SECONDS = 0.5
# Ends heard lately, remembered so that a waiter registered just after its execution was queued
# can tell whether it ended in between (``mark``): far more than end within one queueing.
REMEMBERED_ENDS = 4096
# Executions this process queued lately, as queued, for a client's wait that follows its run:
# fewer than the ends remembered (a reading older than those is of no use), and not for long.
REMEMBERED_QUEUED = 1024
REMEMBERED_QUEUED_SECONDS = 60.0
# The listening connection is checked this often; a dead one is replaced.
KEEPALIVE_SECONDS = 10.0
MAX_BACKOFF_SECONDS = 5.0


@dataclass(frozen=True)
class Mark:
    """A point in what this process's listener heard: which listening, and how many ends."""

    listening: int
    ends_heard: int


class ExecutionWaits:
    """The waiters of this process by execution id, and the listener that wakes them."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._listening = False
        self._listenings = 0  # how often listening (re)started: ends may be missed in between
        self._ends_heard = 0
        self._notifiers: set[asyncio.StreamWriter] = set()  # their open connections (SQLite)
        self._recent_ends: deque[str] = deque(maxlen=REMEMBERED_ENDS)
        # id -> (reading, mark, when): oldest first
        self._queued: OrderedDict[str, tuple[Any, Mark, float]] = OrderedDict()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._engine.dialect.name == "postgresql":
            self._task = asyncio.create_task(self._keep_listening(self._listen_postgres))
            return
        directory = mailbox_directory(self._engine.url)
        if directory is not None:
            self._task = asyncio.create_task(
                self._keep_listening(lambda: self._listen_mailbox(directory))
            )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task, self._listening = None, False

    @property
    def parked(self) -> int:
        return sum(len(events) for events in self._waiters.values())

    # ------------------------------------------------------------------ waiting

    def mark(self) -> Mark | None:
        """Where the listener is now, to be taken before reading an execution that will be
        waited for (``wait_until_ended``'s ``known``); None while nothing listens."""
        return self.mark_in_thread() if asyncio.get_running_loop() is self._loop else None

    def mark_in_thread(self) -> Mark | None:
        """``mark``, taken in a worker thread (a request's blocking step) while the listener may
        move on its event loop: its two counts only grow, and the listening is read first, so a
        mark read meanwhile is a later one (still taken before what is read after it) or of a
        past listening (then the execution is read again). Pass it through ``on_this_loop``."""
        if not self._listening:
            return None
        return Mark(self._listenings, self._ends_heard)

    def on_this_loop(self, mark: Mark | None) -> Mark | None:
        """A ``mark_in_thread``, on the event loop its waits will be on: None unless the listener
        runs on this loop (as ``mark`` taken here would be)."""
        return mark if self._listening and asyncio.get_running_loop() is self._loop else None

    def remember_queued(self, execution_id: str, reading: Any, mark: Mark | None) -> None:
        """Keep an execution's reading, taken after ``mark`` as it was queued, for
        ``queued_reading`` (a wait that follows its run usually comes at once)."""
        if mark is None:
            return
        self._queued[execution_id] = (reading, mark, time.monotonic())
        self._queued.move_to_end(execution_id)
        while len(self._queued) > REMEMBERED_QUEUED:
            self._queued.popitem(last=False)

    def queued_reading(self, execution_id: str) -> tuple[Any, Mark] | None:
        """The reading ``remember_queued`` kept, while it is recent, with its mark: for
        ``wait_until_ended``'s ``known``, which reads the row instead if the execution may have
        ended since. Only as good as the caller's check of who may see it."""
        remembered = self._queued.get(execution_id)
        if remembered is None:
            return None
        reading, mark, when = remembered
        if time.monotonic() - when > REMEMBERED_QUEUED_SECONDS:
            del self._queued[execution_id]
            return None
        return reading, mark

    async def wait_until_ended(
        self,
        execution_id: str,
        seconds: float,
        read: Callable[[], Awaitable[T]],
        ended: Callable[[T], bool],
        known: tuple[T, Mark | None] | None = None,
    ) -> T:
        """``read()`` now, and again whenever the execution may have ended, until ``ended`` says
        so or ``seconds`` pass; the last reading. Registered before the first read, so an end
        between that read and the wait is not missed. ``known``: a reading taken after a
        ``mark``, which serves as the first one unless the listener may have heard the
        execution end since (Run Execution's new execution as it was queued: for run-and-wait,
        or for a wait that follows the run)."""
        loop = asyncio.get_running_loop()
        with self._parked(execution_id, loop) as event:
            if known is not None and not self._may_have_ended(execution_id, known[1]):
                current = known[0]
            else:
                current = await read()
            deadline = loop.time() + seconds
            while not ended(current) and (remaining := deadline - loop.time()) > 0:
                if not (self._listening and loop is self._loop):
                    remaining = min(remaining, UNLISTENED_RECHECK_SECONDS)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), remaining)
                event.clear()
                current = await read()
            return current

    @contextlib.contextmanager
    def _parked(
        self, execution_id: str, loop: asyncio.AbstractEventLoop
    ) -> Iterator[asyncio.Event]:
        event = asyncio.Event()
        if loop is not self._loop:  # not this listener's loop: its wake-ups cannot reach us
            yield event
            return
        waiters = self._waiters.setdefault(execution_id, set())
        waiters.add(event)
        try:
            yield event
        finally:
            waiters.discard(event)
            if not waiters and self._waiters.get(execution_id) is waiters:
                del self._waiters[execution_id]

    def _may_have_ended(self, execution_id: str, mark: Mark | None) -> bool:
        """Whether an end of the execution may have been heard, or missed, since ``mark``."""
        if mark is None or mark.listening != self._listenings or not self._listening:
            return True
        since = self._ends_heard - mark.ends_heard
        return since > REMEMBERED_ENDS or execution_id in itertools.islice(
            reversed(self._recent_ends), since
        )

    def _wake(self, execution_id: str) -> None:
        self._ends_heard += 1
        self._recent_ends.append(execution_id)
        for event in self._waiters.get(execution_id, ()):
            event.set()

    def _wake_all(self) -> None:
        for events in self._waiters.values():
            for event in events:
                event.set()

    # ------------------------------------------------------------------ listening

    async def _keep_listening(self, listen: Callable[[], Awaitable[None]]) -> None:
        """Run ``listen`` for ever; after a failure, again after a growing pause."""
        backoff = 0.1
        while True:
            try:
                await listen()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("listening for ended executions failed (%s)", type(exc).__name__)
            finally:
                self._listening = False
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    def _listening_now(self) -> None:
        self._listening = True
        self._listenings += 1
        self._wake_all()

    async def _listen_postgres(self) -> None:
        args, kwargs = self._engine.dialect.create_connect_args(self._engine.url)
        kwargs.pop("context", None)  # SQLAlchemy's adapters: not a connection parameter
        for name, value in connection_bounds(self._engine.url).items():
            kwargs.setdefault(name, value)
        connection = await psycopg.AsyncConnection.connect(*args, autocommit=True, **kwargs)
        async with connection:
            listen = f"LISTEN {Topic.EXECUTION_ENDED.value}"
            await connection.execute(listen)
            self._listening_now()
            while True:
                async for notification in connection.notifies(timeout=KEEPALIVE_SECONDS):
                    self._wake(notification.payload)
                # A connection that died without a word shows here, not in notifies(); LISTEN
                # again is a no-op round trip.
                await asyncio.wait_for(connection.execute(listen), KEEPALIVE_SECONDS)

    async def _listen_mailbox(self, directory: Path) -> None:
        mailbox = Mailbox(directory, Topic.EXECUTION_ENDED)
        try:
            server = await asyncio.start_unix_server(self._on_notifier, sock=mailbox.socket)
            async with server:
                try:
                    self._listening_now()
                    while mailbox.path.exists():  # removed from outside: listen on a new one
                        await asyncio.sleep(KEEPALIVE_SECONDS / 2)
                finally:
                    # Notifiers keep their connections: closed here, or the server's close
                    # would wait for them (Python 3.12.1+), and they would stay with the
                    # mailbox they reached (its notifiers connect to the new one when theirs
                    # breaks).
                    for writer in list(self._notifiers):
                        writer.close()
        finally:
            mailbox.close()

    async def _on_notifier(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """A notifier's connection, kept open by it for its next notifications: each line
        wakes as it arrives, until the notifier closes it or sends what no notifier would."""
        lines = Lines()
        self._notifiers.add(writer)
        try:
            while not lines.overlong and (chunk := await reader.read(65536)):
                for execution_id in lines.feed(chunk):
                    self._wake(execution_id)
        except OSError:
            pass
        except asyncio.CancelledError:
            # Its event loop ends (the listener closed the connection, but its end was not
            # read yet): asyncio's stream machinery would log a cancelled handler as an error,
            # with its traceback.
            pass
        finally:
            self._notifiers.discard(writer)
            writer.close()

    # ------------------------------------------------------------------ metrics

    def collector(self) -> Collector:
        return _ParkedCollector(self)


class _ParkedCollector(Collector):
    def __init__(self, waits: ExecutionWaits) -> None:
        self._waits = waits

    def collect(self) -> Iterator[Any]:
        yield GaugeMetricFamily(
            "dataferry_parked_waits",
            "Requests of this process waiting for an execution to end (no thread held).",
            self._waits.parked,
        )
