"""What a result request gets: its format, Arrow compression and row window, from the request.

One enum, ``ResultFormat``, names every format with its ``?format=`` name, media type and file
extension; ``negotiate`` picks one from ``?format=`` or the Accept header (RFC 9110 quality values),
so no handler compares Accept strings. Bad values become a 400 or 406 before the first byte. The
bytes themselves are produced by data_server/encoders.py.
"""

from __future__ import annotations

import enum
import re

from shared.digits import natural_number
from shared.errors import InvalidQueryParameter, NotAcceptable

MAX_ROW_WINDOW = 2**63 - 1


class ResultFormat(enum.Enum):
    #        ?format=   media type                              extension
    ARROW = ("arrow", "application/vnd.apache.arrow.stream", "arrows")
    JSON = ("json", "application/json", "json")
    NDJSON = ("ndjson", "application/x-ndjson", "ndjson")
    CSV = ("csv", "text/csv", "csv")
    PARQUET = ("parquet", "application/vnd.apache.parquet", "parquet")
    # An array of objects, one per row: what pandas, polars and DuckDB read as a table. Chosen
    # with ?format=records only (its media type is JSON's, which keeps the default document).
    RECORDS = ("records", "application/json", "records.json")

    @property
    def name_in_query(self) -> str:
        return self.value[0]

    @property
    def media_type(self) -> str:
        return self.value[1]

    @property
    def extension(self) -> str:
        return self.value[2]

    @property
    def content_type(self) -> str:
        return f"{self.media_type}; charset=utf-8" if self is ResultFormat.CSV else self.media_type


_BY_QUERY_NAME = {fmt.name_in_query: fmt for fmt in ResultFormat}
_BY_MEDIA_TYPE = {
    fmt.media_type: fmt for fmt in ResultFormat if fmt is not ResultFormat.RECORDS
} | {
    "application/ndjson": ResultFormat.NDJSON,
    "application/jsonl": ResultFormat.NDJSON,
}
# What Cluvio clients send everywhere (README): JSON when named, as on the API server's plain-JSON
# actions, but never reached through a wildcard (``application/json;q=0, */*`` refuses JSON).
# A client with a session-wide Accept of it was refused every result (found by an outside probe).
JSONAPI_ALIAS = "application/vnd.api+json"
# What a wildcard picks, best first: JSON is the default.
_PREFERENCE = [ResultFormat.JSON, ResultFormat.NDJSON, ResultFormat.CSV, ResultFormat.ARROW]
_PREFERENCE.append(ResultFormat.PARQUET)
# Rows as JSON text (data_server/json_text.py), which a pool of threads can encode.
JSON_FORMATS = frozenset({ResultFormat.JSON, ResultFormat.RECORDS, ResultFormat.NDJSON})
TEXT_FORMATS = JSON_FORMATS | {ResultFormat.CSV}


class ArrowCompression(enum.Enum):
    """Arrow IPC buffer compression, asked for with ``?compression=`` (Arrow only)."""

    NONE = "none"
    LZ4 = "lz4"
    ZSTD = "zstd"

    @property
    def codec(self) -> str | None:
        return {"none": None, "lz4": "lz4", "zstd": "zstd"}[self.value]


def parse_compression(raw: str | None, fmt: ResultFormat) -> ArrowCompression:
    if raw is None:
        return ArrowCompression.NONE
    try:
        compression = ArrowCompression(raw.strip().lower())
    except ValueError:
        compression = None
    if compression is None or (fmt is not ResultFormat.ARROW and compression.codec):
        allowed = ", ".join(c.value for c in ArrowCompression)
        raise InvalidQueryParameter(
            f"compression is one of {allowed}, and other than none for arrow only; text "
            "formats are compressed by Accept-Encoding, Parquet always is.",
            parameter="compression",
        )
    return compression


# ---------------------------------------------------------------------------- negotiation

_QVALUE = re.compile(r"0(\.[0-9]{0,3})?|1(\.0{0,3})?")


def weighted_entries(header: str | None) -> list[tuple[str, float, int]]:
    """``(name, weight, position)`` for each entry of an Accept or Accept-Encoding header, the
    name in lower case. A weight is RFC 9110 §12.4.2's ``q``, 0 to 1 with at most three
    decimals; one written otherwise (``q=2``, ``q=1e3``, ``q=inf``) excludes its entry, since
    what the client meant is unknown."""
    entries = []
    for position, entry in enumerate((header or "").split(",")):
        name, *params = (part.strip() for part in entry.split(";"))
        if not name:
            continue
        weight = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                value = value.strip()
                weight = float(value) if _QVALUE.fullmatch(value) else 0.0
        entries.append((name.lower(), weight, position))
    return entries


def _matches(media_range: str, media_type: str) -> bool:
    if media_range in ("*/*", media_type):
        return True
    kind, _, subtype = media_range.partition("/")
    return subtype == "*" and media_type.startswith(kind + "/")


def _quality(ranges: list[tuple[str, float, int]], media_type: str) -> tuple[float, int] | None:
    """The q of the most specific range naming ``media_type`` (RFC 9110 §12.5.1)."""
    best: tuple[int, float, int] | None = None
    for media_range, quality, position in ranges:
        if _matches(media_range, media_type):
            specificity = 0 if media_range == "*/*" else 1 if media_range.endswith("/*") else 2
            if best is None or specificity > best[0]:
                best = (specificity, quality, position)
    return None if best is None else (best[1], best[2])


def negotiate(accept: str | None, format_param: str | None) -> ResultFormat:
    """``?format=`` wins; otherwise the best acceptable type of Accept; no Accept means JSON."""
    if format_param is not None:
        fmt = _BY_QUERY_NAME.get(format_param.strip().lower())
        if fmt is None:
            allowed = ", ".join(_BY_QUERY_NAME)
            raise InvalidQueryParameter(
                f"Unknown format {format_param!r}; use one of {allowed}.", parameter="format"
            )
        return fmt
    ranges = weighted_entries(accept)
    if not ranges:
        return ResultFormat.JSON
    candidates = []
    for media_type, fmt in _BY_MEDIA_TYPE.items():
        found = _quality(ranges, media_type)
        if found and found[0] > 0:
            candidates.append((-found[0], found[1], _PREFERENCE.index(fmt), fmt))
    candidates += [
        (-quality, position, _PREFERENCE.index(ResultFormat.JSON), ResultFormat.JSON)
        for quality, position in _alias_named(ranges)
    ]
    if not candidates:
        supported = ", ".join(_BY_MEDIA_TYPE)  # records is JSON too: asked for by ?format=
        raise NotAcceptable(f"Results can be served as {supported}.")
    return min(candidates, key=lambda c: c[:3])[3]


def accepts_json(accept: str | None) -> bool:
    ranges = weighted_entries(accept)
    found = _quality(ranges, "application/json")
    return not ranges or bool(found and found[0] > 0) or bool(_alias_named(ranges))


def _alias_named(ranges: list[tuple[str, float, int]]) -> list[tuple[float, int]]:
    """``(q, position)`` of each entry naming ``JSONAPI_ALIAS`` itself with a q above 0."""
    return [
        (q, position)
        for media_range, q, position in ranges
        if media_range == JSONAPI_ALIAS and q > 0
    ]


def parse_row_window(offset: str | None, limit: str | None) -> tuple[int, int | None]:
    """``?offset=&limit=`` as non-negative integers; a missing limit means every row."""
    return _row_count(offset, "offset") or 0, _row_count(limit, "limit")


def _row_count(raw: str | None, name: str) -> int | None:
    if raw is None:
        return None
    value = natural_number(raw.strip(), MAX_ROW_WINDOW)
    if value is None or value > MAX_ROW_WINDOW:
        raise InvalidQueryParameter(
            f"{name} must be a non-negative integer, not {raw[:40]!r}.", parameter=name
        )
    return value
