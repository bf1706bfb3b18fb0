"""Arrow columns as JSON text, a column at a time: the fast path of the JSON, records and NDJSON
formats.

Each column becomes an Arrow string array holding one JSON value per row (``null`` for nulls),
built with Arrow compute kernels and numpy instead of one Python object per value; rows are then
glued by ``binary_join_element_wise``, and the joined array's data buffer *is* the body. The
mapping is the one of docs/result-formats.md, exactly as ``encoders._json_values`` produces it
(integers exact, floats in their shortest round-trip form with ``.0`` on whole numbers, ``"NaN"``
and ``"Infinity"`` as strings, dates and timestamps ISO 8601 at the column's precision, zoned ones
in UTC with ``+00:00``, infinities as ``"infinity"``: data_server/temporal_texts.py); types without
a vectorised rule go through that function value by value.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from data_server.temporal_texts import is_temporal, spell, zone_suffix

# Bytes below this, quotes and backslashes are escaped in JSON strings; without any of them a
# string column passes through unchanged.
_CONTROL_LIMIT = 0x20


class Fragment:
    """A column's JSON texts, each still to be framed by ``opening`` and ``closing`` (quotes, a
    zone suffix), which the row template then carries instead of a join per column; only a
    column without nulls can leave them to the template (a null is a bare ``null``)."""

    __slots__ = ("closing", "opening", "texts")

    def __init__(self, texts: pa.Array, opening: str = "", closing: str = "") -> None:
        self.texts = texts
        self.opening = opening
        self.closing = closing


def rows_body(
    batch: pa.RecordBatch,
    slow_values: Callable[[pa.Array], list[Any]],
    *,
    keys: Sequence[str] | None,
    prefix: str,
    suffix: str,
) -> pa.Buffer:
    """Every row of ``batch`` as ``prefix`` + an object (``keys``) or array + ``suffix``."""
    parts: list[Any] = []
    pending = prefix + ("{" if keys is not None else "[")
    for index, column in enumerate(batch.columns):
        fragment = column_fragment(column, slow_values)
        if index:
            pending += ","
        if keys is not None:
            pending += orjson.dumps(keys[index]).decode() + ":"
        parts += [pending + fragment.opening, fragment.texts]
        pending = fragment.closing
    parts.append(pending + ("}" if keys is not None else "]") + suffix)
    joined = pc.binary_join_element_wise(*parts, "")
    return _data_of(joined)


def _data_of(texts: pa.Array) -> pa.Buffer:
    """The concatenated values of a string array, without copying."""
    offsets = np.frombuffer(texts.buffers()[1], dtype=np.int32)
    start, end = int(offsets[texts.offset]), int(offsets[texts.offset + len(texts)])
    return texts.buffers()[2][start:end]


def column_fragment(column: pa.Array, slow_values: Callable[[pa.Array], list[Any]]) -> Fragment:
    data_type = column.type
    if pa.types.is_dictionary(data_type):
        return column_fragment(column.dictionary_decode(), slow_values)
    if pa.types.is_integer(data_type):
        return _nullable(pc.cast(column, pa.string()), column)
    if pa.types.is_boolean(data_type):
        return _nullable(pc.if_else(column, "true", "false"), column)
    if pa.types.is_float64(data_type):
        return _nullable(_doubles(column), column)
    if pa.types.is_string(data_type):
        return _strings(column, slow_values)
    if is_temporal(data_type):
        return _temporal(column)
    if pa.types.is_decimal(data_type) or pa.types.is_date(data_type) or pa.types.is_time(data_type):
        return _framed(pc.cast(column, pa.string()), column, '"', '"')
    return _one_by_one(column, slow_values)


def _nullable(texts: pa.Array, column: pa.Array) -> Fragment:
    return Fragment(pc.fill_null(texts, "null") if column.null_count else texts)


def _framed(texts: pa.Array, column: pa.Array, opening: str, closing: str) -> Fragment:
    """Texts that need no escaping, framed by the row template unless a null needs no frame."""
    if not column.null_count:
        return Fragment(texts, opening, closing)
    framed = pc.binary_join_element_wise(opening, texts, closing, "")
    return Fragment(pc.fill_null(framed, "null"))


def _one_by_one(column: pa.Array, slow_values: Callable[[pa.Array], list[Any]]) -> Fragment:
    texts = [orjson.dumps(value).decode() for value in slow_values(column)]
    return Fragment(pa.array(texts, pa.string()))


def _strings(column: pa.Array, slow_values: Callable[[pa.Array], list[Any]]) -> Fragment:
    """Plain strings pass as they are; quotes and backslashes are escaped by kernels; control
    characters (rare) send the column through orjson value by value."""
    data = _data_of(column) if len(column) else pa.py_buffer(b"")
    if data.size and int(np.frombuffer(data, dtype=np.uint8).min()) < _CONTROL_LIMIT:
        return _one_by_one(column, slow_values)
    text = data.to_pybytes()  # bytes.find is memchr: no temporary array per condition
    if text.find(b'"') >= 0 or text.find(b"\\") >= 0:
        column = pc.replace_substring(column, "\\", "\\\\")
        column = pc.replace_substring(column, '"', '\\"')
    return _framed(column, column, '"', '"')


def _temporal(column: pa.Array) -> Fragment:
    """ISO 8601 (data_server/temporal_texts.py); a zoned timestamp in UTC, whose ``+00:00`` the
    row template carries unless an infinity (which takes none) is among the values."""
    spelled = spell(column, iso=True)
    suffix = zone_suffix(column.type)
    if spelled.infinite is None:
        return _framed(spelled.texts, column, '"', suffix + '"')
    return _framed(spelled.with_zone(suffix), column, '"', '"')


def _doubles(column: pa.Array) -> pa.Array:
    """orjson writes a whole numpy array at C speed; the commas between values give the offsets.
    Non-finite values become the strings of the mapping; nulls are restored afterwards."""
    values = pc.fill_null(column, 0.0).to_numpy(zero_copy_only=False)
    body = orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1]
    raw = np.frombuffer(body, dtype=np.uint8)
    commas = np.flatnonzero(raw == ord(","))
    keep = np.ones(raw.size, dtype=bool)
    keep[commas] = False
    ends = np.append(commas - np.arange(commas.size), raw.size - commas.size)
    offsets = np.zeros(values.size + 1, dtype=np.int32)
    offsets[1:] = ends
    texts = pa.StringArray.from_buffers(
        values.size, pa.py_buffer(offsets), pa.py_buffer(raw[keep].tobytes())
    )
    finite = np.isfinite(values)
    if not finite.all():
        special = np.where(
            np.isnan(values), '"NaN"', np.where(values > 0, '"Infinity"', '"-Infinity"')
        )
        texts = pc.if_else(pa.array(finite), texts, pa.array(special, pa.string()))
    if column.null_count:
        texts = pc.if_else(pc.is_valid(column), texts, pa.scalar(None, pa.string()))
    return texts
