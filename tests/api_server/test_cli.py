"""The operator commands print exactly one JSON object on stdout; errors go to stderr.

The first test runs ``python -m api_server`` as an operator does; the others call the same
``main`` in this process (``operator_command`` in this folder's conftest.py).
"""

from __future__ import annotations

import json
import os
import sqlite3

import jwt
import pytest

from api_server.__main__ import main as api_main
from data_server.__main__ import main as data_main
from tests.support.processes import clean_environment, run_cli


@pytest.fixture
def cli(tmp_path, operator_command):
    return operator_command({"DATAFERRY_STATE_DIR": str(tmp_path / "state")})


@pytest.fixture
def cli_process(tmp_path):
    env = clean_environment({"DATAFERRY_STATE_DIR": str(tmp_path / "state")})

    def run(*args):
        return run_cli(env, tmp_path, *args)

    return run


def _one_json_object(stdout: str) -> dict:
    lines = stdout.splitlines()
    assert len(lines) == 1, stdout
    return json.loads(lines[0])


def test_create_organization_then_keys(cli_process):
    created = cli_process("create-organization", "--name", "Acme")
    assert created.returncode == 0, created.stderr
    org = _one_json_object(created.stdout)
    assert set(org) == {"organization_id", "api_key"}
    assert org["api_key"].startswith("dfk_")
    key = cli_process(
        "create-api-key",
        "--organization",
        org["organization_id"],
        "--permissions",
        "View Datasources, Manage Dashboards",
        "--name",
        "reporting",
    )
    assert key.returncode == 0, key.stderr
    assert set(_one_json_object(key.stdout)) == {"id", "api_key"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--permissions", "Do Everything"], "Unknown permission"),
        (["--permissions", ""], "At least one permission"),
        (["--permissions", "View Datasources", "--datasources", "zzzz-zzzz-zzzz"], "No datasource"),
        (["--permissions", "View Datasources", "--name", " "], "1 to 255 characters"),
        (["--permissions", "View Datasources", "--name", "k" * 256], "1 to 255 characters"),
        (["--permissions", "View Datasources", "--name", "a\x1b[2Jb"], "no control character"),
    ],
)
def test_create_api_key_refuses_bad_input(cli, args, message):
    org = _one_json_object(cli("create-organization", "--name", "Acme").stdout)
    result = cli("create-api-key", "--organization", org["organization_id"], *args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert message in result.stderr


@pytest.mark.parametrize("name", ["", "o" * 256, "tab\there", "invoice\u202egpj.exe"])
def test_create_organization_refuses_a_name_the_api_would_refuse(cli, name):
    """Checked before the database is touched: a name longer than the column failed
    PostgreSQL's insert with a traceback."""
    result = cli("create-organization", "--name", name)
    assert result.returncode == 2 and result.stdout == ""
    assert "argument --name" in result.stderr


def test_names_of_the_longest_length_are_kept_without_their_blanks(cli, tmp_path):
    org = _one_json_object(cli("create-organization", "--name", " Acme\n").stdout)
    name = "k" * 255
    key = _one_json_object(
        cli(
            "create-api-key",
            *("--organization", org["organization_id"], "--permissions", "View Datasources"),
            *("--name", f" {name}\n"),
        ).stdout
    )
    (database,) = (tmp_path / "state").rglob("*.db")
    with sqlite3.connect(database) as connection:
        stored = connection.execute(
            "SELECT o.name, k.name FROM api_keys k JOIN organizations o"
            " ON o.id = k.organization_id WHERE k.id = ?",
            (key["id"],),
        ).fetchone()
    assert stored == ("Acme", name)


def test_create_api_key_for_unknown_organization_fails(cli):
    cli("migrate")
    result = cli(
        "create-api-key", "--organization", "zzzz-zzzz-zzzz", "--permissions", "View Datasources"
    )
    assert result.returncode == 2 and result.stdout == ""


def test_demo_organization_is_created_once(cli):
    first = _one_json_object(cli("ensure-demo-organization").stdout)
    second = _one_json_object(cli("ensure-demo-organization").stdout)
    assert first == second


def test_recount_storage_mends_a_counter_that_drifted(cli, tmp_path):
    """A counter that does not match the stored results (here: set by hand) is set to their sum,
    and storage-usage reports the recounted bytes; one below 0 is reported as 0 until then."""
    created = [_one_json_object(cli("create-organization", "--name", n).stdout) for n in "AB"]
    drifted, untouched = (org["organization_id"] for org in created)
    (database,) = (tmp_path / "state").rglob("*.db")
    with sqlite3.connect(database) as connection:
        for org_id, counter in ((drifted, 12345), (untouched, -5000)):
            connection.execute(
                "UPDATE organizations SET stored_results_bytes = ? WHERE id = ?", (counter, org_id)
            )
        connection.execute(  # as a server of an older release deleting executions leaves it
            "UPDATE organizations SET execution_text_bytes = 777 WHERE id = ?", (drifted,)
        )
    below_zero = _one_json_object(cli("storage-usage", "--organization", untouched).stdout)
    assert below_zero["results_bytes"] == 0  # never reported, or granted as room, below 0

    one = cli("recount-storage", "--organization", drifted)
    assert one.returncode == 0, one.stderr
    assert _one_json_object(one.stdout) == {
        "recounted": [
            {
                "organization_id": drifted,
                "counted_bytes": 12345,
                "results_bytes": 0,
                "counted_text_bytes": 777,
                "text_bytes": 0,
            }
        ]
    }
    usage = _one_json_object(cli("storage-usage", "--organization", drifted).stdout)
    assert usage["results_bytes"] == 0
    every = _one_json_object(cli("recount-storage").stdout)["recounted"]
    zero = {"counted_bytes": 0, "results_bytes": 0, "counted_text_bytes": 0, "text_bytes": 0}
    assert sorted(every, key=lambda row: row["counted_bytes"]) == [
        {**zero, "organization_id": untouched, "counted_bytes": -5000},
        {**zero, "organization_id": drifted},
    ]
    unknown = cli("recount-storage", "--organization", "nope")
    assert unknown.returncode != 0 and unknown.stdout == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--per-minute", "-1"], "rate limit per minute is a whole number up to 1,000,000,000"),
        (["--per-hour", "2147483648"], "rate limit per hour is a whole number up to 1,000,000,000"),
        (["--max-running-executions", "1000001"], "up to 1,000,000"),
    ],
)
def test_organization_limits_stay_within_the_settings_bounds(cli, args, message):
    """Past them an integer column overflows (was a traceback on PostgreSQL)."""
    org = _one_json_object(cli("create-organization", "--name", "Acme").stdout)
    result = cli("set-organization-limits", "--organization", org["organization_id"], *args)
    assert (result.returncode, result.stdout) == (2, "")
    assert message in result.stderr and "Traceback" not in result.stderr
    ok = cli(
        "set-organization-limits",
        "--organization",
        org["organization_id"],
        "--per-hour",
        "1000000000",
    )
    assert ok.returncode == 0, ok.stderr


def test_a_secret_typed_in_the_wrong_place_is_masked_in_the_error(cli, capsys):
    """An API key pasted as the organisation, as a command or as a number: the error line echoes
    what was typed, and terminals and job logs keep it, so the key in it is masked."""
    key = _one_json_object(cli("create-organization", "--name", "Acme").stdout)["api_key"]
    token = jwt.encode({"data_key": "k"}, "a signing key of thirty-two bytes", algorithm="HS256")
    refused = cli("create-api-key", "--organization", key, "--permissions", "View Datasources")
    assert refused.returncode == 2
    assert "No organisation dfk_…." in refused.stderr
    usage_errors = [
        (api_main, [key]),
        (api_main, ["serve", "--port", key]),
        (api_main, ["create-api-key", "--organization", "o", "--permissions", "x", token]),
        (data_main, [token]),
    ]
    for main, argv in usage_errors:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2
        error = capsys.readouterr().err
        assert "error: " in error and ("dfk_…" in error or "eyJ…" in error)
        assert key not in error and token not in error


def test_a_state_directory_that_is_a_file_is_one_error_line(tmp_path, operator_command):
    """Both servers' commands: the file system's refusal, named with its path and the setting
    that put it there (the outside probe: the path only), not a traceback."""
    (tmp_path / "state").write_text("not a directory")
    cli = operator_command({"DATAFERRY_STATE_DIR": str(tmp_path / "state")})
    result = cli("migrate")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"error: File exists: {tmp_path / 'state'} (in DATAFERRY_STATE_DIR)\n"


def test_an_argument_that_is_no_utf8_text_is_refused_before_anything_runs(cli, tmp_path):
    """Python keeps a non-UTF-8 argument's bytes as surrogates, which the database driver
    refused with a traceback (an organisation name of b"a\\xff")."""
    for argv in (["create-organization", "--name", "a\udcff"], ["migrate", "\udcff"]):
        result = cli(*argv)
        assert (result.returncode, result.stdout) == (2, "")
        assert result.stderr == f"error: argument {len(argv)} is not UTF-8 text\n"
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize(
    "command",
    [
        ["list-shared-folders", "--organization", "zzzz-zzzz-zzzz"],
        ["check-file-datasources", "--organization", "zzzz-zzzz-zzzz"],
    ],
)
def test_listing_commands_refuse_an_unknown_organisation(cli, command):
    """Before, a mistyped organisation listed nothing and exited 0, as if it had none."""
    cli("create-organization", "--name", "Acme")
    result = cli(*command)
    assert (result.returncode, result.stdout) == (2, "")
    assert "No organisation zzzz-zzzz-zzzz" in result.stderr


@pytest.mark.parametrize("value", ["\u0663", "1_000", "+5", " 7", "0x10"])
def test_counts_are_ascii_digits_as_the_api_reads_them(cli, value):
    """int() takes other scripts' digits and underscores; the API does not."""
    org = _one_json_object(cli("create-organization", "--name", "Acme").stdout)
    result = cli(
        "set-organization-limits", "--organization", org["organization_id"], "--per-hour", value
    )
    assert (result.returncode, result.stdout) == (2, "")
    assert "not a whole number" in result.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["storage-usage", "--organization", "zzzz-zzzz-zzzz"],
        ["list-shared-folders"],
        ["recount-storage"],
        ["disable-api-key", "--id", "zzzz-zzzz-zzzz"],
    ],
)
def test_a_mistyped_state_directory_gets_no_new_database(cli, tmp_path, command):
    """Only creating an organisation starts the embedded database; before, any command did,
    and a read on a mistyped state directory answered from a fresh, empty one left behind."""
    result = cli(*command)
    assert (result.returncode, result.stdout) == (2, "")
    assert "no metadata database at" in result.stderr
    assert not list(tmp_path.rglob("*.db"))
    assert cli("create-organization", "--name", "Acme").returncode == 0
    assert list(tmp_path.rglob("*.db"))


@pytest.mark.parametrize(
    "command",
    [
        ["set-organization-limits", "--organization", "o", "--per-minute", "abc"],
        ["storage-usage"],  # a required option missing
        ["no-such-command"],
        ["migrate", "extra"],
        ["serve", "--port", "abc"],
        # fell back to the environment's port, or blamed DATAFERRY_API_PORT (outside probe)
        ["serve", "--port", "0"],
        ["serve", "--port", "99999"],
        ["serve", "--host", ""],
        ["serve", "--host", "a b"],  # blamed on DATAFERRY_API_HOST, which was not set
    ],
)
def test_an_argument_refused_is_one_error_line(cli, command):
    """Found by the outside probe: argparse printed its usage, several lines, before the error;
    every refusal is one line (``--help`` shows the usage)."""
    result = cli(*command)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith("error: python -m api_server")
    assert result.stderr.endswith("(--help shows the usage)\n")
    assert result.stderr.count("\n") == 1


def test_a_refusal_quotes_a_long_argument_shortened(cli):
    """Found by the outside probe: a 3,000-character id came back whole in the error line."""
    cli("create-organization", "--name", "Acme")
    long_id = "x" * 3000
    for command in (
        ["create-api-key", "--organization", long_id, "--permissions", "View Datasources"],
        ["no-such-command-" + long_id],
    ):
        result = cli(*command)
        assert result.returncode == 2
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and len(errors[0]) < 700, result.stderr


@pytest.mark.parametrize(
    ("main", "host"),
    [(api_main, "no-such-host.invalid"), (api_main, "10.255.255.1"), (data_main, "256.0.0.1")],
)
def test_serve_on_an_address_it_cannot_listen_on_is_one_error_line(
    tmp_path, monkeypatch, capsys, main, host
):
    """Found by the outside probe: uvicorn logged six lines and exited with status 3. The
    address is checked before anything else is done: no database is made."""
    for name in [name for name in os.environ if name.startswith("DATAFERRY_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("DATAFERRY_STATE_DIR", str(tmp_path / "state"))
    umask = os.umask(0o022)
    os.umask(umask)
    try:
        assert main(["serve", "--host", host, "--port", "8123"]) == 2
    finally:
        os.umask(umask)  # main sets the servers' own (shared/file_modes.py)
    error = capsys.readouterr().err
    assert error.startswith(f"error: cannot listen on {host}:8123: ") and error.count("\n") == 1
    assert not list(tmp_path.rglob("*.db"))


@pytest.mark.parametrize("listed", ["", " , ,"])
def test_a_key_limited_to_no_datasource_is_refused(cli, listed):
    """Found by the outside probe: ``--datasources "$EMPTY"`` made a key that reaches no
    datasource, silently; leaving the option out is how a key reaches every one."""
    org = _one_json_object(cli("create-organization", "--name", "Acme").stdout)
    result = cli(
        "create-api-key",
        "--organization",
        org["organization_id"],
        "--permissions",
        "View Datasources",
        "--datasources",
        listed,
    )
    assert (result.returncode, result.stdout) == (2, "")
    assert "names no datasource" in result.stderr


@pytest.mark.parametrize(
    ("revision", "said"),
    [
        ("0015", "is at revision 0015, this release's is"),
        ("9999", "of a release newer than this one"),
    ],
)
def test_an_operator_command_never_migrates_the_schema_in_passing(cli, tmp_path, revision, said):
    """Found by the outside probe: every command upgraded the schema first, so one run with a
    new release's tools took its migration (one builds an index on a large table) while the
    servers of the release before still ran. Only ``migrate`` (and ``serve``) do."""
    assert cli("create-organization", "--name", "Acme").returncode == 0
    [database] = list(tmp_path.rglob("*.db"))
    with sqlite3.connect(database) as connection:
        connection.execute("UPDATE alembic_version SET version_num = ?", (revision,))
    for command in (["list-shared-folders"], ["create-organization", "--name", "Other"]):
        result = cli(*command)
        assert (result.returncode, result.stdout) == (2, ""), result.stderr
        assert said in result.stderr
        assert result.stderr.count("\n") == 1
    with sqlite3.connect(database) as connection:
        assert connection.execute("SELECT version_num FROM alembic_version").fetchall() == [
            (revision,)
        ]
