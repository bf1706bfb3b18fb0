"""Buckets and servers of the ``s3`` datasource tests, against moto on 127.0.0.1: the suite's plain
one (no signature checks) and one that checks signatures and speaks HTTPS with a self-signed
certificate; both servers in process for the API and worker end to end. Package-scoped: the
modules share them as the tests of one module did.
"""

from __future__ import annotations

import datetime
import io
import ipaddress
import json
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.testclient import TestClient

from data_server.app import create_app as create_data_app
from shared.settings import Settings
from tests.support.factories import Api
from tests.support.log_watch import remember
from tests.support.object_store import CREDENTIALS, ObjectStore, running_object_store
from tests.support.processes import LOOPBACK_NETWORKS
from tests.support.s3_buckets import ORDERS, Bucket, new_bucket

QUERY_MEMORY_LIMIT_MB = 128


def _parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


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


@pytest.fixture(scope="package")
def plain(object_store: ObjectStore) -> Bucket:
    bucket = new_bucket(
        object_store.endpoint_url,
        CREDENTIALS["AWS_ACCESS_KEY_ID"],
        CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )
    _fill(bucket)
    other = replace(bucket, name=new_bucket(bucket.endpoint_url, bucket.key_id, bucket.secret).name)
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


@pytest.fixture(scope="package")
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
        bucket = new_bucket(
            store.endpoint_url, key["AccessKeyId"], key["SecretAccessKey"], certificate[0]
        )
        bucket.put("data/people.csv", b"id,name\n1,Ada\n")
        yield bucket


@pytest.fixture(scope="package")
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
        # The sandbox's memory watchdog stops a hostile endpoint's endless body at a cap derived
        # from this (test_s3_over_http): small, so that the test is quick.
        query_memory_limit_mb=QUERY_MEMORY_LIMIT_MB,
    )
    with (
        Api.start(settings) as api,
        TestClient(
            create_data_app(settings, run_workers=True), raise_server_exceptions=False
        ) as data,
    ):
        yield api, data
