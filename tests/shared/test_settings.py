"""Settings: one typed model with declared bounds, read once from the environment and
documented in deploy/env.example."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from shared.errors import ConfigurationError
from shared.settings import Secret, Settings
from shared.state_secrets import ServerSecrets
from tests.support.postgres import POSTGRES_ENV, postgres_url_from_env
from tests.support.processes import ROOT, clean_environment, free_port

ENV_EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "env.example"
DOCS = Settings.docs()
BY_VARIABLE = {doc.variable: doc for doc in DOCS.values()}


def _env_example_entries() -> dict[str, tuple[list[str], str]]:
    """Variable → (the comment lines above it, the default it shows), in the file's order."""
    entries = {}
    for block in ENV_EXAMPLE.read_text().split("\n\n"):
        *comments, last = block.strip().splitlines()
        variable = re.fullmatch(r"# (DATAFERRY_[A-Z0-9_]+)=(.*)", last)
        if variable:
            entries[variable[1]] = ([line.removeprefix("# ") for line in comments], variable[2])
    return entries


def test_env_example_documents_every_setting_in_the_models_order():
    assert list(_env_example_entries()) == [doc.variable for doc in DOCS.values()]


@pytest.mark.parametrize("variable", list(BY_VARIABLE))
def test_env_example_shows_the_models_description_default_and_bounds(variable):
    doc = BY_VARIABLE[variable]
    comments, default = _env_example_entries()[variable]
    assert " ".join(comments).startswith(doc.description)
    assert default == doc.default
    allowed_lines = [line for line in comments if line.startswith("Allowed: ")]
    assert allowed_lines == ([f"Allowed: {doc.allowed}"] if doc.allowed else [])


def test_operator_guide_places_every_setting():
    guide = (ENV_EXAMPLE.parent / "README.md").read_text()
    missing = [name for name in Settings.documented_variables() if f"`{name}`" not in guide]
    assert missing == [], "deploy/README.md does not mention these settings"


def test_defaults_live_in_the_state_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env({})
    assert settings.region == "eu"
    assert settings.state_dir == tmp_path / "var"
    assert settings.database_url == f"sqlite:///{tmp_path / 'var' / 'dataferry.db'}"
    assert settings.data_root == tmp_path / "var" / "data"
    assert settings.public_api_url == "http://127.0.0.1:8000"


def test_environment_values_are_cast():
    settings = Settings.from_env(
        {
            "DATAFERRY_REGION": "us",
            "DATAFERRY_API_PORT": "9000",
            "DATAFERRY_SAMPLE_SCALE": "0.5",
            "DATAFERRY_API_KEY_PEPPER": "p" * 40,
        }
    )
    assert (settings.region, settings.api_port, settings.sample_scale) == ("us", 9000, 0.5)
    assert isinstance(settings.api_key_pepper, Secret)
    assert Settings.from_env({"DATAFERRY_LOG_LEVEL": "debug"}).log_level == "DEBUG"
    assert Settings.from_env({"DATAFERRY_API_PORT": "9000"}, api_port=9100).api_port == 9100
    assert Settings.from_env({"DATAFERRY_API_PORT": ""}).api_port == 8000  # empty means unset


def _numeric_bounds() -> list[tuple[str, str, float]]:
    """(field, ge/gt/le/lt, bound) of every numeric bound the model declares."""
    return [
        (name, key, getattr(item, key))
        for name, info in Settings.model_fields.items()
        for item in info.metadata
        for key in ("ge", "gt", "le", "lt")
        if hasattr(item, key)
    ]


@pytest.mark.parametrize("name", list(DOCS))
def test_every_setting_has_bounds_or_says_why_not(name):
    doc = DOCS[name]
    assert bool(doc.allowed) != bool(doc.unbounded), "declare bounds or unbounded=<why>, not both"
    info = Settings.model_fields[name]
    if any(getattr(item, "pattern", None) for item in info.metadata):
        assert info.json_schema_extra["allowed"], "put the pattern in words: allowed=..."


@pytest.mark.parametrize(
    ("name", "kind", "bound"),
    _numeric_bounds(),
    ids=[f"{name}-{kind}" for name, kind, _ in _numeric_bounds()],
)
def test_every_numeric_bound_holds_at_its_edge(name, kind, bound):
    variable, allowed = DOCS[name].variable, DOCS[name].allowed
    outside = {"ge": bound - 1, "gt": bound, "le": bound + 1, "lt": bound}[kind]
    with pytest.raises(ConfigurationError) as refused:
        Settings.from_env({variable: str(outside)})
    size = "small" if kind in ("ge", "gt") else "large"
    assert str(refused.value) == f"{variable}={str(outside)!r} is too {size}; allowed: {allowed}"
    if kind in ("ge", "le"):
        assert getattr(Settings.from_env({variable: str(bound)}), name) == bound


@pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [
        ("DATAFERRY_API_PORT", "eighty", "is not a whole number"),
        ("DATAFERRY_MAX_ATTEMPTS", "2.5", "is not a whole number"),
        ("DATAFERRY_SAMPLE_SCALE", "big", "is not a number"),
        ("DATAFERRY_QUERY_TIMEOUT_SECONDS", "inf", "is not a finite number"),
        ("DATAFERRY_POLL_INTERVAL_SECONDS", "nan", "is not a finite number"),
        ("DATAFERRY_REGION", "EU West", "does not have the expected form"),
        ("DATAFERRY_LOG_LEVEL", "LOUD", "is not one of the choices"),
        ("DATAFERRY_API_HOST", "local host", "does not have the expected form"),
        ("DATAFERRY_PUBLIC_DATA_URL", "data.example.com:8001", "does not have the expected form"),
        ("DATAFERRY_JWKS_URL", "file:///etc/passwd", "does not have the expected form"),
        ("DATAFERRY_JWKS_URL", "https://keys.example:0/jwks", "does not have the expected form"),
        ("DATAFERRY_PUBLIC_API_URL", "http://api.example:8o00", "does not have the expected"),
        ("DATAFERRY_PUBLIC_DATA_URL", "http://data.example:8001 x", "does not have the expected"),
        ("DATAFERRY_RESULTS_URL", "https://bucket.example/results", "does not have the expected"),
        ("DATAFERRY_CORS_ORIGINS", "https://app.example/notebooks", "does not have the expected"),
        ("DATAFERRY_S3_REGION", "eu west 1", "does not have the expected form"),
        (
            "DATAFERRY_DATASOURCE_ALLOWED_NETWORKS",
            "10.0.0.0/8,intranet",
            "is refused: 'intranet': not an IP address",
        ),
    ],
)
def test_a_malformed_value_is_refused_in_one_line_naming_the_variable(variable, value, problem):
    with pytest.raises(ConfigurationError) as refused:
        Settings.from_env({variable: value})
    message = str(refused.value)
    assert message.startswith(f"{variable}={value!r} {problem}")
    assert message.endswith(f"; allowed: {BY_VARIABLE[variable].allowed}")
    assert "\n" not in message


@pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [
        ("DATAFERRY_API_KEY_PEPPER", "hunter2-but-short", "is too short"),
        ("DATAFERRY_ENCRYPTION_KEY", "hunter2" * 7, "is too long"),
        ("DATAFERRY_DATABASE_URL", "postgres ql://meta:hunter2@db/meta", "does not have the"),
        ("DATAFERRY_REDIS_URL", "http://:hunter2@redis.internal:6379/0", "does not have the"),
        # What redis-py would refuse at start-up, in a traceback: a port that is no port, an
        # option it cannot read.
        ("DATAFERRY_REDIS_URL", "redis://:hunter2@redis.internal:abc/0", "does not have the"),
        ("DATAFERRY_REDIS_URL", "redis://:hunter2@redis.internal:65536", "does not have the"),
        (
            "DATAFERRY_REDIS_URL",
            "redis://:hunter2@redis.internal?db=x",
            "is refused: Invalid value for 'db'",
        ),
        ("DATAFERRY_REDIS_URL", "unix:///run/r.sock?db=hunter2", "is refused: Invalid value"),
        (
            "DATAFERRY_REDIS_URL",
            "rediss://u:hunter2@redis.internal:6380/0?max_connections=-1",
            'is refused: "max_connections" must be a positive integer',
        ),
    ],
)
def test_a_refused_secret_is_named_never_shown(variable, value, problem):
    with pytest.raises(ConfigurationError) as refused:
        Settings.from_env({variable: value})
    assert str(refused.value).startswith(f"{variable} (value hidden) {problem}")
    assert "hunter2" not in str(refused.value)


@pytest.mark.parametrize(
    "value",
    [
        "redis://redis.internal:6379/0",
        "rediss://:pw@redis.internal",
        "unix:///run/r.sock",
        "redis://:p%40w@[::1]:6379/1?socket_timeout=2.5",
        "unix:///run/r.sock?db=3",
        "redis://:p@ss@redis.internal:6379/0",  # an unencoded @ in the password, as urlsplit reads it
    ],
)
def test_a_redis_url_of_each_form_redis_py_reads_is_accepted(value):
    assert Settings.from_env({"DATAFERRY_REDIS_URL": value}).redis_url == value


def test_keyword_arguments_and_overrides_are_held_to_the_same_bounds():
    with pytest.raises(ConfigurationError, match="DATAFERRY_DATA_TOKEN_TTL_SECONDS=601 is too"):
        Settings(data_token_ttl_seconds=601)
    with pytest.raises(ConfigurationError, match="DATAFERRY_API_PORT=70000 is too large"):
        Settings().with_overrides(api_port=70000)
    with pytest.raises(ConfigurationError, match="no_such_setting"):
        Settings(no_such_setting=1)


@pytest.mark.parametrize(
    "command",
    [
        ["-m", "api_server", "serve"],
        ["-m", "data_server", "serve"],
        [str(ROOT / "deploy" / "launch.py"), "--demo"],
    ],
    ids=["api_server", "data_server", "launcher"],
)
def test_a_server_with_a_bad_setting_refuses_to_start_in_one_line(tmp_path, command):
    env = clean_environment({"DATAFERRY_QUERY_THREADS": "0", "DATAFERRY_API_KEY_PEPPER": "hunter2"})
    started = subprocess.run(
        [sys.executable, *command],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (started.returncode, started.stdout) == (2, "")
    assert started.stderr.splitlines() == [
        "error: DATAFERRY_API_KEY_PEPPER (value hidden) is too short; allowed: at least 32 "
        "characters; DATAFERRY_QUERY_THREADS='0' is too small; allowed: 1 to 256"
    ]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "command",
    [
        ["-m", "api_server", "serve"],
        ["-m", "data_server", "serve"],
        ["-m", "api_server", "create-organization", "--name", "x"],
    ],
    ids=["api_server", "data_server", "operator command"],
)
def test_an_unreachable_metadata_database_is_one_line_without_its_password(tmp_path, command):
    """Before, a traceback of forty lines; postgresql:// (no driver named) means psycopg."""
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    started = _started_on(f"postgresql://meta:hunter2@127.0.0.1:{port}/meta", command, tmp_path)
    assert (started.returncode, started.stdout) == (2, "")
    (line,) = started.stderr.splitlines()
    assert line.startswith("error: the metadata database (DATAFERRY_DATABASE_URL) cannot be used: ")
    assert f"port {port}" in line and "hunter2" not in line


def _started_on(
    database_url: str, command: list[str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    """``python <command>`` with its metadata database at ``database_url``, on free ports: a
    port taken (a region of `make run` meanwhile) is refused before the database is tried."""
    env = clean_environment(
        {
            "DATAFERRY_DATABASE_URL": database_url,
            "DATAFERRY_API_PORT": str(free_port()),
            "DATAFERRY_DATA_PORT": str(free_port()),
        }
    )
    return subprocess.run(
        [sys.executable, *command], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("case", ["a schema that does not exist", "a bad connect_timeout"])
@pytest.mark.parametrize(
    "command",
    [["-m", "api_server", "serve"], ["-m", "api_server", "create-organization", "--name", "x"]],
    ids=["api_server", "operator command"],
)
def test_a_database_url_the_server_refuses_is_one_line(tmp_path, command, case):
    """Found by the outside probe: a search_path naming no schema, or a connection option's
    value the driver refuses, ended in two tracebacks and exit status 1."""
    url = postgres_url_from_env("dataferry_no_such_schema")
    if url is None:
        pytest.skip(f"needs {POSTGRES_ENV} (a PostgreSQL server to refuse the URL)")
    if case == "a bad connect_timeout":
        url = postgres_url_from_env() + "&connect_timeout=abc"  # type: ignore[operator]
    started = _started_on(url, command, tmp_path)
    assert (started.returncode, started.stdout) == (2, ""), started.stderr
    assert "Traceback" not in started.stderr
    line = started.stderr.splitlines()[-1]  # after the migration's own log lines, if it started
    assert line.startswith("error: the metadata database (DATAFERRY_DATABASE_URL) cannot be used: ")
    said = "does not exist" if case == "a schema that does not exist" else "connect_timeout"
    assert said in line


def test_a_database_url_of_another_dialect_is_refused():
    with pytest.raises(
        ConfigurationError, match=r"DATAFERRY_DATABASE_URL \(value hidden\) does not"
    ):
        Settings.from_env({"DATAFERRY_DATABASE_URL": "mysql://meta:hunter2@db/meta"})


def test_a_connection_option_libpq_does_not_know_is_refused_in_one_line():
    """Before, the first connection raised it, in a traceback."""
    with pytest.raises(ConfigurationError) as refused:
        Settings.from_env({"DATAFERRY_DATABASE_URL": "postgresql://m:hunter2@db/meta?sslmod=x"})
    message = str(refused.value)
    assert 'invalid connection option "sslmod"' in message
    assert "\n" not in message and "hunter2" not in message
    kept = "postgresql://m@db/meta?sslmode=require&host=/run/postgresql,db.internal&port=5433"
    assert Settings.from_env({"DATAFERRY_DATABASE_URL": kept}).database_url == kept.replace(
        "postgresql://", "postgresql+psycopg://"
    )


def test_secret_never_shows_its_value():
    secret = Secret("hunter2")
    assert "hunter2" not in repr(secret) and "hunter2" not in str(secret)
    settings = Settings(
        api_key_pepper=Secret("q" * 40), database_url="postgresql+psycopg://meta:hunter2@db/meta"
    )
    assert "q" * 40 not in repr(settings) and "hunter2" not in repr(settings)


def test_generated_secrets_are_created_once_with_mode_0600(tmp_path):
    settings = Settings(state_dir=tmp_path)
    first = ServerSecrets.load(settings)
    second = ServerSecrets.load(settings)
    assert first.api_key_pepper == second.api_key_pepper
    for name in ("api_key_pepper", "encryption_key"):
        assert (tmp_path / "secrets" / name).stat().st_mode & 0o777 == 0o600
    assert second.decrypt(first.encrypt("x")) == "x"


def test_operator_supplied_secrets_win(tmp_path):
    from cryptography.fernet import Fernet

    key = Fernet.generate_key().decode()
    settings = Settings(
        state_dir=tmp_path, api_key_pepper=Secret("z" * 40), encryption_key=Secret(key)
    )
    secrets = ServerSecrets.load(settings)
    assert secrets.api_key_pepper == b"z" * 40
    assert not (tmp_path / "secrets").exists()


def test_a_key_of_the_right_length_that_is_no_fernet_key_fails_fast(tmp_path):
    settings = Settings(state_dir=tmp_path, encryption_key=Secret("!" * 43 + "="))
    with pytest.raises(ConfigurationError, match="DATAFERRY_ENCRYPTION_KEY"):
        ServerSecrets.load(settings)


@pytest.mark.parametrize(
    "value", ["abc", "1e999", "10.0.0.256", "10.0.0.5/33", ":::::", "10.0.0.5/24", "*, 10.0.0.1"]
)
def test_a_trusted_proxy_uvicorn_could_not_read_is_refused(value):
    """Found by the outside probe: the pattern checked characters only, and uvicorn keeps an
    entry it cannot read as a name no peer has: nobody was trusted, and the audit log kept the
    load balancer's address for every client."""
    with pytest.raises(ConfigurationError, match="DATAFERRY_TRUSTED_PROXIES"):
        Settings.from_env({"DATAFERRY_TRUSTED_PROXIES": value})


def test_trusted_proxies_uvicorn_reads_are_kept_as_it_reads_them():
    """Blanks and empty entries go: uvicorn took "*," for a host named "*", trusting nobody."""
    for value, kept in (
        ("10.0.0.5, 10.1.0.0/16", "10.0.0.5,10.1.0.0/16"),
        ("::1, fd00::/8,", "::1,fd00::/8"),
        ("*", "*"),
        (" * , ", "*"),
        ("", ""),
    ):
        assert Settings.from_env({"DATAFERRY_TRUSTED_PROXIES": value}).trusted_proxies == kept


@pytest.mark.parametrize("path", ["/abc", "/5x", "/-1", "/0/1"])
def test_a_redis_url_whose_path_is_no_database_number_is_refused(path):
    """Found by the outside probe: redis-py ignores such a path, and the rate limits were
    counted in database 0, beside whatever else counts there."""
    with pytest.raises(ConfigurationError, match="no database number"):
        Settings.from_env({"DATAFERRY_REDIS_URL": f"redis://127.0.0.1:6379{path}"})
    assert Settings.from_env({"DATAFERRY_REDIS_URL": "redis://127.0.0.1:6379/5"}).redis_url


@pytest.mark.parametrize("value", ["1_000", "٣", "1e3"])
def test_a_whole_number_setting_takes_ascii_digits_only(value):
    """As the operator commands read numbers: ``int`` took ``1_000`` (found by the outside
    probe: the command line refused it, the settings did not)."""
    with pytest.raises(ConfigurationError, match="DATAFERRY_RATE_LIMIT_PER_MINUTE"):
        Settings.from_env({"DATAFERRY_RATE_LIMIT_PER_MINUTE": value})
    assert (
        Settings.from_env({"DATAFERRY_RATE_LIMIT_PER_MINUTE": " 1000 "}).rate_limit_per_minute
        == 1000
    )


def test_an_override_derives_again_what_was_derived_from_what_it_changes():
    """The review: ``serve --port 9000`` kept the public URLs of the environment's port."""
    settings = Settings.from_env({})
    moved = settings.with_overrides(api_port=9000, data_port=9001)
    assert (moved.public_api_url, moved.public_data_url) == (
        "http://127.0.0.1:9000",
        "http://127.0.0.1:9001",
    )
    assert moved.database_url == settings.database_url
    given = Settings.from_env({"DATAFERRY_PUBLIC_API_URL": "https://api.example.com"})
    assert given.with_overrides(api_port=9000).public_api_url == "https://api.example.com"


def test_a_setting_in_seconds_takes_ascii_digits_only():
    """The probe of this stop's changes: ``DATAFERRY_LEASE_SECONDS=1_0`` started with 10 s."""
    for value in ("1_0", "٣", "1,5"):
        with pytest.raises(ConfigurationError, match="DATAFERRY_LEASE_SECONDS"):
            Settings.from_env({"DATAFERRY_LEASE_SECONDS": value})
    for value, seconds in (("10", 10.0), ("2.5", 2.5), ("1e2", 100.0)):
        assert Settings.from_env({"DATAFERRY_LEASE_SECONDS": value}).lease_seconds == seconds
