"""What the ``dataferry`` command shows: a progress line on stderr, tables and documents."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

import pyarrow as pa

from dataferry_client.download import Progress
from dataferry_client.models import Resource

TABLE_ROWS = 100  # rows a terminal table shows; the rest are counted
CELL_WIDTH = 40


class ProgressLine:
    """Rows, bytes and elapsed time on one rewritten stderr line, at most ten times a second."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._shown = 0.0
        self._dirty = False

    def __call__(self, event: Progress) -> None:
        now = time.monotonic()
        if now - self._shown < 0.1:
            return
        self._shown = now
        if event.phase == "waiting":
            text = f"execution {event.status}, {event.elapsed:.1f} s elapsed"
        else:
            rows = f"{event.rows:,} rows, " if event.rows else ""
            text = f"downloading: {rows}{event.bytes / 1e6:,.1f} MB, {event.elapsed:.1f} s elapsed"
        self._stream.write(f"\r\x1b[K{text}")
        self._stream.flush()
        self._dirty = True

    def clear(self) -> None:
        if self._dirty:
            self._stream.write("\r\x1b[K")
            self._stream.flush()


def _values(column: pa.ChunkedArray) -> list[Any]:
    """A column's values as Python's; one Python cannot hold (DuckDB's infinite dates and
    timestamps, years past 9999, alone or inside a list) shows as a note instead of stopping
    the whole table. Dates and timestamps go one by one: an infinity is named before Python
    (or pandas, for nanoseconds) makes a date of it."""
    if not _is_temporal(column.type):
        try:
            return column.to_pylist()
        except (OverflowError, ValueError):
            pass
    return [_value(scalar) for scalar in column]


def _is_temporal(data_type: pa.DataType) -> bool:
    return pa.types.is_timestamp(data_type) or pa.types.is_date32(data_type)


def _value(scalar: pa.Scalar) -> Any:
    data_type = scalar.type
    if _is_temporal(data_type) and scalar.is_valid:
        storage = pa.int32() if pa.types.is_date32(data_type) else pa.int64()
        number = scalar.cast(storage).as_py()
        largest = 2 ** (storage.bit_width - 1) - 1
        if number in (largest, -largest):
            return "infinity" if number > 0 else "-infinity"
    try:
        return scalar.as_py()
    except (OverflowError, ValueError):
        return "<see --format json>"


# What a terminal would obey rather than show: C0 and C1 controls, DEL, and the bidirectional
# overrides and isolates that reorder what follows them (U+202A to U+202E, U+2066 to U+2069).
_OBEYED = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def shown(text: str) -> str:
    """Text from a server as a terminal shows it: each character it would obey instead (an
    escape sequence in a name, a value or an error's detail clears the screen or sets the
    window title) written as its escape, ``\\x1b`` or ``\\u202e``; a newline as ``\\n``."""
    return _OBEYED.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return "\\n" if code == 0x0A else f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def _cell(value: Any) -> str:
    text = shown("NULL" if value is None else str(value))
    return text if len(text) <= CELL_WIDTH else text[: CELL_WIDTH - 1] + "…"


def render_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], out: TextIO) -> None:
    columns = [shown(column) for column in columns]
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    out.write("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip() + "\n")
    out.write("  ".join("-" * w for w in widths) + "\n")
    for row in cells:
        out.write("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() + "\n")


def render_arrow(table: pa.Table, out: TextIO) -> None:
    shown = table.slice(0, TABLE_ROWS)
    rows = list(zip(*(_values(column) for column in shown.columns), strict=True))
    render_table(table.column_names, rows, out)
    more = table.num_rows - shown.num_rows
    tail = f", {more:,} not shown: use --format or -o FILE" if more else ""
    out.write(f"({table.num_rows:,} row{'s' if table.num_rows != 1 else ''}{tail})\n")


def print_resources(items: Sequence[Resource], fields: Sequence[str], as_json: bool) -> None:
    if as_json:
        json.dump([item.to_dict() for item in items], sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        return
    render_table(
        ["id", *fields], [[i.id, *(i.attributes.get(f) for f in fields)] for i in items], sys.stdout
    )


def print_document(value: Any, as_json: bool) -> None:
    document = value.to_dict() if isinstance(value, Resource) else value
    if as_json or not isinstance(document, dict):
        json.dump(document, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        return
    width = max((len(shown(k)) for k in document), default=0)
    for key, item in document.items():
        text = json.dumps(item, default=str) if isinstance(item, dict | list) else item
        sys.stdout.write(f"{shown(key).ljust(width)}  {'' if text is None else shown(str(text))}\n")
