"""Dates and timestamps as text (JSON's ISO 8601 and CSV's cells), DuckDB's infinities and the
years Arrow cannot spell included.

Arrow's cast to string spells the years 1 to 9999 well; past them it answers ``<value out of
range: N>``, or, for a zoned timestamp, wraps the year or fails. DuckDB stores ``infinity`` and
``-infinity`` as the largest integer of the column's storage and its negation, which Arrow takes
for ordinary instants. So the integers decide here: a column whose values all lie in those years
(one pass for its extremes) keeps Arrow's fast path; otherwise the values outside them are
spelled by numpy (a longer or signed year, as ISO 8601 extends it: ``5877642-06-25``,
``-290308-12-21 19:59:05.224193``), the two infinities as ``infinity`` and ``-infinity`` (as
DuckDB and PostgreSQL spell them). JSON's texts of a column in those years that spans fewer days
than it has values (the usual result) are laid out by numpy from tables instead, to the same
bytes in a third of the time.
"""

from __future__ import annotations

import functools

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shared.times_of_day import PER_SECOND, beyond_a_day, time_values

_INFINITY = "infinity"
# What follows a zoned timestamp's UTC wall clock in JSON.
ISO_ZONE_SUFFIX = "+00:00"
# 0001-01-01 and 9999-12-31, as days and as seconds since 1970: the years Arrow spells.
_FIRST_DAY, _LAST_DAY = -719_162, 2_932_896
_FIRST_SECOND, _LAST_SECOND = _FIRST_DAY * 86_400, (_LAST_DAY + 1) * 86_400 - 1
_INT64_LARGEST = 2**63 - 1
# ``YYYY-MM-DD`` and the space Arrow puts after it, where ISO 8601 wants a ``T``.
_DATE_LENGTH, _SPACE, _T = 10, ord(" "), ord("T")


class Spelled:
    """A date or timestamp column's texts (as ``spell`` says), and which of them are infinities
    (None when none is): ``with_zone`` gives the others a suffix."""

    __slots__ = ("infinite", "texts")

    def __init__(self, texts: pa.Array, infinite: pa.Array | None) -> None:
        self.texts = texts
        self.infinite = infinite

    def with_zone(self, suffix: str) -> pa.Array:
        """The texts, each but the infinities followed by ``suffix``."""
        if not suffix:
            return self.texts
        suffixed = pc.binary_join_element_wise(self.texts, suffix, "")
        return (
            suffixed if self.infinite is None else pc.if_else(self.infinite, self.texts, suffixed)
        )


def is_temporal(data_type: pa.DataType) -> bool:
    """A type this module spells: ``date32`` (DuckDB's DATE) or a timestamp of any unit."""
    return pa.types.is_date32(data_type) or pa.types.is_timestamp(data_type)


def zone_suffix(data_type: pa.DataType) -> str:
    """What JSON puts after each (but an infinity) of a column's ISO texts."""
    return ISO_ZONE_SUFFIX if pa.types.is_timestamp(data_type) and data_type.tz else ""


def iso_texts(column: pa.Array) -> pa.Array:
    """A date or timestamp column's JSON strings, unquoted, zone suffix included."""
    return spell(column, iso=True).with_zone(zone_suffix(column.type))


def infinities(column: pa.Array) -> pa.Array:
    """Which values of a date or timestamp column are DuckDB's ``infinity`` or ``-infinity``
    (a null is neither)."""
    storage, largest = _storage(column.type)
    values = column.view(storage)
    return pc.fill_null(pc.or_(pc.equal(values, largest), pc.equal(values, -largest)), False)


def _storage(data_type: pa.DataType) -> tuple[pa.DataType, int]:
    """The integer type a date or timestamp column is stored as, and its largest value."""
    if pa.types.is_date32(data_type):
        return pa.int32(), 2**31 - 1
    return pa.int64(), _INT64_LARGEST


def spell(column: pa.Array, *, iso: bool) -> Spelled:
    """``date32`` or timestamp texts. ``iso`` (JSON): ``YYYY-MM-DDTHH:MM:SS[.fraction]``, the
    fraction at the column's unit, a zoned timestamp as its UTC wall clock (the caller adds the
    suffix). Else (CSV): as Arrow spells them, a space for the ``T`` and a zoned timestamp in
    its zone with its offset (``Z`` in UTC)."""
    data_type = column.type
    zoned = pa.types.is_timestamp(data_type) and data_type.tz is not None
    if iso and zoned:
        column = column.cast(pa.timestamp(data_type.unit))
    if iso:
        laid_out = _iso_laid_out(column)
        if laid_out is not None:
            return Spelled(laid_out, None)
    spelled = _spell_every_value(column, "Z" if zoned and not iso else "")
    if iso and pa.types.is_timestamp(data_type):
        spelled.texts = _with_t(spelled.texts)
    return spelled


def ordinary(column: pa.Array) -> bool:
    """Whether every value of a ``date32`` or timestamp column lies in the years 1 to 9999,
    which Arrow spells as this module does (one pass for the extremes, no text)."""
    if column.null_count == len(column):
        return True
    first, last = _years_arrow_spells(column.type)
    extremes = pc.min_max(column.view(_storage(column.type)[0]))
    return first <= extremes["min"].as_py() and extremes["max"].as_py() <= last


def _years_arrow_spells(data_type: pa.DataType) -> tuple[int, int]:
    """The first and last values of a column's type in the years 1 to 9999."""
    if pa.types.is_date32(data_type):
        return _FIRST_DAY, _LAST_DAY
    per_second = PER_SECOND[data_type.unit]
    first = max(_FIRST_SECOND * per_second, -_INT64_LARGEST + 1)
    last = min((_LAST_SECOND + 1) * per_second - 1, _INT64_LARGEST - 1)
    return first, last


def _spell_every_value(column: pa.Array, utc_suffix: str) -> Spelled:
    """Arrow's texts of the values in the years 1 to 9999; the others, which Arrow spells
    ``<value out of range: …>``, spells with a wrapped year (a zoned one) or refuses to, are
    never given to it: numpy spells them, in UTC followed by ``utc_suffix``, and the infinities
    are named."""
    if ordinary(column):
        return Spelled(pc.cast(column, pa.string()), None)
    storage, largest = _storage(column.type)
    first, last = _years_arrow_spells(column.type)
    values = column.view(storage)
    far = pc.fill_null(pc.or_(pc.less(values, first), pc.greater(values, last)), False)
    near = pc.if_else(far, pa.scalar(None, column.type), column)
    texts = pc.cast(near, pa.string())
    integers = pc.filter(values, far).to_numpy(zero_copy_only=False)
    unit = "D" if storage == pa.int32() else column.type.unit
    by_numpy = np.datetime_as_string(integers.astype(f"datetime64[{unit}]"))
    replacements = [
        (_INFINITY if number > 0 else f"-{_INFINITY}")
        if abs(int(number)) == largest
        else _four_digit_year(str(text)).replace("T", " ", 1) + utc_suffix
        for number, text in zip(integers, by_numpy, strict=True)
    ]
    texts = pc.replace_with_mask(texts, far, pa.array(replacements, pa.string()))
    infinite = infinities(column)
    return Spelled(texts, infinite if pc.any(infinite).as_py() else None)


def _iso_laid_out(column: pa.Array) -> pa.Array | None:
    """A ``date32`` or unzoned timestamp column's ISO texts, laid out by numpy: each is
    ``YYYY-MM-DD``, then for a timestamp ``THH:MM:SS`` and the unit's fraction digits, a fixed
    width filled in from tables (the days the column spans, spelled once by Arrow; every second
    of a day; every three digits) by 2-, 4- and 8-byte stores: a third of the time of Arrow's
    cast (and ``_with_t``). None (Arrow then spells) when a value lies outside the years 1 to
    9999, when the column spans more days than it has values, or when its texts would be more
    than a string array holds."""
    count = len(column)
    if not count or column.null_count == count:
        return None
    storage, _ = _storage(column.type)
    timestamp = pa.types.is_timestamp(column.type)
    per_second = PER_SECOND[column.type.unit] if timestamp else 1
    per_day = 86_400 * per_second if timestamp else 1
    values = column.view(storage)
    extremes = pc.min_max(values)
    least, most = extremes["min"].as_py(), extremes["max"].as_py()
    first, last = _years_arrow_spells(column.type)
    first_day = least // per_day
    span = most // per_day - first_day + 1
    groups = _FRACTION_DIGITS[column.type.unit] // 3 if timestamp else 0
    width = (_ISO_SECOND_LENGTH if timestamp else _DATE_LENGTH) + (3 * groups + 1 if groups else 0)
    if not first <= least <= most <= last or span > count or count * width >= _OFFSETS_REACH:
        return None
    if column.null_count:
        values = pc.fill_null(values, least)
    days, within_day = np.divmod(
        values.to_numpy(zero_copy_only=False).astype(np.int64, copy=False), per_day
    )
    days -= first_day
    laid = np.empty((count, width), dtype=np.uint8)
    date_head, date_tail = _days_spelled(first_day, span)
    laid[:, 0:8].view(np.uint64)[:, 0] = date_head[days]
    laid[:, 8:10].view(np.uint16)[:, 0] = date_tail[days]
    if timestamp:
        seconds, fraction = np.divmod(within_day, per_second)
        laid[:, _DATE_LENGTH] = _T
        laid[:, 11:19].view(np.uint64)[:, 0] = _clock_texts()[seconds]
        # Each group of digits is stored with a spare leading byte (the point, for the first),
        # which the group before it overwrites: so the groups are stored last first.
        for place in reversed(range(groups)):
            fraction, digits = np.divmod(fraction, 1000) if place else (fraction, fraction)
            start = _ISO_SECOND_LENGTH + 3 * place
            laid[:, start : start + 4].view(np.uint32)[:, 0] = _point_and_three_digits()[digits]
    offsets = np.arange(0, (count + 1) * width, width, dtype=np.int32)
    texts = pa.StringArray.from_buffers(count, pa.py_buffer(offsets), pa.py_buffer(laid))
    if column.null_count:
        texts = pc.if_else(column.is_valid(), texts, pa.scalar(None, pa.string()))
    return texts


# ``YYYY-MM-DDTHH:MM:SS``; a unit's fraction follows a point, in groups of three digits.
_ISO_SECOND_LENGTH = 19
_FRACTION_DIGITS = {"s": 0, "ms": 3, "us": 6, "ns": 9}
# A string array's offsets are 32-bit: its texts hold fewer bytes than this.
_OFFSETS_REACH = 2**31


def _days_spelled(first_day: int, span: int) -> tuple[np.ndarray, np.ndarray]:
    """``YYYY-MM-DD`` of ``span`` days from ``first_day`` (days since 1970, in years 1 to
    9999) as Arrow spells them: their first 8 bytes and their last 2, as words."""
    days = pa.array(np.arange(first_day, first_day + span, dtype=np.int32), pa.date32())
    texts = np.frombuffer(pc.cast(days, pa.string()).buffers()[2], np.uint8, span * 10)
    texts = texts.reshape(span, _DATE_LENGTH)
    head = np.ascontiguousarray(texts[:, :8]).view(np.uint64)[:, 0]
    return head, np.ascontiguousarray(texts[:, 8:]).view(np.uint16)[:, 0]


@functools.lru_cache(maxsize=1)
def _clock_texts() -> np.ndarray:
    """``HH:MM:SS`` of every second of a day, as 8-byte words (691 kB, built once)."""
    hours, rest = np.divmod(np.arange(86_400), 3600)
    minutes, seconds = np.divmod(rest, 60)
    texts = np.full((86_400, 8), ord(":"), dtype=np.uint8)
    for start, part in ((0, hours), (3, minutes), (6, seconds)):
        tens, units = np.divmod(part, 10)
        texts[:, start] = tens + ord("0")
        texts[:, start + 1] = units + ord("0")
    return texts.view(np.uint64)[:, 0]


@functools.lru_cache(maxsize=1)
def _point_and_three_digits() -> np.ndarray:
    """``.000`` to ``.999`` as 4-byte words."""
    return np.array([f".{n:03d}" for n in range(1000)], dtype="S4").view(np.uint32)


def _four_digit_year(text: str) -> str:
    """numpy's text with a year before 1 (1 BC is year 0) of at least four digits after its sign,
    as ISO 8601's expanded years have: numpy counts the sign among the four (``-043-03-15`` for
    44 BC)."""
    if not text.startswith("-"):
        return text
    year, rest = text[1:].split("-", 1)
    return f"-{year.zfill(4)}-{rest}"


def _with_t(texts: pa.Array) -> pa.Array:
    """The space Arrow puts after a four-digit year's date, at index 10, overwritten with a
    ``T`` in a copy of the text buffer; when some value has it elsewhere (another year, an
    infinity), a kernel replaces each value's first space instead."""
    if not len(texts):
        return texts
    offsets = np.frombuffer(texts.buffers()[1], dtype=np.int32)[
        texts.offset : texts.offset + len(texts) + 1
    ]
    starts, lengths = offsets[:-1], np.diff(offsets)
    if texts.null_count:
        valid = np.asarray(texts.is_valid())
        starts, lengths = starts[valid], lengths[valid]
    data = np.frombuffer(texts.buffers()[2], dtype=np.uint8).copy()
    separators = starts + _DATE_LENGTH
    in_place = not separators.size or (
        bool((lengths > _DATE_LENGTH).all()) and bool((data[separators] == _SPACE).all())
    )
    if not in_place:
        return pc.replace_substring(texts, " ", "T", max_replacements=1)
    data[separators] = _T
    buffers = texts.buffers()
    return pa.StringArray.from_buffers(
        len(texts), buffers[1], pa.py_buffer(data), buffers[0], texts.null_count, texts.offset
    )


# ---------------------------------------------------------------------------- times of day


def time_texts(column: pa.Array) -> pa.Array:
    """A ``time32`` or ``time64`` column's texts, ``HH:MM:SS`` and the unit's fraction digits
    (``13:45:31.500000`` for DuckDB's microseconds), in JSON and CSV alike. Arrow spells the
    times from midnight to just before the next; the others it answers ``<value out of range:
    N>``. DuckDB's TIME and PostgreSQL's ``time`` hold ``24:00:00``, the end of a day; those are
    spelled here, by their hours (``24:00:00.000000``, and a negative or longer duration another
    source may hold the same way)."""
    outside = beyond_a_day(column)
    if not pc.any(outside).as_py():
        return pc.cast(column, pa.string())
    texts = pc.cast(pc.if_else(outside, pa.scalar(None, column.type), column), pa.string())
    values = pc.filter(time_values(column), outside).to_pylist()
    spelled = [_time_text(int(value), column.type.unit) for value in values]
    return pc.replace_with_mask(texts, outside, pa.array(spelled, pa.string()))


def ordinary_times(column: pa.Array) -> bool:
    """Whether Arrow spells every value of a time column (none is beyond a day's start and end)."""
    return not pc.any(beyond_a_day(column)).as_py()


def _time_text(value: int, unit: str) -> str:
    """One time of day beyond Arrow's range, spelled as Arrow spells the others."""
    per_second = PER_SECOND[unit]
    sign = "-" if value < 0 else ""
    seconds, fraction = divmod(abs(value), per_second)
    minutes, second = divmod(seconds, 60)
    hours, minute = divmod(minutes, 60)
    text = f"{sign}{hours:02d}:{minute:02d}:{second:02d}"
    digits = _FRACTION_DIGITS[unit]
    return f"{text}.{fraction:0{digits}d}" if digits else text
