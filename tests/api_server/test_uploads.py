"""Uploads: a files datasource's files and a duckdb/sqlite datasource's database file, streamed to
disk, checked to parse, committed by one rename, counted against the organisation's storage quota.

In process (both metadata DBs) for the refusals; against real servers for queries on uploaded
files, a 200 MB upload's memory, concurrent uploads of one name, a client hanging up mid-body and
the quota on stored results.
"""

from __future__ import annotations

import io
import json
import shutil
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import duckdb
import httpx
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import select

from api_server.permissions import Permission
from api_server.services.uploads import TEMP_PREFIX
from shared.db.models import AuditEvent, Execution, utcnow
from shared.lifecycle import ExecutionStatus, ExecutionType
from shared.settings import Settings
from shared.shared_folders import grant_shared_folder
from shared.storage_quota import MIB
from shared.tokens import Scope, new_data_key
from tests.support.client import DataferryClient
from tests.support.factories import Api, Org, dump_tables, resource
from tests.support.processes import run_cli, running_region, socket_address

ORDERS_CSV = b"order_id,amount\n1,9.5\n2,20.0\n"
# What a test decides lies above the metadata DB: once, on SQLite (the quota's SQL sum runs on both).
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The suite's, with small limits, so that the refusals need only small bodies."""
    return replace(settings, max_upload_mb=1, max_organization_storage_mb=2)


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


# ---------------------------------------------------------------------------- in process


def test_an_upload_creates_then_replaces_a_file_and_queues_a_refresh(api):
    org = api.create_org()
    ds, folder = files_datasource(api, org)
    created = put(api, org.key, f"/datasources/{ds}/files/items.csv", b"item,qty\nx,1\n")
    assert created.status_code == 201, created.text
    assert created.headers["location"] == f"/datasources/{ds}/files/items.csv"
    document = created.json()
    assert document["data"]["type"] == "datasource_files"
    assert document["data"]["attributes"]["size"] == 13
    assert (folder / "items.csv").read_bytes() == b"item,qty\nx,1\n"
    replaced = put(api, org.key, f"/datasources/{ds}/files/items.csv", b"item,qty\ny,2\nz,3\n")
    assert replaced.status_code == 200, replaced.text
    assert (folder / "items.csv").read_bytes() == b"item,qty\ny,2\nz,3\n"
    refresh_id = replaced.json()["meta"]["refresh_execution_id"]
    with api.app.state.sessions() as session:
        refresh = session.get(Execution, refresh_id)
        assert refresh is not None and refresh.execution_type == ExecutionType.DATASOURCE_REFRESH
        assert refresh.datasource_id == ds
    storage = replaced.json()["meta"]["storage"]
    assert storage["files_bytes"] == len(ORDERS_CSV) + 17
    assert storage["quota_bytes"] == 2 * MIB


@SQLITE_ONLY
def test_files_are_listed_shown_and_deleted(api):
    org = api.create_org()
    ds, folder = files_datasource(api, org)
    (folder / "notes.txt").write_text("not a view")  # not one of the datasource's files
    assert put(api, org.key, f"/datasources/{ds}/files/b.json", b'[{"a": 1}]').status_code == 415
    json_put = put(
        api, org.key, f"/datasources/{ds}/files/b.json", b'[{"a": 1}]', "application/json"
    )
    assert json_put.status_code == 201, json_put.text
    listing = api.get(f"/datasources/{ds}/files?sort=-name", org.key).json()
    assert [item["id"] for item in listing["data"]] == ["orders.csv", "b.json"]
    assert listing["meta"]["total"] == 2
    assert listing["meta"]["storage"]["files_bytes"] == len(ORDERS_CSV) + 10 + 10
    shown = api.get(f"/datasources/{ds}/files/b.json", org.key).json()["data"]
    assert shown["attributes"]["format"] == "json"
    deleted = api.delete(f"/datasources/{ds}/files/b.json", org.key)
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["meta"]["refresh_execution_id"]
    assert not (folder / "b.json").exists()
    assert error_of(api.delete(f"/datasources/{ds}/files/b.json", org.key), 404)["code"] == (
        "file_not_found"
    )
    assert error_of(api.get(f"/datasources/{ds}/files/b.json", org.key), 404)["code"] == (
        "file_not_found"
    )


BAD_NAMES = {
    "slash": "a%2Fb.csv",
    "backslash": "a%5Cb.csv",
    "dot dot": "%2E%2E",
    "dot": "%2E",
    "leading dot": ".hidden.csv",
    "temporary file's form": f"{TEMP_PREFIX}x.part",
    "control character": "a%01b.csv",
    "division slash look-alike": "a%E2%88%95b.csv",  # U+2215
    "fullwidth letter (NFKC changes it)": "%EF%BD%86.csv",  # U+FF46
    "one dot leader": "a%E2%80%A4csv",  # U+2024
    "leading space": "%20a.csv",
    "256 bytes": "n" * 252 + ".csv",
    "no suffix": "orders",
    "a suffix no view reads": "orders.txt",
    "a database file": "shop.duckdb",
    "empty": "",
}


@SQLITE_ONLY
@pytest.mark.parametrize("name", list(BAD_NAMES.values()), ids=list(BAD_NAMES))
def test_a_bad_name_is_422_and_writes_nothing(api, name):
    org = api.create_org()
    ds, folder = files_datasource(api, org)
    before = snapshot(folder)
    answer = put(api, org.key, f"/datasources/{ds}/files/{name}", ORDERS_CSV)
    error = error_of(answer, 422)
    assert error["code"] in ("invalid_file_name", "unsupported_file_type"), error
    assert error["source"] == {"parameter": "name"}
    assert snapshot(folder) == before
    assert not any(p.name.startswith(TEMP_PREFIX) for p in api.area(org).rglob("*"))


@SQLITE_ONLY
def test_a_nul_in_the_name_is_refused_before_any_route(api):
    org = api.create_org()
    ds, folder = files_datasource(api, org)
    before = snapshot(folder)
    assert error_of(put(api, org.key, f"/datasources/{ds}/files/a%00.csv", ORDERS_CSV), 400)[
        "code"
    ] == ("nul_character")
    assert snapshot(folder) == before


@SQLITE_ONLY
def test_a_file_that_does_not_parse_is_422_and_replaces_nothing(api, tmp_path):
    org = api.create_org()
    ds, folder = files_datasource(api, org)
    good = parquet_bytes(pa.table({"x": [1, 2]}))
    assert (
        put(
            api, org.key, f"/datasources/{ds}/files/p.parquet", good, "application/octet-stream"
        ).status_code
        == 201
    )
    before = snapshot(folder)
    cases = {
        "p.parquet": b"PAR1 is not all a Parquet file takes",
        "broken.json": b'[{"a": 1}, {"a": ',
        "binary.csv": bytes(range(256)) * 64,
        "empty.csv": b"",
    }
    for name, body in cases.items():
        answer = put(
            api, org.key, f"/datasources/{ds}/files/{name}", body, "application/octet-stream"
        )
        error = error_of(answer, 422)
        assert error["code"] == "file_not_parsable", (name, error)
        assert str(folder) not in error["detail"] and name in error["detail"]
        assert snapshot(folder) == before, name
    duckdb_ds = api.create_datasource(org.key, name="db")["id"]
    database = api.area(org) / "shop.duckdb"
    kept = database.read_bytes()
    for body in (b"DUCK" * 4096, sqlite_bytes(tmp_path, "CREATE TABLE t (a)")):
        answer = put(
            api,
            org.key,
            f"/datasources/{duckdb_ds}/database_file",
            body,
            "application/octet-stream",
        )
        assert error_of(answer, 422)["code"] == "file_not_parsable"
        assert database.read_bytes() == kept


@SQLITE_ONLY
def test_a_wrong_media_type_is_415_and_a_wrong_datasource_type_409(api):
    org = api.create_org()
    ds, _ = files_datasource(api, org)
    assert error_of(
        put(api, org.key, f"/datasources/{ds}/files/a.csv", ORDERS_CSV, "application/json"), 415
    )
    missing = api.client.put(
        f"/datasources/{ds}/files/a.csv",
        content=ORDERS_CSV,
        headers={"Authorization": f"Api {org.key}"},
    )
    assert error_of(missing, 415)
    duckdb_ds = api.create_datasource(org.key, name="db")["id"]
    assert (
        error_of(put(api, org.key, f"/datasources/{duckdb_ds}/files/a.csv", ORDERS_CSV), 409)[
            "code"
        ]
        == "wrong_database_type"
    )
    assert (
        error_of(
            put(api, org.key, f"/datasources/{ds}/database_file", b"x", "application/octet-stream"),
            409,
        )["code"]
        == "wrong_database_type"
    )
    sample = org.sample_datasource_id
    assert (
        error_of(
            put(
                api,
                org.key,
                f"/datasources/{sample}/database_file",
                b"x",
                "application/octet-stream",
            ),
            409,
        )["code"]
        == "wrong_database_type"
    )


@SQLITE_ONLY
def test_two_files_may_not_give_one_view_name(api):
    org = api.create_org()
    ds, folder = files_datasource(api, org)
    before = snapshot(folder)
    answer = put(
        api,
        org.key,
        f"/datasources/{ds}/files/ORDERS.parquet",
        parquet_bytes(pa.table({"x": [1]})),
        "application/octet-stream",
    )
    assert error_of(answer, 409)["code"] == "file_name_taken"
    assert snapshot(folder) == before


@SQLITE_ONLY
def test_over_the_per_file_limit_is_413_and_writes_nothing(api):
    org = api.create_org()
    ds, folder = files_datasource(api, org)
    before = snapshot(folder)
    body = b"a\n" + b"1\n" * (MIB // 2)  # 1 MiB + 2 bytes; the limit is 1 MiB
    declared = put(api, org.key, f"/datasources/{ds}/files/big.csv", body)
    assert error_of(declared, 413)["code"] == "upload_too_large"
    assert declared.headers["connection"] == "close"
    streamed = put(
        api, org.key, f"/datasources/{ds}/files/big.csv", iter([body[:1000], body[1000:]])
    )
    assert error_of(streamed, 413)["code"] == "upload_too_large"
    assert snapshot(folder) == before
    at_limit = put(api, org.key, f"/datasources/{ds}/files/big.csv", body[:MIB])
    assert at_limit.status_code == 201, at_limit.text


def _store_result(api: Api, org: Org, size: int) -> str:
    """A completed execution whose stored result takes ``size`` bytes; its id."""
    execution_id = str(uuid.uuid4())
    with api.app.state.sessions.begin() as session:
        session.add(
            Execution(
                id=execution_id,
                organization_id=org.id,
                datasource_id=org.sample_datasource_id,
                execution_type=ExecutionType.SQL_QUERY,
                status=ExecutionStatus.COMPLETED,
                completed_at=utcnow(),
                result_size=size,
                data_key=new_data_key(Scope.EXECUTION_RESULT),
            )
        )
    return execution_id


def test_an_upload_over_the_quota_is_413_and_writes_nothing(api):
    """Stored results count: with 2 MiB - 1 KiB of them stored, a 2 KiB upload does not fit,
    declared or streamed; once the result is purged, it does."""
    org = api.create_org()
    other = api.create_org("Other")
    ds, folder = files_datasource(api, org)
    execution_id = _store_result(api, org, 2 * MIB - 1024 - len(ORDERS_CSV))
    _store_result(api, other, 2 * MIB)  # another organisation's results do not count here
    body = b"a\n" + b"12345\n" * 340
    before = snapshot(folder)
    for content in (body, iter([body[:10], body[10:]])):
        answer = put(api, org.key, f"/datasources/{ds}/files/more.csv", content)
        error = error_of(answer, 413)
        assert error["code"] == "storage_quota_exceeded", error
        assert snapshot(folder) == before
    listing = api.get(f"/datasources/{ds}/files", org.key).json()["meta"]["storage"]
    assert listing["results_bytes"] == 2 * MIB - 1024 - len(ORDERS_CSV)
    assert api.delete(f"/executions/{execution_id}", org.key).status_code == 204
    assert put(api, org.key, f"/datasources/{ds}/files/more.csv", body).status_code == 201


@SQLITE_ONLY
def test_files_in_the_area_count_against_the_quota(api):
    org = api.create_org()
    ds, _ = files_datasource(api, org)
    with open(api.area(org) / "filler.bin", "wb") as filler:  # sparse: it costs no disk here
        filler.truncate(2 * MIB - len(ORDERS_CSV) - 100)
    answer = put(api, org.key, f"/datasources/{ds}/files/more.csv", b"a\n" + b"1\n" * 60)
    assert error_of(answer, 413)["code"] == "storage_quota_exceeded"
    assert put(api, org.key, f"/datasources/{ds}/files/more.csv", b"a\n1\n").status_code == 201


@SQLITE_ONLY
def test_another_organisations_datasource_is_404(api):
    org, other = api.create_org("A"), api.create_org("B")
    ds, folder = files_datasource(api, org)
    before = snapshot(folder)
    for url in (f"/datasources/{ds}/files/x.csv", f"/datasources/{ds}/files"):
        method = "PUT" if url.endswith(".csv") else "GET"
        answer = api.client.request(
            method,
            url,
            content=ORDERS_CSV if method == "PUT" else None,
            headers={"Authorization": f"Api {other.key}", "Content-Type": "text/csv"},
        )
        assert error_of(answer, 404)["code"] == "not_found"
    assert error_of(api.delete(f"/datasources/{ds}/files/orders.csv", other.key), 404)
    restricted = api.create_key(org, list(Permission), datasource_ids=[org.sample_datasource_id])
    assert error_of(put(api, restricted, f"/datasources/{ds}/files/x.csv", ORDERS_CSV), 404)
    assert snapshot(folder) == before
    assert not (api.area(other) / "shop").exists()


@SQLITE_ONLY
def test_a_folder_swapped_for_a_link_into_another_area_is_not_followed(api):
    """The folder is checked again on every request, as the data server checks it on every run."""
    org, other = api.create_org("A"), api.create_org("B")
    ds, folder = files_datasource(api, org)
    victim = api.area(other) / "victim"
    victim.mkdir()
    (victim / "v.csv").write_bytes(ORDERS_CSV)
    shutil.rmtree(folder)
    folder.symlink_to(victim)
    answer = put(api, org.key, f"/datasources/{ds}/files/x.csv", ORDERS_CSV)
    assert error_of(answer, 409)["code"] == "datasource_unavailable"
    assert error_of(api.delete(f"/datasources/{ds}/files/v.csv", org.key), 409)
    assert error_of(api.get(f"/datasources/{ds}/files", org.key), 409)
    assert snapshot(victim) == {"v.csv": ORDERS_CSV}


def test_a_link_out_of_the_folder_is_no_file_of_the_datasource(api):
    """Neither listed nor shown: its target's size and time would describe another
    organisation's file (the engine makes no view of it either)."""
    org, other = api.create_org("A"), api.create_org("B")
    ds, folder = files_datasource(api, org)
    secret = api.area(other) / "secret.csv"
    secret.write_bytes(b"s\n" + b"x" * 12345 + b"\n")
    (folder / "leak.csv").symlink_to(secret)
    (folder / "inside.csv").symlink_to(folder / "orders.csv")  # within the folder: a file
    listed = api.get(f"/datasources/{ds}/files", org.key).json()["data"]
    assert sorted(item["id"].rsplit("/", 1)[-1] for item in listed) == ["inside.csv", "orders.csv"]
    assert error_of(api.get(f"/datasources/{ds}/files/leak.csv", org.key), 404)
    assert "12347" not in api.get(f"/datasources/{ds}/files", org.key).text

    created = api.post(
        "/datasources", org.key, resource("datasources", name="duck", database_type="duckdb")
    )
    duck, attributes = created.json()["data"]["id"], created.json()["data"]["attributes"]
    (api.area(org) / attributes["database"]).symlink_to(secret)  # where an upload would go
    assert error_of(api.get(f"/datasources/{duck}/database_file", org.key), 404)


def _own_datasource(api: Api, org: Org, database_type: str, **attributes: object) -> tuple:
    created = api.post(
        "/datasources",
        org.key,
        resource("datasources", name=database_type, database_type=database_type, **attributes),
    )
    assert created.status_code == 201, created.text
    data = created.json()["data"]
    return data["id"], api.area(org) / data["attributes"]["database"]


def test_deleting_a_datasource_deletes_the_files_of_its_own_place(api, tmp_path):
    """Its uploads stayed on disk, counted against the quota, reachable by nobody but a new
    datasource given the old path (found by the outside probe)."""
    org = api.create_org()
    ds, folder = _own_datasource(api, org, "files")
    assert put(api, org.key, f"/datasources/{ds}/files/o.csv", ORDERS_CSV).status_code == 201
    duck, database = _own_datasource(api, org, "duckdb")
    body = duckdb_bytes(tmp_path, "CREATE TABLE t AS SELECT 1 AS v")
    answer = put(
        api, org.key, f"/datasources/{duck}/database_file", body, "application/octet-stream"
    )
    assert answer.status_code == 201, answer.text
    assert folder.is_dir() and database.is_file()

    assert api.delete(f"/datasources/{ds}", org.key).status_code == 204
    assert api.delete(f"/datasources/{duck}", org.key).status_code == 204
    assert not folder.exists() and not database.exists()
    usage = api.get(f"/datasources/{files_datasource(api, org)[0]}/files", org.key).json()
    assert usage["meta"]["storage"]["files_bytes"] == len(ORDERS_CSV)  # the new one's file only


def test_a_place_another_datasource_reads_stays(api):
    org = api.create_org()
    ds, folder = _own_datasource(api, org, "files")
    assert put(api, org.key, f"/datasources/{ds}/files/o.csv", ORDERS_CSV).status_code == 201
    relative = folder.relative_to(api.area(org)).as_posix()
    api.create_datasource(org.key, name="reader", database_type="files", database=relative)
    assert api.delete(f"/datasources/{ds}", org.key).status_code == 204
    assert (folder / "o.csv").read_bytes() == ORDERS_CSV


@SQLITE_ONLY
def test_a_key_without_manage_datasources_is_403_before_its_body_is_read(api):
    org = api.create_org()
    ds, folder = files_datasource(api, org)
    viewer = api.create_key(org, [Permission.VIEW_DATASOURCES])
    before = snapshot(folder)
    answer = put(api, viewer, f"/datasources/{ds}/files/x.csv", ORDERS_CSV)
    assert error_of(answer, 403)["code"] == "permission_denied"
    assert error_of(api.delete(f"/datasources/{ds}/files/orders.csv", viewer), 403)
    assert api.get(f"/datasources/{ds}/files", viewer).status_code == 200
    assert snapshot(folder) == before


@SQLITE_ONLY
def test_a_shared_folder_is_read_only(api, tmp_path):
    org = api.create_org()
    granted = tmp_path / "granted"
    granted.mkdir()
    (granted / "rates.csv").write_text("currency,rate\nEUR,1\n")
    with api.app.state.sessions.begin() as session:
        grant_shared_folder(session, api.settings, org.id, "rates", str(granted))
    ds = api.create_datasource(org.key, name="r", database_type="files", database="shared/rates")[
        "id"
    ]
    assert [f["id"] for f in api.get(f"/datasources/{ds}/files", org.key).json()["data"]] == [
        "rates.csv"
    ]
    answer = put(api, org.key, f"/datasources/{ds}/files/x.csv", ORDERS_CSV)
    assert error_of(answer, 409)["code"] == "datasource_read_only"
    assert (
        error_of(api.delete(f"/datasources/{ds}/files/rates.csv", org.key), 409)["code"]
        == "datasource_read_only"
    )
    assert sorted(p.name for p in granted.iterdir()) == ["rates.csv"]


@SQLITE_ONLY
def test_a_database_file_is_replaced_whole(api, tmp_path):
    org = api.create_org()
    ds = api.create_datasource(org.key, name="db")["id"]
    body = duckdb_bytes(tmp_path, "CREATE TABLE t AS SELECT 42 AS answer")
    answer = put(api, org.key, f"/datasources/{ds}/database_file", body, "application/octet-stream")
    assert answer.status_code == 200, answer.text
    assert answer.json()["data"]["attributes"]["format"] == "duckdb"
    assert (api.area(org) / "shop.duckdb").read_bytes() == body
    shown = api.get(f"/datasources/{ds}/database_file", org.key).json()["data"]
    assert shown["attributes"]["size"] == len(body)


@SQLITE_ONLY
def test_uploads_and_deletes_are_audited_without_their_bodies(api):
    org = api.create_org()
    ds, _ = files_datasource(api, org)
    marker = f"marker-{uuid.uuid4().hex}"
    body = f"secretish\n{marker}\n".encode()
    assert put(api, org.key, f"/datasources/{ds}/files/m.csv", body).status_code == 201
    assert api.delete(f"/datasources/{ds}/files/m.csv", org.key).status_code == 200
    with api.app.state.sessions() as session:
        actions = session.scalars(
            select(AuditEvent.action).where(AuditEvent.organization_id == org.id)
        ).all()
    assert {"datasource_file.upload", "datasource_file.delete"} <= set(actions)
    assert marker not in repr(dump_tables(api.app))


# ---------------------------------------------------------------------------- real servers

QUOTA_MB = 512


@pytest.fixture(scope="module")
def region(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("uploads-region")
    env = {
        "DATAFERRY_MAX_ORGANIZATION_STORAGE_MB": str(QUOTA_MB),
        "DATAFERRY_POLL_INTERVAL_SECONDS": "0.05",
    }
    with running_region(cwd, env) as started:
        yield started


@pytest.fixture
def e2e(region, client) -> tuple[DataferryClient, Path]:
    """The module's client (one organisation: each test works in folders of its own), and its
    area."""
    return client, region.area(client.organization_id)


def upload(
    client, url: str, body, content_type: str = "application/octet-stream"
) -> httpx.Response:
    return client.http.put(
        f"{client.api_url}{url}",
        content=body,
        headers={**client.headers, "Content-Type": content_type},
        timeout=120,
    )


def records(client, datasource_id: str, sql: str) -> list[dict]:
    response = client.query(datasource_id, sql, format="records")
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.e2e
def test_each_type_uploads_and_queries(e2e, tmp_path):
    client, area = e2e
    (area / "lake").mkdir()
    ds = client.create_datasource("lake", "files", "lake")["id"]
    bodies = {
        "p.parquet": parquet_bytes(pa.table({"v": [1, 2, 3]})),
        "c.csv": b"v\n1\n2\n3\n",
        "t.tsv": b"v\tw\n1\tx\n2\ty\n3\tz\n",
        "j.json": b'[{"v": 1}, {"v": 2}, {"v": 3}]',
        "n.ndjson": b'{"v": 1}\n{"v": 2}\n{"v": 3}\n',
        "l.jsonl": b'{"v": 1}\n{"v": 2}\n{"v": 3}\n',
    }
    for name, body in bodies.items():
        answer = upload(client, f"/datasources/{ds}/files/{name}", body)
        assert answer.status_code == 201, (name, answer.text)
    sql = " UNION ALL ".join(
        f"SELECT '{name}' AS f, sum(v)::INTEGER AS s FROM {name.split('.')[0]}" for name in bodies
    )
    assert {row["f"]: row["s"] for row in records(client, ds, sql)} == dict.fromkeys(bodies, 6)

    (area / "db.duckdb").write_bytes(duckdb_bytes(tmp_path, "CREATE TABLE t AS SELECT 1 AS v"))
    duck = client.create_datasource("duck", "duckdb", "db.duckdb")["id"]
    new = duckdb_bytes(tmp_path, "CREATE TABLE t AS SELECT 2 AS v UNION ALL SELECT 40")
    assert upload(client, f"/datasources/{duck}/database_file", new).status_code == 200
    assert records(client, duck, "SELECT sum(v)::INTEGER AS s FROM t") == [{"s": 42}]


@pytest.mark.e2e
def test_a_new_organisation_starts_from_the_api_alone(region, tmp_path):
    """Nothing on disk: a file datasource created without `database` gets a place of its own,
    which uploads fill (before, its folder or file had to exist already)."""
    with region.organization_client("Fresh") as client:
        created = {}
        for database_type in ("files", "duckdb", "sqlite"):
            data = client.create_datasource(database_type, database_type)
            suffix = "" if database_type == "files" else f".{database_type}"
            assert data["attributes"]["database"] == f"datasources/{data['id']}{suffix}"
            created[database_type] = data["id"]
        early = client.run(created["duckdb"], "SELECT 1")  # nothing uploaded yet
        failed = client.wait_until_done(early["execution_id"])
        assert (failed["execution_status"], failed["error_code"]) == (
            "failed",
            "datasource_unavailable",
        )

        put_file = upload(client, f"/datasources/{created['files']}/files/o.csv", b"v\n40\n2\n")
        assert put_file.status_code == 201, put_file.text
        duck = duckdb_bytes(tmp_path, "CREATE TABLE t AS SELECT 42 AS v")
        put_duck = upload(client, f"/datasources/{created['duckdb']}/database_file", duck)
        lite = sqlite_bytes(tmp_path, "CREATE TABLE t (v INTEGER)", "INSERT INTO t VALUES (42)")
        put_lite = upload(client, f"/datasources/{created['sqlite']}/database_file", lite)
        assert put_duck.status_code == put_lite.status_code == 201, (put_duck.text, put_lite.text)

        assert records(client, created["files"], "SELECT sum(v)::INTEGER AS s FROM o") == [
            {"s": 42}
        ]
        for kind in ("duckdb", "sqlite"):
            assert records(client, created[kind], "SELECT v::INTEGER AS s FROM t") == [{"s": 42}]


@pytest.mark.e2e
def test_a_sqlite_file_uploads_and_queries(e2e, tmp_path):
    client, area = e2e
    (area / "app.sqlite").write_bytes(sqlite_bytes(tmp_path, "CREATE TABLE t (v INTEGER)"))
    ds = client.create_datasource("app", "sqlite", "app.sqlite")["id"]
    body = sqlite_bytes(tmp_path, "CREATE TABLE t (v INTEGER)", "INSERT INTO t VALUES (40), (2)")
    answer = upload(client, f"/datasources/{ds}/database_file", body, "application/vnd.sqlite3")
    assert answer.status_code == 200, answer.text
    assert records(client, ds, "SELECT sum(v)::INTEGER AS s FROM t") == [{"s": 42}]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


class PeakRss:
    """The highest RSS of each process while the block runs, sampled every 20 ms."""

    def __init__(self, pids: list[int]) -> None:
        self.pids, self.peak = pids, {pid: rss_mb(pid) for pid in pids}
        self.baseline = dict(self.peak)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            for pid in self.pids:
                self.peak[pid] = max(self.peak[pid], rss_mb(pid))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def growth(self, pid: int) -> float:
        return self.peak[pid] - self.baseline[pid]


@pytest.mark.e2e
def test_a_200_mb_upload_streams_in_bounded_memory(region, e2e):
    client, area = e2e
    (area / "big").mkdir()
    ds = client.create_datasource("big", "files", "big")["id"]
    line = b"1234567890,abcdefghijklmnopqrstuvwxyz,3.14159\n"
    lines = 200 * MIB // len(line)
    block = line * 1000

    def body() -> Iterator[bytes]:  # generated as it is sent: the test holds one block
        yield b"n,s,x\n"
        for _ in range(lines // 1000):
            yield block

    api_server, data_server = (process.pid for process in region.processes)
    with PeakRss([api_server, data_server]) as rss:
        answer = upload(client, f"/datasources/{ds}/files/big.csv", body(), "text/csv")
        assert answer.status_code == 201, answer.text
        refresh = answer.json()["meta"]["refresh_execution_id"]
        assert client.wait_until_done(refresh)["execution_status"] == "completed"
    size = (area / "big" / "big.csv").stat().st_size
    assert size == 6 + (lines // 1000) * len(block) > 200 * 10**6
    assert rss.growth(api_server) < 50, rss.peak
    assert rss.growth(data_server) < 50, rss.peak
    counted = records(client, ds, "SELECT count(*)::BIGINT AS n FROM big")
    assert counted == [{"n": lines // 1000 * 1000}]
    deleted = client.http.delete(
        f"{client.api_url}/datasources/{ds}/files/big.csv", headers=client.headers
    )
    assert deleted.status_code == 200, deleted.text  # the module's organisation has room again


@pytest.mark.e2e
def test_concurrent_uploads_of_one_name_never_leave_a_torn_file(e2e):
    """Four uploads of one name at once, three rounds, while a reader reads the file: every read
    and the end result are one whole upload, and no temporary file is left."""
    client, area = e2e
    folder = area / "race"
    folder.mkdir()
    ds = client.create_datasource("race", "files", "race")["id"]
    bodies = [b"v\n" + str(k).encode() * (2 * MIB // 2) + b"\n" for k in range(1, 5)]
    target = folder / "same.csv"
    url = f"/datasources/{ds}/files/same.csv"
    reads: list[bool] = []  # whether each read while racing found one whole upload
    stop = threading.Event()

    def read_while_racing() -> None:
        while not stop.wait(0.005):
            if target.exists():
                reads.append(target.read_bytes() in bodies)

    reader = threading.Thread(target=read_while_racing)
    reader.start()
    try:
        with ThreadPoolExecutor(len(bodies)) as pool:
            for _round in range(3):
                answers = list(pool.map(lambda b: upload(client, url, b, "text/csv"), bodies))
                assert {a.status_code for a in answers} <= {200, 201}, [a.text for a in answers]
                assert target.read_bytes() in bodies
                assert [p.name for p in folder.iterdir()] == ["same.csv"]  # no temporary file
    finally:
        stop.set()
        reader.join()
    assert reads and all(reads), f"{reads.count(False)} of {len(reads)} reads were torn"


def _raw_put(region, path: str, key: str, declared: int, sent: bytes) -> socket.socket:
    connection = socket.create_connection(socket_address(region.api_url), timeout=30)
    head = (
        f"PUT {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Api {key}\r\n"
        f"Content-Type: text/csv\r\nContent-Length: {declared}\r\n\r\n"
    )
    connection.sendall(head.encode() + sent)
    return connection


def _answer(connection: socket.socket) -> tuple[int, dict]:
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        chunk = connection.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


@pytest.mark.e2e
def test_a_declared_length_over_the_limit_is_refused_before_the_body(region, e2e):
    client, area = e2e
    (area / "cl").mkdir()
    ds = client.create_datasource("cl", "files", "cl")["id"]
    with _raw_put(region, f"/datasources/{ds}/files/x.csv", client.key, 2 * 1024**3, b"") as conn:
        status, document = _answer(conn)  # answered although no byte of the body was sent
    assert (status, document["errors"][0]["code"]) == (413, "upload_too_large")
    with _raw_put(region, f"/datasources/{ds}/files/x.csv", client.key, 600 * MIB, b"") as conn:
        status, document = _answer(conn)
    assert (status, document["errors"][0]["code"]) == (413, "storage_quota_exceeded")
    assert list((area / "cl").iterdir()) == []


@pytest.mark.e2e
def test_a_client_hanging_up_mid_body_leaves_nothing(region, e2e):
    client, area = e2e
    folder = area / "gone"
    folder.mkdir()
    ds = client.create_datasource("gone", "files", "gone")["id"]
    connection = _raw_put(
        region, f"/datasources/{ds}/files/x.csv", client.key, 50 * MIB, b"v\n" + b"1\n" * (2 * MIB)
    )
    for _ in range(200):  # the upload's temporary file appears, then goes with the hang-up
        if any(folder.iterdir()):
            break
        time.sleep(0.05)
    assert [p.name.startswith(TEMP_PREFIX) for p in folder.iterdir()] == [True]
    connection.close()
    for _ in range(200):
        if not any(folder.iterdir()):
            break
        time.sleep(0.05)
    assert list(folder.iterdir()) == []
    assert "Traceback" not in region.log()


@pytest.mark.e2e
def test_the_quota_bounds_stored_results_too(region):
    """Files placed in the area by the operator count as well (sparse here: no disk is used)."""
    with region.organization_client("Full") as client:
        _fill_the_quota(region, client, region.area(client.organization_id))


def _fill_the_quota(region, client: DataferryClient, area: Path) -> None:
    (area / "q").mkdir()
    ds = client.create_datasource("q", "files", "q")["id"]
    with open(area / "filler.bin", "wb") as filler:
        filler.truncate(QUOTA_MB * MIB - MIB)  # 1 MiB left
    small = client.wait_until_done(client.run(ds, "SELECT 1 AS one")["execution_id"])
    assert small["execution_status"] == "completed", small
    big = client.run(ds, "SELECT range AS a, range AS b FROM range(1000000)")
    failed = client.wait_until_done(big["execution_id"])
    assert (failed["execution_status"], failed["error_code"]) == (
        "failed",
        "storage_quota_exceeded",
    )
    with open(area / "filler.bin", "wb") as filler:
        filler.truncate(QUOTA_MB * MIB)  # none left
    none_left = client.wait_until_done(client.run(ds, "SELECT 1 AS one")["execution_id"])
    assert none_left["error_code"] == "storage_quota_exceeded", none_left
    answer = upload(client, f"/datasources/{ds}/files/x.csv", b"v\n1\n", "text/csv")
    assert (
        answer.status_code == 413 and answer.json()["errors"][0]["code"] == "storage_quota_exceeded"
    )
    usage = run_cli(
        region.env, region.cwd, "storage-usage", "--organization", client.organization_id
    )
    assert usage.returncode == 0, usage.stderr
    reported = orjson.loads(usage.stdout)
    assert reported["files_bytes"] == QUOTA_MB * MIB and reported["quota_bytes"] == QUOTA_MB * MIB
    assert reported["results_bytes"] > 0
