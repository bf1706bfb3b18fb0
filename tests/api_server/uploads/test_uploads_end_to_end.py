"""Uploads against real servers: queries on uploaded files of each type, a new organisation
working from the API alone, a 200 MB upload's memory, concurrent uploads of one name, a length
over the limit refused before the body, a client hanging up mid-body and the quota on stored
results.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import orjson
import pyarrow as pa
import pytest

from shared.storage_quota import MIB, UPLOAD_TEMP_PREFIX
from tests.support.client import DataferryClient
from tests.support.processes import run_cli, running_region, socket_address
from tests.support.uploads import duckdb_bytes, parquet_bytes, sqlite_bytes

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
    assert [p.name.startswith(UPLOAD_TEMP_PREFIX) for p in folder.iterdir()] == [True]
    connection.close()
    for _ in range(200):
        if not any(folder.iterdir()):
            break
        time.sleep(0.05)
    assert list(folder.iterdir()) == []
    assert "Traceback" not in region.log()


@pytest.mark.e2e
def test_the_quota_bounds_stored_results_too(region):
    """Files placed in the area by the operator count as well (sparse here: no disk is used),
    within AREA_WALK_MAX_AGE_SECONDS, or as soon as the API next changes the area."""
    with region.organization_client("Full") as client:
        _fill_the_quota(region, client, region.area(client.organization_id))


def _fill_the_quota(region, client: DataferryClient, area: Path) -> None:
    (area / "q").mkdir()
    ds = client.create_datasource("q", "files", "q")["id"]
    assert upload(client, f"/datasources/{ds}/files/tiny.csv", b"v\n1\n").status_code == 201
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
    tiny = f"{client.api_url}/datasources/{ds}/files/tiny.csv"
    assert client.http.delete(tiny, headers=client.headers).status_code == 200  # the API changes it
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


def _results_bytes(region, client: DataferryClient) -> int:
    usage = run_cli(
        region.env, region.cwd, "storage-usage", "--organization", client.organization_id
    )
    assert usage.returncode == 0, usage.stderr
    return orjson.loads(usage.stdout)["results_bytes"]


@pytest.mark.e2e
def test_stored_representations_count_and_are_kept_only_within_the_quota(region):
    """A CSV fetched once is stored and counted; with no room left, a JSON fetch still answers
    in full but is not kept (nothing more is counted, and it answers again alike)."""
    with region.organization_client("Representations") as client:
        area = region.area(client.organization_id)
        (area / "r").mkdir()
        ds = client.create_datasource("r", "files", "r")["id"]
        execution = client.run(ds, "SELECT range AS n, 'row ' || range AS label FROM range(5000)")
        assert client.wait_until_done(execution["execution_id"])["execution_status"] == "completed"
        grant = client.grant(execution["execution_id"])
        before = _results_bytes(region, client)

        first = client.fetch(grant, "text/csv")  # sent as it is encoded, stored when it ends
        csv = client.fetch(grant, "text/csv")  # compressed: httpx accepts zstd and gzip
        assert csv.status_code == 200 and csv.text.count("\n") == 5001
        assert csv.content == first.content
        stored = int(csv.headers["content-length"])
        assert "content-encoding" in csv.headers and stored < len(csv.content)
        assert _results_bytes(region, client) == before + stored

        with open(area / "filler.bin", "wb") as filler:
            filler.truncate(QUOTA_MB * MIB - before - stored - 100)  # 100 bytes left
        answers = [client.fetch(grant, "application/json") for _ in range(2)]
        assert [a.status_code for a in answers] == [200, 200]
        assert answers[0].content == answers[1].content
        assert answers[0].headers["etag"] == answers[1].headers["etag"]
        assert len(answers[0].json()["rows"]) == 5000
        assert _results_bytes(region, client) == before + stored


@pytest.mark.e2e
def test_a_result_that_no_longer_fits_when_it_completes_is_not_stored(region):
    """The quota is checked again when the result is stored: room taken while the query ran
    (here by an upload; as well by an execution of the same organisation running beside it)
    fails it, where the check before it ran alone let it through."""
    with region.organization_client("Overshoot") as client:
        area = region.area(client.organization_id)
        (area / "o").mkdir()
        ds = client.create_datasource("o", "files", "o")["id"]
        with open(area / "filler.bin", "wb") as filler:
            filler.truncate(QUOTA_MB * MIB - 2 * MIB)  # room for the result's 1.6 MB
        slow = "SELECT range AS n FROM range(400000000) WHERE range % 2000 = 0"  # 200k rows, ~2 s
        execution_id = client.run(ds, slow)["execution_id"]
        for _ in range(400):
            if client.execution(execution_id)["execution_status"] != "queued":
                break
            time.sleep(0.02)
        time.sleep(0.3)  # past the check before it runs (later, it would fail there: as well)
        taken = upload(client, f"/datasources/{ds}/files/taken.csv", b"v\n" + b"1\n" * 500_000)
        assert taken.status_code == 201, taken.text  # it fits: the result is not stored yet
        done = client.wait_until_done(execution_id)
        assert (done["execution_status"], done["error_code"]) == (
            "failed",
            "storage_quota_exceeded",
        ), done
        assert _results_bytes(region, client) == 0
