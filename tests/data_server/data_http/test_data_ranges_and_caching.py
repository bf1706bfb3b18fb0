"""Lengths, ETags, byte ranges, conditional requests and HEAD on ``/data/{data_key}``: a resumed
download is byte-identical, ETags are stable across grants, row windows stay streamed.
"""

from __future__ import annotations

import time

import pytest

from data_server import encoders, representations
from data_server.formats import ResultFormat
from tests.support.data_http import IDENTITY, data_token, get_result


@pytest.mark.parametrize("fmt", [f.name_in_query for f in ResultFormat])
def test_resumed_download_from_the_middle_is_byte_identical(data, fmt):
    first = get_result(data, fmt)  # sent as it is encoded: no length yet
    whole = get_result(data, fmt)
    assert whole.status_code == first.status_code == 200
    assert whole.content == first.content and whole.headers["etag"] == first.headers["etag"]
    size = len(whole.content)
    assert int(whole.headers["content-length"]) == size
    assert whole.headers["accept-ranges"] == first.headers["accept-ranges"] == "bytes"
    middle = size // 2
    rest = get_result(data, fmt, {"Range": f"bytes={middle}-", "If-Range": whole.headers["etag"]})
    assert rest.status_code == 206
    assert rest.headers["content-range"] == f"bytes {middle}-{size - 1}/{size}"
    assert whole.content[:middle] + rest.content == whole.content
    assert rest.headers["etag"] == whole.headers["etag"]


def test_etag_is_stable_across_grants_and_304_on_if_none_match(data, settings):
    first = get_result(data, "json")
    other_grant = {
        "Authorization": f"Data {data_token(settings, data.data_key, now=time.time() - 5)}"
    }
    second = get_result(data, "json", other_grant)
    assert first.headers["etag"] == second.headers["etag"]
    assert first.headers["etag"].startswith('"')  # strong
    assert first.content == second.content
    again = get_result(data, "json", {"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == first.headers["etag"]
    assert get_result(data, "csv").headers["etag"] != first.headers["etag"]


def test_an_encoders_revision_gives_new_etags(data, monkeypatch):
    """A server whose encoders spell some value differently (a new release) must not answer 304
    to, or resume a download under, an ETag that named the old bytes."""
    before = get_result(data, "json")
    monkeypatch.setattr(representations, "ENCODING_REVISION", representations.ENCODING_REVISION + 1)
    after = get_result(data, "json", {"If-None-Match": before.headers["etag"]})
    assert after.status_code == 200 and after.content == before.content
    assert after.headers["etag"] != before.headers["etag"]
    resumed = get_result(data, "json", {"Range": "bytes=10-", "If-Range": before.headers["etag"]})
    assert resumed.status_code == 200 and resumed.content == before.content


def test_head_has_the_length_and_no_body(data):
    get = get_result(data, "parquet")
    head = data.head(f"/data/{data.data_key}", params={"format": "parquet"}, headers=IDENTITY)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(get.content))
    assert head.headers["etag"] == get.headers["etag"]


def test_suffix_multiple_and_unsatisfiable_ranges(data):
    whole = get_result(data, "ndjson").content
    size = len(whole)
    tail = get_result(data, "ndjson", {"Range": "bytes=-100"})
    assert tail.status_code == 206 and tail.content == whole[-100:]
    multi = get_result(data, "ndjson", {"Range": "bytes=0-9, 20-29"})
    assert multi.status_code == 206
    assert multi.headers["content-type"].startswith("multipart/byteranges; boundary=")
    assert int(multi.headers["content-length"]) == len(multi.content)
    assert whole[0:10] in multi.content and whole[20:30] in multi.content
    assert f"Content-Range: bytes 20-29/{size}".encode() in multi.content
    beyond = get_result(data, "ndjson", {"Range": f"bytes={size}-"})
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == f"bytes */{size}"
    assert beyond.json()["errors"][0]["code"] == "range_not_satisfiable"
    assert (
        get_result(data, "ndjson", {"Range": "lines=1-2"}).status_code == 200
    )  # other units: ignored


@pytest.mark.parametrize(
    "spec",
    ["\xb2-", "-\xb2", "0-\xb3", "\xb9\xb2-", "a-b", "5-4", "-"],
    ids=[
        "superscript-first",
        "superscript-suffix",
        "superscript-last",
        "superscripts",
        "letters",
        "backwards",
        "dash-only",
    ],
)
def test_a_malformed_range_sends_the_whole_body(data, spec):
    """RFC 9110 §14.2: a malformed Range is ignored. ``str.isdigit`` took ``²`` for a digit,
    and ``int`` then raised: a 500."""
    whole = get_result(data, "csv").content
    answer = get_result(data, "csv", {"Range": f"bytes={spec}".encode("latin-1")})
    assert answer.status_code == 200 and answer.content == whole


def test_range_positions_of_thousands_of_digits_are_clamped_or_unsatisfiable(data):
    """``int`` refuses more than 4,300 digits: such a position is past any end all the same."""
    whole = get_result(data, "csv").content
    huge = "9" * 5000
    to_the_end = get_result(data, "csv", {"Range": f"bytes=0-{huge}"})
    assert to_the_end.status_code == 206 and to_the_end.content == whole
    suffix = get_result(data, "csv", {"Range": f"bytes=-{huge}"})
    assert suffix.status_code == 206 and suffix.content == whole
    zeros = get_result(data, "csv", {"Range": f"bytes={'0' * 5000}-9"})
    assert zeros.status_code == 206 and zeros.content == whole[:10]
    past = get_result(data, "csv", {"Range": f"bytes={huge}-"})
    assert past.status_code == 416
    assert past.json()["errors"][0]["code"] == "range_not_satisfiable"


def test_overlapping_ranges_never_send_more_than_the_whole_body(data):
    """Sixteen ``0-`` parts made a multipart body sixteen times the representation."""
    whole = get_result(data, "csv").content
    repeated = get_result(data, "csv", {"Range": "bytes=" + ",".join(["0-"] * 16)})
    assert repeated.status_code == 200 and repeated.content == whole
    overlapping = get_result(
        data, "csv", {"Range": f"bytes=0-{len(whole) // 2},-{len(whole) // 2 + 10}"}
    )
    assert overlapping.status_code == 200 and overlapping.content == whole
    apart = get_result(data, "csv", {"Range": "bytes=0-9,5-14"})  # a little overlap is served
    assert apart.status_code == 206 and whole[5:15] in apart.content


def test_if_range_with_an_old_etag_sends_everything(data):
    whole = get_result(data, "csv").content
    stale = get_result(data, "csv", {"Range": "bytes=10-", "If-Range": '"not-the-etag"'})
    assert stale.status_code == 200 and stale.content == whole


def test_row_windows_stay_streamed_without_ranges(data):
    response = get_result(data, "ndjson", offset=10, limit=5)
    assert response.status_code == 200
    assert response.headers["accept-ranges"] == "none"
    assert "etag" not in response.headers
    assert len(response.content.splitlines()) == 5


def test_head_on_a_row_window_encodes_nothing(data, monkeypatch):
    """It has no body to send: it used to encode the whole window and throw it away."""
    get = get_result(data, "csv", offset=0)
    monkeypatch.setattr(encoders, "encode_result", _no_encoding)
    head = data.head(f"/data/{data.data_key}", params={"format": "csv", "offset": "0"})
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]
    assert head.headers["accept-ranges"] == "none" and "content-length" not in head.headers


def _no_encoding(*args, **kwargs):
    raise AssertionError("a HEAD encoded the window")


def test_if_match_naming_another_representation_is_412(data):
    whole = get_result(data, "csv")
    etag = whole.headers["etag"]
    for listed in (etag, f'"other", {etag}', "*"):
        assert get_result(data, "csv", {"If-Match": listed}).content == whole.content
    for listed in ('"other"', f"W/{etag}"):  # If-Match compares strongly
        refused = get_result(data, "csv", {"If-Match": listed})
        assert refused.status_code == 412
        assert refused.json()["errors"][0]["code"] == "precondition_failed"
        assert etag in refused.json()["errors"][0]["detail"]


def test_conditional_requests_on_a_row_window(data):
    """A window has no ETag: only ``*`` names it."""
    window = {"format": "csv", "offset": "0", "limit": "3"}
    url = f"/data/{data.data_key}"
    unchanged = data.get(url, params=window, headers={"If-None-Match": "*"})
    assert unchanged.status_code == 304 and "etag" not in unchanged.headers
    assert data.get(url, params=window, headers={"If-None-Match": '"x"'}).status_code == 200
    assert data.get(url, params=window, headers={"If-Match": "*"}).status_code == 200
    assert data.get(url, params=window, headers={"If-Match": '"x"'}).status_code == 412


def test_a_list_header_split_over_lines_is_read_whole_and_a_repeated_range_refused(data):
    """RFC 9110 §5.3: Accept-Encoding and If-None-Match may come as several field lines, which
    mean their combination (before, only the first line was read); Range holds one value, and
    two of them mean nothing a server could honour (400, as other one-value headers)."""
    url = f"/data/{data.data_key}"
    coded = data.get(
        url,
        params={"format": "ndjson"},
        headers=[("Accept-Encoding", "identity;q=0.1"), ("Accept-Encoding", "zstd")],
    )
    assert coded.headers["content-encoding"] == "zstd"
    etag = get_result(data, "ndjson").headers["etag"]
    matched = data.get(
        url,
        params={"format": "ndjson"},
        headers=[*IDENTITY.items(), ("If-None-Match", '"other"'), ("If-None-Match", etag)],
    )
    assert matched.status_code == 304
    repeated = data.get(
        url,
        params={"format": "ndjson"},
        headers=[*IDENTITY.items(), ("Range", "bytes=0-9"), ("Range", "bytes=10-19")],
    )
    assert repeated.status_code == 400
    assert repeated.json()["errors"][0]["code"] == "repeated_header"
