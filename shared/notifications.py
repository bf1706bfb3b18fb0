"""Notifications between the processes of one region: "new work is queued" wakes workers,
"execution X ended" wakes the requests waiting for X, and "cancel X" tells the worker running X
to stop it now rather than at its next heartbeat.

A notification is a hint, never the record: a receiver re-reads the row it is about, so a lost
one costs latency (until a safety-net poll or a waiter's deadline), never an execution, and a
spurious one costs a read. Two transports, one for each configuration (docs/architecture.md):

- **PostgreSQL** (scale-out): ``pg_notify`` inside the writer's transaction, so the notification
  is delivered only once the change is committed and visible; receivers ``LISTEN``.
- **SQLite** (embedded, one machine): every receiving process listens on a unix stream socket in
  a directory beside the database file (``<db>.notify/<topic>.<pid>.<random>``); after the
  writer's commit, a notifier writes one line per message to each socket of the topic, over a
  connection it keeps for the next time. A socket whose process is gone refuses the connection
  and is removed. Why stream sockets, kept connections, and how much a connection holds unread:
  docs/architecture.md §4. A receiver that does not read holds its notifiers up only with a
  message larger than the room left in their buffer (for ``SEND_TIMEOUT_SECONDS``); any other
  write that finds the buffer full is not made (that hint is lost).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import secrets
import selectors
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event, text
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

from shared.db.engine import autocommit

logger = logging.getLogger(__name__)

RECONNECT_SECONDS = 1.0
# A notifier gives up on one receiver after this long (the rest of a message larger than the
# room left in its buffer).
SEND_TIMEOUT_SECONDS = 0.5
# A process notifies a handful of mailboxes; it keeps its connections to at most this many (the
# least recently used closed first), and closes those to mailboxes gone from their directory.
MAX_KEPT_CONNECTIONS = 64
# What a kept connection may hold unread, asked of the kernel, which caps it at
# net.core.wmem_max (docs/architecture.md §4 says how many lines that is).
SEND_BUFFER_BYTES = 1 << 20
# A notification's line holds an execution id or nothing; a longer one is not a notifier's.
MAX_LINE_BYTES = 1024
# Longest unix socket path (sun_path is 108 bytes with its NUL); a longer one is reached through
# the directory's file descriptor (/proc/self/fd/N/name).
_MAX_SOCKET_PATH = 107
_PENDING = "dataferry_pending_notifications"


class Topic(StrEnum):
    """What happened; the value is the PostgreSQL channel."""

    NEW_WORK = "dataferry_new_work"
    EXECUTION_ENDED = "dataferry_execution_ended"
    CANCEL_REQUESTED = "dataferry_cancel_requested"

    @property
    def socket_prefix(self) -> str:
        """What the names of the topic's mailboxes start with (none the start of another's)."""
        return _SOCKET_PREFIXES[self]


_SOCKET_PREFIXES = {
    Topic.NEW_WORK: "work.",
    Topic.EXECUTION_ENDED: "ended.",
    Topic.CANCEL_REQUESTED: "cancel.",
}


# ---------------------------------------------------------------------------- sending


def announce_new_work(session: Session) -> None:
    """Workers look at the queue once this transaction commits (work queued, a slot freed)."""
    _notify(session, Topic.NEW_WORK, [""])


def announce_new_work_now(engine: Engine) -> None:
    """``announce_new_work`` outside any transaction: told at once."""
    if engine.dialect.name == "postgresql":
        with autocommit(engine).connect() as connection:
            connection.execute(_PG_NOTIFY, {"channel": Topic.NEW_WORK.value, "payload": ""})
        return
    directory = mailbox_directory(engine.url)
    if directory is not None:
        post(directory, {Topic.NEW_WORK: [""]})


def announce_ended(session: Session, execution_ids: Iterable[str]) -> None:
    """The waiters of these executions re-read them once this transaction commits."""
    _notify(session, Topic.EXECUTION_ENDED, execution_ids)


def announce_cancel_requested(session: Session, execution_ids: Iterable[str]) -> None:
    """The workers running these executions read their rows once this transaction commits, and
    stop them if a cancel is still requested (the heartbeat would, a third of a lease later)."""
    _notify(session, Topic.CANCEL_REQUESTED, execution_ids)


_PG_NOTIFY = text("SELECT pg_notify(:channel, :payload)")


def _notify(session: Session, topic: Topic, payloads: Iterable[str]) -> None:
    engine = session.get_bind().engine
    if engine.dialect.name == "postgresql":
        for payload in payloads:
            session.execute(_PG_NOTIFY, {"channel": topic.value, "payload": payload})
        return
    directory = mailbox_directory(engine.url)
    if directory is None:
        return
    session.info.setdefault(_PENDING, []).extend(
        (directory, topic, payload) for payload in payloads
    )


# Listened to once, for every session: adding the listeners to each session that had something
# to tell cost every run 30 µs.
@event.listens_for(Session, "after_rollback")
def _drop_pending(session: Session) -> None:
    session.info.pop(_PENDING, None)


@event.listens_for(Session, "after_commit")
def _post_pending(session: Session) -> None:
    """After the commit, so that a woken receiver finds the change."""
    pending = session.info.pop(_PENDING, None)
    if not pending:
        return
    by_directory: dict[Path, dict[Topic, list[str]]] = {}
    for directory, topic, payload in pending:
        by_directory.setdefault(directory, {}).setdefault(topic, []).append(payload)
    for directory, messages in by_directory.items():
        post(directory, messages)


def post(directory: Path, messages: dict[Topic, list[str]]) -> None:
    """Deliver each topic's payloads, one line each, to every socket of that topic."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return  # nobody has listened yet
    _KEPT.keep_only(directory, names)
    with _addresses(directory) as address:
        for name in names:
            for topic, payloads in messages.items():
                if name.startswith(topic.socket_prefix):
                    lines = "".join(f"{payload}\n" for payload in payloads)
                    _deliver(directory, name, address(name), lines.encode())


def _deliver(directory: Path, name: str, address: str, data: bytes) -> None:
    path = str(directory / name)
    kept = _KEPT.take(path)
    if kept is not None:
        sent = _send(kept, data)
        if sent is not _Sent.BROKEN:  # a full buffer leaves the stream whole: keep it
            _KEPT.put(path, kept)
            if sent is _Sent.FULL:
                logger.warning("notification to %s not delivered (its buffer is full)", name)
            return
        kept.close()  # closed by its receiver (gone, or on a new mailbox), or timed out
    connection = _connect(directory, name, address)
    if connection is None:
        return
    if _send(connection, data) is _Sent.WHOLE:
        _KEPT.put(path, connection)
    else:
        connection.close()
        logger.warning("notification to %s not delivered", name)


def _connect(directory: Path, name: str, address: str) -> socket.socket | None:
    """A non-blocking connection to the mailbox, or None (it is gone, or refused us now)."""
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.setblocking(False)  # a full listen backlog refuses at once instead of waiting
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
    try:
        connection.connect(address)
        return connection
    except ConnectionRefusedError:  # its process is gone: nobody will listen there again
        connection.close()
        (directory / name).unlink(missing_ok=True)
    except FileNotFoundError:
        connection.close()  # removed meanwhile
    except OSError as exc:  # a receiver that does not keep up loses this hint, not work
        connection.close()
        logger.warning("notification to %s not delivered (%s)", name, type(exc).__name__)
    return None


class _Sent(Enum):
    WHOLE = "whole"
    FULL = "full"  # nothing written: the receiver's buffer has no room
    BROKEN = "broken"  # the connection is of no further use


def _send(connection: socket.socket, data: bytes) -> _Sent:
    """Write ``data`` without waiting for a receiver that does not read; a message that only
    partly fits has its rest written within ``SEND_TIMEOUT_SECONDS``, else the connection is
    broken off (its receiver drops the cut line)."""
    try:
        sent = connection.send(data)
    except BlockingIOError:
        return _Sent.FULL
    except OSError:
        return _Sent.BROKEN
    if sent < len(data):
        try:
            connection.settimeout(SEND_TIMEOUT_SECONDS)
            connection.sendall(memoryview(data)[sent:])
            connection.setblocking(False)
        except OSError:
            return _Sent.BROKEN
    return _Sent.WHOLE


class _KeptConnections:
    """This process's connections to the mailboxes it notified, by socket path. A connection is
    taken out while one thread writes to it, so two threads' lines never interleave (a second
    thread meanwhile connects anew; the surplus connection is closed when put back)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._connections: OrderedDict[str, socket.socket] = OrderedDict()

    def take(self, path: str) -> socket.socket | None:
        with self._lock:
            return self._connections.pop(path, None)

    def put(self, path: str, connection: socket.socket) -> None:
        with self._lock:
            surplus = [self._connections.pop(path, None)]
            self._connections[path] = connection
            while len(self._connections) > self._limit:
                surplus.append(self._connections.popitem(last=False)[1])
        for extra in surplus:
            if extra is not None:
                extra.close()

    def keep_only(self, directory: Path, names: list[str]) -> None:
        """Close the connections to mailboxes gone from ``directory`` (their receivers ended,
        or listen on new ones): nothing would post to them again."""
        with self._lock:
            if not self._connections:
                return
            listed = {str(directory / name) for name in names}
            inside = f"{directory}{os.sep}"
            gone = [p for p in self._connections if p.startswith(inside) and p not in listed]
            closing = [self._connections.pop(path) for path in gone]
        for connection in closing:
            connection.close()

    def close_all(self) -> None:
        with self._lock:
            kept = list(self._connections.values())
            self._connections.clear()
        for connection in kept:
            connection.close()


_KEPT = _KeptConnections(MAX_KEPT_CONNECTIONS)
atexit.register(_KEPT.close_all)  # closed, not left for the interpreter to find open at its end


@contextlib.contextmanager
def _addresses(directory: Path) -> Iterator[Any]:
    """``address(name)``: a path for connect/bind, through the directory's descriptor when the
    plain path is too long for a unix socket."""
    if len(os.fsencode(directory)) + 40 < _MAX_SOCKET_PATH:
        yield lambda name: str(directory / name)
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield lambda name: f"/proc/self/fd/{fd}/{name}"
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------- receiving


def mailbox_directory(url: URL) -> Path | None:
    """Where the processes sharing this SQLite file meet; None for other databases (and for an
    in-memory SQLite, which no other process can share)."""
    database = url.database or ""
    if (
        url.get_backend_name() != "sqlite"
        or database in ("", ":memory:")
        or url.query.get("mode") == "memory"
    ):
        return None
    path = Path(database.removeprefix("file:")).absolute()
    return path.parent / f"{path.name}.notify"


def can_listen(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql" or mailbox_directory(engine.url) is not None


class Mailbox:
    """A listening unix socket of one topic in the mailbox directory; removed on close.

    It is bound under a hidden name and renamed into place once it listens, so that a notifier
    never finds it refusing connections (which would make it remove the socket as stale)."""

    def __init__(self, directory: Path, topic: Topic) -> None:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        name = f"{topic.socket_prefix}{os.getpid()}.{secrets.token_hex(3)}"
        self.path = directory / name
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with _addresses(directory) as address:
                self.socket.bind(address(f".{name}"))
                self.socket.listen(128)
                os.rename(address(f".{name}"), address(name))
        except OSError:
            self.socket.close()
            with contextlib.suppress(OSError):
                (directory / f".{name}").unlink()
            raise

    @functools.cached_property
    def _selector(self) -> selectors.BaseSelector:
        """The listening socket and the connections accepted from notifiers, each kept open
        (with its partial line) until its notifier closes it; made by the first ``receive``
        (the API server's listener serves the socket on its event loop instead)."""
        selector = selectors.DefaultSelector()
        selector.register(self.socket, selectors.EVENT_READ)
        return selector

    def close(self) -> None:
        if "_selector" in self.__dict__:  # connections accepted by ``receive``
            for key in list(self._selector.get_map().values()):
                key.fileobj.close()  # type: ignore[union-attr]
            self._selector.close()
        self.socket.close()
        self.path.unlink(missing_ok=True)

    def receive(self, timeout: float) -> list[str]:
        """Payloads that arrived within ``timeout`` (blocking; for threads), returned as soon as
        there are any, so that their receiver acts on them while more come."""
        payloads: list[str] = []
        deadline = time.monotonic() + timeout
        while not payloads and (ready := self._selector.select(deadline - time.monotonic())):
            for key, _ in ready:
                if key.fileobj is self.socket:
                    accepted, _ = self.socket.accept()
                    accepted.setblocking(False)
                    self._selector.register(accepted, selectors.EVENT_READ, Lines())
                else:
                    payloads += self._read(key)
        return payloads

    def _read(self, key: selectors.SelectorKey) -> list[str]:
        connection, lines = key.fileobj, key.data
        assert isinstance(connection, socket.socket) and isinstance(lines, Lines)
        try:
            chunk = connection.recv(65536)
        except BlockingIOError:
            return []
        except OSError:
            chunk = b""  # reset by its notifier
        complete = lines.feed(chunk)
        # Closed by its notifier (a line cut off is dropped), or not a notifier's: dropped.
        if not chunk or lines.overlong:
            self._selector.unregister(connection)
            connection.close()
        return complete


class Lines:
    """The complete lines of a stream, fed its chunks as they come: a line is held until its end
    arrives, and one cut off when the stream ends is dropped (a hint lost, nothing else)."""

    def __init__(self) -> None:
        self._partial = b""
        # A line outgrew MAX_LINE_BYTES: not a notifier's stream, to be closed.
        self.overlong = False

    def feed(self, chunk: bytes) -> list[str]:
        """The lines ``chunk`` completes (an over-long one sets ``overlong`` and is dropped)."""
        *complete, self._partial = (self._partial + chunk).split(b"\n")
        if len(self._partial) > MAX_LINE_BYTES:
            self.overlong, self._partial = True, b""
        return [line.decode(errors="replace") for line in complete]


class Doorbell:
    """Wakes idle threads one per ring, not all at once: a new execution is then claimed by one
    executor instead of being raced for by every idle one (each losing racer paid for a claim).
    Rings that find nobody waiting are kept, at most ``limit`` of them, so a thread that was busy
    when one came answers it as soon as it waits."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._rings = 0
        self._condition = threading.Condition()

    def ring(self, times: int = 1) -> None:
        with self._condition:
            self._rings = min(self.limit, self._rings + times)
            self._condition.notify(times)

    def wait(self, timeout: float) -> bool:
        """True when a ring woke (or was waiting for) this thread; False after ``timeout``."""
        with self._condition:
            if not self._rings:
                self._condition.wait(timeout)
            if not self._rings:
                return False
            self._rings -= 1
            return True


def listen_for_new_work(engine: Engine, bell: Doorbell, stopping: threading.Event) -> None:
    """Ring ``bell`` once per new-work notification until ``stopping`` (a worker's listener
    thread). Whenever listening (re)starts, it rings as often as it may: whatever was announced
    while nobody listened is looked for."""
    listen(
        engine,
        Topic.NEW_WORK,
        heard=lambda payloads: bell.ring(len(payloads)),
        started=lambda: bell.ring(bell.limit),
        stopping=stopping,
    )


def listen(
    engine: Engine,
    topic: Topic,
    *,
    heard: Callable[[list[str]], None],
    started: Callable[[], None],
    stopping: threading.Event,
) -> None:
    """Pass each batch of the topic's payloads to ``heard`` until ``stopping`` (in a thread of
    its own); after a failure, listen again. ``started`` runs whenever listening (re)starts, for
    what was announced while nobody listened."""
    listening = _Listening(topic, heard, started, stopping)
    while not stopping.is_set():
        try:
            if engine.dialect.name == "postgresql":
                _listen_postgres(engine, listening)
            else:
                directory = mailbox_directory(engine.url)
                assert directory is not None  # can_listen(engine) was checked
                _listen_mailbox(directory, listening)
        except Exception as exc:  # the server went away, our connection was cut, a bad socket
            logger.warning("listening for %s failed (%s); again", topic.value, type(exc).__name__)
            stopping.wait(RECONNECT_SECONDS)


@dataclass(frozen=True)
class _Listening:
    topic: Topic
    heard: Callable[[list[str]], None]
    started: Callable[[], None]
    stopping: threading.Event


def _listen_postgres(engine: Engine, listening: _Listening) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql(f"LISTEN {listening.topic.value}")
        driver = connection.connection.driver_connection
        assert driver is not None  # an open psycopg connection
        listening.started()
        while not listening.stopping.is_set():
            payloads = [notify.payload for notify in driver.notifies(timeout=0.5, stop_after=1)]
            if payloads:
                listening.heard(payloads)


def _listen_mailbox(directory: Path, listening: _Listening) -> None:
    mailbox = Mailbox(directory, listening.topic)
    try:
        listening.started()
        while not listening.stopping.is_set():
            received = mailbox.receive(timeout=0.5)
            if received:
                listening.heard(received)
            if not mailbox.path.exists():  # removed from outside: bind a new one
                raise FileNotFoundError(mailbox.path)
    finally:
        mailbox.close()
