"""The ``dataferry`` command as a subprocess against real servers."""

from __future__ import annotations

import asyncio
import http.server
import io
import json
import os
import pty
import re
import select
import signal
import stat
import subprocess
import threading
import time

import duckdb
import pyarrow.parquet as pq
import pytest
from dataferry_client import transport
from dataferry_client.aio import AsyncClient
from dataferry_client.cli import one_line
from dataferry_client.client import Client
from dataferry_client.commands.exit_codes import ExitCode
from dataferry_client.config import read_profiles, write_profile
from dataferry_client.errors import ConfigurationError, TransportError, UnexpectedAnswer
from dataferry_client.terminal import render_arrow, render_table

from tests.client.conftest import DATAFERRY, command_environment, run_command, run_dataferry
from tests.support.processes import ROOT

pytestmark = pytest.mark.e2e

SLOW = "SELECT sum(hash(range)) FROM range(20000000000)"


def _interruptible() -> None:
    """SIGINT as a terminal's command gets it: the suite may run in the background of a
    non-interactive shell (`make test &`), whose commands inherit it ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class OnTerminal:
    """A command with stdout and stderr on a pseudo-terminal, and what it wrote there."""

    def __init__(self, org, home, *args: str) -> None:
        self.controller, terminal = pty.openpty()
        self.process = subprocess.Popen(
            [str(DATAFERRY), *args], env=org.env(home), stdin=subprocess.DEVNULL,
            stdout=terminal, stderr=terminal, preexec_fn=_interruptible,
        )  # fmt: skip
        os.close(terminal)
        self.output = bytearray()

    def read(self, seconds: float, until: bytes | None = None) -> None:
        """What it writes for up to ``seconds``: until ``until`` shows, or the command ends."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not (until and until in self.output):
            ready, _, _ = select.select([self.controller], [], [], 0.2)
            if not ready:
                continue
            try:
                chunk = os.read(self.controller, 65536)
            except OSError:  # EIO: the terminal's other end closed
                return
            if not chunk:
                return
            self.output.extend(chunk)

    def end(self) -> tuple[int, str]:
        """Its exit status (killed if it does not end within 30 s) and what it wrote."""
        try:
            code = self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        os.close(self.controller)
        return code, self.output.decode(errors="replace")


def run_under_pty(org, home, *args: str) -> tuple[int, str]:
    """Run the command with stdout and stderr on a pseudo-terminal; returns (code, output)."""
    command = OnTerminal(org, home, *args)
    command.read(60)
    return command.end()


def test_query_shows_progress_and_a_table_on_a_terminal(org, tmp_path):
    code, output = run_under_pty(org, tmp_path, "query", "Sample Data", "SELECT * FROM orders")
    assert code == 0, output
    assert "elapsed" in output  # the progress line, on stderr
    assert "\x1b[Korder_id  customer_id" in output  # the table starts on the cleared line
    assert "not shown: use --format or -o FILE" in output


@pytest.mark.parametrize("waiting", ["in a later request", "in the run itself"])
def test_ctrl_c_while_a_query_waits_cancels_its_execution_and_names_it(org, tmp_path, waiting):
    """Ctrl-C left the execution running on the server to its time limit, holding a worker,
    and said nothing of which it was (outside probe). Without a progress line (``-q``, or no
    terminal) the run itself waits, up to 30 s, and knows no id yet: the run is sent again
    with its Idempotency-Key, which answers the same execution at once (the probe of this
    stop's changes)."""
    quiet = ["-q"] if waiting == "in the run itself" else []
    command = OnTerminal(org, tmp_path, "query", *quiet, org.sample_id, SLOW)
    try:
        if quiet:
            time.sleep(2)  # inside the run's own wait
        else:
            command.read(60, until=b"elapsed")  # the progress line: the run answered its id
            assert b"elapsed" in command.output, command.output.decode(errors="replace")
        command.process.send_signal(signal.SIGINT)
        command.read(30)
    finally:
        code, text = command.end()
    assert code == ExitCode.INTERRUPTED, text
    found = re.search(r"dataferry: interrupted; execution (\S+) cancelled", text)
    assert found, text
    with org.client() as client:
        assert client.executions.get(found.group(1), wait=30).status == "cancelled"


def test_query_without_a_terminal_prints_csv_and_no_progress(org, tmp_path):
    result = run_command(org, tmp_path, "query", org.sample_id, "SELECT 1 AS a, 'x' AS b")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == '"a","b"\n1,"x"\n'


def test_query_with_json_prints_one_json_document_on_a_line_of_its_own(org, tmp_path):
    """``--json`` was accepted and ignored (CSV came out), and ``--format json`` ended without
    a line feed."""
    for flags in (["--json"], ["--format", "json"]):
        result = run_command(org, tmp_path, "query", org.sample_id, "SELECT 1 AS a", *flags)
        assert (result.returncode, result.stderr) == (0, "")
        assert result.stdout.endswith("}\n") and result.stdout.count("\n") == 1
        assert json.loads(result.stdout)["rows"] == [[1]]


def test_query_into_a_pipe_closed_early_ends_quietly(org, tmp_path):
    """``dataferry query … | head -1`` said "[Errno 32] Broken pipe" and exited 2 (usage), once
    its output was more than the pipe and the reader's buffer held."""
    process = subprocess.Popen(
        [str(DATAFERRY), "query", org.sample_id, "SELECT * FROM range(3000000)"],
        env=org.env(tmp_path), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None and process.stderr is not None
    assert process.stdout.readline() == b'"range"\n'
    process.stdout.close()  # as head does, with most of the rows still to come
    assert process.wait(timeout=60) == ExitCode.OK
    with process.stderr:
        assert process.stderr.read() == b""


def test_query_reads_sql_from_stdin_and_files_and_takes_parameters(org, tmp_path):
    sql = "SELECT order_id FROM orders WHERE {order_id=picked} ORDER BY order_id"
    piped = run_command(
        org, tmp_path, "query", org.sample_id, "--param", "picked=2", "--param", "picked=5",
        "--format", "ndjson", stdin=sql,
    )  # fmt: skip
    assert piped.returncode == 0, piped.stderr
    assert [json.loads(line) for line in piped.stdout.splitlines()] == [
        {"order_id": 2}, {"order_id": 5},
    ]  # fmt: skip
    (tmp_path / "q.sql").write_text("SELECT count(*) AS n FROM orders WHERE {ordered_at=timerange}")
    out = tmp_path / "out.parquet"
    saved = run_command(
        org, tmp_path, "query", org.sample_id, "-f", str(tmp_path / "q.sql"),
        "--timerange", "2023-01-01~2023-01-02", "-o", str(out),
    )  # fmt: skip
    assert (saved.returncode, saved.stdout, saved.stderr) == (0, "", "")
    with org.client() as client:
        expected = client.query(
            org.sample_id,
            "SELECT count(*) AS n FROM orders "
            "WHERE ordered_at >= TIMESTAMP '2023-01-01' AND ordered_at < TIMESTAMP '2023-01-02'",
        ).to_arrow()
    assert pq.read_table(out).column("n").to_pylist() == expected.column("n").to_pylist() != [0]


@pytest.mark.parametrize(
    ("args", "env", "code", "fragment"),
    [
        (["whoami"], {"DATAFERRY_API_KEY": "dfk_" + "x" * 40 + "_000000"},
         ExitCode.AUTHENTICATION, "[unauthorized]"),
        (["query", "zzzz-zzzz-zzzz", "SELECT 1"], {}, ExitCode.NOT_FOUND, "not_found"),
        (["query", "Sample Data", "SELECT * FROM nowhere"], {}, ExitCode.EXECUTION_FAILED, "nowhere"),
        (["query", "Sample Data", SLOW, "--timeout", "0.3"], {}, ExitCode.TIMEOUT, "client_timeout"),
        (["query", "Sample Data", "SELECT 1", "--param", "unused=1"], {}, ExitCode.INVALID, "/parameters/filters"),
        (["whoami"], {"DATAFERRY_API_URL": ""}, ExitCode.CONFIGURATION, "no API URL"),
        (["query", "Sample Data", "SELECT 1", "--param", "x"], {}, ExitCode.USAGE, "NAME=VALUE"),
        (["query", "Sample Data", "SELECT 1", "-o", "x.txt"], {}, ExitCode.USAGE, "cannot tell the format"),
        # Before the query runs (it ran, and then the file could not be written).
        (["query", "Sample Data", "SELECT 1", "-o", "/nonexistent/x.csv"], {}, ExitCode.USAGE, "no folder /nonexistent"),
        (["query", "Sample Data", "SELECT 1", "--json", "--format", "csv"], {}, ExitCode.USAGE, "two formats"),
        (["query", "Sample Data", "SELECT 1", "--json", "-o", "out.csv"], {}, ExitCode.USAGE, "--format json"),
        (["whoami"], {"DATAFERRY_API_URL": "http://127.0.0.1:9"}, ExitCode.UNAVAILABLE, "cannot reach"),
        # argparse's own refusals, which printed its usage first (found by the outside probe)
        (["no-such-command"], {}, ExitCode.USAGE, "(dataferry --help)"),
        (["query", "Sample Data", "SELECT 1", "--timeout", "x"], {}, ExitCode.USAGE, "(dataferry query --help)"),
    ],
    ids=["wrong-key", "unknown-datasource", "failed", "timeout", "invalid", "no-config", "usage", "bad-output",
         "output-nowhere", "two-formats", "json-into-a-file", "down", "unknown-command", "bad-option"],
)  # fmt: skip
def test_bad_input_gets_one_line_and_a_distinct_exit_code(org, tmp_path, args, env, code, fragment):
    result = run_command(org, tmp_path, *args, **env)
    assert result.returncode == code, result.stderr
    assert result.stderr.startswith("dataferry: ") and result.stderr.count("\n") == 1
    assert fragment in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""
    if code == ExitCode.TIMEOUT:  # leave no slow execution behind
        execution_id = result.stderr.split("execution ", 1)[1].split()[0]
        run_command(org, tmp_path, "executions", "cancel", execution_id)


def test_resource_commands_with_json_output(org, tmp_path, client_region):
    def ok(*args: str) -> object:
        result = run_command(org, tmp_path, *args, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout) if result.stdout else None

    assert ok("whoami")["organization_id"] == org.organization_id
    assert org.sample_id in [d["id"] for d in ok("datasources", "list")]
    assert ok("datasources", "show", org.sample_id)["name"] == "Sample Data"
    assert ok("datasources", "test", org.sample_id)["status"] == "ok"
    assert ok("datasources", "refresh", org.sample_id, "--wait")["execution_status"] == "completed"
    assert "orders" in json.dumps(ok("datasources", "schema", org.sample_id))
    (client_region.area(org.organization_id) / "cli_shop").mkdir(exist_ok=True)
    (client_region.area(org.organization_id) / "cli_shop" / "t.csv").write_text("a\n1\n")
    created = ok(
        "datasources", "create", "--name", "CLI shop", "--type", "files", "--database", "cli_shop"
    )
    assert ok("datasources", "update", created["id"], "--name", "CLI")["name"] == "CLI"
    ok("datasources", "delete", created["id"])

    snippet = ok("snippets", "create", "--name", "cli_one", "--sql", "SELECT 1 AS one")
    assert snippet["id"] in [s["id"] for s in ok("snippets", "list")]
    assert (
        ok("snippets", "update", snippet["id"], "--sql", "SELECT 2 AS one")["sql"]
        == "SELECT 2 AS one"
    )
    assert ok("snippets", "show", snippet["id"])["name"] == "cli_one"
    ok("snippets", "delete", snippet["id"])

    from dataferry_client import Client

    with Client(org.api_url, org.api_key) as client:
        slow = client.executions.run(org.sample_id, SLOW)
    assert ok("executions", "show", slow.id)["execution_status"] in ("starting", "running")
    assert ok("executions", "cancel", slow.id)["id"] == slow.id
    assert ok("executions", "wait", slow.id, "--timeout", "30")["execution_status"] == "cancelled"


def test_configure_writes_a_private_profile_that_queries_use(org, tmp_path):
    env = {"DATAFERRY_API_URL": "", "DATAFERRY_API_KEY": "", "DATAFERRY_DATA_URL": ""}
    written = run_command(
        org, tmp_path, "configure", "--profile", "eu", "--api-url", org.api_url,
        "--data-url", org.data_url, stdin=org.api_key + "\n", **env,
    )  # fmt: skip
    assert written.returncode == 0, written.stderr
    path = tmp_path / "dataferry" / "profiles.toml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    result = run_command(
        org, tmp_path, "--profile", "eu", "query", "Sample Data", "SELECT 3 AS n", **env
    )
    assert (result.returncode, result.stdout) == (0, '"n"\n3\n'), result.stderr
    missing = run_command(
        org, tmp_path, "query", "--profile", "us", "Sample Data", "SELECT 1", **env
    )
    assert missing.returncode == ExitCode.CONFIGURATION and "no profile 'us'" in missing.stderr


@pytest.mark.parametrize(
    ("option", "value"),
    [("--api-url", "ftp://x"), ("--api-url", "http://h/a\nb"), ("--data-url", "not a url")],
)
def test_configure_refuses_a_url_no_request_could_use(tmp_path, option, value):
    """Before, such a profile was written and failed only at the first request."""
    urls = {"--api-url": "http://127.0.0.1:8000", option: value}
    result = run_dataferry(
        command_environment(tmp_path),
        *("configure", *(arg for pair in urls.items() for arg in pair)),
        stdin="dfk_x\n",
    )
    assert result.returncode == ExitCode.CONFIGURATION, result.stderr
    assert "is not an http(s) URL" in result.stderr or "blank or control" in result.stderr
    assert not (tmp_path / "dataferry" / "profiles.toml").exists()


def test_profiles_hold_any_text_and_the_file_stays_readable(tmp_path):
    """Characters beyond U+FFFF (JSON's surrogate escapes, which TOML refuses, made the whole
    file unreadable), DEL (which TOML wants escaped), controls, quotes and backslashes."""
    path = tmp_path / "profiles.toml"
    odd = 'eu \U0001f680 "q" \\ \x7f \x01\t\n é'
    write_profile(path, "plain", {"api_url": "http://127.0.0.1:1"})
    write_profile(path, odd, {"api_url": f"http://h/{odd}", "api_key": odd, "data_url": None})
    assert read_profiles(path) == {
        "plain": {"api_url": "http://127.0.0.1:1"},
        odd: {"api_url": f"http://h/{odd}", "api_key": odd},
    }


@pytest.mark.parametrize("field", ["name", "api_url", "api_key"])
def test_a_profile_holding_bytes_that_are_no_utf8_is_refused_and_the_file_kept(tmp_path, field):
    path = tmp_path / "profiles.toml"
    write_profile(path, "plain", {"api_url": "http://127.0.0.1:1"})
    before = path.read_bytes()
    values = {"api_url": "http://127.0.0.1:2", "api_key": "k"}
    name = "n\udcff" if field == "name" else "n"
    if field != "name":
        values[field] += "\udcff"
    with pytest.raises(ConfigurationError, match="is not UTF-8 text"):
        write_profile(path, name, values)
    assert path.read_bytes() == before and not path.with_suffix(".tmp").exists()


class _NotTheApi(http.server.BaseHTTPRequestHandler):
    """What may answer at a mistyped or proxied URL: ``/<status>/<kind>`` says what."""

    def do_GET(self):
        _, status, kind, *_ = self.path.split("/")
        bodies = {
            "html": (b"<html>Sign in to the network</html>", "text/html"),
            "empty": (b"{}", "application/vnd.api+json"),
            "problem": (b'{"errors": [{"detail": "Too large."}]}', "application/vnd.api+json"),
        }
        if kind == "hostile":  # an error that echoes the key and holds escape sequences
            detail = "\x1b]0;pwned\x07\x1b[2Jbad key " + self.headers["Authorization"]
            error = {"detail": detail, "code": "x\x1b[31m"}
            bodies[kind] = (json.dumps({"errors": [error]}).encode(), "application/vnd.api+json")
        if kind == "deep":
            bodies[kind] = (b"[" * 100_000 + b"]" * 100_000, "application/json")
        if kind in _ENDLESS:
            self._send_endlessly(kind)
            return
        body, content_type = bodies[kind]
        if status == "204":
            body = b""
        self.send_response(int(status))
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if status.startswith("3"):
            self.send_header("Location", "https://elsewhere.example/api")
        self.end_headers()
        self.wfile.write(body)

    def _send_endlessly(self, kind: str) -> None:
        """``claims``: a length no answer has; ``flood``: 4 MiB, unannounced; ``trickle``: a
        byte every 50 ms for 5 s. Each ends by itself."""
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.api+json")
        if kind == "claims":
            self.send_header("Content-Length", str(10**12))
            self.end_headers()
            return
        self.send_header("Connection", "close")
        self.end_headers()
        piece, pause, count = (b"x" * 65536, 0.0, 64) if kind == "flood" else (b"x", 0.05, 100)
        try:
            for _ in range(count):
                self.wfile.write(piece)
                self.wfile.flush()
                time.sleep(pause)
        except OSError:  # the client hung up, as it should
            pass


_ENDLESS = ("claims", "flood", "trickle")


@pytest.mark.parametrize("driver", ["sync", "asyncio"])
@pytest.mark.parametrize(
    ("kind", "error", "message"),
    [
        ("claims", UnexpectedAnswer, "larger than 1 MiB"),
        ("flood", UnexpectedAnswer, "larger than 1 MiB"),
        ("trickle", TransportError, "did not arrive in time"),
    ],
)
def test_an_answer_too_large_or_too_slow_is_refused_not_awaited(
    monkeypatch, driver, kind, error, message
):
    """Before, the client held whatever a server sent (a 200 MB answer: 880 MB of memory) and
    waited for a body sent a byte a second as long as it kept coming. Answers are held to
    MAX_ANSWER_BYTES (1 MiB here) and to the timeout after their headers (0.5 s here)."""
    monkeypatch.setattr(transport, "MAX_ANSWER_BYTES", 2**20, raising=False)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotTheApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/200/{kind}"

    async def ask_asynchronously() -> None:
        async with AsyncClient(url, "dfk_x", timeout=0.5) as client:
            await client.api_key()

    started = time.monotonic()
    try:
        with pytest.raises(error, match=message):
            if driver == "sync":
                with Client(url, "dfk_x", timeout=0.5) as client:
                    client.api_key()
            else:
                asyncio.run(ask_asynchronously())
    finally:
        server.shutdown()
        server.server_close()
    assert time.monotonic() - started < 3  # the trickle would take 5 s


@pytest.mark.parametrize(
    ("answer", "code", "message"),
    [
        ("302/html", ExitCode.CONFIGURATION, "redirects (HTTP 302) to https://elsewhere.example"),
        ("200/html", ExitCode.UNAVAILABLE, "not JSON (HTTP 200, text/html)"),
        ("200/empty", ExitCode.UNAVAILABLE, "not the document the API defines"),
        ("413/problem", ExitCode.INVALID, "Too large."),
        ("200/deep", ExitCode.UNAVAILABLE, "not JSON (HTTP 200, application/json)"),
        ("204/empty", ExitCode.UNAVAILABLE, "answered HTTP 204, which the API does not answer"),
        (
            "401/hostile",
            ExitCode.AUTHENTICATION,
            "dataferry: \\x1b]0;pwned\\x07\\x1b[2Jbad key Api dfk_… [x\\x1b[31m]\n",
        ),
    ],
)
def test_answers_that_are_not_the_apis_end_with_their_exit_code(tmp_path, answer, code, message):
    """Before, a redirect ended as 'invalid' and an answer that was no API document as an
    'internal error' (exit 1, 'a bug in the client')."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotTheApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = command_environment(
            tmp_path,
            DATAFERRY_API_URL=f"http://127.0.0.1:{server.server_port}/{answer}",
            DATAFERRY_API_KEY="dfk_echoed_by_a_hostile_server",
        )
        result = run_dataferry(env, "datasources", "list")
    finally:
        server.shutdown()
        server.server_close()
    assert (result.returncode, result.stdout) == (code, ""), result.stderr
    assert message in result.stderr and "internal error" not in result.stderr
    assert "\x1b" not in result.stderr and "echoed_by" not in result.stderr


def test_what_a_server_sends_is_shown_without_the_controls_a_terminal_obeys():
    """A name or value holding escape sequences (any key of the organisation may store one)
    cleared the analyst's screen or set the window title; right-to-left overrides reorder it."""
    out = io.StringIO()
    render_table(["n\x1b[2J"], [["\x1b]0;t\x07"], ["a\u202eb\nc\x9b"], [None]], out)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["n\\x1b[2J"]
    assert [line.strip() for line in lines[2:]] == ["\\x1b]0;t\\x07", "a\\u202eb\\nc\\x9b", "NULL"]
    assert not any(
        0 <= ord(c) < 32 or 127 <= ord(c) < 160 for c in out.getvalue().replace("\n", "")
    )


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"DATAFERRY_API_URL": "http://[::1"}, "API server URL is not an http(s) URL"),
        ({"DATAFERRY_API_URL": "ftp://h"}, "API server URL is not an http(s) URL"),
        ({"DATAFERRY_API_URL": "not a url"}, "API server URL is not an http(s) URL"),
        ({"DATAFERRY_API_URL": "http://h/a\nb"}, "API server URL holds a blank or control"),
        ({"DATAFERRY_DATA_URL": "javascript:x"}, "data server URL is not an http(s) URL"),
        ({"DATAFERRY_API_URL": "http://h/" + "x" * 100_000}, "API server URL is not valid"),
        ({"profile": b"\xff\xfe"}, "cannot read the profile file"),
    ],
)
def test_an_unusable_configuration_is_a_configuration_error(tmp_path, setting, message):
    env = command_environment(
        tmp_path, DATAFERRY_API_KEY="dfk_x", DATAFERRY_API_URL="http://127.0.0.1:9"
    )
    if "profile" in setting:
        (tmp_path / "dataferry").mkdir()
        (tmp_path / "dataferry" / "profiles.toml").write_bytes(setting["profile"])
        env.pop("DATAFERRY_API_URL")
    else:
        env |= setting
    result = run_dataferry(env, "whoami")
    assert result.returncode == ExitCode.CONFIGURATION, result.stderr
    assert message in result.stderr


def test_an_id_names_one_resource_of_the_commands_type_and_nothing_else(org, dataferry, tmp_path):
    """Before, ids went into the request path as they were: `datasources delete
    ../sql_snippets/ID` deleted the snippet, `datasources show ../api_key` showed the calling
    key, and `show ID/files` or `x?include=…` reached other routes."""
    snippet = dataferry.snippets.create("kept_by_path_encoding", "SELECT 1")
    env = {"DATAFERRY_DATA_URL": org.data_url}
    crafted = [
        ("datasources", "delete", f"../sql_snippets/{snippet.id}"),
        ("datasources", "show", "../api_key"),
        ("datasources", "show", f"{org.sample_id}/files"),
        ("datasources", "show", f"{org.sample_id}?include=agents"),
        ("datasources", "show", ".."),
        ("snippets", "show", "zz\x1b[2J"),
    ]
    for command in crafted:
        result = run_command(org, tmp_path, *command, "--json", **env)
        assert result.returncode in (ExitCode.NOT_FOUND, ExitCode.INVALID), (command, result)
        assert result.stdout == "" and "configuration" not in result.stderr, command
    assert dataferry.snippets.get(snippet.id).name == "kept_by_path_encoding"
    dataferry.snippets.delete(snippet.id)


def test_the_error_line_cuts_keys_and_tokens_wherever_they_stand():
    key, token = "dfk_abcdefghijklmnop_q", "eyJhbGciOiJFZERTQSJ9.eyJ4Ijox.c2ln"
    for glued in (f"Api%20{key}", f"key_{key}", f"\x1b{key}", f"x{token}", f"({key})"):
        line = one_line(f"refused: {glued}")
        assert key not in line and token not in line and "\x1b" not in line, line


def test_exit_codes_are_documented():
    docs = (ROOT / "docs" / "client.md").read_text()
    for code in ExitCode:
        assert f"| {code.value} | `{code.name.lower()}` |" in docs, code
    help_text = subprocess.run([str(DATAFERRY), "--help"], capture_output=True, text=True).stdout
    assert all(code.name.lower().replace("_", " ") in help_text for code in ExitCode)


def test_a_table_with_dates_python_cannot_hold_still_renders():
    """DuckDB's infinities and years past 9999 are no Python datetime: before, the whole table
    stopped with a traceback; now they show (infinities by name) and the rest as before."""
    with duckdb.connect() as connection:
        table = connection.execute(
            "SELECT 'infinity'::TIMESTAMP AS a, ['infinity'::TIMESTAMP] AS b,"
            " '-infinity'::DATE AS c, 'infinity'::TIMESTAMP_NS AS ns, 1 AS n"
            " UNION ALL SELECT TIMESTAMP '2024-01-01', [], DATE '2024-01-01', NULL, 2"
        ).to_arrow_table()
    out = io.StringIO()
    render_arrow(table, out)
    lines = out.getvalue().splitlines()
    # (A nanosecond infinity is a valid pandas Timestamp: it is named before.)
    infinities = ["infinity", "<see", "--format", "json>", "-infinity", "infinity", "1"]
    assert lines[2].split() == infinities
    assert lines[3].split() == ["2024-01-01", "00:00:00", "[]", "2024-01-01", "NULL", "2"]
    assert lines[4] == "(2 rows)"


def test_a_param_json_cannot_hold_is_sent_as_text(org, tmp_path):
    """NaN, Infinity and 1e400 parse as Python numbers JSON has no spelling for: the body the
    client sent was refused as malformed JSON, exit 7 (found by the outside probe)."""
    for raw in ("NaN", "Infinity", "-Infinity", "1e400"):
        ran = run_command(
            org, tmp_path, "query", org.sample_id, "SELECT {v.value} AS v",
            "--param", f"v={raw}", "--format", "ndjson",
        )  # fmt: skip
        assert ran.returncode == 0, ran.stderr
        assert [json.loads(line) for line in ran.stdout.splitlines()] == [{"v": raw}]
