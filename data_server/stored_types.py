"""DuckDB types whose Arrow export loses or hides values, made sound before a result is stored.

DuckDB hands ``UHUGEINT`` to Arrow as ``decimal128(38, 0)``, a signed 128-bit integer, where a value
of 2^127 or more wraps to a negative number; and ``BIGNUM`` (``VARINT``) as an opaque extension
holding DuckDB's own byte layout, which no reader understands. Both become their decimal digits,
as a string, for the columns of a result (inside lists and structs they stay as DuckDB exports
them). A wider decimal would keep them numbers, but ``decimal256`` is read wrongly by DuckDB's
own Parquet reader and not at all by polars, and the first batch cannot tell whether a narrower
type would hold the last. (``HUGEINT`` stays ``decimal128(38, 0)``: its bits are exact, and only
a value of 39 digits exceeds the declared precision.) docs/result-formats.md has the mapping.
"""

from __future__ import annotations

import decimal
from collections.abc import Callable, Sequence

import pyarrow as pa
import pyarrow.compute as pc

_TWO_TO_128 = 2**128
# DuckDB's BIGNUM layout: 3 header bytes (the top bit set for a number ≥ 0, then the byte count),
# then the magnitude, big-endian; a negative number has every bit of both inverted.
_BIGNUM_HEADER_BYTES = 3
_BIGNUM_POSITIVE = 0x80


def _uhugeint(column: pa.Array) -> pa.Array:
    """Digits; a value that wrapped (negative) gets its 2^128 back."""
    texts = pc.cast(column, pa.string())
    wrapped = pc.fill_null(pc.less(column, pa.scalar(decimal.Decimal(0), column.type)), False)
    if not pc.any(wrapped).as_py():
        return texts
    unwrapped = [str(int(value) + _TWO_TO_128) for value in pc.filter(column, wrapped).to_pylist()]
    return pc.replace_with_mask(texts, wrapped, pa.array(unwrapped, pa.string()))


def _bignum(column: pa.Array) -> pa.Array:
    storage = column.storage if isinstance(column, pa.ExtensionArray) else column
    return pa.array(
        [None if blob is None else _bignum_digits(blob) for blob in storage.to_pylist()],
        pa.string(),
    )


def _bignum_digits(blob: bytes) -> str:
    """One BIGNUM's decimal digits, through ``Decimal``, which spells an integer of any length
    (``str(int)`` refuses past 4,300 digits). A BIGNUM of millions of digits takes long to
    spell: the query's time limit bounds that, as it bounds the query."""
    negative = not blob[0] & _BIGNUM_POSITIVE
    body = blob[_BIGNUM_HEADER_BYTES:]
    if negative:
        body = bytes(byte ^ 0xFF for byte in body)
    magnitude = int.from_bytes(body, "big")
    return str(decimal.Decimal(-magnitude if negative else magnitude))


_FIXES: dict[str, tuple[pa.DataType, Callable[[pa.Array], pa.Array]]] = {
    "UHUGEINT": (pa.string(), _uhugeint),
    "BIGNUM": (pa.string(), _bignum),
}


class StoredTypes:
    """How a result's batches are stored: ``schema``, and ``conform`` for each batch."""

    def __init__(self, duckdb_types: Sequence[str], schema: pa.Schema) -> None:
        self._fixes = {
            index: _FIXES[name][1] for index, name in enumerate(duckdb_types) if name in _FIXES
        }
        self.schema = pa.schema(
            [
                field.with_type(_FIXES[name][0]) if name in _FIXES else field
                for field, name in zip(schema, duckdb_types, strict=True)
            ],
            metadata=schema.metadata,
        )

    def conform(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        if not self._fixes:
            return batch
        columns = [
            self._fixes[index](column) if index in self._fixes else column
            for index, column in enumerate(batch.columns)
        ]
        return pa.RecordBatch.from_arrays(columns, schema=self.schema)
