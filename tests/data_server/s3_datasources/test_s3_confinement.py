"""What the locked instance of an ``s3`` datasource refuses even without the SQL check: reads
outside the prefix, globs and query parameters, connections anywhere but the checked address,
and every way of asking for the credentials.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import duckdb
import pytest

from data_server import engine
from data_server.engine import QueryFailed, Sandbox
from tests.support.s3_buckets import LIMITS, Bucket, query_table, s3_spec

# ---------------------------------------------------------------------------- confinement


@pytest.fixture
def locked(plain, tmp_path) -> Iterator[Sandbox]:
    """A sandbox of the data/ prefix: statements run on it directly, bypassing the SQL check."""
    sandbox = Sandbox(s3_spec(plain), LIMITS, str(tmp_path / "scratch"))
    try:
        yield sandbox
    finally:
        sandbox.close()


@pytest.mark.parametrize(
    "url",
    [
        "s3://{other}/data/secret.csv",
        "s3://{bucket}/private/secret.csv",
        "s3://{bucket}/data2/secret.csv",
        "{endpoint}/{bucket}/private/secret.csv",
        "http://169.254.169.254/latest/meta-data/",
        "/etc/passwd",
    ],
)
def test_the_locked_instance_reads_nothing_outside_the_prefix(plain, locked, url):
    other = next(b for b in _buckets(plain) if b != plain.name)
    target = url.format(other=other, bucket=plain.name, endpoint=plain.endpoint_url)
    with pytest.raises(duckdb.Error) as refused:
        locked.connection.execute("SELECT * FROM read_csv($1)", [target]).fetchall()
    assert isinstance(refused.value, duckdb.PermissionException), refused.value


def _buckets(bucket: Bucket) -> list[str]:
    listing = bucket.client().list_buckets()  # type: ignore[attr-defined]
    return [b["Name"] for b in listing["Buckets"] if b["Name"].startswith("e-s3-")]


def test_urls_are_literal_keys_without_globs_or_query_parameters(plain, locked):
    """``?s3_…=`` parameters could point httpfs elsewhere; globs could widen a read."""
    read = locked.connection.execute
    rows = read("SELECT name FROM read_csv($1)", [f"s3://{plain.name}/data/people.csv?s3_region=eu-west-1"]).fetchall()  # fmt: skip
    assert rows == [("literal",)]
    with pytest.raises(duckdb.HTTPException, match="404"):
        read("SELECT * FROM read_csv($1)", [f"s3://{plain.name}/data/*.csv"]).fetchall()


def test_the_connection_goes_to_the_checked_address_not_the_name(plain, tmp_path):
    """The endpoint's name does not even resolve: only the pinned address is used. (Dotless,
    or moto would take its first label for a bucket name.)"""
    name = "dataferry-unresolvable-endpoint"
    with pytest.raises(OSError):
        socket.getaddrinfo(name, 80)
    port = urlsplit(plain.endpoint_url).port
    spec = s3_spec(plain, endpoint=f"{name}:{port}", connect_host=name)
    assert query_table(spec, "SELECT count(*) AS n FROM people", tmp_path).to_pylist() == [{"n": 2}]


def test_a_request_naming_another_host_never_leaves_the_pinned_address(plain, tmp_path):
    spec = s3_spec(plain, connect_host="somewhere-else.example")
    with pytest.raises(QueryFailed) as failed:
        engine.check_connection(spec, LIMITS, str(tmp_path))
    assert failed.value.code == "destination_not_allowed"


# ---------------------------------------------------------------------------- credentials


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM duckdb_secrets()",
        "SELECT * FROM which_secret('s3://x/data/a.csv', 's3')",
        "SELECT * FROM duckdb_settings()",
        "SELECT current_setting('s3_secret_access_key')",
        "SELECT current_setting('s3_access_key_id')",
        "SELECT setting FROM pg_catalog.pg_settings WHERE name = 's3_secret_access_key'",
        "SELECT getvariable('dataferry_files')",
    ],
)
def test_tenant_sql_cannot_ask_for_credentials(plain, tmp_path, sql):
    with pytest.raises(QueryFailed) as refused:
        query_table(s3_spec(plain), sql, tmp_path)
    assert refused.value.code in ("forbidden_function", "forbidden_catalog")


def test_the_instance_shows_credentials_redacted_even_without_the_check(
    plain, tmp_path, monkeypatch
):
    """The secret is redacted, unredacting is refused, and the server's own AWS_* credentials
    (the result store's) never become httpfs defaults in the child."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "SERVER-KEY-ID-7f3a")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "server-secret-7f3a-never-shown")
    spec = s3_spec(plain, secret="tenant-secret-9c1e-never-shown")
    sandbox = Sandbox(spec, LIMITS, str(tmp_path / "scratch"))
    try:
        read = sandbox.connection.execute
        shown = repr(read("SELECT * FROM duckdb_secrets()").fetchall())
        shown += repr(read("SELECT name, value FROM duckdb_settings()").fetchall())
        with pytest.raises(duckdb.Error, match="unredacted secrets is disabled"):
            read("SELECT * FROM duckdb_secrets(redact = false)").fetchall()
    finally:
        sandbox.close()
    assert "redacted" in shown
    for value in ("tenant-secret-9c1e", "SERVER-KEY-ID-7f3a", "server-secret-7f3a"):
        assert value not in shown
