"""What the ``s3`` datasource tests (tests/data_server/s3_datasources/) share: a bucket of a moto
server with the credentials that may read it, the spec a worker would build for it, and a query
run through the engine.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import pyarrow as pa

from data_server import engine
from data_server.engine import DatasourceSpec, QueryJob
from data_server.object_storage import ObjectStorageSpec
from shared.object_storage import endpoint_for, parse_location
from tests.support.factories import SANDBOX_LIMITS

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


def new_bucket(endpoint_url: str, key_id: str, secret: str, ca_file: Path | None = None) -> Bucket:
    bucket = Bucket(endpoint_url, f"e-s3-{uuid.uuid4().hex[:10]}", key_id, secret, ca_file)
    bucket.client().create_bucket(Bucket=bucket.name)  # type: ignore[attr-defined]
    return bucket


def s3_spec(bucket: Bucket, location: str = "", **overrides: object) -> DatasourceSpec:
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


def query_table(spec: DatasourceSpec, sql: str, tmp_path: Path) -> pa.Table:
    result = tmp_path / "out.arrow"
    engine.run_query(QueryJob(spec, sql, None, LIMITS, str(result), str(tmp_path / "scratch")))
    return pa.ipc.open_file(str(result)).read_all()
