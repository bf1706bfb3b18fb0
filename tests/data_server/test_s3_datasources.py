"""``s3`` datasources: objects under a bucket prefix, read through httpfs in the sandbox.

Against moto on 127.0.0.1: the suite's plain one (no signature checks) and one of this module
that checks signatures and speaks HTTPS with a self-signed certificate. The engine is exercised
in process (what the locked instance refuses even without the SQL check); the API and worker
end to end.
"""

from __future__ import annotations

import datetime
import io
import ipaddress
import json
import shutil
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import duckdb
import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.testclient import TestClient

from data_server import engine
from data_server.app import create_app as create_data_app
from data_server.engine import DatasourceSpec, QueryFailed, QueryJob, Sandbox
from data_server.object_storage import ObjectStorageSpec
from data_server.worker import Worker
from shared import lifecycle
from shared.object_storage import Endpoint, endpoint_for, parse_location
from shared.settings import Settings
from tests.support.factories import SANDBOX_LIMITS, Api, resource
from tests.support.log_watch import remember
from tests.support.object_store import CREDENTIALS, ObjectStore, running_object_store
from tests.support.processes import LOOPBACK_NETWORKS

LIMITS = SANDBOX_LIMITS
ORDERS = pa.table({"id": [1, 2, 3], "amount": [9.5, 20.0, 7.25], "city": ["Bern", "Oslo", "Rome"]})


@dataclass(frozen=True)
class Bucket:
    """A bucket of one moto server, with the credentials that may read it."""

    endpoint_url: str
    name: str
    key_id: str
    secret: str
    ca_file: Path | None = None

    def client(self) -> object:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.key_id,
            aws_secret_access_key=self.secret,
            region_name="us-east-1",
            verify=str(self.ca_file) if self.ca_file else None,
        )

    def put(self, key: str, body: bytes) -> None:
        self.client().put_object(Bucket=self.name, Key=key, Body=body)  # type: ignore[attr-defined]


def _parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def _new_bucket(endpoint_url: str, key_id: str, secret: str, ca_file: Path | None = None) -> Bucket:
    bucket = Bucket(endpoint_url, f"e-s3-{uuid.uuid4().hex[:10]}", key_id, secret, ca_file)
    bucket.client().create_bucket(Bucket=bucket.name)  # type: ignore[attr-defined]
    return bucket


def _fill(bucket: Bucket) -> None:
    """Four readable objects under data/, and what must stay out of reach beside them."""
    bucket.put("data/orders.parquet", _parquet(ORDERS))
    bucket.put("data/people.csv", b"id,name\n1,Ada\n2,Grace\n")
    bucket.put("data/events.json", b'[{"kind": "open", "n": 1}, {"kind": "close", "n": 2}]')
    bucket.put("data/clicks.ndjson", b'{"x": 1}\n{"x": 2}\n{"x": 3}\n')
    bucket.put("data/notes.txt", b"not a table")
    bucket.put("top.csv", b"n\n1\n")
    bucket.put("data/nested/deep.csv", b"id\n1\n")
    bucket.put("data2/secret.csv", b"secret\nsibling-prefix\n")
    bucket.put("private/secret.csv", b"secret\nother-prefix\n")
    # Read literally only when the URL's query parameters are switched off.
    bucket.put("data/people.csv?s3_region=eu-west-1", b"id,name\n99,literal\n")


@pytest.fixture(scope="module")
def plain(object_store: ObjectStore) -> Bucket:
    bucket = _new_bucket(
        object_store.endpoint_url,
        CREDENTIALS["AWS_ACCESS_KEY_ID"],
        CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )
    _fill(bucket)
    other = replace(
        bucket, name=_new_bucket(bucket.endpoint_url, bucket.key_id, bucket.secret).name
    )
    other.put("data/secret.csv", b"secret\nother-bucket\n")
    return bucket


def _self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bucket]:
    """moto over HTTPS (self-signed) that checks signatures against an IAM user's key."""
    certificate = _self_signed(tmp_path_factory.mktemp("moto-tls"))
    with running_object_store({"INITIAL_NO_AUTH_ACTION_COUNT": "3"}, certificate) as store:
        iam = boto3.client(
            "iam",
            endpoint_url=store.endpoint_url,
            aws_access_key_id="bootstrap",
            aws_secret_access_key="bootstrap",
            region_name="us-east-1",
            verify=str(certificate[0]),
        )
        iam.create_user(UserName="reader")
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}  # fmt: skip
        iam.put_user_policy(UserName="reader", PolicyName="all", PolicyDocument=json.dumps(policy))
        remember(key["SecretAccessKey"])
        bucket = _new_bucket(
            store.endpoint_url, key["AccessKeyId"], key["SecretAccessKey"], certificate[0]
        )
        bucket.put("data/people.csv", b"id,name\n1,Ada\n")
        yield bucket


def _spec(bucket: Bucket, location: str = "", **overrides: object) -> DatasourceSpec:
    """The spec a worker would build, with the connection pinned to 127.0.0.1."""
    url = urlsplit(bucket.endpoint_url)
    parsed = parse_location(location or f"{bucket.name}/data/")
    use_ssl = url.scheme == "https"
    storage = ObjectStorageSpec.of(
        parsed,
        endpoint_for(parsed, "localhost", url.port, "us-east-1", use_ssl),
        region="us-east-1",
        verify_ssl=False,
        address="127.0.0.1",
        connect_timeout_seconds=5,
        key_id=bucket.key_id,
        secret=bucket.secret,
    )
    return DatasourceSpec("s3", parsed.url, object_storage=replace(storage, **overrides))


def _query(spec: DatasourceSpec, sql: str, tmp_path: Path) -> pa.Table:
    result = tmp_path / "out.arrow"
    engine.run_query(QueryJob(spec, sql, None, LIMITS, str(result), str(tmp_path / "scratch")))
    return pa.ipc.open_file(str(result)).read_all()


# ---------------------------------------------------------------------------- reading


def test_objects_directly_under_the_prefix_become_views(plain, tmp_path):
    schema = engine.schema_of(_spec(plain), LIMITS, str(tmp_path))
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
    table = _query(_spec(plain), sql, tmp_path)
    assert [tuple(row.values()) for row in table.to_pylist()] == rows


def test_a_public_bucket_is_read_without_credentials(plain, tmp_path):
    """No key: requests go unsigned (an object moto serves to anonymous readers only when public)."""
    public = replace(plain, name=_new_bucket(plain.endpoint_url, plain.key_id, plain.secret).name)
    client = public.client()
    client.put_bucket_acl(Bucket=public.name, ACL="public-read")  # type: ignore[attr-defined]
    client.put_object(Bucket=public.name, Key="open/n.csv", Body=b"n\n7\n", ACL="public-read")  # type: ignore[attr-defined]
    spec = _spec(public, f"{public.name}/open/", key_id=None, secret=None)
    assert _query(spec, "SELECT n FROM n", tmp_path).to_pylist() == [{"n": 7}]


def test_a_bucket_without_prefix_shows_its_top_level_objects(plain, tmp_path):
    schema = engine.schema_of(_spec(plain, f"s3://{plain.name}"), LIMITS, str(tmp_path))
    assert [t["name"] for s in schema["schemas"] for t in s["tables"]] == ["top"]


# ---------------------------------------------------------------------------- confinement


@pytest.fixture
def locked(plain, tmp_path) -> Iterator[Sandbox]:
    """A sandbox of the data/ prefix: statements run on it directly, bypassing the SQL check."""
    sandbox = Sandbox(_spec(plain), LIMITS, str(tmp_path / "scratch"))
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
    spec = _spec(plain, endpoint=f"{name}:{port}", connect_host=name)
    assert _query(spec, "SELECT count(*) AS n FROM people", tmp_path).to_pylist() == [{"n": 2}]


def test_a_request_naming_another_host_never_leaves_the_pinned_address(plain, tmp_path):
    spec = _spec(plain, connect_host="somewhere-else.example")
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
        _query(_spec(plain), sql, tmp_path)
    assert refused.value.code in ("forbidden_function", "forbidden_catalog")


def test_the_instance_shows_credentials_redacted_even_without_the_check(
    plain, tmp_path, monkeypatch
):
    """The secret is redacted, unredacting is refused, and the server's own AWS_* credentials
    (the result store's) never become httpfs defaults in the child."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "SERVER-KEY-ID-7f3a")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "server-secret-7f3a-never-shown")
    spec = _spec(plain, secret="tenant-secret-9c1e-never-shown")
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


# ---------------------------------------------------------------------------- failures


def test_signed_reads_over_tls_work_with_the_right_key(secured, tmp_path):
    table = _query(_spec(secured), "SELECT name FROM people", tmp_path)
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
    spec = _spec(secured, **overrides)
    with pytest.raises(QueryFailed) as failed:
        engine.check_connection(spec, LIMITS, str(tmp_path))
    assert failed.value.code == code, failed.value
    assert secured.secret not in failed.value.message
    assert "wrong-secret-for-the-test" not in failed.value.message


def test_plain_http_to_a_tls_endpoint_fails_cleanly(secured, tmp_path):
    spec = _spec(secured, use_ssl=False)
    with pytest.raises(QueryFailed) as failed:
        engine.check_connection(spec, LIMITS, str(tmp_path))
    assert failed.value.code == "datasource_unavailable"


# ---------------------------------------------------------------------------- where requests go


def test_endpoints_aws_virtual_hosted_or_path_style():
    plain, dotted = parse_location("shop-data/x"), parse_location("shop.data/x")
    assert endpoint_for(plain, None, None, "eu-west-1", True) == Endpoint(
        "s3.eu-west-1.amazonaws.com", "vhost", True, "shop-data.s3.eu-west-1.amazonaws.com", 443
    )
    assert endpoint_for(dotted, None, None, "eu-west-1", True).url_style == "path"
    assert endpoint_for(plain, "minio.internal", None, "us-east-1", False) == Endpoint(
        "minio.internal", "path", False, "minio.internal", 80
    )
    assert endpoint_for(plain, "fd00::5", 9000, "garage", True).endpoint == "[fd00::5]:9000"


@pytest.mark.parametrize(
    "value",
    ["", "s3://", "Bucket/x", "b/x", "bucket..x/y", "10.0.0.1/x", "gs://bucket/x",
     "bucket/a/../b", "bucket/./a", "bucket//a", "bucket/a?s3_endpoint=evil", "bucket/*",
     "bucket/a%2F..", "bucket/a#b", "bucket/a\\b", "bucket/a\nb"],
)  # fmt: skip
def test_locations_that_could_widen_a_read_are_refused(value):
    with pytest.raises(ValueError):
        parse_location(value)


def test_locations_are_stored_canonical():
    assert parse_location("bucket").url == "s3://bucket/"
    assert parse_location("s3://bucket/a/b").url == "s3://bucket/a/b/"
    assert parse_location("bucket/a b/Ünïcode/").url == "s3://bucket/a b/Ünïcode/"


def test_the_worker_checks_the_endpoint_again_before_connecting(servers):
    """What the API accepted may be refused at run time (the policy or the DNS answer changed):
    the worker's own check decides, before any child connects."""
    api = servers[0]
    state = api.app.state
    claim = lifecycle.Claim(
        execution_id="e", attempt=1, organization_id="o", execution_type="connection_test",
        sql="", bound_parameters=[], datasource_id="d", database_type="s3",
        database="s3://bucket/data/", data_time_zone="UTC", host="127.0.0.1", port=9000,
        require_ssl=False,
    )  # fmt: skip
    for settings, host in [
        (api.settings.with_overrides(datasource_allowed_networks=""), "127.0.0.1"),
        (api.settings, "169.254.169.254"),
    ]:
        worker = Worker(settings, state.sessions, state.result_store, pool=None)  # type: ignore[arg-type]
        with pytest.raises(QueryFailed) as refused:
            worker._datasource_spec(replace(claim, host=host))
        assert refused.value.code == "destination_not_allowed"


# ---------------------------------------------------------------------------- over HTTP


@dataclass
class Service:
    """Both servers in process (the data server running its workers and sandbox children)."""

    api: Api
    data: TestClient
    key: str

    def create(self, **attributes: object) -> httpx.Response:
        remember(attributes.get("password"))
        document = resource("datasources", name="bucket", **attributes)
        return self.api.post("/datasources", self.key, document)

    def datasource(self, bucket: Bucket, prefix: str, **overrides: object) -> str:
        url = urlsplit(bucket.endpoint_url)
        attributes = {
            "database_type": "s3",
            "database": f"s3://{bucket.name}/{prefix}",
            "host": "127.0.0.1",
            "port": url.port,
            "username": bucket.key_id,
            "password": bucket.secret,
            "require_ssl": url.scheme == "https",
            **overrides,
        }
        response = self.create(**attributes)
        assert response.status_code == 201, response.text
        return response.json()["data"]["id"]

    def action(self, datasource_id: str, action: str) -> dict:
        response = self.api.post(f"/datasources/{datasource_id}/{action}", self.key, b"")
        assert response.status_code == 200, response.text
        return response.json()

    def wait(self, execution_id: str) -> dict:
        for _ in range(60):
            response = self.api.get(f"/executions/{execution_id}?wait=5", self.key)
            attributes = response.json()["data"]["attributes"]
            if attributes["execution_status"] in ("completed", "failed", "cancelled"):
                return attributes
        raise AssertionError(f"execution {execution_id} did not finish")

    def run(self, datasource_id: str, sql: str) -> dict:
        response = self.api.client.post(
            f"/datasources/{datasource_id}/executions",
            json={"sql_query": sql},
            headers={"Authorization": f"Api {self.key}"},
        )
        assert response.status_code == 200, response.text
        return self.wait(response.json()["data"]["id"])

    def fetch(self, grant: dict, **params: str) -> bytes:
        remember(grant["data_access_token"])
        response = self.data.get(
            f"/data/{grant['data_key']}",
            params=params,
            headers={"Authorization": f"Data {grant['data_access_token']}"},
        )
        assert response.status_code == 200, response.text
        return response.content

    def rows(self, datasource_id: str, sql: str) -> list[dict]:
        done = self.run(datasource_id, sql)
        assert done["execution_status"] == "completed", done
        grant = self.api.get(f"/executions/{done['execution_id']}/data", self.key).json()
        return json.loads(self.fetch(grant, format="records"))

    def schema(self, datasource_id: str) -> bytes:
        done = self.wait(self.action(datasource_id, "refresh")["execution_id"])
        assert done["execution_status"] == "completed", done
        grant = self.api.get(f"/datasources/{datasource_id}/schema", self.key).json()
        return self.fetch(grant)

    def failed(self, datasource_id: str, sql: str) -> dict:
        done = self.run(datasource_id, sql)
        assert done["execution_status"] == "failed", done
        return done


@pytest.fixture(scope="module")
def servers(tmp_path_factory, sqlite_template) -> Iterator[tuple[Api, TestClient]]:
    root = tmp_path_factory.mktemp("s3-servers")
    shutil.copyfile(sqlite_template, root / "metadata.db")
    (root / "state" / "data").mkdir(parents=True)
    settings = Settings(
        state_dir=root / "state",
        database_url=f"sqlite:///{root / 'metadata.db'}",
        sample_scale=0.001,
        datasource_allowed_networks=LOOPBACK_NETWORKS,
        worker_processes=1,
        poll_interval_seconds=0.05,
        connect_timeout_seconds=3,
    )
    with (
        Api.start(settings) as api,
        TestClient(
            create_data_app(settings, run_workers=True), raise_server_exceptions=False
        ) as data,
    ):
        yield api, data


@pytest.fixture(scope="module")
def service(servers) -> Service:
    api, data = servers
    return Service(api, data, api.create_org("S3").key)


def test_created_over_http_refreshed_and_queried(plain, service):
    datasource = service.datasource(plain, "data/", s3_region="us-east-1")
    assert service.action(datasource, "test_connection") == {"status": "ok", "error_message": None}
    schema = json.loads(service.schema(datasource))
    tables = sorted(t["name"] for s in schema["schemas"] for t in s["tables"])
    assert tables == ["clicks", "events", "orders", "people"]
    rows = service.rows(datasource, "SELECT city FROM orders WHERE amount > 8 ORDER BY id")
    assert rows == [{"city": "Bern"}, {"city": "Oslo"}]
    shown = service.api.get(f"/datasources/{datasource}", service.key).json()["data"]
    assert shown["attributes"]["database"] == f"s3://{plain.name}/data/"
    assert "password" not in shown["attributes"]


def test_a_wrong_secret_is_reported_as_an_authentication_failure(secured, service):
    wrong = "wrong-secret-over-http-5b2e"
    datasource = service.datasource(secured, "data/", password=wrong, verify_ssl=False)
    outcome = service.action(datasource, "test_connection")
    assert outcome["status"] == "error"
    assert outcome["error_message"].startswith("The object store refused the access key id")
    assert "HTTP 403" in outcome["error_message"] and wrong not in outcome["error_message"]
    failed = service.failed(datasource, "SELECT * FROM people")
    assert failed["error_code"] == "authentication_failed"
    assert wrong not in failed["error_message"]


def test_other_prefixes_and_datasources_stay_out_of_reach(plain, service, servers):
    other = Service(servers[0], servers[1], servers[0].create_org("Other").key)
    other.datasource(plain, "private/")  # its view "secret" is no view of ours
    datasource = service.datasource(plain, "data/")
    for sql, code in [
        ("SELECT * FROM secret", "execution_error"),
        (f"SELECT * FROM read_csv('s3://{plain.name}/private/secret.csv')", "forbidden_function"),
        (f"SELECT * FROM 's3://{plain.name}/private/secret.csv'", "forbidden_operation"),
    ]:
        failed = service.failed(datasource, sql)
        assert failed["error_code"] == code, (sql, failed)


def test_credentials_appear_in_no_result_schema_or_error(plain, service):
    """(And in no log line: tests/contract/test_logs_hold_no_secrets.py greps for them.)"""
    secret, key_id = "s3-secret-that-must-stay-hidden-81ac", "S3KEYIDTHATSTAYSHIDDEN"
    remember(key_id)
    datasource = service.datasource(plain, "data/", username=key_id, password=secret)
    answers = [service.schema(datasource)]  # moto takes any key: the refresh succeeds
    answers.append(json.dumps(service.rows(datasource, "SELECT * FROM duckdb_views()")).encode())
    failed = service.failed(datasource, "SELECT * FROM duckdb_secrets()")
    answers.append(json.dumps(failed).encode())
    for answer in answers:
        assert secret.encode() not in answer and key_id.encode() not in answer


@pytest.mark.parametrize("host", ["169.254.169.254", "[::ffff:169.254.169.254]", "10.0.0.8"])
def test_endpoints_in_denied_networks_are_refused(service, host):
    response = service.create(database_type="s3", database="bucket-x/data", host=host)
    assert response.status_code == 422, response.text
    error = response.json()["errors"][0]
    assert error["code"] == "destination_not_allowed"
    assert error["source"] == {"pointer": "/data/attributes/host"}


@pytest.mark.parametrize(
    ("attributes", "pointer", "code"),
    [
        ({"database": "bucket-x/a/../b"}, "database", "invalid_location"),
        ({"database": "bucket-x/a?s3_endpoint=evil.example"}, "database", "invalid_location"),
        ({"database": "s3://Not_A_Bucket/a"}, "database", "invalid_location"),
        ({"database": "bucket-x", "username": "AKIAONLYTHEID"}, "password", "missing_attribute"),
        ({"database": "bucket-x", "port": 9000}, "port", "invalid_attribute"),
        ({"database": "bucket-x", "s3_region": "eu west"}, "s3_region", "invalid_attribute"),
        (
            {"database": "bucket-x", "ssh_tunnel_host": "jump"},
            "ssh_tunnel_host",
            "invalid_attribute",
        ),
        ({}, "database", "missing_attribute"),
    ],
)
def test_bad_attributes_are_refused_with_a_pointer(service, attributes, pointer, code):
    response = service.create(database_type="s3", **attributes)
    assert response.status_code == 422, response.text
    error = response.json()["errors"][0]
    assert (error["code"], error["source"]) == (code, {"pointer": f"/data/attributes/{pointer}"})


def test_s3_region_belongs_to_s3_datasources_only(service):
    response = service.create(
        database_type="postgres", host="127.0.0.1", database="shop", username="reader",
        s3_region="eu-west-1",
    )  # fmt: skip
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["source"] == {"pointer": "/data/attributes/s3_region"}
