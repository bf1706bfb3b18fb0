"""A stored Arrow IPC result encoded as Arrow, JSON, records JSON, NDJSON, CSV or Parquet.

Memory stays bounded by bytes whatever the result size: batches are read from the file one by
one and cut into slices of at most ``SLICE_BYTES`` of Arrow data (or one row, if a row is wider),
each encoded and handed on. The
encoders are deterministic (same file, format and options → same bytes), which lets the data
server materialise a representation once and serve ranges of it (data_server/representations.py).
Which format and options a request gets is decided before, by data_server/formats.py. JSON text
is built a column at a time by data_server/json_text.py, or value by value for a slice of few
rows (``VALUE_BY_VALUE_ROWS``), to the same bytes. The JSON mapping is lossless
(docs/result-formats.md): integers stay exact numbers, decimals become strings with their scale,
NaN and infinities become strings, times are ISO 8601, blobs base64.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import math
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from functools import partial
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from data_server import json_text
from data_server.formats import TEXT_FORMATS, ArrowCompression, ResultFormat
from data_server.number_texts import decimal_texts, float32_widened, ordinary_decimals
from data_server.temporal_texts import (
    infinities,
    is_temporal,
    iso_texts,
    ordinary,
    ordinary_times,
    spell,
    time_texts,
)

CHUNK_BYTES = 256 * 1024
SLICE_BYTES = 4 * 1024 * 1024
# The column-wise path's kernels cost about 50 µs per column whatever the rows: most of the
# encoding of a small result (one row of one integer: 55 µs, against 3 µs value by value). Value
# by value was still the cheaper at 256 rows, of one integer column (41 against 59 µs) and of
# five mixed ones (191 against 256 µs); half that is taken, a margin for wide text, whose
# per-value cost grows with its length.
VALUE_BY_VALUE_ROWS = 128
# Slices a pool may encode ahead of the one being written: enough to keep a few threads busy.
_AHEAD = 2


# ---------------------------------------------------------------------------- reading


def _batches(
    reader: pa.ipc.RecordBatchFileReader,
    offset: int,
    limit: int | None,
    slice_bytes: int,
    as_text: bool,
) -> Iterator[pa.RecordBatch]:
    """Rows ``[offset, offset + limit)`` in slices of at most about ``slice_bytes``, counted as
    a text format will spell them out when ``as_text`` (Arrow and Parquet keep their batches'
    layout, which their bytes depend on)."""
    for batch in _window(reader, offset, limit):
        if as_text:
            batch = _valid_text(batch)
        size = _text_bytes(batch) if as_text else batch.get_total_buffer_size()
        rows = max(1, batch.num_rows * slice_bytes // max(1, size))
        for start in range(0, batch.num_rows, rows):
            yield batch.slice(start, rows)


def _valid_text(batch: pa.RecordBatch) -> pa.RecordBatch:
    """The batch with each byte sequence that is not UTF-8 in its text replaced by U+FFFD, at
    any depth: DuckDB lets a query make such text (``printf('%c', 255)``), which a JSON document
    or a UTF-8 CSV must not hold, and Python cannot decode. (Arrow and Parquet keep the bytes.)
    The check is Arrow's validation of each column holding text, one pass over its bytes."""
    columns = list(batch.columns)
    repaired = False
    for index, column in enumerate(columns):
        if not _holds(column.type, _is_text):
            continue
        try:
            column.validate(full=True)
        except pa.ArrowInvalid:
            columns[index] = _leaves_mapped(column, _is_text, _text_repaired)
            repaired = True
    return pa.RecordBatch.from_arrays(columns, schema=batch.schema) if repaired else batch


def _is_text(data_type: pa.DataType) -> bool:
    return pa.types.is_string(data_type) or pa.types.is_large_string(data_type)


def _text_repaired(texts: pa.Array) -> pa.Array:
    raw = texts.cast(pa.large_binary()).to_pylist()
    repaired = [None if value is None else value.decode("utf-8", "replace") for value in raw]
    return pa.array(repaired, texts.type)


def _text_bytes(batch: pa.RecordBatch) -> int:
    """A bound on what a text format makes of the batch, beyond its Arrow buffers: each row of a
    dictionary column spelled out (a few kilobytes of Arrow can hold gigabytes of repeated long
    values), and each row's column names (records and NDJSON repeat them; null and boolean
    columns hold next to nothing in Arrow)."""
    size = batch.get_total_buffer_size()
    size += batch.num_rows * sum(len(name.encode()) + 8 for name in batch.schema.names)
    for column in batch.columns:
        if pa.types.is_dictionary(column.type) and len(column.dictionary):
            value_bytes = column.dictionary.get_total_buffer_size() / len(column.dictionary)
            size += int(value_bytes * len(column))
    return size


def _window(
    reader: pa.ipc.RecordBatchFileReader, offset: int, limit: int | None
) -> Iterator[pa.RecordBatch]:
    """The batches holding rows ``[offset, offset + limit)``, edge batches sliced."""
    remaining = limit
    skip = offset
    for index in range(reader.num_record_batches):
        if remaining is not None and remaining <= 0:
            return
        batch = reader.get_batch(index)
        if skip >= batch.num_rows:
            skip -= batch.num_rows
            continue
        if skip or (remaining is not None and remaining < batch.num_rows - skip):
            batch = batch.slice(skip, remaining)
        skip = 0
        if remaining is not None:
            remaining -= batch.num_rows
        if batch.num_rows:
            yield batch


def encode_result(
    source: pa.NativeFile,
    fmt: ResultFormat,
    offset: int = 0,
    limit: int | None = None,
    compression: ArrowCompression = ArrowCompression.NONE,
    slice_bytes: int = SLICE_BYTES,
    pool: Executor | None = None,
) -> Iterator[bytes | memoryview]:
    """Encoded chunks of the result; opening the file happens on the first ``next()``. A
    smaller ``slice_bytes`` makes the encoding stoppable after less work. With a ``pool``, the
    text formats encode slices on its threads, a few ahead of the reader (the Arrow kernels
    doing most of that work release the GIL); the bytes are the same either way."""
    reader = pa.ipc.open_file(source)
    batches = _batches(reader, offset, limit, slice_bytes, as_text=fmt in TEXT_FORMATS)
    if fmt is ResultFormat.ARROW:
        yield from _coalesce(_arrow(reader.schema, batches, compression.codec))
    elif fmt is ResultFormat.PARQUET:
        yield from _coalesce(_parquet(reader.schema, batches))
    else:
        yield from _coalesce(_TEXT_ENCODERS[fmt](reader.schema, batches, pool))


def warm_up() -> None:
    """Encodes a few rows of every column kind in every format once. A process's first encoding
    otherwise pays for lazy initialisation (pyarrow imports pandas, when installed, on its first
    conversion of a Python value: about 0.14 s here), and the first request would wait for it."""
    table = pa.table(
        {
            "integer": [1, None],
            "double": [0.5, float("nan")],
            "text": ['a "b"', None],
            "flag": [True, None],
            "at": pa.array([dt.datetime(2024, 1, 1), None], pa.timestamp("us")),
            "zoned": pa.array([dt.datetime(2024, 1, 1), None], pa.timestamp("us", "UTC")),
            "amount": pa.array([decimal.Decimal("1.50"), None], pa.decimal128(5, 2)),
            "day": pa.array([dt.date(2024, 1, 1), None]),
            "tags": pa.array([["x"], None]),
        }
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    stored = sink.getvalue()
    for fmt in ResultFormat:
        for _ in encode_result(pa.BufferReader(stored), fmt):
            pass


def _coalesce(chunks: Iterator[bytes | pa.Buffer]) -> Iterator[bytes | memoryview]:
    """Fewer, larger writes: small encoded pieces are gathered up to ``CHUNK_BYTES``; a piece
    that size or larger passes as it is (a JSON slice is megabytes, and copying it into a new
    object costs a page fault per 4 KiB)."""
    pending: list[bytes | pa.Buffer] = []
    size = 0
    for chunk in chunks:
        if len(chunk) >= CHUNK_BYTES:
            if pending:
                yield b"".join(pending)
                pending, size = [], 0
            yield chunk if isinstance(chunk, bytes) else memoryview(chunk)
            continue
        pending.append(chunk)
        size += len(chunk)
        if size >= CHUNK_BYTES:
            yield b"".join(pending)
            pending, size = [], 0
    yield b"".join(pending)


class _Sink:
    """A write-only file object whose writes are collected and drained by the generator."""

    closed = False

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: Any) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def drain(self) -> list[bytes]:
        parts, self.parts = self.parts, []
        return parts


# ---------------------------------------------------------------------------- Arrow, Parquet, CSV


def _arrow(
    schema: pa.Schema, batches: Iterator[pa.RecordBatch], codec: str | None = None
) -> Iterator[bytes]:
    sink = _Sink()
    options = pa.ipc.IpcWriteOptions(compression=codec)
    with pa.ipc.new_stream(sink, schema, options=options) as writer:
        for batch in batches:
            writer.write_batch(batch)
            yield from sink.drain()
    yield from sink.drain()


def _parquet(schema: pa.Schema, batches: Iterator[pa.RecordBatch]) -> Iterator[bytes]:
    sink = _Sink()
    target = _parquet_schema(schema)
    with pq.ParquetWriter(sink, target, compression="zstd") as writer:
        for batch in batches:
            writer.write_batch(_conform(batch, target))
            yield from sink.drain()
    yield from sink.drain()


def _parquet_schema(schema: pa.Schema) -> pa.Schema:
    """Parquet has no month-day-nano interval and no union: columns holding one, at any depth,
    travel as their JSON text. Nor has it seconds: a column of them travels in milliseconds
    (``_in_milliseconds``), which Arrow's writer would make too but for an infinity, whose
    largest integer has no thousandfold (it failed the whole body)."""
    return pa.schema([field.with_type(_parquet_type(field.type)) for field in schema])


def _parquet_type(data_type: pa.DataType) -> pa.DataType:
    if _holds(data_type, _not_in_parquet):
        return pa.string()
    if pa.types.is_timestamp(data_type) and data_type.unit == "s":
        return pa.timestamp("ms", data_type.tz)
    return data_type


def _in_milliseconds(column: pa.Array, target: pa.DataType) -> pa.Array:
    """Seconds as milliseconds; DuckDB's infinities (the largest integer and its negation)
    stay what they are, an infinity in any unit."""
    values = column.view(pa.int64())
    infinite = infinities(column)
    scaled = pc.multiply_checked(pc.if_else(infinite, 0, values), 1000)
    return pc.if_else(infinite, values, scaled).view(target)


def _not_in_parquet(data_type: pa.DataType) -> bool:
    return pa.types.is_interval(data_type) or pa.types.is_union(data_type)


def _holds(data_type: pa.DataType, kind: Callable[[pa.DataType], bool]) -> bool:
    """Whether the type, or one nested in it at any depth, is of ``kind``."""
    return kind(data_type) or any(
        _holds(data_type.field(i).type, kind) for i in range(data_type.num_fields)
    )


def _csv(
    schema: pa.Schema, batches: Iterator[pa.RecordBatch], pool: Executor | None
) -> Iterator[bytes | pa.Buffer]:
    """Arrow's CSV writer: the header once, then each slice's rows on their own, which are the
    same bytes whichever thread writes them (``pool``: its threads, in order)."""
    target = pa.schema([field.with_type(_csv_type(field.type)) for field in schema])
    yield _csv_text(target.empty_table(), header=True)
    rows = partial(_csv_rows, target=target)
    if pool is None:
        yield from map(rows, batches)
        return
    for body, _ in _in_order(pool, rows, batches):
        yield body


def _csv_rows(batch: pa.RecordBatch, target: pa.Schema) -> pa.Buffer:
    """A slice's rows; dates, timestamps, times or decimals Arrow does not spell as the mapping
    does (DuckDB's infinities, years past 9999, the time 24:00:00, a decimal's exponent) are
    spelled by data_server/temporal_texts.py and number_texts.py and written as text (quoted, as
    Arrow quotes text)."""
    conformed = _conform(batch, target)
    respelled = [_respelled_cells(column) for column in conformed.columns]
    if any(texts is not None for texts in respelled):
        columns = [
            column if texts is None else texts
            for column, texts in zip(conformed.columns, respelled, strict=True)
        ]
        conformed = pa.RecordBatch.from_arrays(columns, names=target.names)
    return _csv_text(conformed, header=False)


def _respelled_cells(column: pa.Array) -> pa.Array | None:
    """A column's texts where Arrow's writer would not spell some value as the mapping does;
    None where it would spell every one."""
    data_type = column.type
    if is_temporal(data_type):
        return None if ordinary(column) else spell(column, iso=False).texts
    if pa.types.is_time(data_type):
        return None if ordinary_times(column) else time_texts(column)
    if pa.types.is_decimal(data_type):
        return None if ordinary_decimals(column) else decimal_texts(column)
    return None


def _csv_text(data: pa.RecordBatch | pa.Table, *, header: bool) -> pa.Buffer:
    sink = pa.BufferOutputStream()
    pa_csv.write_csv(data, sink, pa_csv.WriteOptions(include_header=header))
    return sink.getvalue()


def _csv_type(data_type: pa.DataType) -> pa.DataType:
    """CSV cells are text: nested values, blobs and intervals become their JSON text."""
    if (
        pa.types.is_nested(data_type)
        or pa.types.is_binary(data_type)
        or pa.types.is_large_binary(data_type)
        or pa.types.is_fixed_size_binary(data_type)
        or pa.types.is_interval(data_type)
        or pa.types.is_duration(data_type)
    ):
        return pa.string()
    return data_type


def _conform(batch: pa.RecordBatch, target: pa.Schema) -> pa.RecordBatch:
    """Columns whose target type is text but whose data is not: their JSON text, or their string."""
    if batch.schema.equals(target):
        return batch
    columns = []
    for column, field in zip(batch.columns, target, strict=True):
        if column.type.equals(field.type):
            columns.append(column)
        elif pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
            columns.append(pa.array(_json_values(column), pa.string()))
        elif pa.types.is_timestamp(field.type):
            columns.append(_in_milliseconds(column, field.type))
        else:
            texts = [None if v is None else orjson.dumps(v).decode() for v in _json_values(column)]
            columns.append(pa.array(texts, pa.string()))
    return pa.RecordBatch.from_arrays(columns, schema=target)


# ---------------------------------------------------------------------------- JSON and NDJSON


def _json(
    schema: pa.Schema, batches: Iterator[pa.RecordBatch], pool: Executor | None
) -> Iterator[bytes | pa.Buffer]:
    columns = [{"name": field.name, "type": str(field.type)} for field in schema]
    yield b'{"columns":' + orjson.dumps(columns) + b',"rows":['
    count = 0
    for body, rows in _row_texts(batches, pool, keys=None, prefix=",", suffix=""):
        yield body[1:] if not count else body
        count += rows
    yield b'],"row_count":' + str(count).encode() + b"}"


def _records(
    schema: pa.Schema, batches: Iterator[pa.RecordBatch], pool: Executor | None
) -> Iterator[bytes | pa.Buffer]:
    yield b"["
    count = 0
    for body, rows in _row_texts(batches, pool, keys=schema.names, prefix=",\n", suffix=""):
        yield body[2:] if not count else body
        count += rows
    yield b"]\n"


def _ndjson(
    schema: pa.Schema, batches: Iterator[pa.RecordBatch], pool: Executor | None
) -> Iterator[bytes | pa.Buffer]:
    for body, _ in _row_texts(batches, pool, keys=schema.names, prefix="", suffix="\n"):
        yield body


def _row_texts(
    batches: Iterator[pa.RecordBatch],
    pool: Executor | None,
    *,
    keys: list[str] | None,
    prefix: str,
    suffix: str,
) -> Iterator[tuple[pa.Buffer | bytes, int]]:
    """Each batch's rows as JSON text (``_rows``) and their number, in order."""
    encode = partial(_rows, keys=keys, prefix=prefix, suffix=suffix)
    if pool is None:
        for batch in batches:
            yield encode(batch), batch.num_rows
        return
    for body, batch in _in_order(pool, encode, batches):
        yield body, batch.num_rows


def _in_order(
    pool: Executor, encode: Callable[[pa.RecordBatch], Any], batches: Iterator[pa.RecordBatch]
) -> Iterator[tuple[Any, pa.RecordBatch]]:
    """``encode`` of each batch on the pool, at most ``_AHEAD`` batches in flight (memory stays
    bounded by slices), yielded in the batches' order; stopping early cancels what has not
    started."""
    pending: deque[tuple[Future[Any], pa.RecordBatch]] = deque()
    try:
        for batch in batches:
            pending.append((pool.submit(encode, batch), batch))
            if len(pending) > _AHEAD:
                future, done = pending.popleft()
                yield future.result(), done
        while pending:
            future, done = pending.popleft()
            yield future.result(), done
    finally:
        for future, _ in pending:
            future.cancel()


def _rows(
    batch: pa.RecordBatch, *, keys: list[str] | None, prefix: str, suffix: str
) -> pa.Buffer | bytes:
    """The rows of a (non-empty) batch as JSON text, each framed by ``prefix`` and ``suffix``:
    column-wise (data_server/json_text.py), or value by value for a batch of at most
    ``VALUE_BY_VALUE_ROWS`` rows, which spells the same bytes."""
    if not batch.num_columns:
        empty = b"{}" if keys is not None else b"[]"
        return (prefix.encode() + empty + suffix.encode()) * batch.num_rows
    if batch.num_rows <= VALUE_BY_VALUE_ROWS:
        return _rows_value_by_value(batch, keys=keys, prefix=prefix, suffix=suffix)
    return json_text.rows_body(batch, _json_values, keys=keys, prefix=prefix, suffix=suffix)


def _rows_value_by_value(
    batch: pa.RecordBatch, *, keys: list[str] | None, prefix: str, suffix: str
) -> bytes:
    """``_rows`` by the mapping itself (``_json_values``), each value spelled by orjson as the
    column-wise path spells it; keys are written, not gathered into a dict, so that columns of
    the same name all stay."""
    columns = [_json_values(column) for column in batch.columns]
    before, after = prefix.encode(), suffix.encode()
    if keys is None:
        return b"".join(before + orjson.dumps(row) + after for row in zip(*columns, strict=True))
    names = [orjson.dumps(key) + b":" for key in keys]
    return b"".join(
        before
        + b"{"
        + b",".join(name + orjson.dumps(value) for name, value in zip(names, row, strict=True))
        + b"}"
        + after
        for row in zip(*columns, strict=True)
    )


def _json_values(column: pa.Array) -> list[Any]:
    """A column as JSON-ready Python values, vectorised where the type allows."""
    data_type = column.type
    if pa.types.is_dictionary(data_type):
        return _json_values(column.dictionary_decode())
    if (
        pa.types.is_integer(data_type)
        or pa.types.is_boolean(data_type)
        or pa.types.is_string(data_type)
        or pa.types.is_large_string(data_type)
        or pa.types.is_null(data_type)
    ):
        return column.to_pylist()
    if pa.types.is_floating(data_type):
        values = (float32_widened(column) if pa.types.is_float32(data_type) else column).to_pylist()
        if pc.any(pc.invert(pc.is_finite(column))).as_py():
            return [_float(v) for v in values]
        return values
    if is_temporal(data_type):
        return iso_texts(column).to_pylist()
    if pa.types.is_decimal(data_type):
        return decimal_texts(column).to_pylist()
    if pa.types.is_date(data_type):
        return pc.cast(column, pa.string()).to_pylist()
    if pa.types.is_time(data_type):
        return time_texts(column).to_pylist()
    spelled = _leaves_mapped(_leaves_spelled(column), _is_tuple, _tuple_marked)
    return [_plain(value) for value in spelled.to_pylist()]


def _is_tuple(data_type: pa.DataType) -> bool:
    """A struct whose fields' names repeat: DuckDB's unnamed struct (``row(1, 'a')``,
    ``(1, 2)``), all of whose names are empty. As an object its values would collide (and
    Arrow will not make a dict of it): it is spelled as an array of them, in order."""
    if not pa.types.is_struct(data_type):
        return False
    names = [data_type.field(i).name for i in range(data_type.num_fields)]
    return len(set(names)) < len(names)


# The names a tuple's fields take for Arrow to make a dict of it, which ``_plain`` then spells as
# an array. A struct of fields named so by a query (a NUL byte and this text, then each field's
# position) would be spelled as an array too: its values, in order, all the same.
_TUPLE_FIELD = "\x00dataferry-tuple-field-"


def _tuple_marked(column: pa.Array) -> pa.Array:
    """A tuple whose fields are named by ``_TUPLE_FIELD`` and their position; tuples within its
    fields too."""
    names = [f"{_TUPLE_FIELD}{index}" for index in range(column.type.num_fields)]
    return _struct_of(column, lambda child: _leaves_mapped(child, _is_tuple, _tuple_marked), names)


def _struct_of(
    column: pa.Array, mapped: Callable[[pa.Array], pa.Array], names: list[str] | None = None
) -> pa.Array:
    """The struct ``column`` with each field ``mapped``, named ``names`` (else as they are)."""
    if column.offset:  # a slice: offsets and validity rebased, which from_arrays needs
        column = pa.concat_arrays([column])
    data_type = column.type
    if names is None:
        names = [data_type.field(i).name for i in range(data_type.num_fields)]
    mask = column.is_null() if column.null_count else None
    children = [mapped(child) for child in column.flatten()]
    return pa.StructArray.from_arrays(children, names=names, mask=mask)


def _leaves_spelled(column: pa.Array) -> pa.Array:
    """A nested column whose dates, timestamps, times and decimals, wherever they are, are their
    JSON strings, and whose ``float32`` values the doubles of their shortest texts, as the
    columns' rule spells them: Python's datetime holds neither DuckDB's infinities, nor years
    past 9999, nor the time 24:00:00 (it wraps to midnight), and spells fractions and zones
    otherwise; its Decimal and a widened float32 are spelled otherwise too."""
    return _leaves_mapped(column, _spelled_by_the_columns_rule, _as_the_columns_rule)


def _spelled_by_the_columns_rule(data_type: pa.DataType) -> bool:
    return (
        is_temporal(data_type)
        or pa.types.is_time(data_type)
        or pa.types.is_decimal(data_type)
        or pa.types.is_float32(data_type)
    )


def _as_the_columns_rule(column: pa.Array) -> pa.Array:
    data_type = column.type
    if pa.types.is_time(data_type):
        return time_texts(column)
    if pa.types.is_decimal(data_type):
        return decimal_texts(column)
    if pa.types.is_float32(data_type):
        return float32_widened(column)
    return iso_texts(column)


def _leaves_mapped(
    column: pa.Array,
    is_leaf: Callable[[pa.DataType], bool],
    at_leaf: Callable[[pa.Array], pa.Array],
) -> pa.Array:
    """``column`` with ``at_leaf`` applied to each array of a type ``is_leaf`` within it, at any
    depth (the column itself, a list's values, a map's keys and items, a struct's fields, a
    union's members); the rest as it is."""
    data_type = column.type
    if not _holds(data_type, is_leaf):
        return column
    if is_leaf(data_type):
        return at_leaf(column)

    def mapped(child: pa.Array) -> pa.Array:
        return _leaves_mapped(child, is_leaf, at_leaf)

    if column.offset:  # a slice: offsets and validity rebased, which from_arrays needs
        column = pa.concat_arrays([column])
    mask = column.is_null() if column.null_count else None
    if pa.types.is_map(data_type):
        return pa.MapArray.from_arrays(
            column.offsets, mapped(column.keys), mapped(column.items), mask=mask
        )
    if pa.types.is_list(data_type) or pa.types.is_large_list(data_type):
        return type(column).from_arrays(column.offsets, mapped(column.values), mask=mask)
    if pa.types.is_fixed_size_list(data_type):
        size = data_type.list_size
        values = column.values.slice(column.offset * size, len(column) * size)
        return pa.FixedSizeListArray.from_arrays(mapped(values), size, mask=mask)
    if pa.types.is_struct(data_type):
        return _struct_of(column, mapped)
    if pa.types.is_union(data_type):  # no validity of its own: its members' say what is null
        names = [data_type.field(i).name for i in range(data_type.num_fields)]
        members = [mapped(column.field(i)) for i in range(data_type.num_fields)]
        codes = list(data_type.type_codes)
        if data_type.mode == "sparse":
            return pa.UnionArray.from_sparse(column.type_codes, members, names, codes)
        return pa.UnionArray.from_dense(column.type_codes, column.offsets, members, names, codes)
    return column  # another kind: its values go through _plain as they are


def _float(value: float | None) -> float | str | None:
    if value is None or math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _plain(value: Any) -> Any:
    """Nested and rare values, one at a time, by the same mapping as the vectorised path."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            return value.astimezone(dt.UTC).replace(tzinfo=None).isoformat() + "+00:00"
        return value.isoformat()
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return {"days": value.days, "seconds": value.seconds, "microseconds": value.microseconds}
    if isinstance(value, pa.MonthDayNano):
        return {"months": value.months, "days": value.days, "nanoseconds": value.nanoseconds}
    if isinstance(value, dict):
        if value and all(str(key).startswith(_TUPLE_FIELD) for key in value):
            return [_plain(item) for item in value.values()]  # a tuple (``_tuple_marked``)
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return str(value)


_TEXT_ENCODERS: dict[
    ResultFormat,
    Callable[[pa.Schema, Iterator[pa.RecordBatch], Executor | None], Iterator[Any]],
] = {
    ResultFormat.JSON: _json,
    ResultFormat.NDJSON: _ndjson,
    ResultFormat.RECORDS: _records,
    ResultFormat.CSV: _csv,
}
