"""Connections to remote databases: the timeout ends the query on the server too, a datasource's
max_concurrent_executions bounds its connections, a dropped connection fails one execution,
and each way of failing to connect has its own error code.
"""

from __future__ import annotations

import secrets
import socket
import struct
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from data_server import engine
from data_server.remote_databases import RemoteDatabaseSpec
from data_server.sandbox import with_replacements
from data_server.sql_check import QueryFailed
from tests.support.client import DataferryClient
from tests.support.remote_databases import LIMITS, NAME, created, failure, remote_spec, rows

pytestmark = pytest.mark.e2e


def check_connection(client: DataferryClient, datasource_id: str) -> dict:
    response = client.http.post(
        f"{client.api_url}/datasources/{datasource_id}/test_connection",
        headers=client.headers,
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return response.json()


# ---------------------------------------------------------------------------- limits


def test_timeout_ends_the_query_on_the_server_too(client, server, datasources):
    done = failure(client, datasources[server.kind], f"SELECT * FROM {server.schema}.slow")
    assert done["error_code"] == "timeout"
    deadline = time.monotonic() + 10
    while server.active_queries() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert server.active_queries() == 0
    assert rows(client, datasources[server.kind], "SELECT 1") == [[1]]


def test_cancel_ends_the_query_on_the_server_too(client, server, datasources):
    """The sandbox child running a cancelled execution was killed at once: a MySQL server ran
    its query on, for as long as the query took (70 s of a 300-second BENCHMARK in the outside
    probe; a SLEEP notices its client gone, a BENCHMARK does not). The child now ends it as a
    timeout does (KILL QUERY), then dies. (PostgreSQL's server notices its client gone within a
    second: client_connection_check_interval.)"""
    execution = client.run(datasources[server.kind], f"SELECT * FROM {server.schema}.busy")
    execution_id = execution["execution_id"]
    deadline = time.monotonic() + 10
    while not server.active_queries(naming="busy") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.active_queries(naming="busy"), "the query never started on the server"
    cancelled = client.http.post(
        f"{client.api_url}/executions/{execution_id}/cancel", headers=client.headers
    )
    assert cancelled.status_code == 200, cancelled.text
    assert client.wait_until_done(execution_id)["execution_status"] == "cancelled"
    # Within a few seconds of the end, where the query would run on for most of its 10.
    deadline = time.monotonic() + 4
    while server.active_queries(naming="busy") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.active_queries(naming="busy") == 0


def test_max_concurrent_executions_bounds_the_connections(client, server):
    """With a cap of one, the two executions never run their queries on the server at the same
    time, and no connection outlives them. Counted by the running statements that read the
    table, not by sessions: a closed session's server process may stay listed for a moment after
    its client left, and attaching reads the server's catalog on two connections at once."""
    datasource = created(
        client, **server.attributes(name="one at a time", max_concurrent_executions=1)
    )
    executions = [
        client.run(datasource, f"SELECT * FROM {server.schema}.sleepy")["execution_id"]
        for _ in range(2)
    ]
    most = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal most
        while not stop.is_set():
            most = max(most, server.active_queries(naming="sleepy"))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        done = [client.wait_until_done(e, timeout=60) for e in executions]
    finally:
        stop.set()
        sampler.join()
    assert [d["execution_status"] for d in done] == ["completed"] * 2
    assert most == 1
    spans = sorted(
        (datetime.fromisoformat(d["started_at"]), datetime.fromisoformat(d["completed_at"]))
        for d in done
    )
    assert spans[0][1] <= spans[1][0]
    deadline = time.monotonic() + 10
    while server.connections() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.connections() == 0


def test_a_dropped_connection_fails_with_connection_lost_and_the_next_query_works(
    client, server, datasources
):
    datasource = datasources[server.kind]
    execution = client.run(datasource, f"SELECT * FROM {server.schema}.sleepy")["execution_id"]
    # The view's own statement, not any of the login's (the extension's catalog reads at attach
    # time are its too): a connection dropped while attaching may be replaced, and the query then
    # completes.
    deadline = time.monotonic() + 10
    while not (running := server.active_queries(naming="sleepy")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert running, "the query never started on the server"
    if server.kind == "postgres":
        server.admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [NAME]
        )
    else:
        with server.admin.cursor() as cursor:
            cursor.execute("SELECT id FROM information_schema.processlist WHERE user = %s", [NAME])
            for (thread,) in cursor.fetchall():
                cursor.execute(f"KILL CONNECTION {int(thread)}")
    done = client.wait_until_done(execution, timeout=60)
    assert (done["execution_status"], done["error_code"]) == ("failed", "connection_lost"), done
    assert rows(client, datasource, "SELECT count(*) FROM " + f"{server.schema}.events") == [[5]]


# ---------------------------------------------------------------------------- connecting


def _silent_server() -> tuple[socket.socket, int]:
    """Accepts connections and never says a word: a server that does not answer."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    return listener, listener.getsockname()[1]


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_connection_errors_are_specific(client, server, datasources):
    listener, silent = _silent_server()
    cases = {
        "authentication_failed": (
            {"password": "wrong-" + secrets.token_hex(4)}
            if server.kind == "mysql"
            else {"username": NAME + "_nologin"}  # the test server trusts loopback passwords
        ),
        "database_not_found": {"database": NAME + "_missing"},
        "host_unreachable": {"port": _closed_port()},
        "connection_timed_out": {"port": silent},
        "tls_refused": {"require_ssl": True},  # the test servers offer no TLS
    }
    try:
        ids = {
            code: created(client, **server.attributes(name=code, **o)) for code, o in cases.items()
        }
        queued = {code: client.run(ids[code], "SELECT 1")["execution_id"] for code in cases}
        for code in cases:
            done = client.wait_until_done(queued[code], timeout=60)
            assert (done["execution_status"], done["error_code"]) == ("failed", code), done
            assert server.password not in done["error_message"]
        for code in ("authentication_failed", "connection_timed_out"):  # what Test Connection says
            started = time.monotonic()
            answer = check_connection(client, ids[code])
            assert answer["status"] == "error", (code, answer)
            assert time.monotonic() - started < 15, code  # bounded by the connect timeout
            assert server.password not in answer["error_message"]
        assert (
            "refused the username or password"
            in check_connection(client, ids["authentication_failed"])["error_message"]
        )
    finally:
        listener.close()
    answer = check_connection(client, datasources[server.kind])
    assert answer == {"status": "ok", "error_message": None}


def test_a_query_error_is_no_oracle_for_the_password(client, server, datasources):
    """The password was replaced wherever an error showed it, a query's own text too: a key
    that may run SQL but never sees the password (no answer shows it) sent
    ``SELECT error('guess1 guess2 …')`` and the right word came back ``<redacted>``, a
    dictionary tried per query (a review's finding). What a query's error quotes is the query's
    own; a connection's refusal still never shows the password (above)."""
    guesses = f"nope {server.password} never"
    done = failure(client, datasources[server.kind], f"SELECT error('{guesses}')")
    assert guesses in done["error_message"]
    assert "<redacted>" not in done["error_message"]


def test_engine_refuses_a_remote_spec_that_cannot_connect(postgres, tmp_path):
    """Without the region: the attach fails with the classified code, no password, and the host
    as the datasource names it, never the address that name resolved to."""
    spec = remote_spec(postgres, host="db.tenant.example", port=_closed_port())
    with pytest.raises(QueryFailed) as refused:
        engine.Sandbox(spec, LIMITS, str(tmp_path))
    assert refused.value.code == "host_unreachable"
    assert postgres.password not in refused.value.message
    assert "127.0.0.1" not in refused.value.message, refused.value.message


def test_a_short_password_is_redacted_where_it_stands_alone_not_inside_words(postgres, tmp_path):
    """A password "p" was replaced inside every word: Test Connection said "server does not
    su<redacted><redacted>ort SSL" (found by an outside probe)."""
    spec = remote_spec(postgres, password="p", port=_closed_port())
    with pytest.raises(QueryFailed) as refused:
        engine.Sandbox(spec, LIMITS, str(tmp_path))
    assert "port" in refused.value.message and "<redacted>" not in refused.value.message
    secret = {"p": "<redacted>", "!x": "<r>", "longer-secret": "<s>"}
    assert with_replacements("support, password=p; user:p@host; p_x; 1p", secret) == (
        "support, password=<redacted>; user:<redacted>@host; <redacted>_x; 1p"
    )
    assert with_replacements("a!x b", secret) == "a<r> b"  # its own edge bounds it
    assert with_replacements("xlonger-secretx", secret) == "x<s>x"  # a long one anywhere


def _refusing_postgres(refusal: bytes) -> tuple[socket.socket, int]:
    """Speaks PostgreSQL's protocol just far enough to refuse every login with ``refusal``, as
    a server whose messages are in Latin-1 does before the client's encoding is set."""
    listener = socket.create_server(("127.0.0.1", 0))

    def message(kind: bytes, body: bytes) -> bytes:
        return kind + struct.pack("!I", len(body) + 4) + body

    def refuse(connection: socket.socket) -> None:
        with connection:
            while True:  # an SSLRequest or GSSENCRequest is declined, then the startup comes
                length = struct.unpack("!I", connection.recv(4, socket.MSG_WAITALL))[0]
                code = struct.unpack("!I", connection.recv(length - 4, socket.MSG_WAITALL)[:4])[0]
                if code not in (80877103, 80877104):
                    break
                connection.sendall(b"N")
            fields = b"SFATAL\0VFATAL\0C28P01\0M" + refusal + b"\0\0"
            connection.sendall(message(b"E", fields))

    def accept() -> None:
        while True:
            try:
                connection = listener.accept()[0]
            except OSError:
                return
            threading.Thread(target=refuse, args=(connection,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return listener, listener.getsockname()[1]


def _refused(refusal: bytes, password: str, tmp_path: Path) -> QueryFailed:
    """What the engine raises for a datasource of ``password`` that ``_refusing_postgres``
    refuses with ``refusal``."""
    listener, port = _refusing_postgres(refusal)
    try:
        with pytest.raises(QueryFailed) as refused:
            engine.Sandbox(_refused_spec(port, password), LIMITS, str(tmp_path))
    finally:
        listener.close()
    return refused.value


def _refused_spec(port: int, password: str) -> engine.DatasourceSpec:
    """A PostgreSQL datasource at ``_refusing_postgres``'s port."""
    return engine.DatasourceSpec(
        database_type="postgres",
        path="",
        remote=RemoteDatabaseSpec(
            host="127.0.0.1",
            address="127.0.0.1",
            port=port,
            database="shop",
            username="analyst",
            password=password,
            require_ssl=False,
            verify_ssl=False,
            connect_timeout_seconds=2.0,
        ),
    )


def test_a_refusal_that_is_not_utf8_is_classified_with_its_text(tmp_path):
    """The binding could not decode it and raised UnicodeDecodeError: the execution failed as
    "UnicodeDecodeError", Test Connection said the same (found by the outside probe)."""
    refusal = b"password authentication failed for user caf\xe9"
    refused = _refused(refusal, "hunter2-" + secrets.token_hex(4), tmp_path)
    assert refused.code == "authentication_failed", refused.message
    assert "caf\ufffd" in refused.message


def test_a_password_a_server_echoes_in_latin1_is_redacted_too(tmp_path):
    """Decoded with U+FFFD for its bytes that are not UTF-8, a non-ASCII password no longer
    matched its own text and went out nearly whole ("k\ufffdse-..."); now that form is
    redacted as well."""
    password = "käse-" + secrets.token_hex(4)
    refusal = b"password authentication failed: " + password.encode("latin-1")
    refused = _refused(refusal, password, tmp_path)
    assert refused.code == "authentication_failed", refused.message
    assert password[2:] not in refused.message, refused.message
    assert "<redacted>" in refused.message
