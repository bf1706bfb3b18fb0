"""What the upload tests (tests/api_server/uploads/) share: a files datasource to upload into, a
PUT with a key, an upload decided but not yet committed, the folder's bytes before and after,
small files of each kind, the error read.
"""

from __future__ import annotations

import io
import sqlite3
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import duckdb
import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from api_server.permissions import Permission
from api_server.principals import Principal
from api_server.rate_limits import Policy
from api_server.services import uploads
from tests.support.factories import Api, Org

ORDERS_CSV = b"order_id,amount\n1,9.5\n2,20.0\n"


# What a test decides lies above the metadata DB: once, on SQLite (the quota's SQL sum runs on both).
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def files_datasource(api: Api, org: Org, folder: str = "shop") -> tuple[str, Path]:
    path = api.area(org) / folder
    path.mkdir()
    (path / "orders.csv").write_bytes(ORDERS_CSV)
    ds = api.create_datasource(org.key, name=folder, database_type="files", database=folder)
    return ds["id"], path


def put(
    api: Api, key: str, url: str, body: object, content_type: str = "text/csv"
) -> httpx.Response:
    headers = {"Authorization": f"Api {key}", "Content-Type": content_type}
    return api.client.put(url, content=body, headers=headers)  # type: ignore[arg-type]


@contextmanager
def decided_upload(
    api: Api, org: Org, datasource_id: str, body: bytes, scope: Sequence[str] | None = None
) -> Iterator[uploads.Upload]:
    """An upload of ``body`` as ``late.csv`` by a Manage Datasources caller (restricted to
    ``scope`` if given), decided and written but not committed: what happens before the commit
    (``uploads.commit_upload``) is the test's. Its temporary file goes afterwards. The caller's
    key is a new one of the organisation (``Upload.target.writer.api_key_id``)."""
    permissions = [Permission.MANAGE_DATASOURCES]
    secret = api.create_key(org, permissions, None if scope is None else list(scope))
    principal = Principal(
        organization_id=org.id, api_key_id=api.get("/api_key", secret).json()["data"]["id"],
        permissions=frozenset({Permission.MANAGE_DATASOURCES}),
        datasource_ids=None if scope is None else frozenset(scope),
        rate_policy=Policy(per_minute=1, per_hour=1),
    )  # fmt: skip
    state = api.app.state
    with state.sessions() as session:
        target = uploads.prepare_file_upload(
            session, principal, state.settings, datasource_id, "late.csv", "text/csv", len(body)
        )
    upload = uploads.Upload(target)
    try:
        upload.admit(len(body))
        upload.write(body)
        yield upload
    finally:
        upload.close()


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of the folder, temporary ones included, with its bytes."""
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def duckdb_bytes(tmp_path: Path, sql: str) -> bytes:
    path = tmp_path / f"{uuid.uuid4().hex}.duckdb"
    with duckdb.connect(str(path)) as connection:
        connection.execute(sql)
    return path.read_bytes()


def sqlite_bytes(tmp_path: Path, *statements: str) -> bytes:
    path = tmp_path / f"{uuid.uuid4().hex}.sqlite"
    connection = sqlite3.connect(path)
    for statement in statements:
        connection.execute(statement)
    connection.commit()
    connection.close()
    return path.read_bytes()


def error_of(answer: httpx.Response, status: int) -> dict:
    assert answer.status_code == status, answer.text
    error = answer.json()["errors"][0]
    assert error["status"] == str(status)
    return error
