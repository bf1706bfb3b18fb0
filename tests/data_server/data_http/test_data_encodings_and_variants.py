"""Content coding and stored variants of ``/data/{data_key}``: text formats compressed by
Accept-Encoding, Arrow buffer compression on request, each variant materialised once and
deterministically, deleted with its result, on the local and the S3 store.
"""

from __future__ import annotations

import gzip
import io
import json
import time

import brotli
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from data_server import representations
from data_server.formats import ResultFormat
from data_server.warm_files import WarmFiles, ready_count
from shared.results import (
    VARIANTS,
    delete_stored_data,
    open_result_store,
    result_object_key,
    stored_variants,
    variant_object_key,
)
from shared.scratch import directories
from shared.settings import Settings
from tests.support.data_http import (
    data_client,
    get_result,
    publish_result,
    stored_when_read,
    variants_size,
)
from tests.support.warm_files import make_prompt


def _raw(client, fmt, headers, **params):
    """Status, headers and the bytes as sent: the test client would undo gzip and br."""
    with client.stream(
        "GET", f"/data/{client.data_key}", params={"format": fmt, **params}, headers=headers
    ) as response:
        body = b"".join(response.iter_raw())
    stored_when_read()
    return response.status_code, response.headers, body


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
    plain = get_result(data, "json").content
    _, first_headers, first = _raw(data, "json", {"Accept-Encoding": accepted})
    _, headers, body = _raw(data, "json", {"Accept-Encoding": accepted})  # stored: a length
    assert headers["content-encoding"] == first_headers["content-encoding"] == coding
    assert "Accept-Encoding" in headers["vary"]
    assert int(headers["content-length"]) == len(body) == len(first) < len(plain) / 3
    assert body == first
    if decode is not None:
        assert decode(body) == plain
    status, _, ranged = _raw(data, "json", {"Accept-Encoding": accepted, "Range": "bytes=5-"})
    assert (status, ranged) == (206, body[5:])  # ranges are of the bytes as served


def test_binary_formats_are_never_content_coded(data):
    response = get_result(data, "parquet", {"Accept-Encoding": "gzip, br, zstd"})
    assert "content-encoding" not in response.headers
    assert pq.read_table(io.BytesIO(response.content)).num_rows == 50_000


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
def test_arrow_buffer_compression_on_request(data, codec):
    plain = get_result(data, "arrow").content
    packed = get_result(data, "arrow", compression=codec)
    assert len(packed.content) < len(plain)
    assert pa.ipc.open_stream(packed.content).read_all().equals(data.table)


def test_compression_for_a_text_format_is_400(data):
    response = get_result(data, "csv", compression="zstd")
    assert response.status_code == 400
    assert response.json()["errors"][0]["source"] == {"parameter": "compression"}


def test_records_json_is_an_array_of_objects(data):
    import json

    records = json.loads(get_result(data, "records").content)
    assert records[:2] == [
        {"id": 0, "amount": 0.0, "name": 'name "0"'},
        {"id": 1, "amount": 0.25, "name": 'name "1"'},
    ]
    assert len(records) == 50_000


def test_variants_are_stored_once_enumerable_and_deleted_with_the_result(data):
    get_result(data, "csv")
    get_result(data, "csv", {"Accept-Encoding": "gzip"})
    get_result(data, "arrow", compression="lz4")
    variants = stored_variants(data.store, data.data_key)
    assert set(variants) == {"csv", "csv.gz", "arrows.lz4"}
    assert all(size > 0 for size in variants.values())
    assert set(variants) <= VARIANTS
    delete_stored_data(data.store, results=[data.data_key])
    assert stored_variants(data.store, data.data_key) == {}
    assert get_result(data, "csv").status_code == 404


def test_a_small_representation_is_encoded_per_request_and_never_stored(settings):
    stored = publish_result(open_result_store(settings), rows=100)
    with data_client(settings, stored) as small:
        for fmt, headers in [("json", {}), ("csv", {"Accept-Encoding": "gzip"})]:
            status, sent, body = _raw(small, fmt, headers)
            assert (status, len(body)) == (200, int(sent["content-length"]))
            _, sent_again, body_again = _raw(small, fmt, headers)
            assert (sent_again["etag"], body_again) == (sent["etag"], body)  # the same each time
            etag = sent["etag"]
            assert _raw(small, fmt, {**headers, "If-None-Match": etag})[0] == 304
            ranged = _raw(small, fmt, {**headers, "Range": "bytes=10-29"})
            assert (ranged[0], ranged[2]) == (206, body[10:30])
        assert json.loads(get_result(small, "json").content)["row_count"] == 100
        assert stored_variants(small.store, small.data_key) == {}
        assert variants_size(settings, small.data_key) == 0


def test_a_tiny_result_of_long_repeated_values_is_encoded_in_memory_only_until_it_outgrows(
    settings, monkeypatch
):
    """A dictionary column: 2,000 rows of one 5,000-character value are 13 KB of Arrow but
    10 MB of JSON. The in-memory attempt stops after little work, once; the representation is
    then stored, and later requests encode nothing."""
    long_value = "x" * 5_000
    table = pa.table({"v": pa.array([long_value] * 2_000).dictionary_encode()})
    store, data_key, _ = publish_result(open_result_store(settings), table=table)
    assert store.size(result_object_key(data_key)) < representations.SMALL_REPRESENTATION_BYTES
    encoded: list[int] = []

    def counted(*args, **kwargs):
        for chunk in real_encode(*args, **kwargs):
            encoded.append(len(chunk))
            yield chunk

    real_encode = representations.encode_result
    monkeypatch.setattr(representations, "encode_result", counted)
    with data_client(settings, (store, data_key, table)) as data:
        body = get_result(data, "json").content
        assert json.loads(body)["rows"] == [[long_value]] * 2_000
        whole = sum(encoded)
        assert whole - len(body) < 1 << 20  # the given-up attempt: under a megabyte of text
        encoded.clear()
        for headers in ({}, {"Range": "bytes=0-99"}):
            assert get_result(data, "json", headers).status_code in (200, 206)
        assert encoded == []  # stored: served, not encoded again
        assert set(stored_variants(store, data_key)) == {"json"}


def test_a_small_result_whose_representation_is_not_small_is_stored(settings, monkeypatch):
    """The Arrow file passes the size gate, but its records JSON (keys on every row) outgrows
    the limit while it is encoded: it is stored and counted like any other."""
    store, data_key, table = publish_result(open_result_store(settings), rows=100)
    limit = store.size(result_object_key(data_key))
    monkeypatch.setattr(representations, "SMALL_REPRESENTATION_BYTES", limit)
    with data_client(settings, (store, data_key, table)) as small:
        body = get_result(small, "records").content
        assert len(body) > limit
        variant = representations.Representation(ResultFormat.RECORDS).variant
        assert stored_variants(store, data_key) == {variant: len(body)}
        assert variants_size(settings, data_key) == len(body)


def test_a_left_over_variant_of_a_purged_result_is_not_served(data):
    get_result(data, "csv")
    data.store.delete(result_object_key(data.data_key))  # a purge raced by a materialisation
    assert data.store.size(variant_object_key(data.data_key, "csv"))
    response = get_result(data, "csv")
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
    stored = publish_result(open_result_store(settings))
    with data_client(settings, stored) as data:
        whole = get_result(data, "parquet")
        assert whole.status_code == 200
        size = len(whole.content)
        part = get_result(data, "parquet", {"Range": f"bytes={size - 8}-"})
        assert (
            part.status_code == 206
            and part.content == whole.content[-8:]
            and part.content.endswith(b"PAR1")
        )
        plain = get_result(data, "json").content
        _, headers, packed = _raw(data, "json", {"Accept-Encoding": "zstd"})
        assert headers["content-encoding"] == "zstd"
        assert zstandard.ZstdDecompressor().decompressobj().decompress(packed) == plain
        arrow = get_result(data, "arrow", compression="lz4").content
        assert pa.ipc.open_stream(arrow).read_all().equals(data.table)
        assert set(stored_variants(data.store, data.data_key)) == {
            "parquet", "json", "json.zst", "arrows.lz4"
        }  # fmt: skip
        delete_stored_data(data.store, results=[data.data_key])
        assert stored_variants(data.store, data.data_key) == {}
        assert not [
            key for key in object_store.keys(env["DATAFERRY_RESULTS_URL"]) if data.data_key in key
        ]


@pytest.mark.parametrize("warm_mb", [8, 1])  # larger than the representation, and smaller
def test_a_representation_written_into_a_warm_file_is_stored_at_its_own_length(
    tmp_path, monkeypatch, warm_mb
):
    """The warm file is overwritten from its start and cut to the representation: the same
    bytes as without one, stored and charged at their own length, not the warm file's."""
    monkeypatch.setattr(representations, "WARM_WORTH_BYTES", 0)  # this result counts as large
    make_prompt(monkeypatch.setattr)
    taken: list[bool] = []
    real_take = WarmFiles.take_as

    def recorded(self, path):
        taken.append(real_take(self, path))
        return taken[-1]

    monkeypatch.setattr(WarmFiles, "take_as", recorded)
    bodies = {}
    for warm in (warm_mb, 0):
        settings = Settings(
            state_dir=tmp_path / str(warm), sample_scale=0.001, warm_scratch_mb=warm
        )
        store, data_key, table = publish_result(open_result_store(settings))
        with data_client(settings, (store, data_key, table)) as data:
            deadline = time.monotonic() + 30
            while warm and not sum(map(ready_count, directories(store.scratch_dir))):
                assert time.monotonic() < deadline, "no warm file was prepared"
                time.sleep(0.02)
            identity = {"Accept-Encoding": "identity"}
            status, sent, body = _raw(data, "ndjson", identity)
            assert status == 200
            assert "content-length" not in sent  # a first fetch: encoded as it was sent
            bodies[warm] = body
            assert stored_variants(store, data_key) == {"ndjson": len(body)}
            assert variants_size(settings, data_key) == len(body)
            again = _raw(data, "ndjson", identity)
            assert (again[2], int(again[1]["content-length"])) == (body, len(body))
    assert taken == [True, False]  # the warm server took one; the other had none
    assert bodies[warm_mb] == bodies[0]
    assert len(bodies[0]) > 1024 * 1024  # the smaller warm file (1 MiB) was outgrown
