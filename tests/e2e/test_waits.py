"""Event-driven hand-offs through real servers, in both configurations: a queued execution is
picked up and its waiters woken by notifications, not polls; waiting requests hold no thread, so
a thousand of them never slow another organisation; run-and-wait hands out the grant.

The data server is stopped (SIGSTOP) where a test needs executions to stay unfinished while
requests wait for them; it is always continued. Every loop here is bounded and on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from shared.db.engine import create_metadata_engine
from tests.support.log_watch import remember
from tests.support.processes import Region, run_cli, running_region, socket_address

pytestmark = pytest.mark.e2e

# The poll is far longer than any wait below: only notifications can make these tests pass.
POLL_SECONDS = "120"
# So is the heartbeat, a third of the lease, which would also relay a cancel.
LEASE_SECONDS = "600"
WAITERS = 1000
CONNECTION_TESTS = 60  # more than the API server's 40 request threads
PARKED = re.compile(r"^dataferry_parked_waits (\d+(?:\.\d+)?)$", re.MULTILINE)


@pytest.fixture(scope="module")
def region(tmp_path_factory, deployment) -> Iterator[Region]:
    env = {
        **deployment,
        "DATAFERRY_POLL_INTERVAL_SECONDS": POLL_SECONDS,
        "DATAFERRY_LEASE_SECONDS": LEASE_SECONDS,
        "DATAFERRY_MAX_CONNECTIONS": str(WAITERS + 200),
        "DATAFERRY_RATE_LIMIT_PER_MINUTE": "100000",
        "DATAFERRY_RATE_LIMIT_PER_HOUR": "1000000",
    }
    with running_region(tmp_path_factory.mktemp("waits-region"), env) as started:
        yield started


@pytest.fixture(scope="module")
def other(region):
    """A second organisation, whose requests must not wait behind the first one's."""
    with region.organization_client("Other") as client:
        yield client


@contextmanager
def data_server_stopped(region: Region) -> Iterator[None]:
    """Nothing is picked up meanwhile: executions stay ``starting``. The server is stopped at a
    moment it holds no lock in the metadata database: stopped inside one of its housekeeping
    transactions, on SQLite it would hold the one write lock, and the API server's next write
    would wait out its 30 s busy timeout (CI saw a run request time out so)."""
    database_url = region.settings().database_url
    for _ in range(200):
        os.kill(region.data_server.pid, signal.SIGSTOP)
        _wait_until_every_thread_stopped(region.data_server.pid)
        if not _metadata_locked_by_others(database_url):
            break
        os.kill(region.data_server.pid, signal.SIGCONT)
        time.sleep(0.05)
    else:
        pytest.fail("the data server held a metadata lock at each of 200 tries over 10 s")
    try:
        yield
    finally:
        os.kill(region.data_server.pid, signal.SIGCONT)


def _wait_until_every_thread_stopped(pid: int) -> None:
    """A stop is not done when ``kill`` returns: each thread stops as it next leaves the kernel,
    and on a loaded machine one ran on long enough to claim an execution queued after the kill
    (CI, twice)."""
    deadline = time.monotonic() + 10
    while not all(state in ("T", "t") for state in _thread_states(pid)):
        assert time.monotonic() < deadline, f"threads of {pid} still running: {_thread_states(pid)}"
        time.sleep(0.001)


def _thread_states(pid: int) -> list[str]:
    states = []
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            states.append(stat.read_text().rsplit(")", 1)[1].split()[0])
        except OSError:  # the thread ended meanwhile
            continue
    return states


def _metadata_locked_by_others(database_url: str) -> bool:
    """Whether another connection holds a lock that could make a write wait: SQLite's write
    lock, or on PostgreSQL any lock on a table of the region's schema."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        connection = sqlite3.connect(url.database or "", timeout=0, isolation_level=None)
        try:
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("ROLLBACK")
            return False
        except sqlite3.OperationalError:  # "database is locked"
            return True
        finally:
            connection.close()
    engine = create_metadata_engine(database_url)
    try:
        with engine.connect() as connection:
            held = connection.scalar(
                text(
                    "SELECT count(*) FROM pg_locks JOIN pg_class ON pg_class.oid = relation"
                    " WHERE relnamespace = current_schema()::regnamespace"
                    " AND pid <> pg_backend_pid()"
                )
            )
    finally:
        engine.dispose()
    return bool(held)


def _who_started(region: Region, execution_id: str) -> str:
    """What to know should an execution start while the data server is stopped (seen twice on
    loaded machines, before ``data_server_stopped`` waited for every thread to stop): its row,
    whose lease it holds, and what the stopped server's process says of itself (``T``:
    stopped), read while it is stopped."""
    engine = create_metadata_engine(region.settings().database_url)
    try:
        with engine.connect() as connection:
            row = connection.execute(
                text("SELECT status, lease_owner, started_at FROM executions WHERE id = :id"),
                {"id": execution_id},
            ).one()
    finally:
        engine.dispose()
    state = Path(f"/proc/{region.data_server.pid}/stat").read_text().split()[2]
    return f"{row}; data server pid {region.data_server.pid} in state {state}"


def _sample(client) -> str:
    response = client.http.get(f"{client.api_url}/datasources", headers=client.headers)
    assert response.status_code == 200, response.text
    return next(
        d["id"] for d in response.json()["data"] if d["attributes"]["database_type"] == "sample"
    )


def test_queued_work_is_picked_up_and_its_waiter_woken_without_a_poll(client):
    """Each execution must end within one ``?wait=20``: the workers poll every 120 s and the
    API server's waiters not at all, so three in a row cannot all be a lucky poll."""
    sample = _sample(client)
    for n in range(3):
        execution = client.run(sample, f"SELECT {n} AS n")
        shown = client.execution(execution["execution_id"], wait=20)
        assert shown["execution_status"] == "completed", shown


# Runs for minutes: only a cancel (or its datasource's deletion) ends it in a test's time.
ENDLESS_SQL = "SELECT count(*) FROM range(1000000) a, range(1000000) b WHERE a.range + b.range = 9"


def _running(client, datasource_id: str) -> str:
    """A query that runs for minutes, once it runs; its execution's id."""
    execution_id = client.run(datasource_id, ENDLESS_SQL)["execution_id"]
    deadline = time.monotonic() + 20
    while client.execution(execution_id)["execution_status"] == "starting":
        assert time.monotonic() < deadline, "the query never started"
        time.sleep(0.05)
    return execution_id


def test_a_cancel_stops_a_running_query_at_once_not_at_the_next_heartbeat(client):
    """The query would run for minutes, and the heartbeat relay the cancel 200 s after its last:
    it ends ``cancelled`` within one ``?wait=20`` only because the cancel is announced to its
    worker."""
    execution_id = _running(client, _sample(client))
    cancelled = client.http.post(
        f"{client.api_url}/executions/{execution_id}/cancel", headers=client.headers
    )
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["data"]["attributes"]["execution_status"] == "running"
    shown = client.execution(execution_id, wait=20)
    assert shown["execution_status"] == "cancelled", shown


def test_deleting_a_datasource_stops_its_running_query_at_once(region, client):
    """Its execution's row goes with it; its worker, told, finds the lease gone and stops the
    query, where the heartbeat would have found it 200 s after its last."""
    datasource_id = client.create_datasource("Doomed", "files")["id"]
    execution_id = _running(client, datasource_id)
    deleted = client.http.delete(
        f"{client.api_url}/datasources/{datasource_id}", headers=client.headers
    )
    assert deleted.status_code == 204, deleted.text
    deadline = time.monotonic() + 20
    while f"lease lost id={execution_id}" not in region.log():
        assert time.monotonic() < deadline, "its worker was not told"
        time.sleep(0.1)


def test_run_and_wait_answers_the_completed_execution_with_its_grant(client):
    response = client.http.post(
        f"{client.api_url}/datasources/{_sample(client)}/executions?wait=20",
        json={"sql_query": "SELECT 41 + 1 AS answer", "parameters": {}},
        headers=client.headers,
    )
    assert response.status_code == 200, response.text
    document = response.json()
    assert document["data"]["attributes"]["execution_status"] == "completed"
    grant = document["meta"]
    assert set(grant) == {"data_key", "data_access_token", "data_timestamp", "data_url"}
    # The URL alone is the second request.
    fetched = httpx.get(grant["data_url"] + "&format=records", timeout=30)
    assert fetched.status_code == 200, fetched.text
    assert fetched.json() == [{"answer": 42}]
    # The grant is audited as one, beside the run: data_grant.* shows every token handed out.
    assert _audited_actions(client, document["data"]["id"]) == [
        "data_grant.execution",
        "execution.run",
    ]


def _audited_actions(client, execution_id: str) -> list[str]:
    events = client.http.get(
        f"{client.api_url}/audit_events",
        params={"filter[resource_id]": execution_id},
        headers=client.headers,
    ).json()["data"]
    return [event["attributes"]["action"] for event in events]


def test_run_and_wait_answers_an_unfinished_execution_without_a_grant(region, client):
    sample = _sample(client)
    with data_server_stopped(region):
        waited = client.http.post(
            f"{client.api_url}/datasources/{sample}/executions?wait=0.5",
            json={"sql_query": "SELECT 1", "parameters": {}},
            headers=client.headers,
        )
        seen = _who_started(region, waited.json()["data"]["id"]) if waited.is_success else ""
        plain = client.http.post(
            f"{client.api_url}/datasources/{sample}/executions",
            json={"sql_query": "SELECT 1", "parameters": {}},
            headers=client.headers,
        )
    assert waited.status_code == 200, waited.text
    status = waited.json()["data"]["attributes"]["execution_status"]
    assert status == "starting", seen
    assert "meta" not in waited.json()
    assert "meta" not in plain.json(), "without ?wait the answer is Cluvio's, unchanged"
    assert _audited_actions(client, waited.json()["data"]["id"]) == ["execution.run"]
    for execution in (waited, plain):
        client.wait_until_done(execution.json()["data"]["id"])


def test_run_and_wait_answers_401_to_a_key_deleted_while_it_waited(region, client):
    """Deleting a key refuses its next request at once: a grant minted after the deletion, at
    the end of a wait that began before it, would outlive it (found by the outside probe). The
    execution's state is not told either, as Get Execution's wait does not tell it (it was a 200
    without a grant: a second outside probe)."""
    made = run_cli(
        region.env,
        region.cwd,
        "create-api-key",
        "--organization",
        client.organization_id,
        "--permissions",
        "Manage Datasources",
    )
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)
    remember(key["api_key"])
    answers: list[httpx.Response] = []

    def run_and_wait() -> None:
        answers.append(
            httpx.post(
                f"{client.api_url}/datasources/{_sample(client)}/executions?wait=20",
                json={"sql_query": "SELECT 42 AS answer", "parameters": {}},
                headers={"Authorization": f"Api {key['api_key']}"},
                timeout=60,
            )
        )

    waiter = threading.Thread(target=run_and_wait)
    with data_server_stopped(region):
        waiter.start()
        deadline = time.monotonic() + 10
        while _parked(region) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        deleted = client.http.delete(
            f"{client.api_url}/api_keys/{key['id']}", headers=client.headers
        )
        assert deleted.status_code == 204, deleted.text
    waiter.join(60)
    (answer,) = answers
    assert answer.status_code == 401, answer.text
    assert "data" not in answer.json()


def _parked(region: Region) -> float:
    # The gauge is read while a thousand connections arrive: a generous timeout, as it is the
    # instrument here; what the test measures is other organisations' answers (5 s).
    match = PARKED.search(httpx.get(f"{region.api_url}/metrics", timeout=30).text)
    assert match, "the API server exports dataferry_parked_waits"
    return float(match.group(1))


def _threads(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^Threads:\s+(\d+)$", status, re.MULTILINE).group(1))


async def _raw_get(url: str, path: str, key: str) -> tuple[int, bytes]:
    """One request on its own connection (1,000 httpx clients would cost more than the test)."""
    host, port = socket_address(url)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Api {key}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        await writer.drain()
        answer = await reader.read()
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def _connections_to(url: str) -> int:
    """Established connections whose server end is ``url``'s port (IPv4 loopback)."""
    port = f":{socket_address(url)[1]:04X}"
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for line in lines if line.split()[1].endswith(port) and line.split()[3] == "01")


def _others_answered_while_parked(region: Region, other, waiting: int) -> None:
    """Once the ``waiting`` requests are connected and parked (bounded waits), the other
    organisation is answered at once, over and over, and the server grew no thread per
    waiter."""
    deadline = time.monotonic() + 60
    while _connections_to(region.api_url) < waiting:
        assert time.monotonic() < deadline, f"only {_connections_to(region.api_url)} connected"
        time.sleep(0.2)
    while _parked(region) < waiting:  # read, authorised, and waiting (thread per waiter: never)
        assert time.monotonic() < deadline, f"only {_parked(region)} of {waiting} parked"
        time.sleep(0.2)
    for _ in range(20):
        # A thread-per-waiter server queues this behind the waiters' 30 s: the timeout fails it.
        answer = other.http.get(f"{other.api_url}/datasources", headers=other.headers, timeout=5)
        assert answer.status_code == 200, answer.text
    assert _threads(region.processes[0].pid) < 100, "waiting requests must not hold threads"


def test_a_thousand_long_polls_park_without_threads_and_wake_on_one_notification(
    region, client, other
):
    sample = _sample(client)

    async def scenario() -> list[tuple[int, bytes]]:
        with data_server_stopped(region):
            execution_id = client.run(sample, "SELECT 7 AS seven")["execution_id"]
            path = f"/executions/{execution_id}?wait=30"
            waiters = [
                asyncio.create_task(_raw_get(region.api_url, path, client.key))
                for _ in range(WAITERS)
            ]
            await asyncio.to_thread(_others_answered_while_parked, region, other, WAITERS)
        # Continued: the execution runs, its end is announced once, every waiter wakes.
        return await asyncio.wait_for(asyncio.gather(*waiters), 60)

    answers = asyncio.run(scenario())
    assert {status for status, _ in answers} == {200}
    assert all(b'"execution_status":"completed"' in body for _, body in answers)


def test_connection_tests_wait_without_holding_threads(region, client, other):
    path = f"{client.api_url}/datasources/{_sample(client)}/test_connection"

    async def scenario() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=CONNECTION_TESTS)
        async with httpx.AsyncClient(limits=limits, timeout=60) as http:
            with data_server_stopped(region):
                tests = [
                    asyncio.create_task(http.post(path, headers=client.headers))
                    for _ in range(CONNECTION_TESTS)
                ]
                await asyncio.to_thread(
                    _others_answered_while_parked, region, other, CONNECTION_TESTS
                )
            return await asyncio.wait_for(asyncio.gather(*tests), 60)

    answers = asyncio.run(scenario())
    assert {answer.status_code for answer in answers} == {200}
    assert {answer.json()["status"] for answer in answers} == {"ok"}
