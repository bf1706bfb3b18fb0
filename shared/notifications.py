"""Notifications between the processes of one region: "new work is queued" wakes workers, and
"execution X ended" wakes the requests waiting for X.

A notification is a hint, never the record: a receiver re-reads the row it is about, so a lost
one costs latency (until a safety-net poll or a waiter's deadline), never an execution, and a
spurious one costs a read. Two transports, one for each configuration (docs/architecture.md):

- **PostgreSQL** (scale-out): ``pg_notify`` inside the writer's transaction, so the notification
  is delivered only once the change is committed and visible; receivers ``LISTEN``.
- **SQLite** (embedded, one machine): every receiving process listens on a unix stream socket in
  a directory beside the database file (``<db>.notify/<topic>.<pid>.<random>``); after the
  writer's commit, a notifier connects to each socket of the topic and writes one line per
  message. A socket whose process is gone refuses the connection and is removed. Stream sockets,
  not datagrams: Linux queues only ``net.unix.max_dgram_qlen`` (often 10) datagrams per socket,
  so a burst would be dropped, while a stream socket buffers hundreds of kilobytes, and a stopped
  receiver costs its notifiers nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import selectors
import socket
import threading
from collections.abc import Iterable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event, text
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

logger = logging.getLogger(__name__)

RECONNECT_SECONDS = 1.0
# A notifier gives up on one receiver after this long (its buffer full, or it never accepts).
SEND_TIMEOUT_SECONDS = 0.5
# Longest unix socket path (sun_path is 108 bytes with its NUL); a longer one is reached through
# the directory's file descriptor (/proc/self/fd/N/name).
_MAX_SOCKET_PATH = 107
_PENDING = "dataferry_pending_notifications"


class Topic(StrEnum):
    """What happened; the value is the PostgreSQL channel."""

    NEW_WORK = "dataferry_new_work"
    EXECUTION_ENDED = "dataferry_execution_ended"

    @property
    def socket_prefix(self) -> str:
        return "work." if self is Topic.NEW_WORK else "ended."


# ---------------------------------------------------------------------------- sending


def announce_new_work(session: Session) -> None:
    """Workers look at the queue once this transaction commits (work queued, a slot freed)."""
    _notify(session, Topic.NEW_WORK, [""])


def announce_ended(session: Session, execution_ids: Iterable[str]) -> None:
    """The waiters of these executions re-read them once this transaction commits."""
    _notify(session, Topic.EXECUTION_ENDED, execution_ids)


def _notify(session: Session, topic: Topic, payloads: Iterable[str]) -> None:
    engine = session.get_bind().engine
    if engine.dialect.name == "postgresql":
        for payload in payloads:
            session.execute(
                text("SELECT pg_notify(:channel, :payload)"),
                {"channel": topic.value, "payload": payload},
            )
        return
    directory = mailbox_directory(engine.url)
    if directory is None:
        return
    if _PENDING not in session.info:
        session.info[_PENDING] = []
        event.listen(session, "after_commit", _post_pending)
        event.listen(session, "after_rollback", _drop_pending)
    session.info[_PENDING].extend((directory, topic, payload) for payload in payloads)


def _drop_pending(session: Session) -> None:
    session.info[_PENDING] = []


def _post_pending(session: Session) -> None:
    """After the commit, so that a woken receiver finds the change."""
    pending, session.info[_PENDING] = session.info[_PENDING], []
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
    with _addresses(directory) as address:
        for name in names:
            for topic, payloads in messages.items():
                if name.startswith(topic.socket_prefix):
                    lines = "".join(f"{payload}\n" for payload in payloads)
                    _deliver(directory, name, address(name), lines.encode())


def _deliver(directory: Path, name: str, address: str, data: bytes) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(SEND_TIMEOUT_SECONDS)
        try:
            sock.connect(address)
            sock.sendall(data)
        except ConnectionRefusedError:  # its process is gone: nobody will listen there again
            (directory / name).unlink(missing_ok=True)
        except FileNotFoundError:
            pass  # removed meanwhile
        except OSError as exc:  # a receiver that does not keep up loses this hint, not work
            logger.warning("notification to %s not delivered (%s)", name, type(exc).__name__)


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

    def close(self) -> None:
        self.socket.close()
        self.path.unlink(missing_ok=True)

    def receive(self, timeout: float) -> list[str]:
        """Payloads that arrived within ``timeout`` (blocking; for threads)."""
        payloads: list[str] = []
        with selectors.DefaultSelector() as selector:
            selector.register(self.socket, selectors.EVENT_READ)
            wait: float | None = timeout
            while selector.select(wait):
                connection, _ = self.socket.accept()
                with connection:
                    connection.settimeout(SEND_TIMEOUT_SECONDS)
                    payloads.extend(_read_lines(connection))
                wait = 0  # take whatever else is pending, then return
        return payloads


def _read_lines(connection: socket.socket) -> list[str]:
    chunks = []
    with contextlib.suppress(OSError):  # a notifier that died mid-message: keep what came
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    return split_payloads(b"".join(chunks))


def split_payloads(data: bytes) -> list[str]:
    """Complete lines only: a cut-off last line is dropped (a hint lost, nothing else)."""
    lines = data.decode(errors="replace").split("\n")
    return lines[:-1]


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
    thread); after a failure, listen again. Whenever listening (re)starts, it rings as often as
    it may: whatever was announced while nobody listened is looked for."""
    while not stopping.is_set():
        try:
            if engine.dialect.name == "postgresql":
                _listen_postgres(engine, bell, stopping)
            else:
                directory = mailbox_directory(engine.url)
                assert directory is not None  # can_listen(engine) was checked
                _listen_mailbox(directory, bell, stopping)
        except Exception as exc:  # the server went away, our connection was cut, a bad socket
            logger.warning("listening for new work failed (%s); again", type(exc).__name__)
            stopping.wait(RECONNECT_SECONDS)


def _listen_postgres(engine: Engine, bell: Doorbell, stopping: threading.Event) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql(f"LISTEN {Topic.NEW_WORK.value}")
        driver = connection.connection.driver_connection
        assert driver is not None  # an open psycopg connection
        bell.ring(bell.limit)
        while not stopping.is_set():
            for _ in driver.notifies(timeout=0.5, stop_after=1):
                bell.ring()


def _listen_mailbox(directory: Path, bell: Doorbell, stopping: threading.Event) -> None:
    mailbox = Mailbox(directory, Topic.NEW_WORK)
    try:
        bell.ring(bell.limit)
        while not stopping.is_set():
            received = mailbox.receive(timeout=0.5)
            if received:
                bell.ring(len(received))
            if not mailbox.path.exists():  # removed from outside: bind a new one
                raise FileNotFoundError(mailbox.path)
    finally:
        mailbox.close()
