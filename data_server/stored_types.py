"""DuckDB types whose Arrow export loses or hides values, made sound before a result is stored.

DuckDB hands ``HUGEINT`` and ``UHUGEINT`` to Arrow as ``decimal128(38, 0)``, which holds 38 digits:
a ``HUGEINT`` of 39 digits is stored there all the same (an array that full validation rejects),
and a ``UHUGEINT`` of 2^127 or more wraps to a negative number. ``BIGNUM`` (``VARINT``) arrives
as an opaque extension holding DuckDB's own byte layout, which no reader understands. So, for the
columns of a result (not inside lists or structs, where they stay as DuckDB exports them):

- ``HUGEINT`` and ``UHUGEINT`` become ``decimal256(39, 0)``, which holds every value of both;
- ``BIGNUM`` becomes its decimal digits as a string.

Every format then carries the exact value (docs/result-formats.md).
"""

from __future__ import annotations

import decimal
from collections.abc import Callable, Sequence

import pyarrow as pa
import pyarrow.compute as pc

WIDE_INTEGER = pa.decimal256(39, 0)
_TWO_TO_128 = pa.scalar(decimal.Decimal(2**128), WIDE_INTEGER)
_ZERO = pa.scalar(decimal.Decimal(0), WIDE_INTEGER)
# DuckDB's BIGNUM layout: 3 header bytes (the top bit set for a number ≥ 0, then the byte count),
# then the magnitude, big-endian; a negative number has every bit of both inverted.
_BIGNUM_HEADER_BYTES = 3
_BIGNUM_POSITIVE = 0x80


def _hugeint(column: pa.Array) -> pa.Array:
    return pc.cast(column, WIDE_INTEGER)


def _uhugeint(column: pa.Array) -> pa.Array:
    """Those that wrapped (negative) get their 2^128 back."""
    wide = pc.cast(column, WIDE_INTEGER)
    unwrapped = pc.cast(pc.add(wide, _TWO_TO_128), WIDE_INTEGER)
    return pc.if_else(pc.less(wide, _ZERO), unwrapped, wide)


def _bignum(column: pa.Array) -> pa.Array:
    storage = column.storage if isinstance(column, pa.ExtensionArray) else column
    return pa.array(
        [None if blob is None else bignum_digits(blob) for blob in storage.to_pylist()], pa.string()
    )


def bignum_digits(blob: bytes) -> str:
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
    "HUGEINT": (WIDE_INTEGER, _hugeint),
    "UHUGEINT": (WIDE_INTEGER, _uhugeint),
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
