"""Arrow columns as JSON text, a column at a time: the fast path of the JSON, records and NDJSON
formats.

Each column becomes an Arrow string array holding one JSON value per row (``null`` for nulls),
built with Arrow compute kernels and numpy instead of one Python object per value (numbers:
orjson's text of the whole column, cut after each comma). Rows are then glued by one ``take``:
the row template's pieces and the columns' texts in one array, gathered in row order, so that
the gathered array's data buffer *is* the body (a third cheaper than
``binary_join_element_wise``, which walks every argument for every row). The
mapping is the one of docs/result-formats.md, exactly as ``encoders._json_values`` produces it
(integers exact, floats in their shortest round-trip form with ``.0`` on whole numbers, ``"NaN"``
and ``"Infinity"`` as strings, dates and timestamps ISO 8601 at the column's precision, zoned ones
in UTC with ``+00:00``, infinities as ``"infinity"``: data_server/temporal_texts.py); types without
a vectorised rule go through that function value by value.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from data_server.number_texts import decimal_texts, float32_widened
from data_server.temporal_texts import is_temporal, spell, time_texts, zone_suffix

# Bytes below this, quotes and backslashes are escaped in JSON strings; without any of them a
# string column passes through unchanged.
_CONTROL_LIMIT = 0x20
_COMMA = ord(",")


class Fragment:
    """A column's JSON texts, each still to be framed by ``opening`` and ``closing`` (quotes, a
    zone suffix), which the row template then carries instead of a join per column; only a
    column without nulls can leave them to the template (a null is a bare ``null``).

    ``separated`` texts (numbers, cut from orjson's text of a whole array without copying each
    value out) each end with one more byte, a comma, standing for the first byte of what follows
    the value in the row: the template drops that byte, or the comma is overwritten with it."""

    __slots__ = ("closing", "opening", "separated", "texts")

    def __init__(
        self, texts: pa.Array, opening: str = "", closing: str = "", *, separated: bool = False
    ) -> None:
        self.texts = texts
        self.opening = opening
        self.closing = closing
        self.separated = separated


def rows_body(
    batch: pa.RecordBatch,
    slow_values: Callable[[pa.Array], list[Any]],
    *,
    keys: Sequence[str] | None,
    prefix: str,
    suffix: str,
) -> pa.Buffer:
    """Every row of ``batch`` as ``prefix`` + an object (``keys``) or array + ``suffix``."""
    template: list[str] = []
    fragments: list[Fragment] = []
    pending = prefix + ("{" if keys is not None else "[")
    for index, column in enumerate(batch.columns):
        fragment = column_fragment(column, slow_values)
        if index:
            pending += ","
        if keys is not None:
            pending += orjson.dumps(keys[index]).decode() + ":"
        template.append(pending + fragment.opening)
        fragments.append(fragment)
        pending = fragment.closing
    template.append(pending + ("}" if keys is not None else "]") + suffix)
    texts = []
    for index, fragment in enumerate(fragments):
        following = template[index + 1]  # never empty: a comma or the row's closing bracket
        if fragment.separated:
            if following[0] != ",":
                fragment.texts = _separated_by(fragment.texts, following[0])
            template[index + 1] = following[1:]
        texts.append(fragment.texts)
    pieces = pa.concat_arrays([pa.array(template, pa.string()), *texts])
    empty = tuple(index for index, piece in enumerate(template) if not piece)
    if len(pieces) != len(template) + len(texts) * batch.num_rows:
        raise ValueError("a column's texts do not match the batch's rows")
    order = _row_order(batch.num_rows, len(texts), empty)  # in bounds of pieces, as checked
    return _data_of(pc.take(pieces, order, boundscheck=False))


@functools.lru_cache(maxsize=8)
def _row_order(rows: int, columns: int, empty: tuple[int, ...]) -> pa.Array:
    """Where each piece of each row lies in ``rows_body``'s array (the ``columns + 1`` template
    pieces first, then each column's ``rows`` texts): template, column 0, template, column 1 …
    for row 0, then row 1, leaving out the ``empty`` template pieces (those between separated
    numbers in an array row: a shorter take). Slices of a result are mostly of one length, so
    it is built once."""
    order = np.empty((rows, 2 * columns + 1), dtype=np.int32)
    order[:, 0::2] = np.arange(columns + 1, dtype=np.int32)
    first_texts = columns + 1 + np.arange(columns, dtype=np.int32) * rows
    order[:, 1::2] = first_texts + np.arange(rows, dtype=np.int32)[:, None]
    if empty:
        order = np.delete(order, [2 * index for index in empty], axis=1)
    return pa.array(order.ravel())


def _data_of(texts: pa.Array) -> pa.Buffer:
    """The concatenated values of a string array, without copying."""
    offsets = _offsets(texts)
    return texts.buffers()[2][int(offsets[0]) : int(offsets[-1])]


def _offsets(texts: pa.Array) -> np.ndarray:
    """A (possibly sliced) string array's ``len + 1`` value offsets into its data buffer."""
    return np.frombuffer(texts.buffers()[1], dtype=np.int32)[
        texts.offset : texts.offset + len(texts) + 1
    ]


def column_fragment(column: pa.Array, slow_values: Callable[[pa.Array], list[Any]]) -> Fragment:
    data_type = column.type
    if pa.types.is_dictionary(data_type):
        return column_fragment(column.dictionary_decode(), slow_values)
    if pa.types.is_integer(data_type):
        return _integers(column)
    if pa.types.is_boolean(data_type):
        return _nullable(pc.if_else(column, "true", "false"), column)
    if pa.types.is_float64(data_type):
        return _doubles(column)
    if pa.types.is_float32(data_type):  # as the value-by-value path: the same bytes either way
        return _doubles(float32_widened(column))
    if pa.types.is_string(data_type):
        return _strings(column, slow_values)
    if is_temporal(data_type):
        return _temporal(column)
    if pa.types.is_time(data_type):
        return _framed(time_texts(column), column, '"', '"')
    if pa.types.is_decimal(data_type):
        return _framed(decimal_texts(column), column, '"', '"')
    if pa.types.is_date(data_type):
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


def _integers(column: pa.Array) -> Fragment:
    _, texts = _spelled_by_orjson(column, 0)
    return Fragment(_nulls_restored(texts, column), separated=True)


def _doubles(column: pa.Array) -> Fragment:
    """orjson writes the non-finite values as ``null``; they become the strings of the
    mapping."""
    values, texts = _spelled_by_orjson(column, 0.0)
    finite = np.isfinite(values)
    if not finite.all():
        special = np.where(
            np.isnan(values), '"NaN",', np.where(values > 0, '"Infinity",', '"-Infinity",')
        )
        texts = pc.if_else(pa.array(finite), texts, pa.array(special, pa.string()))
    return Fragment(_nulls_restored(texts, column), separated=True)


def _spelled_by_orjson(column: pa.Array, placeholder: float) -> tuple[np.ndarray, pa.Array]:
    """A number column as numpy values (nulls as ``placeholder``, to be restored) and their
    separated texts: orjson spells the whole array at C speed as ``[a,b,c]``, which becomes
    ``a,`` ``b,`` ``c,`` (the commas between the values, which no number holds, end them; the
    closing bracket becomes one)."""
    values = (pc.fill_null(column, placeholder) if column.null_count else column).to_numpy(
        zero_copy_only=False
    )
    count = len(values)
    if not count:
        return values, pa.array([], pa.string())
    array_text = orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY)
    data = np.frombuffer(array_text, dtype=np.uint8)[1:].copy()
    data[-1] = _COMMA
    offsets = np.zeros(count + 1, dtype=np.int32)
    offsets[1:] = np.flatnonzero(data == _COMMA) + 1
    return values, pa.StringArray.from_buffers(count, pa.py_buffer(offsets), pa.py_buffer(data))


def _nulls_restored(texts: pa.Array, column: pa.Array) -> pa.Array:
    return pc.if_else(pc.is_valid(column), texts, "null,") if column.null_count else texts


def _separated_by(texts: pa.Array, separator: str) -> pa.Array:
    """Separated texts whose last byte, a comma, is ``separator`` instead (the last column's
    values, which the row's closing bracket follows)."""
    data = np.frombuffer(texts.buffers()[2], dtype=np.uint8).copy()
    data[_offsets(texts)[1:] - 1] = ord(separator)
    return pa.StringArray.from_buffers(
        len(texts), texts.buffers()[1], pa.py_buffer(data), None, 0, texts.offset
    )
