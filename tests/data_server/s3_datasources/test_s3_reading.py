"""Reading an ``s3`` datasource in the engine: objects directly under the prefix become views of
each format, a public bucket is read unsigned; signed reads over TLS work with the right key,
and each way of failing has its own code and no secret.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from data_server import engine
from data_server.engine import QueryFailed
from tests.support.s3_buckets import LIMITS, new_bucket, query_table, s3_spec

# ---------------------------------------------------------------------------- reading


def test_objects_directly_under_the_prefix_become_views(plain, tmp_path):
    schema = engine.schema_of(s3_spec(plain), LIMITS, str(tmp_path))
    tables = {t["name"]: t for s in schema["schemas"] for t in s["tables"]}
    assert sorted(tables) == ["clicks", "events", "orders", "people"]
    columns = [(c["name"], c["type"]) for c in tables["orders"]["columns"]]
    assert columns == [("id", "BIGINT"), ("amount", "DOUBLE"), ("city", "VARCHAR")]


@pytest.mark.parametrize(
    ("sql", "rows"),
    [
        (
            "SELECT id, amount, city FROM orders ORDER BY id",
            [(1, 9.5, "Bern"), (2, 20.0, "Oslo"), (3, 7.25, "Rome")],
        ),
        ("SELECT name FROM people ORDER BY id", [("Ada",), ("Grace",)]),
        ("SELECT kind FROM events ORDER BY n", [("open",), ("close",)]),
        ("SELECT sum(x) FROM clicks", [(6,)]),
    ],
)
def test_each_format_answers_queries(plain, tmp_path, sql, rows):
    table = query_table(s3_spec(plain), sql, tmp_path)
    assert [tuple(row.values()) for row in table.to_pylist()] == rows


def test_a_public_bucket_is_read_without_credentials(plain, tmp_path):
    """No key: requests go unsigned (an object moto serves to anonymous readers only when public)."""
    public = replace(plain, name=new_bucket(plain.endpoint_url, plain.key_id, plain.secret).name)
    client = public.client()
    client.put_bucket_acl(Bucket=public.name, ACL="public-read")  # type: ignore[attr-defined]
    client.put_object(Bucket=public.name, Key="open/n.csv", Body=b"n\n7\n", ACL="public-read")  # type: ignore[attr-defined]
    spec = s3_spec(public, f"{public.name}/open/", key_id=None, secret=None)
    assert query_table(spec, "SELECT n FROM n", tmp_path).to_pylist() == [{"n": 7}]


def test_a_bucket_without_prefix_shows_its_top_level_objects(plain, tmp_path):
    schema = engine.schema_of(s3_spec(plain, f"s3://{plain.name}"), LIMITS, str(tmp_path))
    assert [t["name"] for s in schema["schemas"] for t in s["tables"]] == ["top"]


# ---------------------------------------------------------------------------- failures


def test_signed_reads_over_tls_work_with_the_right_key(secured, tmp_path):
    table = query_table(s3_spec(secured), "SELECT name FROM people", tmp_path)
    assert table.to_pylist() == [{"name": "Ada"}]


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"secret": "wrong-secret-for-the-test-4d1c"}, "authentication_failed"),
        ({"key_id": "AKIADOESNOTEXIST0000"}, "authentication_failed"),
        ({"url": "s3://no-such-bucket-e/data/"}, "database_not_found"),
        ({"verify_ssl": True}, "tls_refused"),  # self-signed
        ({"connect_port": 1, "endpoint": "localhost:1"}, "host_unreachable"),
    ],
)
def test_connection_failures_have_specific_codes_and_no_secrets(secured, tmp_path, overrides, code):
    spec = s3_spec(secured, **overrides)
    with pytest.raises(QueryFailed) as failed:
        engine.check_connection(spec, LIMITS, str(tmp_path))
    assert failed.value.code == code, failed.value
    assert secured.secret not in failed.value.message
    assert "wrong-secret-for-the-test" not in failed.value.message


def test_plain_http_to_a_tls_endpoint_fails_cleanly(secured, tmp_path):
    spec = s3_spec(secured, use_ssl=False)
    with pytest.raises(QueryFailed) as failed:
        engine.check_connection(spec, LIMITS, str(tmp_path))
    assert failed.value.code == "datasource_unavailable"
