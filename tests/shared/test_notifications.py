"""Notifications and the waits built on them, in process: the SQLite mailboxes, the API server's
waiters (woken by every terminal transition, and never held past their deadline when a
notification is lost), run-and-wait's validation, and the data server's JWKS refresh off the
event loop. The same through real servers: test_e2e_waits.py."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import orjson
import pytest
from sqlalchemy import create_engine, event, func, select, text, update

from api_server import execution_waits
from api_server.execution_waits import (
    REMEMBERED_QUEUED,
    REMEMBERED_QUEUED_SECONDS,
    ExecutionWaits,
    Mark,
)
from api_server.permissions import Permission
from api_server.resources import executions as executions_resource
from data_server.app import create_app as create_data_app
from shared import lifecycle
from shared.db.engine import create_metadata_engine
from shared.db.models import Execution, utcnow
from shared.execution_states import ExecutionStatus
from shared.notifications import (
    MAX_LINE_BYTES,
    Doorbell,
    Lines,
    Mailbox,
    Topic,
    announce_new_work_now,
    listen,
    listen_for_new_work,
    mailbox_directory,
    post,
)
from shared.settings import Settings
from shared.signing_keys import SigningKeyring, jwks, load_public_keys
from shared.tokens import Scope, mint_data_token, new_data_key

JSON = "application/json"


# ---------------------------------------------------------------------------- SQLite mailboxes


def test_a_post_reaches_every_mailbox_of_its_topic_and_no_other(tmp_path):
    directory = tmp_path / "db.notify"
    ended = [Mailbox(directory, Topic.EXECUTION_ENDED) for _ in range(2)]
    work = Mailbox(directory, Topic.NEW_WORK)
    try:
        post(directory, {Topic.EXECUTION_ENDED: ["a", "b"]})
        assert [box.receive(timeout=5) for box in ended] == [["a", "b"], ["a", "b"]]
        assert work.receive(timeout=0.2) == []
        post(directory, {Topic.NEW_WORK: [""]})
        assert work.receive(timeout=5) == [""]
    finally:
        for box in (*ended, work):
            box.close()
    assert list(directory.iterdir()) == [], "a closed mailbox leaves nothing behind"


def test_the_socket_of_a_process_that_is_gone_is_removed_by_the_next_post(tmp_path):
    directory = tmp_path / "db.notify"
    directory.mkdir()
    stale = directory / f"{Topic.EXECUTION_ENDED.socket_prefix}999999.dead00"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(stale))  # bound, never listening again: as after a SIGKILL
    live = Mailbox(directory, Topic.EXECUTION_ENDED)
    try:
        post(directory, {Topic.EXECUTION_ENDED: ["x"]})
        assert not stale.exists()
        assert live.receive(timeout=5) == ["x"]
    finally:
        live.close()


def test_a_directory_too_long_for_a_socket_path_still_works(tmp_path):
    directory = tmp_path.joinpath(*["d" * 50] * 3, "db.notify")
    assert len(str(directory)) > 108
    box = Mailbox(directory, Topic.NEW_WORK)
    try:
        post(directory, {Topic.NEW_WORK: ["", ""]})
        assert box.receive(timeout=5) == ["", ""]
    finally:
        box.close()


@contextlib.contextmanager
def _listening_socket(directory: Path, topic: Topic) -> Iterator[socket.socket]:
    """A bare receiver of ``topic``: it accepts and reads only when the test does."""
    directory.mkdir(mode=0o700, exist_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(directory / f"{topic.socket_prefix}1.bare00"))
        listener.listen(128)
        listener.settimeout(5)
        yield listener


def _read_lines(connection: socket.socket, count: int) -> list[bytes]:
    data = b""
    connection.settimeout(5)
    while data.count(b"\n") < count:
        chunk = connection.recv(65536)
        assert chunk, f"the notifier closed its connection after {data.splitlines()}"
        data += chunk
    return data.splitlines()


def test_a_notifier_keeps_one_connection_to_each_mailbox(tmp_path):
    directory = tmp_path / "db.notify"
    with _listening_socket(directory, Topic.EXECUTION_ENDED) as listener:
        for n in range(10):
            post(directory, {Topic.EXECUTION_ENDED: [f"e{n}"]})
        connection, _ = listener.accept()
        with connection:
            assert _read_lines(connection, 10) == [f"e{n}".encode() for n in range(10)]
            listener.setblocking(False)
            with pytest.raises(BlockingIOError):
                listener.accept()  # no second connection was made
            post(directory, {Topic.EXECUTION_ENDED: ["later"]})
            assert _read_lines(connection, 1) == [b"later"]


def test_a_burst_larger_than_the_listen_backlog_reaches_a_mailbox_that_reads_late(tmp_path):
    directory = tmp_path / "db.notify"
    box = Mailbox(directory, Topic.NEW_WORK)
    try:
        # Nothing reads meanwhile. The listen backlog holds 128 connections; a kept connection's
        # buffer some 280 lines at the kernel's usual default (docs/architecture.md §4).
        for _ in range(250):
            post(directory, {Topic.NEW_WORK: [""]})
        received: list[str] = []
        while len(received) < 250 and (more := box.receive(timeout=5)):
            received += more
        assert len(received) == 250
    finally:
        box.close()


def test_a_mailbox_that_does_not_read_never_holds_its_notifier(tmp_path, caplog):
    """Its buffer fills and the rest of the hints are lost, each post returning at once; once it
    reads again, the kept connection carries the next one."""
    directory = tmp_path / "db.notify"
    with _listening_socket(directory, Topic.EXECUTION_ENDED) as listener:
        posted = 0
        while "buffer is full" not in caplog.text:
            assert posted < 100_000, "the buffer never filled"
            post(directory, {Topic.EXECUTION_ENDED: ["x" * 12] * 100})
            posted += 1
        started = time.monotonic()
        for _ in range(100):
            post(directory, {Topic.EXECUTION_ENDED: ["lost"]})
        # Not a speed figure: a post that waited on the full buffer (0.5 s each) would take 50 s.
        assert time.monotonic() - started < 10, "posts waited for a receiver that does not read"
        connection, _ = listener.accept()
        with connection:
            connection.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                while connection.recv(1 << 20):  # drain what fitted
                    pass
            post(directory, {Topic.EXECUTION_ENDED: ["after"]})
            assert _read_lines(connection, 1) == [b"after"]


def test_a_mailbox_whose_process_died_after_a_post_is_removed_by_the_next(tmp_path):
    directory = tmp_path / "db.notify"
    with _listening_socket(directory, Topic.EXECUTION_ENDED) as listener:
        post(directory, {Topic.EXECUTION_ENDED: ["first"]})
        socket_path = directory / listener.getsockname()
    # Closed without its file removed, as by a SIGKILL: the kept connection is reset.
    post(directory, {Topic.EXECUTION_ENDED: ["second"]})
    assert not socket_path.exists()


def test_a_post_closes_the_kept_connection_to_a_mailbox_gone_from_its_directory(tmp_path):
    directory = tmp_path / "db.notify"
    with _listening_socket(directory, Topic.EXECUTION_ENDED) as listener:
        post(directory, {Topic.EXECUTION_ENDED: ["first"]})
        connection, _ = listener.accept()
        with connection:
            assert _read_lines(connection, 1) == [b"first"]
            # Its receiver moved to a new mailbox: the name is gone, the old socket still open.
            Path(listener.getsockname()).unlink()
            post(directory, {Topic.EXECUTION_ENDED: ["second"]})
            connection.settimeout(5)
            assert connection.recv(100) == b"", "the kept connection was left open"


def test_a_process_closes_its_kept_connections_when_it_exits(tmp_path):
    directory = tmp_path / "db.notify"
    box = Mailbox(directory, Topic.NEW_WORK)
    try:
        posted = subprocess.run(
            [sys.executable, "-W", "always", "-c", _POST_AND_EXIT, str(directory)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=Path(__file__).resolve().parents[2],
        )
        assert posted.returncode == 0, posted.stderr
        assert "ResourceWarning" not in posted.stderr
        assert box.receive(timeout=5) == [""]
    finally:
        box.close()


_POST_AND_EXIT = """
import sys
from pathlib import Path
from shared.notifications import Topic, post
post(Path(sys.argv[1]), {Topic.NEW_WORK: [""]})
"""


def test_a_mailbox_drops_a_connection_that_sends_what_no_notifier_would(tmp_path):
    directory = tmp_path / "db.notify"
    box = Mailbox(directory, Topic.NEW_WORK)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stranger:
            stranger.connect(str(box.path))
            stranger.sendall(b"x" * (MAX_LINE_BYTES + 10))  # one endless line
            assert box.receive(timeout=0.5) == []
            stranger.settimeout(5)
            assert stranger.recv(100) == b"", "the mailbox kept the connection"
        post(directory, {Topic.NEW_WORK: [""]})
        assert box.receive(timeout=5) == [""]
    finally:
        box.close()


def test_lines_are_taken_as_they_complete_and_a_cut_off_one_is_dropped():
    lines = Lines()
    assert lines.feed(b"a") == []
    assert lines.feed(b"b\nc\n") == ["ab", "c"]
    assert lines.feed(b"cut") == []  # the stream ends here: "cut" is never a payload
    overlong = Lines()
    assert overlong.feed(b"kept\n" + b"x" * (MAX_LINE_BYTES + 1)) == ["kept"]
    assert overlong.overlong  # not a notifier's: its receiver closes the stream


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:////srv/state/dataferry.db", Path("/srv/state/dataferry.db.notify")),
        ("sqlite://", None),
        ("sqlite:///:memory:", None),
        ("postgresql+psycopg://u@127.0.0.1/db", None),
    ],
)
def test_mailboxes_live_beside_the_sqlite_file(url, expected):
    from sqlalchemy.engine import make_url

    assert mailbox_directory(make_url(url)) == expected


# ---------------------------------------------------------------------------- waiters


def _run(api, org, sql: str = "SELECT 1", query: str = "") -> httpx.Response:
    return api.client.post(
        f"/datasources/{org.sample_datasource_id}/executions{query}",
        content=orjson.dumps({"sql_query": sql}),
        headers={"Authorization": f"Api {org.key}", "Content-Type": JSON},
    )


class Waiter(threading.Thread):
    """``GET /executions/{id}?wait=N`` in a thread; ``answer`` once it returned."""

    def __init__(self, api, org, execution_id: str, wait: float) -> None:
        super().__init__(daemon=True)
        self.args_ = (api, org.key, f"/executions/{execution_id}?wait={wait}")
        self.answer: dict | None = None

    def run(self) -> None:
        api, key, path = self.args_
        with contextlib.suppress(RuntimeError):  # the app stopped first: a test failed already
            self.answer = api.get(path, key).json()["data"]["attributes"]

    def parked(self, api) -> Waiter:
        self.start()
        deadline = time.monotonic() + 30
        while api.app.state.execution_waits.parked < 1:
            assert time.monotonic() < deadline, "the waiter never parked"
            time.sleep(0.01)
        return self


def _status_within(waiter: Waiter, seconds: float) -> str:
    """Far shorter than the 30 s the waiter asked for: only a notification ends it this soon."""
    waiter.join(seconds)
    assert not waiter.is_alive(), "the waiter was not woken"
    assert waiter.answer is not None
    return waiter.answer["execution_status"]


def test_a_cancel_wakes_the_waiters_of_the_execution(api):
    org = api.create_org()
    execution_id = _run(api, org).json()["data"]["id"]
    waiter = Waiter(api, org, execution_id, 30).parked(api)
    cancel = api.client.post(
        f"/executions/{execution_id}/cancel", headers={"Authorization": f"Api {org.key}"}
    )
    assert cancel.status_code == 200
    assert _status_within(waiter, 15) == "cancelled"
    assert api.app.state.execution_waits.parked == 0


def test_a_cancel_of_a_running_execution_is_announced_to_its_worker(api):
    """Its worker stops it at once, not at its next heartbeat (data_server.worker), in both
    configurations. On PostgreSQL the channel is the database's, which the test processes
    share: the execution's id tells this cancel from theirs."""
    org = api.create_org()
    execution_id = _run(api, org).json()["data"]["id"]
    with api.app.state.sessions.begin() as session:  # claimed, as by a worker
        session.execute(
            update(Execution)
            .where(Execution.id == execution_id)
            .values(
                status="running", lease_owner="w", lease_expires_at=utcnow() + timedelta(minutes=5)
            )
        )
    heard: list[str] = []
    started, stopping = threading.Event(), threading.Event()
    listener = threading.Thread(
        target=listen,
        args=(api.app.state.engine, Topic.CANCEL_REQUESTED),
        kwargs={"heard": heard.extend, "started": started.set, "stopping": stopping},
    )
    listener.start()
    try:
        assert started.wait(timeout=10)
        cancel = api.client.post(
            f"/executions/{execution_id}/cancel", headers={"Authorization": f"Api {org.key}"}
        )
        assert cancel.status_code == 200
        assert cancel.json()["data"]["attributes"]["execution_status"] == "running"
        deadline = time.monotonic() + 10
        while execution_id not in heard:
            assert time.monotonic() < deadline, "the cancel was not announced"
            time.sleep(0.01)
    finally:
        stopping.set()
        listener.join(timeout=5)


def test_reaping_a_lost_execution_wakes_its_waiters(api):
    org = api.create_org()
    execution_id = _run(api, org).json()["data"]["id"]
    with api.app.state.sessions.begin() as session:  # claimed by a worker that then vanished
        session.execute(
            update(Execution)
            .where(Execution.id == execution_id)
            .values(
                status="running",
                attempt=api.settings.max_attempts,
                lease_owner="gone",
                lease_expires_at=utcnow() - timedelta(minutes=1),
            )
        )
    waiter = Waiter(api, org, execution_id, 30).parked(api)
    assert lifecycle.reap_expired_leases(api.app.state.sessions, api.settings) == 1
    assert _status_within(waiter, 15) == "failed"


def test_a_lost_notification_holds_a_waiter_no_longer_than_its_deadline(api):
    """The row ends without any notification (as if it were lost): the waiter reads it again
    at its deadline and answers what it finds."""
    org = api.create_org()
    execution_id = _run(api, org).json()["data"]["id"]
    waiter = Waiter(api, org, execution_id, 2).parked(api)
    time.sleep(0.5)  # its first read done: only the one at its deadline can see the change
    with api.app.state.sessions.begin() as session:
        session.execute(
            update(Execution).where(Execution.id == execution_id).values(status="failed")
        )
    assert _status_within(waiter, 15) == "failed"


@pytest.mark.postgres
def test_waiters_are_woken_after_the_listening_connection_is_cut(postgres_url, tmp_path):
    """The listener reconnects, and every waiter reads its row again meanwhile."""
    from tests.support.factories import Api

    name = f"dataferry-waits-{time.monotonic_ns()}"
    settings = Settings(
        state_dir=tmp_path / "state",
        database_url=f"{postgres_url}&application_name={name}",
        sample_scale=0.001,
    )
    with Api.start(settings) as api:
        org = api.create_org()
        execution_id = _run(api, org).json()["data"]["id"]
        waiter = Waiter(api, org, execution_id, 30).parked(api)
        with api.app.state.sessions.begin() as session:
            cut = session.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = :name AND query LIKE 'LISTEN%'"
                ),
                {"name": name},
            ).scalar_one()
        assert cut == 1, "the API server's one listening connection"
        cancel = api.client.post(
            f"/executions/{execution_id}/cancel", headers={"Authorization": f"Api {org.key}"}
        )
        assert cancel.status_code == 200
        assert _status_within(waiter, 15) == "cancelled"


# ---------------------------------------------------------------------------- a reading known

# Run-and-wait reads its new execution as it queues it: that reading serves as the waiter's first
# unless an end of the execution may have been heard since the mark taken before queueing.


# A wait that took the known reading lasts its whole deadline; one that read at once, far less
# (even on a loaded machine).
KNOWN_WAIT_SECONDS = 1.0
AT_ONCE_SECONDS = 0.5


def _waits_on_a_mailbox(tmp_path: Path) -> tuple[ExecutionWaits, Path]:
    engine = create_engine(f"sqlite:///{tmp_path / 'meta.db'}")
    directory = mailbox_directory(engine.url)
    assert directory is not None
    return ExecutionWaits(engine), directory


async def _listening(waits: ExecutionWaits) -> None:
    await waits.start()
    for _ in range(200):
        if waits.mark() is not None:
            return
        await asyncio.sleep(0.01)
    pytest.fail("the listener did not start")


async def _heard(waits: ExecutionWaits, directory: Path, execution_id: str) -> None:
    """Post an end and let the event loop take it in (the notifier runs off the loop)."""
    before = waits.mark()
    await asyncio.to_thread(post, directory, {Topic.EXECUTION_ENDED: [execution_id]})
    for _ in range(200):
        if waits.mark() != before:
            return
        await asyncio.sleep(0.01)
    pytest.fail("the end was not heard")


def _wait_with_known(waits, execution_id, mark, reading="starting"):
    reads: list[str] = []

    async def read() -> str:
        reads.append("read")
        return "completed"

    async def waited() -> tuple[str, list[str], float]:
        """The answer, the reads made, and how long it took: read at once when the execution
        may have ended; else the known reading is taken, and read again at the deadline."""
        started = time.monotonic()
        answer = await waits.wait_until_ended(
            execution_id, KNOWN_WAIT_SECONDS, read, lambda s: s == "completed", (reading, mark)
        )
        return answer, reads, time.monotonic() - started

    return waited()


@pytest.mark.parametrize(
    "heard, reads_first",
    [([], False), (["another"], False), (["x"], True), (["another", "x", "another"], True)],
    ids=["nothing-heard", "another-ended", "it-ended", "it-ended-among-others"],
)
def test_a_known_reading_serves_unless_its_execution_may_have_ended_since_the_mark(
    tmp_path, heard, reads_first
):
    waits, directory = _waits_on_a_mailbox(tmp_path)

    async def scenario() -> tuple[str, list[str], float]:
        await _listening(waits)
        try:
            mark = waits.mark()
            for execution_id in heard:
                await _heard(waits, directory, execution_id)
            return await _wait_with_known(waits, "x", mark)
        finally:
            await waits.stop()

    answer, reads, took = asyncio.run(scenario())
    assert answer == "completed" and reads == ["read"]
    assert (took < AT_ONCE_SECONDS) is reads_first


def test_the_listener_hears_each_line_of_a_kept_connection_as_it_comes(tmp_path):
    waits, directory = _waits_on_a_mailbox(tmp_path)

    async def heard(connection: socket.socket, *pieces: bytes) -> int:
        """How many ends the pieces' lines made the listener hear."""
        before = waits.mark()
        assert before is not None
        for piece in pieces:
            await asyncio.to_thread(connection.sendall, piece)
        for _ in range(500):
            now = waits.mark()
            if now != before:
                assert now is not None
                return now.ends_heard - before.ends_heard
            await asyncio.sleep(0.01)
        pytest.fail(f"{pieces!r} was not heard")

    async def scenario() -> list[int]:
        await _listening(waits)
        (name,) = (p.name for p in directory.iterdir() if p.name.startswith("ended."))
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
                connection.connect(str(directory / name))
                # The connection stays open throughout, as a notifier keeps it.
                first = await heard(connection, b"first\n")
                before = waits.mark()
                await asyncio.to_thread(connection.sendall, b"sec")
                await asyncio.sleep(0.2)  # half a line, read by now: nothing to hear yet
                assert waits.mark() == before
                return [first, await heard(connection, b"ond\n")]
        finally:
            await waits.stop()

    assert asyncio.run(scenario()) == [1, 1]


def test_a_listener_that_stops_closes_the_connections_notifiers_keep(tmp_path):
    """Or the server's close would wait for them (Python 3.12.1 on), and the stop with it."""
    waits, directory = _waits_on_a_mailbox(tmp_path)

    async def scenario() -> bytes:
        await _listening(waits)
        (name,) = (p.name for p in directory.iterdir() if p.name.startswith("ended."))
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.connect(str(directory / name))
            await _heard(waits, directory, "x")  # through the process's own kept connection
            await asyncio.to_thread(connection.sendall, b"y\n")
            await asyncio.wait_for(waits.stop(), 10)
            connection.settimeout(5)
            return await asyncio.to_thread(connection.recv, 100)

    assert asyncio.run(scenario()) == b""


def test_a_known_reading_is_read_again_when_the_listener_restarted_or_never_listened(tmp_path):
    waits, _ = _waits_on_a_mailbox(tmp_path)

    async def scenario() -> list[float]:
        took = [(await _wait_with_known(waits, "x", None))[2]]  # nothing listened at the mark
        await _listening(waits)
        mark = waits.mark()
        await waits.stop()
        await _listening(waits)  # ends may have come between the two listenings
        try:
            took.append((await _wait_with_known(waits, "x", mark))[2])
        finally:
            await waits.stop()
        return took

    assert all(seconds < AT_ONCE_SECONDS for seconds in asyncio.run(scenario()))


def test_a_known_ended_reading_is_the_answer_without_a_read(tmp_path):
    waits, _ = _waits_on_a_mailbox(tmp_path)

    async def scenario() -> tuple[str, list[str], float]:
        await _listening(waits)
        try:
            return await _wait_with_known(waits, "x", waits.mark(), reading="completed")
        finally:
            await waits.stop()

    answer, reads, _ = asyncio.run(scenario())
    assert (answer, reads) == ("completed", [])


def test_executions_remembered_as_queued_are_few_and_recent(tmp_path, monkeypatch):
    waits, _ = _waits_on_a_mailbox(tmp_path)
    mark = Mark(listening=1, ends_heard=0)
    for n in range(REMEMBERED_QUEUED + 1):
        waits.remember_queued(f"e{n}", n, mark)
    assert waits.queued_reading("e0") is None  # the oldest made room
    assert waits.queued_reading(f"e{REMEMBERED_QUEUED}") == (REMEMBERED_QUEUED, mark)
    waits.remember_queued("unlistened", 0, None)  # nothing listened: no reading is worth it
    assert waits.queued_reading("unlistened") is None
    later = time.monotonic() + REMEMBERED_QUEUED_SECONDS + 1
    monkeypatch.setattr(execution_waits.time, "monotonic", lambda: later)
    assert waits.queued_reading(f"e{REMEMBERED_QUEUED}") is None


def _reads_counted(monkeypatch) -> list[str | None]:
    """The execution ids Get Execution's wait reads, each time it reads."""
    reads: list[str | None] = []
    real = executions_resource._load

    def counted(request, principal, execution_id=None, **kwargs):
        reads.append(execution_id)
        return real(request, principal, execution_id, **kwargs)

    monkeypatch.setattr(executions_resource, "_load", counted)
    return reads


def test_a_wait_after_its_run_takes_the_execution_as_queued_and_reads_it_at_its_deadline(
    api, monkeypatch
):
    """No data server runs here: the execution stays queued, and nothing ends. The wait that
    follows the run (same process, moments later) reads it once, at its deadline."""
    org = api.create_org()
    execution_id = _run(api, org).json()["data"]["id"]
    reads = _reads_counted(monkeypatch)
    answer = api.get(f"/executions/{execution_id}?wait=0.3", org.key)
    assert answer.status_code == 200, answer.text
    assert answer.json()["data"]["attributes"]["execution_status"] == "starting"
    assert reads == [execution_id]
    answer = api.get(f"/executions/{execution_id}", org.key)  # no wait: read at once, as ever
    assert answer.status_code == 200 and len(reads) == 2


def test_an_execution_remembered_as_queued_is_shown_to_no_key_that_may_not_see_it(api):
    """A remembered reading that is an end would be the answer without a read (only unfinished
    ones are kept; the check must not rest on that). Another organisation, and a key of the
    same one restricted to another datasource, still get the 404 a read gives them."""
    a, b = api.create_org("A"), api.create_org("B")
    shop = api.create_datasource(a.key, name="Shop")["id"]
    restricted = api.create_key(a, [Permission.VIEW_DATASOURCES], datasource_ids=[shop])
    execution_id = _run(api, a).json()["data"]["id"]
    remembered = api.app.state.execution_waits.queued_reading(execution_id)
    assert remembered is not None
    # A run's reading is read-only (shared.db.models.insert_new): changed here as an end would be.
    object.__setattr__(remembered[0], "status", ExecutionStatus.COMPLETED)
    for key in (b.key, restricted):
        answer = api.get(f"/executions/{execution_id}?wait=5", key)
        assert answer.status_code == 404, answer.text
        assert execution_id not in answer.text
    answer = api.get(f"/executions/{execution_id}?wait=5", a.key)
    assert answer.json()["data"]["attributes"]["execution_status"] == "completed"


def test_deleting_a_datasource_wakes_the_waiters_of_its_unfinished_executions(api):
    """They read, and get their 404 at once, not at their deadline."""
    org = api.create_org()
    shop = api.create_datasource(org.key, name="Shop")["id"]
    answer = api.post(f"/datasources/{shop}/executions", org.key, {"sql_query": "SELECT 1"}, JSON)
    assert answer.status_code == 200, answer.text
    execution_id = answer.json()["data"]["id"]
    statuses: list[int] = []
    waiter = threading.Thread(
        target=lambda: statuses.append(
            api.get(f"/executions/{execution_id}?wait=30", org.key).status_code
        ),
        daemon=True,
    )
    waiter.start()
    deadline = time.monotonic() + 30
    while api.app.state.execution_waits.parked < 1:
        assert time.monotonic() < deadline, "the waiter never parked"
        time.sleep(0.01)
    assert api.delete(f"/datasources/{shop}", org.key).status_code == 204
    waiter.join(15)
    assert statuses == [404], "the waiter was not woken"


# ---------------------------------------------------------------------------- run-and-wait


def _count_executions(api) -> int:
    with api.app.state.sessions() as session:
        return session.scalar(select(func.count()).select_from(Execution)) or 0


@pytest.mark.parametrize("wait", ["31", "-1", "abc", "nan"])
def test_run_and_wait_refuses_a_bad_wait_before_queueing_anything(api, wait):
    org = api.create_org()
    before = _count_executions(api)
    response = _run(api, org, query=f"?wait={wait}")
    assert response.status_code == 400
    assert response.json()["errors"][0]["source"] == {"parameter": "wait"}
    assert _count_executions(api) == before


def test_run_and_wait_past_its_deadline_answers_the_unfinished_execution(api):
    """No data server runs here: the execution is still starting, so no grant."""
    org = api.create_org()
    response = _run(api, org, query="?wait=0.2")
    assert response.status_code == 200
    assert response.json()["data"]["attributes"]["execution_status"] == "starting"
    assert "meta" not in response.json()


# ---------------------------------------------------------------------------- JWKS off the loop


class SlowJwks(ThreadingHTTPServer):
    """A JWKS endpoint on 127.0.0.1 that, once ``hold`` is set, answers only when released."""

    def __init__(self, document: dict) -> None:
        self.document = orjson.dumps(document)
        self.hold, self.released, self.held = threading.Event(), threading.Event(), 0

        class Handler(BaseHTTPRequestHandler):
            def do_GET(handler) -> None:
                if self.hold.is_set():
                    self.held += 1
                    self.released.wait(30)
                handler.send_response(200)
                handler.send_header("Content-Type", "application/json")
                handler.end_headers()
                handler.wfile.write(self.document)

            def log_message(handler, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/.well-known/jwks.json"


@pytest.fixture
def slow_jwks(tmp_path):
    region = Settings(state_dir=tmp_path / "api", signing_key_publish_delay_seconds=0)
    signer = SigningKeyring(region)
    server = SlowJwks(jwks(load_public_keys(region)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server, signer, region
    finally:
        server.released.set()
        server.shutdown()
        server.server_close()


def test_an_unknown_kid_delays_only_its_own_request(slow_jwks, tmp_path):
    server, signer, region = slow_jwks
    settings = Settings(state_dir=tmp_path / "data", jwks_url=server.url, sample_scale=0.001)
    app = create_data_app(settings)  # loads the JWKS once, at start-up
    data_key = new_data_key(Scope.EXECUTION_RESULT)
    known = mint_data_token(
        signer, region, organization_id="o", data_key=data_key, scope=Scope.EXECUTION_RESULT
    )
    foreign_signer = SigningKeyring(Settings(state_dir=tmp_path / "elsewhere"))
    unknown = mint_data_token(
        foreign_signer, region, organization_id="o", data_key=data_key, scope=Scope.EXECUTION_RESULT
    )
    server.hold.set()

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://data") as http:

            def fetch(token: str):
                return http.get(f"/data/{data_key}", headers={"Authorization": f"Data {token}"})

            stuck = asyncio.create_task(fetch(unknown))
            async with asyncio.timeout(10):
                while server.held == 0:  # its refresh is under way, held by the JWKS endpoint
                    assert not stuck.done(), "an unknown kid must trigger a refresh"
                    await asyncio.sleep(0.01)
            others = await asyncio.wait_for(asyncio.gather(http.get("/healthz"), fetch(known)), 10)
            assert [r.status_code for r in others] == [200, 404]  # 404: verified, no result
            assert not stuck.done(), "the unknown kid's request waits for its refresh alone"
            again = await asyncio.wait_for(fetch(unknown), 10)
            assert again.status_code == 401, "one refresh per interval: the next one fails fast"
            server.released.set()
            assert (await asyncio.wait_for(stuck, 10)).status_code == 401

    asyncio.run(scenario())
    assert server.held == 1, "an unknown kid triggers at most one refresh"
    app.state.keyring.close()


def test_a_doorbell_wakes_one_waiter_per_ring_and_keeps_rings_nobody_waited_for():
    bell = Doorbell(limit=2)
    woken: list[bool] = []
    waiters = [
        threading.Thread(target=lambda: woken.append(bell.wait(timeout=5))) for _ in range(3)
    ]
    for waiter in waiters:
        waiter.start()
    # One ring: exactly one of the three waiters returns, at once (a ring that comes before a
    # waiter waits is kept for it, so the order does not matter).
    bell.ring()
    waiters_left = deadline_join(waiters, 1.0)
    assert (woken, waiters_left) == ([True], 2)
    bell.ring(5)  # more rings than waiters: both wake
    assert deadline_join(waiters, 5.0) == 0 and woken == [True, True, True]
    bell.ring(5)  # nobody waits: at most ``limit`` rings are kept for later waiters
    assert [bell.wait(timeout=0) for _ in range(3)] == [True, True, False]


def deadline_join(threads: list[threading.Thread], seconds: float) -> int:
    """Join each thread within ``seconds`` in all; how many are still running."""
    deadline = time.monotonic() + seconds
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return sum(thread.is_alive() for thread in threads)


def test_work_announced_outside_a_transaction_rings_a_listening_worker(api):
    """``announce_new_work_now`` (an executor's freed slot, announced once its run's end
    committed) reaches a worker's listener, on SQLite through the database's mailboxes."""
    engine = api.app.state.engine
    if engine.dialect.name == "postgresql":
        pytest.skip("PostgreSQL: the next test (other tests notify on the same channel)")
    bell, stopping = Doorbell(limit=1), threading.Event()
    listener = threading.Thread(target=listen_for_new_work, args=(engine, bell, stopping))
    listener.start()
    try:
        assert bell.wait(timeout=5)  # it rings once as it starts listening
        assert not bell.wait(timeout=0.2)
        announce_new_work_now(engine)
        assert bell.wait(timeout=5)
    finally:
        stopping.set()
        listener.join(timeout=5)


@pytest.mark.postgres
def test_work_announced_outside_a_transaction_is_notified_on_postgresql(postgres_url):
    """The channel is the database's, which the test processes share: the notification is
    known by the backend that sent it."""
    engine = create_metadata_engine(postgres_url)
    senders: set[int] = set()
    event.listen(engine, "checkout", lambda dbapi, *_: senders.add(dbapi.info.backend_pid))
    listening = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    try:
        listening.exec_driver_sql(f"LISTEN {Topic.NEW_WORK.value}")
        driver = listening.connection.driver_connection
        senders.clear()  # the listening connection's own checkout
        announce_new_work_now(engine)
        assert senders
        deadline, heard = time.monotonic() + 5, False
        while not heard and time.monotonic() < deadline:
            for note in driver.notifies(timeout=0.5, stop_after=1):
                heard = heard or (note.pid in senders and note.channel == Topic.NEW_WORK.value)
        assert heard
    finally:
        listening.close()
        engine.dispose()
