"""The S3-compatible result store against a real S3 server (moto, on 127.0.0.1)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from shared.errors import ConfigurationError, ServiceUnavailable
from shared.results import ResultGone, S3ResultStore, open_result_store
from shared.settings import Settings


@pytest.fixture
def store(object_store, tmp_path, monkeypatch):
    for name, value in object_store.settings_env("s3://unused").items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    bucket_url = object_store.new_bucket_url()
    return S3ResultStore(bucket_url, tmp_path / "scratch", endpoint_url=object_store.endpoint_url)


def _arrow_file(path, rows: int) -> None:
    table = pa.table({"n": list(range(rows))})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=1000)


def test_publish_then_read_in_ranges(store):
    local = store.temp_path("x.arrow")
    _arrow_file(local, 5000)
    store.publish(local, "results/r_abc.arrow")
    assert not local.exists()  # the scratch copy is gone once the object exists
    reader = pa.ipc.open_file(store.open("results/r_abc.arrow"))
    assert reader.num_record_batches == 5
    assert reader.get_batch(4).column(0)[-1].as_py() == 4999


def test_bytes_round_trip_and_idempotent_delete(store):
    store.put_bytes("schemas/s.json", b'{"a": 1}')
    assert store.read_bytes("schemas/s.json") == b'{"a": 1}'
    store.delete("schemas/s.json")
    store.delete("schemas/s.json")  # already gone: still fine
    with pytest.raises(ResultGone):
        store.open("schemas/s.json")


def test_keys_cannot_leave_the_prefix(store):
    with pytest.raises(ResultGone):
        store.open("../other/results/x.arrow")


def test_readiness_needs_the_bucket(store, object_store, tmp_path):
    store.check()
    missing = S3ResultStore(
        "s3://no-such-bucket-here/p", tmp_path / "s", endpoint_url=object_store.endpoint_url
    )
    with pytest.raises(ServiceUnavailable):
        missing.check()


def test_settings_choose_the_store(tmp_path):
    assert type(open_result_store(Settings(state_dir=tmp_path))).__name__ == "LocalResultStore"
    chosen = open_result_store(Settings(state_dir=tmp_path, results_url="s3://b/p"))
    assert isinstance(chosen, S3ResultStore) and chosen.base == "b/p"
    with pytest.raises(ConfigurationError):
        open_result_store(Settings(state_dir=tmp_path, results_url="http://b/p"))
