"""What an upload may not be: a bad or unsafe name, a file that does not parse, the wrong media or
datasource type, a second file for one view name, more than the per-file limit. Each refusal
leaves the folder as it was.
"""

from __future__ import annotations

import pyarrow as pa
import pytest

from shared.storage_quota import MIB, UPLOAD_TEMP_PREFIX
from tests.support.uploads import (
    ORDERS_CSV,
    SQLITE_ONLY,
    duckdb_bytes,
    error_of,
    files_datasource,
    parquet_bytes,
    put,
    snapshot,
    sqlite_bytes,
)

BAD_NAMES = {
    "backslash": "a%5Cb.csv",
    "dot dot": "%2E%2E",
    "dot": "%2E",
    "leading dot": ".hidden.csv",
    "temporary file's form": f"{UPLOAD_TEMP_PREFIX}x.part",
    "division slash look-alike": "a%E2%88%95b.csv",  # U+2215
    "fullwidth letter (NFKC changes it)": "%EF%BD%86.csv",  # U+FF46
    "one dot leader": "a%E2%80%A4csv",  # U+2024
    "leading space": "%20a.csv",
    # DuckDB would read these names as patterns matching other files of the folder.
    "star": "star%2A.csv",
    "question mark": "qm%3F.csv",
    "brackets": "a%5Bb%5D.csv",
    "braces": "%7Ba%2Cb%7D.csv",
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
    assert not any(p.name.startswith(UPLOAD_TEMP_PREFIX) for p in api.area(org).rglob("*"))


@SQLITE_ONLY
@pytest.mark.parametrize(
    ("path", "code"),
    [
        # Decoded, it separated segments sent as one: /datasources/x%2Ffiles listed the files.
        ("/datasources/{ds}/files/a%2Fb.csv", "encoded_slash"),
        ("/datasources/{ds}%2Ffiles", "encoded_slash"),
        # A final line feed still matched the route without it: lf.csv%0A wrote lf.csv.
        ("/datasources/{ds}/files/lf.csv%0A", "control_character"),
        ("/datasources/{ds}/files%0A", "control_character"),
        ("/datasources/{ds}/files/a%01b.csv", "control_character"),
        ("/datasources/{ds}/files/a%0D.csv", "control_character"),
        ("/datasources/{ds}/files/a%7F.csv", "control_character"),
    ],
)
def test_a_path_a_router_could_read_two_ways_is_refused_before_any_route(api, path, code):
    org = api.create_org()
    ds, folder = files_datasource(api, org)
    before = snapshot(folder)
    answer = api.client.get(path.format(ds=ds), headers={"Authorization": f"Api {org.key}"})
    assert error_of(answer, 400)["code"] == code
    answer = put(api, org.key, path.format(ds=ds), ORDERS_CSV)
    assert error_of(answer, 400)["code"] == code
    assert snapshot(folder) == before


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
    tsv = put(api, org.key, f"/datasources/{ds}/files/a.tsv", ORDERS_CSV, "text/csv")
    assert error_of(tsv, 415)["detail"] == (
        "Send 'a.tsv' as Content-Type: application/octet-stream or text/tab-separated-values."
    )  # what a .tsv takes, named as the client named it (not "a csv file")
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


@SQLITE_ONLY
@pytest.mark.parametrize(
    ("extra", "code"),
    [
        # RFC 9110 §14.4: a partial PUT was stored as the whole file
        ([("Content-Range", "bytes 0-7/1000")], "partial_put"),
        # One copy or the other: a proxy in front may have kept the other one
        ([("Content-Type", "application/vnd.apache.parquet")], "repeated_header"),
        # A coded body was checked as if uncoded: a misleading "not a readable csv"
        ([("Content-Encoding", "gzip")], "unsupported_media_type"),
    ],
)
def test_a_partial_coded_or_doubly_typed_upload_is_refused_and_stores_nothing(api, extra, code):
    org = api.create_org()
    ds, folder = files_datasource(api, org)
    before = snapshot(folder)
    headers = [("Authorization", f"Api {org.key}"), ("Content-Type", "text/csv"), *extra]
    for path in (f"/datasources/{ds}/files/part.csv", f"/datasources/{ds}/database_file"):
        answer = api.client.put(path, content=ORDERS_CSV[:8], headers=headers)
        status = 415 if code == "unsupported_media_type" else 400
        assert error_of(answer, status)["code"] == code, path
    assert snapshot(folder) == before


@SQLITE_ONLY
def test_uploads_honour_create_only_and_replace_only_conditions(api):
    """If-None-Match: * creates only, If-Match: * replaces only (RFC 9110 §13.1.1-2): a client
    that asked not to overwrite a file had it overwritten."""
    org = api.create_org()
    ds, folder = files_datasource(api, org)
    url = f"/datasources/{ds}/files/orders.csv"
    other = ORDERS_CSV.replace(b"\n", b"\r\n")

    def upload(path: str, condition: dict[str, str]):
        headers = {"Authorization": f"Api {org.key}", "Content-Type": "text/csv", **condition}
        return api.client.put(path, content=other, headers=headers)

    both = {"If-Match": "*", "If-None-Match": "*"}  # hold for no file (found by a probe)
    listed = {"If-None-Match": '"a", *'}  # a list holding "*" is "*"
    for condition in ({"If-None-Match": "*"}, {"If-Match": '"v1"'}, both, listed):
        assert error_of(upload(url, condition), 412)["code"] == "precondition_failed"
    assert (folder / "orders.csv").read_bytes() == ORDERS_CSV
    assert error_of(upload(f"/datasources/{ds}/files/new.csv", both), 412)
    removal = api.client.delete(url, headers={"Authorization": f"Api {org.key}", **both})
    assert error_of(removal, 412)["code"] == "precondition_failed"
    assert (folder / "orders.csv").read_bytes() == ORDERS_CSV
    assert error_of(upload(f"/datasources/{ds}/files/new.csv", {"If-Match": "*"}), 412)
    assert not (folder / "new.csv").exists()
    assert upload(f"/datasources/{ds}/files/new.csv", {"If-None-Match": "*"}).status_code == 201
    assert upload(url, {"If-Match": "*"}).status_code == 200
    assert (folder / "orders.csv").read_bytes() == other


@SQLITE_ONLY
def test_a_duckdb_file_cut_short_is_422_though_its_catalog_reads(api, tmp_path):
    """Found by the outside probe: the first half of a DuckDB file still opened (its catalog is
    in the first blocks) and was accepted, and every query of its table then failed."""
    org = api.create_org()
    ds = api.create_datasource(org.key, name="db")["id"]
    whole = duckdb_bytes(
        tmp_path, "CREATE TABLE t AS SELECT range AS i, 'x' || range AS s FROM range(100000)"
    )
    database = api.area(org) / "shop.duckdb"
    kept = database.read_bytes()
    answer = put(
        api,
        org.key,
        f"/datasources/{ds}/database_file",
        whole[: len(whole) // 2],
        "application/octet-stream",
    )
    error = error_of(answer, 422)
    assert error["code"] == "file_not_parsable"
    assert "cut short" in error["detail"] and str(tmp_path) not in error["detail"]
    assert database.read_bytes() == kept
    answer = put(
        api, org.key, f"/datasources/{ds}/database_file", whole, "application/octet-stream"
    )
    assert answer.status_code == 200, answer.text


@SQLITE_ONLY
def test_the_check_of_a_duckdb_file_runs_nothing_the_file_stores(api, tmp_path):
    """Found by the outside probe: the check read a row of each table whole, which computed its
    generated columns, and the error one raised was the 422's detail: here, the server's home
    directory. A column's expression runs only where external access is off (in the check, not
    where the file was made), so that the file could be written. The data server refuses the
    file's stored code when a query attaches it (tests/data_server/test_engine.py)."""
    leak = "current_setting('home_directory') || current_setting('temp_directory')"
    off = "current_setting('enable_external_access')::VARCHAR = 'false'"
    body = duckdb_bytes(
        tmp_path,
        f"CREATE TABLE t (a INT, b VARCHAR GENERATED ALWAYS AS "
        f"(CASE WHEN {off} THEN error('LEAK ' || {leak}) ELSE 'ok' END), c INT DEFAULT 3);"
        "INSERT INTO t (a) VALUES (1);"
        f"CREATE VIEW v AS SELECT error('LEAK ' || {leak}) AS x",
    )
    org = api.create_org()
    ds = api.create_datasource(org.key, name="db")["id"]
    answer = put(api, org.key, f"/datasources/{ds}/database_file", body, "application/octet-stream")
    assert answer.status_code == 200, answer.text
    assert "LEAK" not in answer.text


@SQLITE_ONLY
def test_a_sqlite_file_sent_as_a_duckdb_database_is_told_what_it_is(api, tmp_path):
    org = api.create_org()
    ds = api.create_datasource(org.key, name="db")["id"]
    body = sqlite_bytes(tmp_path, "CREATE TABLE t (a)")
    answer = put(api, org.key, f"/datasources/{ds}/database_file", body, "application/octet-stream")
    assert "a sqlite datasource reads it" in error_of(answer, 422)["detail"]


def test_a_sqlite_file_with_a_name_that_is_not_utf8_anywhere_in_its_catalog_is_refused(tmp_path):
    """Only the first 100 tables were read: a later one named in Latin-1 was accepted, and every
    read of the datasource's schema failed after (found by the outside probe)."""
    from api_server.file_check import SAMPLE_TABLES, FileNotParsable, check_file
    from shared.file_formats import FileFormat

    tables = [f"CREATE TABLE t{index:03d} (a INTEGER)" for index in range(SAMPLE_TABLES + 1)]
    body = sqlite_bytes(tmp_path, *tables, "CREATE TABLE lastQQQQ (columnQQQQ INTEGER)")
    path = tmp_path / "app.sqlite"
    path.write_bytes(body.replace(b"QQQQ", b"\xe9t\xe9\xe9"))  # same length, Latin-1
    with pytest.raises(FileNotParsable) as refused:
        check_file(path, FileFormat.SQLITE, "app.sqlite")
    assert "UTF-8" in refused.value.detail and str(tmp_path) not in refused.value.detail
    path.write_bytes(body)
    check_file(path, FileFormat.SQLITE, "app.sqlite")
