"""Arrow columns as JSON text, a column at a time: the fast path of the JSON, records and NDJSON
formats.

Each column becomes an Arrow string array holding one JSON value per row (``null`` for nulls),
built with Arrow compute kernels and numpy instead of one Python object per value; rows are then
glued by ``binary_join_element_wise``, and the joined array's data buffer *is* the body. The
mapping is the one of docs/result-formats.md, exactly as ``encoders._json_values`` produces it
(integers exact, floats in their shortest round-trip form with ``.0`` on whole numbers, ``"NaN"``
and ``"Infinity"`` as strings, timestamps ISO 8601 at the column's precision, zoned ones in UTC
with ``+00:00``); types without a vectorised rule go through that function value by value.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

# Bytes that a JSON string must escape; their absence lets a string column through unchanged.
_QUOTE, _BACKSLASH, _CONTROL_LIMIT = ord('"'), ord("\\"), 0x20


class Fragment:
    """A column's JSON texts; ``quoted`` means each text still needs its quotes (no nulls)."""

    __slots__ = ("quoted", "texts")

    def __init__(self, texts: pa.Array, quoted: bool = False) -> None:
        self.texts = texts
        self.quoted = quoted


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
        if fragment.quoted:
            pending += '"'
        parts += [pending, fragment.texts]
        pending = '"' if fragment.quoted else ""
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
    if pa.types.is_timestamp(data_type):
        return _quoted(_timestamps(column), column)
    if pa.types.is_decimal(data_type) or pa.types.is_date(data_type) or pa.types.is_time(data_type):
        return _quoted(pc.cast(column, pa.string()), column)
    return _one_by_one(column, slow_values)


def _nullable(texts: pa.Array, column: pa.Array) -> Fragment:
    return Fragment(pc.fill_null(texts, "null") if column.null_count else texts)


def _quoted(texts: pa.Array, column: pa.Array) -> Fragment:
    """Texts that need no escaping: quotes go into the row template unless a null needs none."""
    if not column.null_count:
        return Fragment(texts, quoted=True)
    return Fragment(pc.fill_null(pc.binary_join_element_wise('"', texts, '"', ""), "null"))


def _one_by_one(column: pa.Array, slow_values: Callable[[pa.Array], list[Any]]) -> Fragment:
    texts = [orjson.dumps(value).decode() for value in slow_values(column)]
    return Fragment(pa.array(texts, pa.string()))


def _strings(column: pa.Array, slow_values: Callable[[pa.Array], list[Any]]) -> Fragment:
    """Plain strings pass as they are; quotes and backslashes are escaped by kernels; control
    characters (rare) send the column through orjson value by value."""
    data = _data_of(column) if len(column) else pa.py_buffer(b"")
    raw = np.frombuffer(data, dtype=np.uint8)
    if raw.size and bool((raw < _CONTROL_LIMIT).any()):
        return _one_by_one(column, slow_values)
    if raw.size and bool(((raw == _QUOTE) | (raw == _BACKSLASH)).any()):
        column = pc.replace_substring(column, "\\", "\\\\")
        column = pc.replace_substring(column, '"', '\\"')
    return _quoted(column, column)


def _timestamps(column: pa.Array) -> pa.Array:
    """``YYYY-MM-DDTHH:MM:SS[.fraction]`` at the column's unit; zoned values as UTC + ``+00:00``."""
    data_type = column.type
    naive = column.cast(pa.timestamp(data_type.unit)) if data_type.tz is not None else column
    texts = pc.utf8_replace_slice(pc.cast(naive, pa.string()), 10, 11, "T")
    if data_type.tz is not None:
        texts = pc.binary_join_element_wise(texts, "+00:00", "")
    return texts


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
