"""The first fetch of a representation is sent as it is encoded: its bytes reach the client
before the encoding ends, without a length; every request for it meanwhile follows the same
encoding; a request that needs every byte (a range, HEAD) waits for it; the representation is
counted in the quota before the first response ends and stored after it; errors before the first
byte are answered as errors; the encoders are warmed before the server takes its first request.
"""

from __future__ import annotations

import json
import threading

import anyio
import pytest
from starlette.testclient import TestClient

from data_server import encoders, endpoints, representations
from data_server.app import create_app
from shared.results import result_object_key, stored_variants, variant_object_key
from shared.settings import Settings
from tests.support.data_http import IDENTITY, get_result, stored_when_read, variants_size

JSON = {"format": "json"}


@pytest.fixture
def held(monkeypatch):
    """``encode_result`` pauses after its first chunk until ``release`` is set; ``calls``
    counts encodings."""

    class Held:
        def __init__(self) -> None:
            self.calls: list[object] = []
            self.release = threading.Event()

    held = Held()
    real = representations.encode_result

    def paused(*args, **kwargs):
        held.calls.append(args[1])
        for index, chunk in enumerate(real(*args, **kwargs)):
            if index == 1:
                assert held.release.wait(30), "the test never released the encoder"
            yield chunk

    monkeypatch.setattr(representations, "encode_result", paused)
    return held


def _url(data) -> str:
    return f"/data/{data.data_key}"


def test_first_fetch_streams_before_the_encoding_ends_and_others_follow_it(data, held):
    with data.stream("GET", _url(data), params=JSON, headers=IDENTITY) as first:
        assert first.status_code == 200
        assert "content-length" not in first.headers  # not known yet
        assert first.headers["accept-ranges"] == "bytes" and first.headers["etag"]
        chunks = first.iter_raw()
        opening = next(chunks)  # sent while the encoder is paused
        assert opening.startswith(b'{"columns":')
        with data.stream("GET", _url(data), params=JSON, headers=IDENTITY) as second:
            assert second.status_code == 200
            assert second.headers["etag"] == first.headers["etag"]
            held.release.set()
            followed = b"".join(second.iter_raw())
        whole = opening + b"".join(chunks)
    assert len(held.calls) == 1  # one encoding for both
    stored_when_read()
    assert stored_variants(data.store, data.data_key) == {"json": len(whole)}
    stored = get_result(data, "json")
    assert int(stored.headers["content-length"]) == len(whole)
    assert stored.content == whole == followed
    assert json.loads(whole)["row_count"] == 50_000


@pytest.mark.parametrize(
    ("method", "headers", "status"),
    [("GET", {"Range": "bytes=10-19"}, 206), ("HEAD", {}, 200)],
)
def test_a_range_or_head_during_the_encoding_waits_for_every_byte(
    data, held, method, headers, status
):
    with data.stream("GET", _url(data), params=JSON, headers=IDENTITY) as first:
        chunks = first.iter_raw()
        opening = next(chunks)
        answers = []
        waiter = threading.Thread(
            target=lambda: answers.append(
                data.request(method, _url(data), params=JSON, headers={**IDENTITY, **headers})
            )
        )
        waiter.start()
        waiter.join(0.5)
        assert waiter.is_alive()  # waiting for the end of the encoding
        held.release.set()
        whole = opening + b"".join(chunks)
        waiter.join(30)
    (answer,) = answers
    stored_when_read()
    size = stored_variants(data.store, data.data_key)["json"]
    assert answer.status_code == status
    if status == 206:
        assert answer.headers["content-range"] == f"bytes 10-19/{size}"
    else:
        assert int(answer.headers["content-length"]) == size and answer.content == b""
    assert len(held.calls) == 1 and len(whole) == size


def test_a_reader_that_leaves_does_not_stop_the_encoding(data, held):
    with data.stream("GET", _url(data), params=JSON, headers=IDENTITY) as first:
        next(first.iter_raw())
    held.release.set()  # the client is gone; the encoding goes on and is stored
    followed = get_result(data, "json")  # follows it, or reads what it stored
    assert json.loads(followed.content)["row_count"] == 50_000
    assert stored_variants(data.store, data.data_key) == {"json": len(followed.content)}
    assert len(held.calls) == 1


def test_if_none_match_is_answered_without_encoding_and_checks_the_result_exists(data, held):
    held.release.set()
    etag = get_result(data, "json").headers["etag"]
    data.store.delete(variant_object_key(data.data_key, "json"))  # to be encoded again if needed
    held.calls.clear()
    assert get_result(data, "json", {"If-None-Match": etag}).status_code == 304
    assert held.calls == []
    assert get_result(data, "csv", {"If-None-Match": etag}).status_code == 200  # another's tag
    data.store.delete(result_object_key(data.data_key))
    gone = get_result(data, "json", {"If-None-Match": etag})
    assert gone.status_code == 404 and gone.json()["errors"][0]["code"] == "result_gone"


def test_an_encoding_that_fails_before_its_first_byte_is_a_json_error(data, monkeypatch):
    real = representations.encode_result

    def broken(*args, **kwargs):
        raise OSError("disk on fire")
        yield b""

    monkeypatch.setattr(representations, "encode_result", broken)
    failed = get_result(data, "json")
    assert failed.status_code == 500
    assert failed.json()["errors"][0]["status"] == "500"
    assert "disk on fire" not in failed.text
    monkeypatch.setattr(representations, "encode_result", real)  # nothing left behind: retried
    assert json.loads(get_result(data, "json").content)["row_count"] == 50_000


def test_an_encoding_that_fails_midway_cuts_the_body_and_stores_nothing(data, monkeypatch):
    real = representations.encode_result

    def failing(*args, **kwargs):
        chunks = real(*args, **kwargs)
        yield next(chunks)
        raise OSError("disk on fire")

    monkeypatch.setattr(representations, "encode_result", failing)
    with data.stream("GET", _url(data), params=JSON, headers=IDENTITY) as cut:
        assert cut.status_code == 200
        body = b"".join(cut.iter_raw())  # uvicorn closes the connection before the last chunk
    with pytest.raises(json.JSONDecodeError):
        json.loads(body)
    assert stored_variants(data.store, data.data_key) == {}
    monkeypatch.setattr(representations, "encode_result", real)
    assert get_result(data, "json").status_code == 200


@pytest.mark.parametrize(
    ("cap", "status"), [("ENCODINGS_AT_MOST", 503), ("ENCODINGS_PER_ORGANIZATION", 429)]
)
def test_beyond_the_encodings_allowed_a_first_request_is_refused(
    data, held, monkeypatch, cap, status
):
    """The server's cap (503) and the organisation's share of it (429), here one encoding."""
    monkeypatch.setattr(representations, cap, 1)
    with data.stream("GET", _url(data), params=JSON, headers=IDENTITY) as first:
        chunks = first.iter_raw()
        next(chunks)
        busy = get_result(data, "ndjson")
        assert busy.status_code == status and busy.headers["retry-after"] == "1"
        assert busy.json()["errors"][0]["code"] == "encoders_busy"
        held.release.set()
        b"".join(chunks)
    assert get_result(data, "ndjson").status_code == 200


def test_readers_finish_before_the_representation_is_stored_and_it_counts_already(
    data, settings, monkeypatch
):
    """The fsync that stores a representation is no client's wait: the first response ends
    before it, with the quota already charged. A client that has read the whole body and asks
    again meanwhile gets the same bytes whole, with their length, and the encoding being stored
    no longer counts against its organisation's share (a spurious 429 at the cap)."""
    storing, store_now = threading.Event(), threading.Event()
    real_publish = type(data.store).publish

    def held_publish(store, path, key):
        storing.set()
        assert store_now.wait(30), "the test never let the store go on"
        real_publish(store, path, key)

    monkeypatch.setattr(type(data.store), "publish", held_publish)
    monkeypatch.setattr(representations, "ENCODINGS_PER_ORGANIZATION", 1)
    first = data.get(_url(data), params=JSON, headers=IDENTITY)
    assert first.status_code == 200 and "content-length" not in first.headers
    assert storing.wait(10) and stored_variants(data.store, data.data_key) == {}
    charged = variants_size(settings, data.data_key)  # before the readers finished
    assert charged == len(first.content)
    again = data.get(_url(data), params=JSON, headers=IDENTITY)
    assert again.content == first.content
    assert int(again.headers["content-length"]) == len(first.content)
    assert data.get(_url(data), params={"format": "csv"}, headers=IDENTITY).status_code == 200
    store_now.set()
    stored_when_read()
    assert stored_variants(data.store, data.data_key) == {
        "json": len(first.content),
        "csv": variants_size(settings, data.data_key) - len(first.content),
    }


def test_a_quota_count_that_fails_still_ends_the_body_whole_and_stores_nothing(data, monkeypatch):
    """The readers finish once the representation is counted; if counting fails (the metadata
    database gone), the release still lets them finish: every byte was written."""

    def unreachable(*args, **kwargs):
        raise OSError("metadata database unreachable")

    monkeypatch.setattr(endpoints, "charge_representation", unreachable)
    answers: list = []
    reader = threading.Thread(target=lambda: answers.append(get_result(data, "json")), daemon=True)
    reader.start()
    reader.join(30)
    (answer,) = answers  # not empty: the body ended
    assert answer.status_code == 200 and json.loads(answer.content)["row_count"] == 50_000
    assert stored_variants(data.store, data.data_key) == {}


def test_concurrent_ranges_during_the_encoding_each_get_their_own_bytes(data, held):
    """Ranges asked for while the representation is encoded get the bytes stored later. (That
    readers share one file offset is caught by tests/data_server/test_growing_files.py, whose
    reads race more than a test client's.)"""
    with data.stream("GET", _url(data), params=JSON, headers=IDENTITY) as first:
        chunks = first.iter_raw()
        opening = next(chunks)
        spans = [(n * 150_000, n * 150_000 + 299_999) for n in range(8)]
        answers: dict[int, bytes] = {}

        def fetch(index: int) -> None:
            first_byte, last_byte = spans[index]
            headers = {**IDENTITY, "Range": f"bytes={first_byte}-{last_byte}"}
            answers[index] = data.get(_url(data), params=JSON, headers=headers).content

        readers = [threading.Thread(target=fetch, args=(n,)) for n in range(len(spans))]
        for reader in readers:
            reader.start()
        held.release.set()
        whole = opening + b"".join(chunks)
        for reader in readers:
            reader.join(30)
    assert len(whole) > spans[-1][1]
    assert all(answers[n] == whole[a : b + 1] for n, (a, b) in enumerate(spans))


def test_an_encoder_failing_at_once_under_a_content_coding_is_a_json_error(data, monkeypatch):
    """gzip writes its header before the encoder's first byte: that is no reason to start."""

    def broken(*args, **kwargs):
        raise OSError("disk on fire")
        yield b""

    monkeypatch.setattr(representations, "encode_result", broken)
    for coding in ("gzip", "zstd", "br"):
        failed = get_result(data, "json", {"Accept-Encoding": coding})
        assert failed.status_code == 500, coding
        assert failed.json()["errors"][0]["status"] == "500"


def test_an_http_1_0_first_fetch_waits_for_the_end_and_gets_a_length(data):
    """HTTP/1.0 has no chunked encoding: a body without a length that was cut short would look
    whole, so such a client gets the whole representation with its length instead."""
    messages = _asgi_get(data, _url(data), "format=json", http_version="1.0")
    start, body = messages[0], b"".join(m.get("body", b"") for m in messages[1:])
    assert start["status"] == 200
    headers = {name.decode(): value.decode() for name, value in start["headers"]}
    assert int(headers["content-length"]) == len(body)
    stored_when_read()
    assert stored_variants(data.store, data.data_key) == {"json": len(body)}
    assert body == get_result(data, "json").content


def _asgi_get(client, path: str, query: str, *, http_version: str) -> list[dict]:
    """The ASGI messages the data server sends for one GET of ``path`` over ``http_version``
    (the test client speaks HTTP/1.1 only)."""
    messages: list[dict] = []
    requested = [False]

    async def receive() -> dict:
        if not requested[0]:
            requested[0] = True
            return {"type": "http.request", "body": b"", "more_body": False}
        while not messages or messages[-1].get("more_body", True):
            await anyio.sleep(0.01)  # the client stays until the response has ended
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        messages.append(message)

    headers = {**IDENTITY, "authorization": client.headers["authorization"], "host": "testserver"}
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": http_version,
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "server": ("testserver", 80),
        "client": ("127.0.0.1", 50000),
        "headers": [(name.lower().encode(), value.encode()) for name, value in headers.items()],
        "state": client.app_state.copy(),
        "extensions": {},
    }
    client.portal.call(client.app, scope, receive, send)
    return messages


def test_the_encoders_are_warmed_before_the_first_request(tmp_path, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(encoders, "warm_up", lambda: calls.append("warm_up"))
    app = create_app(Settings(state_dir=tmp_path, sample_scale=0.001))
    assert calls == []
    with TestClient(app) as client:
        assert calls == ["warm_up"]
        assert client.get("/healthz").status_code == 200


def test_a_failed_warm_up_does_not_stop_the_server(tmp_path, monkeypatch, caplog):
    def broken() -> None:
        raise RuntimeError("encoder broken")

    monkeypatch.setattr(encoders, "warm_up", broken)
    with TestClient(create_app(Settings(state_dir=tmp_path, sample_scale=0.001))) as client:
        assert client.get("/healthz").status_code == 200
    assert "warming the encoders failed" in caplog.text
