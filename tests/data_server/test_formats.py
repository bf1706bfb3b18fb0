"""Result formats in-process: negotiation of the format and parsing of the row window."""

from __future__ import annotations

import pytest

from data_server import formats
from data_server.formats import ResultFormat, negotiate, parse_row_window
from data_server.representations import negotiate_coding
from shared.errors import InvalidQueryParameter, NotAcceptable

# ---------------------------------------------------------------------------- negotiation


@pytest.mark.parametrize(
    ("accept", "format_param", "expected"),
    [
        (None, None, ResultFormat.JSON),
        ("", None, ResultFormat.JSON),
        ("*/*", None, ResultFormat.JSON),
        ("application/*", None, ResultFormat.JSON),
        ("text/*", None, ResultFormat.CSV),
        ("text/csv", None, ResultFormat.CSV),
        ("TEXT/CSV; charset=utf-8", None, ResultFormat.CSV),
        ("application/vnd.apache.arrow.stream", None, ResultFormat.ARROW),
        ("application/x-ndjson", None, ResultFormat.NDJSON),
        ("application/vnd.apache.parquet", None, ResultFormat.PARQUET),
        ("text/csv;q=0.5, application/json;q=0.4", None, ResultFormat.CSV),
        ("text/csv;q=0.3, application/x-ndjson", None, ResultFormat.NDJSON),
        ("image/png, */*;q=0.1", None, ResultFormat.JSON),
        ("application/json;q=0, */*", None, ResultFormat.NDJSON),
        ("application/json;q=0, text/*", None, ResultFormat.CSV),
        ("image/png", "csv", ResultFormat.CSV),
        ("text/csv", "arrow", ResultFormat.ARROW),
        (None, "PARQUET", ResultFormat.PARQUET),
        (None, "json", ResultFormat.JSON),
        # What Cluvio clients send everywhere (found by an outside probe: it was a 406)
        ("application/vnd.api+json", None, ResultFormat.JSON),
        ("application/vnd.api+json;q=0.2, text/csv;q=0.1", None, ResultFormat.JSON),
        ("application/vnd.api+json;q=0.1, text/csv;q=0.2", None, ResultFormat.CSV),
    ],
)
def test_negotiation(accept, format_param, expected):
    assert negotiate(accept, format_param) is expected


@pytest.mark.parametrize(
    "accept",
    [
        "image/png",
        "application/xml, text/html",
        "application/json;q=0",
        "text/csv;q=0",
        "application/vnd.api+json;q=0",
    ],
)
def test_unacceptable_accept_is_406(accept):
    with pytest.raises(NotAcceptable) as error:
        negotiate(accept, None)
    assert "application/json" in error.value.detail


@pytest.mark.parametrize("value", ["xml", "", "arrow;", "jsonx"])
def test_unknown_format_parameter_is_400(value):
    with pytest.raises(InvalidQueryParameter) as error:
        negotiate(None, value)
    assert error.value.status == 400
    assert "ndjson" in error.value.detail


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, True),
        ("*/*", True),
        ("application/json", True),
        ("text/csv", False),
        ("application/vnd.api+json", True),
        ("application/vnd.api+json;q=0", False),
    ],
)
def test_accepts_json(accept, expected):
    assert formats.accepts_json(accept) is expected


def test_row_window_parsing():
    assert parse_row_window(None, None) == (0, None)
    assert parse_row_window("10", "0") == (10, 0)
    assert parse_row_window("0" * 5000 + "3", None) == (3, None)  # more digits than int() takes
    for offset, limit in (
        ("-1", None),
        ("1.5", None),
        (None, "abc"),
        (None, str(2**63)),
        ("\u0661", None),
        ("²", None),
        (None, "9" * 5000),
    ):
        with pytest.raises(InvalidQueryParameter):
            parse_row_window(offset, limit)


@pytest.mark.parametrize(
    ("accept_encoding", "expected"),
    [
        (None, "identity"),
        ("gzip", "gzip"),
        ("gzip;q=0.5, zstd", "zstd"),
        ("identity;q=1, gzip;q=0.5", "identity"),  # the client ranks identity first
        ("*;q=0.5, identity", "identity"),
        ("gzip;q=0.001", "gzip"),  # any listed coding beats the implicit identity
        ("*", "zstd"),  # a tie: the smaller output
        ("br;q=0, *", "zstd"),
        ("GZIP;Q=0.5", "gzip"),
        ("gzip;q=2, zstd", "zstd"),  # weights run 0 to 1: q=2 excludes its entry
        ("gzip;q=inf", "identity"),
        ("gzip;q=1e3", "identity"),
        ("gzip;q=0.3333", "identity"),  # at most three decimals
        ("identity;q=0, *;q=0", "identity"),  # nothing acceptable: no coding (§12.5.3)
        ("x-unknown", "identity"),
    ],
)
def test_content_coding_follows_the_weights(accept_encoding, expected):
    assert negotiate_coding(accept_encoding, ResultFormat.CSV).value == expected
    assert negotiate_coding(accept_encoding, ResultFormat.PARQUET).value == "identity"


def test_a_media_type_weight_out_of_range_excludes_it():
    assert negotiate("text/csv;q=2, application/json;q=0.5", None) is ResultFormat.JSON
    assert negotiate("text/csv;q=0.5, application/json;q=nan", None) is ResultFormat.CSV
