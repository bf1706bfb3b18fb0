"""HTTP semantics of ``/data/{data_key}`` in process: lengths, ETags, ranges, conditional
requests, HEAD, content coding, token in the URL, expired tokens, stored variants and CORS."""

from __future__ import annotations

import gzip
import io
import logging
import time
from contextlib import contextmanager

import brotli
import jwt
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from starlette.testclient import TestClient

from data_server import representations
from data_server.app import create_app
from data_server.formats import ResultFormat
from shared.results import (
    VARIANTS,
    delete_stored_data,
    open_result_store,
    result_object_key,
    stored_variants,
    variant_object_key,
)
from shared.settings import Settings
from shared.tokens import (
    ALGORITHM,
    TOKEN_TYPE,
    Scope,
    SigningKeyring,
    mint_data_token,
    new_data_key,
)
from tests.support.log_watch import remember

IDENTITY = {"Accept-Encoding": "identity"}


@pytest.fixture(autouse=True)
def quiet_client_logs():
    """The test client logs each URL it requests, and some here hold a token (``?token=``): keep
    them out of the log tests/contract/test_logs_hold_no_secrets.py reads, which is the servers'."""
    loggers = [logging.getLogger(name) for name in ("httpx", "httpx2")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    yield
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)


@pytest.fixture
def settings(tmp_path):
    return Settings(state_dir=tmp_path, sample_scale=0.001, cors_origins="https://notebook.example")


@pytest.fixture
def stored(settings):
    """A result of 50,000 rows in the local store, as a worker publishes it."""
    return _publish(open_result_store(settings))


def _publish(store):
    data_key = new_data_key(Scope.EXECUTION_RESULT)
    table = pa.table(
        {
            "id": pa.array(range(50_000), pa.int64()),
            "amount": pa.array([i * 0.25 for i in range(50_000)], pa.float64()),
            "name": pa.array([f'name "{i}"' for i in range(50_000)], pa.string()),
        }
    )
    temp = store.temp_path("upload")
    with pa.OSFile(str(temp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        for batch in table.to_batches(8192):
            writer.write_batch(batch)
    store.publish(temp, result_object_key(data_key))
    return store, data_key, table


def _token(settings, data_key, now=None, scope=Scope.EXECUTION_RESULT):
    token = mint_data_token(
        SigningKeyring(settings),
        settings,
        organization_id="o",
        data_key=data_key,
        scope=scope,
        now=now,
    )
    remember(token)
    return token


@pytest.fixture
def data(settings, stored):
    with _client(settings, stored) as client:
        yield client


@contextmanager
def _client(settings, stored):
    store, data_key, table = stored
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        token = _token(settings, data_key)
        client.headers["Authorization"] = f"Data {token}"
        client.data_key, client.table, client.store, client.token = data_key, table, store, token
        yield client


def _raw(client, fmt, headers, **params):
    """Status, headers and the bytes as sent: the test client would undo gzip and br."""
    with client.stream(
        "GET", f"/data/{client.data_key}", params={"format": fmt, **params}, headers=headers
    ) as response:
        return response.status_code, response.headers, b"".join(response.iter_raw())


def _get(client, fmt="csv", headers=None, **params):
    return client.get(
        f"/data/{client.data_key}",
        params={"format": fmt, **params},
        headers={**IDENTITY, **(headers or {})},
    )


@pytest.mark.parametrize("fmt", [f.name_in_query for f in ResultFormat])
def test_resumed_download_from_the_middle_is_byte_identical(data, fmt):
    whole = _get(data, fmt)
    assert whole.status_code == 200
    size = len(whole.content)
    assert int(whole.headers["content-length"]) == size
    assert whole.headers["accept-ranges"] == "bytes"
    middle = size // 2
    rest = _get(data, fmt, {"Range": f"bytes={middle}-", "If-Range": whole.headers["etag"]})
    assert rest.status_code == 206
    assert rest.headers["content-range"] == f"bytes {middle}-{size - 1}/{size}"
    assert whole.content[:middle] + rest.content == whole.content
    assert rest.headers["etag"] == whole.headers["etag"]


def test_etag_is_stable_across_grants_and_304_on_if_none_match(data, settings):
    first = _get(data, "json")
    other_grant = {"Authorization": f"Data {_token(settings, data.data_key, now=time.time() - 5)}"}
    second = _get(data, "json", other_grant)
    assert first.headers["etag"] == second.headers["etag"]
    assert first.headers["etag"].startswith('"')  # strong
    assert first.content == second.content
    again = _get(data, "json", {"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == first.headers["etag"]
    assert _get(data, "csv").headers["etag"] != first.headers["etag"]


def test_head_has_the_length_and_no_body(data):
    get = _get(data, "parquet")
    head = data.head(f"/data/{data.data_key}", params={"format": "parquet"}, headers=IDENTITY)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(get.content))
    assert head.headers["etag"] == get.headers["etag"]


def test_suffix_multiple_and_unsatisfiable_ranges(data):
    whole = _get(data, "ndjson").content
    size = len(whole)
    tail = _get(data, "ndjson", {"Range": "bytes=-100"})
    assert tail.status_code == 206 and tail.content == whole[-100:]
    multi = _get(data, "ndjson", {"Range": "bytes=0-9, 20-29"})
    assert multi.status_code == 206
    assert multi.headers["content-type"].startswith("multipart/byteranges; boundary=")
    assert int(multi.headers["content-length"]) == len(multi.content)
    assert whole[0:10] in multi.content and whole[20:30] in multi.content
    assert f"Content-Range: bytes 20-29/{size}".encode() in multi.content
    beyond = _get(data, "ndjson", {"Range": f"bytes={size}-"})
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == f"bytes */{size}"
    assert beyond.json()["errors"][0]["code"] == "range_not_satisfiable"
    assert _get(data, "ndjson", {"Range": "lines=1-2"}).status_code == 200  # other units: ignored


def test_if_range_with_an_old_etag_sends_everything(data):
    whole = _get(data, "csv").content
    stale = _get(data, "csv", {"Range": "bytes=10-", "If-Range": '"not-the-etag"'})
    assert stale.status_code == 200 and stale.content == whole


@pytest.mark.parametrize(
    ("accepted", "coding", "decode"),
    [
        ("gzip", "gzip", gzip.decompress),
        ("br", "br", brotli.decompress),
        ("zstd", "zstd", lambda raw: zstandard.ZstdDecompressor().decompressobj().decompress(raw)),
        ("gzip;q=0.5, zstd", "zstd", None),
        ("gzip, br;q=0", "gzip", None),
    ],
)
def test_text_formats_are_compressed_by_accept_encoding(data, accepted, coding, decode):
    plain = _get(data, "json").content
    _, headers, body = _raw(data, "json", {"Accept-Encoding": accepted})
    assert headers["content-encoding"] == coding
    assert "Accept-Encoding" in headers["vary"]
    assert int(headers["content-length"]) == len(body) < len(plain) / 3
    if decode is not None:
        assert decode(body) == plain
    status, _, ranged = _raw(data, "json", {"Accept-Encoding": accepted, "Range": "bytes=5-"})
    assert (status, ranged) == (206, body[5:])  # ranges are of the bytes as served


def test_binary_formats_are_never_content_coded(data):
    response = _get(data, "parquet", {"Accept-Encoding": "gzip, br, zstd"})
    assert "content-encoding" not in response.headers
    assert pq.read_table(io.BytesIO(response.content)).num_rows == 50_000


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
def test_arrow_buffer_compression_on_request(data, codec):
    plain = _get(data, "arrow").content
    packed = _get(data, "arrow", compression=codec)
    assert len(packed.content) < len(plain)
    assert pa.ipc.open_stream(packed.content).read_all().equals(data.table)


def test_compression_for_a_text_format_is_400(data):
    response = _get(data, "csv", compression="zstd")
    assert response.status_code == 400
    assert response.json()["errors"][0]["source"] == {"parameter": "compression"}


def test_records_json_is_an_array_of_objects(data):
    import json

    records = json.loads(_get(data, "records").content)
    assert records[:2] == [
        {"id": 0, "amount": 0.0, "name": 'name "0"'},
        {"id": 1, "amount": 0.25, "name": 'name "1"'},
    ]
    assert len(records) == 50_000


def test_variants_are_stored_once_enumerable_and_deleted_with_the_result(data):
    _get(data, "csv")
    _get(data, "csv", {"Accept-Encoding": "gzip"})
    _get(data, "arrow", compression="lz4")
    variants = stored_variants(data.store, data.data_key)
    assert set(variants) == {"csv", "csv.gz", "arrows.lz4"}
    assert all(size > 0 for size in variants.values())
    assert set(variants) <= VARIANTS
    delete_stored_data(data.store, results=[data.data_key])
    assert stored_variants(data.store, data.data_key) == {}
    assert _get(data, "csv").status_code == 404


def test_a_left_over_variant_of_a_purged_result_is_not_served(data):
    _get(data, "csv")
    data.store.delete(result_object_key(data.data_key))  # a purge raced by a materialisation
    assert data.store.size(variant_object_key(data.data_key, "csv"))
    response = _get(data, "csv")
    assert response.status_code == 404
    assert response.json()["errors"][0]["code"] == "result_gone"


def test_every_variant_the_server_can_make_is_in_the_catalogue():
    from data_server.formats import ArrowCompression

    names = {
        representations.Representation(fmt, compression, coding).variant
        for fmt in ResultFormat
        for compression in (
            ArrowCompression if fmt is ResultFormat.ARROW else [ArrowCompression.NONE]
        )
        for coding in (
            representations.ContentCoding
            if fmt.name_in_query in ("json", "records", "ndjson", "csv")
            else [representations.ContentCoding.IDENTITY]
        )
    }
    assert names == VARIANTS


def test_materialised_bytes_are_deterministic(data):
    first = _raw(data, "json", {"Accept-Encoding": "gzip"})[2]
    data.store.delete(variant_object_key(data.data_key, "json.gz"))
    assert _raw(data, "json", {"Accept-Encoding": "gzip"})[2] == first


def test_token_in_the_url_works_like_the_header(data):
    del data.headers["Authorization"]
    url = f"/data/{data.data_key}?token={data.token}&format=csv"
    assert data.get(url, headers=IDENTITY).content == _get_with_header(data)
    assert data.get(f"/data/{data.data_key}?format=csv").status_code == 401


def _get_with_header(data):
    return data.get(
        f"/data/{data.data_key}",
        params={"format": "csv"},
        headers={**IDENTITY, "Authorization": f"Data {data.token}"},
    ).content


def test_expired_token_is_told_apart_and_forgeries_are_not(data, settings):
    del data.headers["Authorization"]
    expired = _token(settings, data.data_key, now=time.time() - 3600)
    response = data.get(f"/data/{data.data_key}?token={expired}")
    assert response.status_code == 401
    assert response.json()["errors"][0]["code"] == "token_expired"
    claims = jwt.decode(expired, options={"verify_signature": False})
    forged = jwt.encode(claims, "k" * 32, algorithm="HS256", headers={"typ": TOKEN_TYPE})
    other_forged = jwt.encode({**claims, "exp": int(time.time()) + 60}, "k" * 32, algorithm="HS256")
    bodies = {
        data.get(f"/data/{data.data_key}?token={token}").content
        for token in (forged, other_forged, "x.y.z", expired[:-4] + "AAAA")
    }
    assert len(bodies) == 1
    assert b"invalid_data_token" in bodies.pop()
    assert ALGORITHM == "EdDSA"


def test_row_windows_stay_streamed_without_ranges(data):
    response = _get(data, "ndjson", offset=10, limit=5)
    assert response.status_code == 200
    assert response.headers["accept-ranges"] == "none"
    assert "etag" not in response.headers
    assert len(response.content.splitlines()) == 5


def test_cors_preflight_and_exposed_headers_for_configured_origins(data):
    origin = {"Origin": "https://notebook.example"}
    preflight = data.options(
        f"/data/{data.data_key}",
        headers={
            **origin,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization, range, if-none-match",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://notebook.example"
    response = _get(data, "csv", origin)
    exposed = response.headers["access-control-expose-headers"].lower()
    for name in ("content-length", "content-range", "accept-ranges", "etag"):
        assert name in exposed
    other = _get(data, "csv", {"Origin": "https://elsewhere.example"})
    assert "access-control-allow-origin" not in other.headers


def test_cors_is_off_by_default(tmp_path, stored):
    settings = Settings(state_dir=tmp_path, sample_scale=0.001)
    with TestClient(create_app(settings)) as client:
        preflight = client.options(
            "/data/x",
            headers={"Origin": "https://notebook.example", "Access-Control-Request-Method": "GET"},
        )
        assert "access-control-allow-origin" not in preflight.headers


def test_ranges_and_variants_on_the_s3_store(tmp_path, object_store, monkeypatch):
    """The S3 store: ranges are read from the object (``read_at``), a compressed variant is
    stored as it was encoded (not compressed again by its key's extension), variants are deleted
    with the result."""
    env = object_store.settings_env(object_store.new_bucket_url())
    for name, value in env.items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    settings = Settings(
        state_dir=tmp_path,
        sample_scale=0.001,
        results_url=env["DATAFERRY_RESULTS_URL"],
        s3_endpoint_url=env["DATAFERRY_S3_ENDPOINT_URL"],
    )
    stored = _publish(open_result_store(settings))
    with _client(settings, stored) as data:
        whole = _get(data, "parquet")
        assert whole.status_code == 200
        size = len(whole.content)
        part = _get(data, "parquet", {"Range": f"bytes={size - 8}-"})
        assert (
            part.status_code == 206
            and part.content == whole.content[-8:]
            and part.content.endswith(b"PAR1")
        )
        plain = _get(data, "json").content
        _, headers, packed = _raw(data, "json", {"Accept-Encoding": "zstd"})
        assert headers["content-encoding"] == "zstd"
        assert zstandard.ZstdDecompressor().decompressobj().decompress(packed) == plain
        arrow = _get(data, "arrow", compression="lz4").content
        assert pa.ipc.open_stream(arrow).read_all().equals(data.table)
        assert set(stored_variants(data.store, data.data_key)) == {
            "parquet", "json", "json.zst", "arrows.lz4"
        }  # fmt: skip
        delete_stored_data(data.store, results=[data.data_key])
        assert stored_variants(data.store, data.data_key) == {}
        assert not [
            key for key in object_store.keys(env["DATAFERRY_RESULTS_URL"]) if data.data_key in key
        ]


@pytest.mark.parametrize("query", ["format=csv&format=json", "offset=1&offset=2"])
def test_a_repeated_parameter_is_400_naming_it(data, query):
    response = data.get(f"/data/{data.data_key}?{query}")
    assert response.status_code == 400
    assert response.json()["errors"][0]["source"]["parameter"] == query.split("=")[0]


def test_a_trailing_slash_is_a_404_not_a_redirect_to_the_host_header(data):
    response = data.get(
        f"/data/{data.data_key}/", headers={"Host": "evil.example"}, follow_redirects=False
    )
    assert response.status_code == 404
    assert "location" not in response.headers
