"""Arrow's times of day (``time32``, ``time64``) that lie beyond a day.

DuckDB's TIME and PostgreSQL's ``time`` hold ``24:00:00``, the end of a day, which Arrow's cast
to text spells ``<value out of range: N>`` and Python's ``time`` wraps to the start of the day:
the data server spells them itself (data_server/temporal_texts.py), and a filter's options leave
them out (shared/filter_options.py)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

PER_SECOND = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}


def time_values(column: pa.Array) -> pa.Array:
    """A time column's integers, in its unit since midnight."""
    return column.view(pa.int64() if pa.types.is_time64(column.type) else pa.int32())


def beyond_a_day(column: pa.Array) -> pa.Array:
    """Which values of a time column lie before midnight or at or after the next one (a null
    does not)."""
    per_day = PER_SECOND[column.type.unit] * 86_400
    values = time_values(column)
    return pc.fill_null(pc.or_(pc.less(values, 0), pc.greater_equal(values, per_day)), False)
