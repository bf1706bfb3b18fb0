"""An upload must keep a pace (``api_server.upload_body``): one that trickles or stalls is a 408
that leaves no temporary file and no storage counted; a slow one that keeps the pace is stored.

The body is sent through the app's ASGI interface, in the test client's event loop: the test
client itself reads a request body whole before the app sees it, so it cannot send one slowly.
Windows are made small (fractions of a second) so that each test takes a second or two.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import orjson
import pytest

from api_server import upload_body
from shared.storage_quota import UPLOAD_TEMP_PREFIX
from tests.support.factories import Api
from tests.support.uploads import SQLITE_ONLY, files_datasource, snapshot

WINDOW_SECONDS = 0.3
MIN_BYTES = 1024


@pytest.fixture(autouse=True)
def small_pace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upload_body, "UPLOAD_WINDOW_SECONDS", WINDOW_SECONDS)
    monkeypatch.setattr(upload_body, "MIN_UPLOAD_BYTES_PER_WINDOW", MIN_BYTES)
    monkeypatch.setattr(upload_body, "FLUSH_BYTES", 16)  # so that a trickle reaches the disk


class Answer:
    def __init__(self, messages: list[dict[str, Any]]) -> None:
        start = messages[0]
        self.status: int = start["status"]
        self.headers = {name.decode().lower(): value.decode() for name, value in start["headers"]}
        self.document = orjson.loads(b"".join(m.get("body", b"") for m in messages[1:]))


def put_slowly(
    api: Api, key: str, path: str, pieces: Iterator[bytes], pause: float, length: int
) -> Answer:
    """PUT ``pieces`` with ``pause`` seconds before each; when they run out before ``length``
    bytes were sent, the client hangs up (as a real one would, once it gave up)."""

    async def receive() -> dict[str, Any]:
        await anyio.sleep(pause)
        piece = next(pieces, None)
        if piece is None:
            return {"type": "http.disconnect"}
        sent[0] += len(piece)
        return {"type": "http.request", "body": piece, "more_body": sent[0] < length}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    sent = [0]  # bytes sent so far
    messages: list[dict[str, Any]] = []
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "PUT",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "server": ("testserver", 80),
        "client": ("127.0.0.1", 50000),
        "headers": [
            (b"host", b"testserver"),
            (b"authorization", f"Api {key}".encode()),
            (b"content-type", b"text/csv"),
            (b"content-length", str(length).encode()),
        ],
        "state": api.client.app_state.copy(),
        "extensions": {},
    }
    assert api.client.portal is not None
    api.client.portal.call(api.app, scope, receive, send)
    return Answer(messages)


def files_bytes(api: Api, key: str, ds: str) -> int:
    return api.get(f"/datasources/{ds}/files", key).json()["meta"]["storage"]["files_bytes"]


def temporary_bytes(api: Api, org: Any) -> int:
    return sum(p.stat().st_size for p in api.area(org).rglob(f"{UPLOAD_TEMP_PREFIX}*"))


@SQLITE_ONLY
@pytest.mark.parametrize("trickle", [True, False], ids=["trickle", "stall"])
def test_an_upload_below_the_pace_is_408_and_leaves_nothing(api, trickle):
    org = api.create_org()
    ds, folder = files_datasource(api, org)
    before, stored = snapshot(folder), files_bytes(api, org.key, ds)
    held: list[int] = []  # the temporary bytes on disk, as the trickle's last piece is asked for

    def trickle_pieces() -> Iterator[bytes]:
        # 4 bytes every 20 ms: a piece arrives well within any window, the pace never does.
        # After 10 windows the client hangs up: then a missing deadline fails the test (400).
        for _ in range(int(10 * WINDOW_SECONDS / 0.02)):
            held[:] = [temporary_bytes(api, org)]
            yield b"1,2\n"

    def stalled_pieces() -> Iterator[bytes]:
        yield b"a,b\n" * 5
        held[:] = [temporary_bytes(api, org)]
        for _ in range(int(10 * WINDOW_SECONDS / 0.05)):
            yield b""  # then nothing: empty pieces, more to come, then the client hangs up

    pieces, pause = (trickle_pieces(), 0.02) if trickle else (stalled_pieces(), 0.05)
    answer = put_slowly(api, org.key, f"/datasources/{ds}/files/slow.csv", pieces, pause, 100_000)

    assert answer.status == 408, answer.document
    assert answer.document["errors"][0]["code"] == "request_timeout"
    assert answer.headers["connection"] == "close"
    assert held and held[0] > 0, "the upload never held storage: the test proves nothing"
    assert snapshot(folder) == before
    assert temporary_bytes(api, org) == 0
    assert files_bytes(api, org.key, ds) == stored


@SQLITE_ONLY
def test_an_upload_that_keeps_the_pace_is_stored_however_long_it_takes(api):
    org = api.create_org()
    ds, folder = files_datasource(api, org)
    body = b"n\n" + b"".join(b"%08d\n" % i for i in range(6000))  # 54 KiB: 27 pieces of 2 KiB
    pieces = [body[i : i + 2 * MIN_BYTES] for i in range(0, len(body), 2 * MIN_BYTES)]
    # Each piece keeps the pace on its own; together they take several windows.
    pause = 2 * WINDOW_SECONDS / 10
    assert len(pieces) * pause > 3 * WINDOW_SECONDS
    answer = put_slowly(
        api, org.key, f"/datasources/{ds}/files/slow.csv", iter(pieces), pause, len(body)
    )
    assert answer.status == 201, answer.document
    assert (folder / "slow.csv").read_bytes() == body
