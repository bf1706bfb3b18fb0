"""DuckDB types whose Arrow export loses or hides values, made sound before a result is stored.

DuckDB hands ``UHUGEINT`` to Arrow as ``decimal128(38, 0)``, a signed 128-bit integer, where a value
of 2^127 or more wraps to a negative number; and ``BIGNUM`` (``VARINT``) as an opaque extension
holding DuckDB's own byte layout, which no reader understands; ``BIT`` as plain binary holding
DuckDB's layout too (a count of padding bits, then the padded bits). The first two become their
decimal digits, ``BIT`` its binary ones (``"0101"``, as DuckDB and PostgreSQL spell it), as a
string, wherever they are: a column, or a value inside lists, fixed-size lists, structs, maps
(keys too) and unions, at any depth. A wider decimal would keep them numbers, but ``decimal256``
is read wrongly by DuckDB's own Parquet reader and not at all by polars, and the first batch
cannot tell whether a narrower type would hold the last. (``HUGEINT`` stays ``decimal128(38, 0)``:
its bits are exact, and only a value of 39 digits exceeds the declared precision.) docs/result-formats.md has the mapping.
"""

from __future__ import annotations

import decimal
from collections.abc import Callable, Sequence

import pyarrow as pa
import pyarrow.compute as pc
from duckdb.sqltypes import DuckDBPyType

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


def _bits(column: pa.Array) -> pa.Array:
    return pa.array(
        [None if blob is None else _bit_digits(blob) for blob in column.to_pylist()], pa.string()
    )


def _bit_digits(blob: bytes) -> str:
    """DuckDB's BIT layout: one byte counting the padding bits, then the bits, big-endian, the
    padding (set) in front of them."""
    padding, body = blob[0], blob[1:]
    return format(int.from_bytes(body, "big"), f"0{8 * len(body)}b")[padding:]


# DuckDB type ids whose values are stored as digits, and how.
_AS_DIGITS: dict[str, Callable[[pa.Array], pa.Array]] = {
    "uhugeint": _uhugeint,
    "bignum": _bignum,
    "bit": _bits,
}


def _nested(duckdb_type: DuckDBPyType) -> list[DuckDBPyType]:
    """The types nested in a list, fixed-size list, struct, map or union, in DuckDB's order
    (an array's size and an enum's values are children too, but no types)."""
    if duckdb_type.id not in ("list", "array", "struct", "map", "union"):
        return []
    return [child for _, child in duckdb_type.children if isinstance(child, DuckDBPyType)]


def _unsound(duckdb_type: DuckDBPyType) -> bool:
    """Whether values of this type, or of any type nested in it, need their digits."""
    return duckdb_type.id in _AS_DIGITS or any(map(_unsound, _nested(duckdb_type)))


def _sound(column: pa.Array, duckdb_type: DuckDBPyType) -> pa.Array:
    """``column`` (of ``duckdb_type``, as DuckDB exported it) with every value of an unsound type
    as its digits; a nested one is rebuilt around its converted children, nulls kept."""
    kind = duckdb_type.id
    if kind in _AS_DIGITS:
        return _AS_DIGITS[kind](column)
    if not _unsound(duckdb_type):
        return column
    if column.offset:  # a slice: its children would not start where it does
        column = pa.concat_arrays([column])
    children = _nested(duckdb_type)
    nulls = column.is_null() if column.null_count else None
    if kind == "list":
        assert isinstance(column, pa.ListArray | pa.LargeListArray)
        return type(column).from_arrays(
            column.offsets, _sound(column.values, children[0]), mask=nulls
        )
    if kind == "array":
        assert isinstance(column, pa.FixedSizeListArray)
        size = column.type.list_size
        values = column.values.slice(0, len(column) * size)
        return pa.FixedSizeListArray.from_arrays(_sound(values, children[0]), size, mask=nulls)
    if kind == "map":
        assert isinstance(column, pa.MapArray)
        return pa.MapArray.from_arrays(
            column.offsets,
            _sound(column.keys, children[0]),
            _sound(column.items, children[1]),
            mask=nulls,
        )
    if kind == "struct":
        assert isinstance(column, pa.StructArray)
        members = [_sound(column.field(i), child) for i, child in enumerate(children)]
        return pa.StructArray.from_arrays(
            members,
            fields=[
                field.with_type(member.type)
                for field, member in zip(column.type, members, strict=True)
            ],
            mask=nulls,
        )
    # a union: DuckDB's first child is the tag, its members follow; exported sparse
    assert isinstance(column, pa.UnionArray)
    return pa.UnionArray.from_sparse(
        column.type_codes,
        [_sound(column.field(i), member) for i, member in enumerate(children[1:])],
        [field.name for field in column.type],
        list(column.type.type_codes),
    )


class StoredTypes:
    """How a result's batches are stored: ``schema``, and ``conform`` for each batch."""

    def __init__(self, duckdb_types: Sequence[DuckDBPyType], schema: pa.Schema) -> None:
        self._fixes = {
            index: duckdb_type
            for index, duckdb_type in enumerate(duckdb_types)
            if _unsound(duckdb_type)
        }
        # The stored type of each converted column: that of its conversion when empty.
        self.schema = pa.schema(
            [
                field.with_type(_sound(pa.nulls(0, field.type), self._fixes[index]).type)
                if index in self._fixes
                else field
                for index, field in enumerate(schema)
            ],
            metadata=schema.metadata,
        )

    def conform(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        if not self._fixes:
            return batch
        columns = [
            _sound(column, self._fixes[index]) if index in self._fixes else column
            for index, column in enumerate(batch.columns)
        ]
        return pa.RecordBatch.from_arrays(columns, schema=self.schema)
