"""A filter's options and where a static SQL filter's come from: its options execution's stored
result, read into options (``read_options``) and weighed against the organisation's budget
(``static_copy``). Here, not in the API server, because a run checks a value against the options
that result gives (``restrict_to_options``) whoever creates it, the scheduler too, and whether
or not a read of the filter copied them into its row yet.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any, Literal

import orjson
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.db.models import Execution, Filter, json_characters, utcnow
from shared.execution_states import ExecutionStatus
from shared.results import ResultGone, ResultStore, result_object_key
from shared.settings import Settings
from shared.storage_quota import MIB
from shared.times_of_day import beyond_a_day
from sql_templating.parameters import MAX_INTEGER, MIN_INTEGER, Scalar, as_text
from sql_templating.rules import is_date_text, is_datetime_text, option_key

# A static-SQL filter's options: queued (none copied yet), copied, or its SQL failed.
OptionsStatus = Literal["pending", "ready", "failed"]
# Manual options at most, and the rows of a static SQL's result copied as options at most.
MAX_OPTIONS = 10_000
MAX_OPTION_LENGTH = 1_000  # characters of one option's text or label
# The bytes of JSON that one filter's options copied from a SQL's result render to at most
# (values and labels, as answers write them: a control character takes six), about what one
# request may write as manual options (its body is at most 1 MiB). Every read of the filter,
# and of the list it is on, renders them.
MAX_OPTIONS_JSON_BYTES = 1_000_000
# The rows of a result read for them at most: a result of millions of rows, nulls or values of
# another type, took a first run (or read of the filter) 25 s before (an outside probe).
MAX_OPTION_ROWS_READ = 100 * MAX_OPTIONS
# What a filter's options weigh as its row keeps it: their JSON's characters, values and labels.
OPTIONS_WEIGHT = Filter.values_characters + Filter.value_names_characters


@dataclasses.dataclass(frozen=True)
class Options:
    """A filter's options: ``value_names[i]`` labels ``values[i]`` (None: no label)."""

    values: list[Scalar]
    value_names: list[str | None]

    @classmethod
    def of(cls, values: Sequence[Scalar] | None, names: Sequence[str | None] | None) -> Options:
        values = list(values or [])
        return cls(values, list(names) if names is not None else [None] * len(values))

    def page(self, search: str | None, number: int, size: int) -> dict[str, Any]:
        """Get Drop-Down Filter Options' answer: the page's options, the total matching."""
        pairs = list(zip(self.values, self.value_names, strict=True))
        if search:
            wanted = search.casefold()
            pairs = [
                (value, name)
                for value, name in pairs
                if wanted in as_text(value).casefold() or (name and wanted in name.casefold())
            ]
        chosen = pairs[(number - 1) * size : number * size]
        return {
            "values": [value for value, _ in chosen],
            "value_names": [name for _, name in chosen],
            "total": len(pairs),
            "page": {"number": number, "size": size},
        }


def is_value_of_type(value: Any, value_type: str) -> bool:
    """Whether a JSON scalar is a value of ``value_type``."""
    if value_type == "boolean":
        return isinstance(value, bool)
    if value_type == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if not isinstance(value, str):
        return False
    if value_type == "date":
        return is_date_text(value)
    if value_type == "datetime":
        return is_datetime_text(value)
    return True


@dataclasses.dataclass(frozen=True)
class CopiedOptions:
    """Options read from a result, with what was left out of them."""

    options: Options
    left_out: int  # values that are no option of the filter's value type
    cut_short: bool  # rows or bytes beyond the bounds were not read
    rendered: int = 0  # the bytes of JSON the options (values and labels) render to

    def note(self, value_type: str) -> str | None:
        """The status message of a static copy: what it left out, if anything."""
        notes = []
        if self.cut_short:
            notes.append(
                f"Only the first {len(self.options.values)} values are options (at most "
                f"{MAX_OPTIONS}, of {MAX_OPTIONS_JSON_BYTES:,} bytes of JSON with their labels, "
                f"from the first {MAX_OPTION_ROWS_READ:,} rows)."
            )
        if self.left_out:
            notes.append(
                f"{self.left_out} values were left out: not {value_type} values, or longer "
                f"than {MAX_OPTION_LENGTH} characters, or integers beyond 64 bits, or text "
                "that is not UTF-8 (which no selection could match)."
            )
        return " ".join(notes) or None


def read_options(store: ResultStore, data_key: str, value_type: str) -> CopiedOptions:
    """A result's options: distinct non-null values of the first column (first label wins) that
    are values of ``value_type``, as a client would write them (docs/filters.md), labels from
    the second column; at most ``MAX_OPTIONS`` of them, rendering to at most
    ``MAX_OPTIONS_JSON_BYTES`` of JSON, from the first ``MAX_OPTION_ROWS_READ`` rows."""
    values: list[Scalar] = []
    names: list[str | None] = []
    seen: set[Any] = set()
    left_out = rendered = rows_read = 0
    with store.open(result_object_key(data_key)) as source:
        reader = pa.ipc.open_file(source)
        if reader.schema.names == []:
            return CopiedOptions(Options([], []), 0, cut_short=False)
        for index in range(reader.num_record_batches):
            if rows_read >= MAX_OPTION_ROWS_READ:
                return CopiedOptions(Options(values, names), left_out, True, rendered)
            batch = reader.get_batch(index).slice(0, MAX_OPTION_ROWS_READ - rows_read)
            rows_read += batch.num_rows
            labels = _cells(batch.column(1)) if batch.num_columns > 1 else None
            for position, raw in enumerate(_cells(batch.column(0))):
                if raw is None:
                    continue
                value = _option_value(raw, value_type)
                if value is None:
                    left_out += 1
                    continue
                if option_key(value) in seen:
                    continue
                label = _label(labels[position]) if labels is not None else None
                rendered += len(orjson.dumps(value)) + len(orjson.dumps(label))
                if len(values) == MAX_OPTIONS or rendered > MAX_OPTIONS_JSON_BYTES:
                    return CopiedOptions(Options(values, names), left_out, True, rendered)
                seen.add(option_key(value))
                values.append(value)
                names.append(label)
    return CopiedOptions(Options(values, names), left_out, False, rendered)


_UNREADABLE = object()  # a cell Python cannot hold: a date of DuckDB's infinity, a year ≤ 0


def _cells(column: pa.Array) -> list[Any]:
    """A column's cells as Python values; one Python cannot hold, or DuckDB's ``infinity`` (which
    Arrow takes for the largest instant, and Python for 2262 at nanoseconds), is
    ``_UNREADABLE``."""
    try:
        cells = column.to_pylist()
    except (OverflowError, ValueError):
        cells = [_cell(column, position) for position in range(len(column))]
    for position in _unreadable_positions(column):
        cells[position] = _UNREADABLE
    return cells


def _unreadable_positions(column: pa.Array) -> list[int]:
    """Where a date or timestamp column holds DuckDB's ``infinity`` or ``-infinity`` (its
    storage's largest integer or that negated), or a time column the end of a day
    (``24:00:00``), which Python's time wraps to the start of one."""
    if pa.types.is_time(column.type):
        return pc.indices_nonzero(beyond_a_day(column)).to_pylist()
    if pa.types.is_date32(column.type):
        storage, largest = pa.int32(), 2**31 - 1
    elif pa.types.is_timestamp(column.type):
        storage, largest = pa.int64(), 2**63 - 1
    else:
        return []
    integers = column.view(storage)
    infinite = pc.or_(pc.equal(integers, largest), pc.equal(integers, -largest))
    return pc.indices_nonzero(pc.fill_null(infinite, False)).to_pylist()


def _cell(column: pa.Array, position: int) -> Any:
    try:
        return column[position].as_py()
    except (OverflowError, ValueError):
        return _UNREADABLE


def _option_value(raw: Any, value_type: str) -> Scalar:
    """A result's cell as an option of ``value_type``, spelled as a client writes one (dates
    and times ISO 8601, decimals as numbers, any scalar as text for a text filter); None when it
    is none (another type, no scalar, too long, beyond 64-bit integers, holding NUL)."""
    value: Any = raw
    if isinstance(raw, Decimal) and value_type == "text":
        value = format(raw, "f")  # its exact text, not a float's, and never 0E-10
    elif isinstance(raw, Decimal):
        value = int(raw) if raw == raw.to_integral_value() else float(raw)
    elif isinstance(raw, date | time):  # a datetime is a date
        value = raw.isoformat()
    elif not isinstance(raw, str | int | float):  # an interval, a blob, a list, unreadable
        return None
    if value_type == "text" and isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, int) and not isinstance(value, bool):
        in_range = MIN_INTEGER <= value <= MAX_INTEGER
        return value if in_range and is_value_of_type(value, value_type) else None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str) and (len(value) > MAX_OPTION_LENGTH or "\x00" in value):
        return None
    return value if is_value_of_type(value, value_type) else None


def _label(raw: Any) -> str | None:
    """A label's text, cut to ``MAX_OPTION_LENGTH`` characters (None: no label, or a cell that
    is no scalar: an interval, a blob, a list)."""
    if raw is None or not isinstance(raw, str | int | float | Decimal | date | time):
        return None
    if isinstance(raw, date | time):
        spelled = raw.isoformat()
    elif isinstance(raw, Decimal):
        spelled = format(raw, "f")
    else:
        spelled = str(raw)
    text = (as_text(raw) if isinstance(raw, bool) else spelled).replace("\x00", "")
    return text[:MAX_OPTION_LENGTH]


# ---------------------------------------------------------------------------- static SQL


@dataclasses.dataclass(frozen=True)
class StaticCopy:
    """What a static SQL filter holds once its options execution ended: its status and message,
    and its new options (None: the previous ones stay), copied from the execution at
    ``updated_at``."""

    status: OptionsStatus
    status_message: str | None
    options: Options | None = None
    updated_at: datetime | None = None


def static_copy(
    session: Session, row: Filter, store: Callable[[], ResultStore], settings: Settings
) -> StaticCopy | None:
    """What copying a static SQL filter's options from its ended execution gives: its result's
    first column (values) and second (labels), at most ``MAX_OPTIONS`` rows; or its error.
    Options that would take the organisation's filters past their budget are not copied (the
    old ones stay; copies at the same moment may each pass it by theirs). None when there is
    nothing to copy: not a static SQL filter waiting for its options, or its execution runs.
    ``store`` is asked for only when there is a result to read."""
    if row.options_source != "static_sql" or row.status != "pending":
        return None
    execution = session.get(Execution, row.options_execution_id or "")
    if execution is None:
        return StaticCopy("failed", "The options execution no longer exists.")
    if execution.status == ExecutionStatus.COMPLETED and execution.data_key:
        try:
            copied = _read_once(store, execution.data_key, row.value_type)
        except ResultGone:
            return StaticCopy("failed", "The options result no longer exists.")
        except pa.ArrowInvalid:  # never left for each read of the filter (or its list) to meet
            return StaticCopy("failed", "The options result could not be read.")
        weight_before = row_options_weight(row)
        if options_weight(copied.options) > weight_before:
            others = organization_options_weight(session, row.organization_id) - weight_before
            if others + options_weight(copied.options) > options_budget(settings):
                return StaticCopy(
                    "failed",
                    "The options would take the organisation's filters past the "
                    f"{options_budget(settings):,} characters of options they may hold together.",
                )
        updated_at = execution.completed_at or utcnow()
        return StaticCopy("ready", copied.note(row.value_type), copied.options, updated_at)
    if execution.status in (ExecutionStatus.FAILED, ExecutionStatus.CANCELLED):
        message = execution.error_message or f"The options SQL was {execution.status}."
        return StaticCopy("failed", message)
    return None


# The options last read from results, by data key and value type: a result never changes, and a
# run checks a restricted filter's new options against its result until a read of the filter
# copies them (runs alone never do), each run reading the file again. At most this many bytes of
# options (their JSON, as ``read_options`` counts it) are kept.
_READ_ONCE_BYTES = 8 * MIB
_read_options: OrderedDict[tuple[str, str], CopiedOptions] = OrderedDict()
_read_options_lock = threading.Lock()


def _read_once(store: Callable[[], ResultStore], data_key: str, value_type: str) -> CopiedOptions:
    """``read_options``, kept for the next read of the same result (``_READ_ONCE_BYTES``); each
    caller gets lists of its own. The store is opened only to read (an object store's client
    is not made for an answer already kept)."""
    key = (data_key, value_type)
    with _read_options_lock:
        copied = _read_options.get(key)
        if copied is not None:
            _read_options.move_to_end(key)
    if copied is None:
        copied = read_options(store(), data_key, value_type)
        with _read_options_lock:
            _read_options[key] = copied
            while sum(each.rendered for each in _read_options.values()) > _READ_ONCE_BYTES:
                _read_options.popitem(last=False)
    options = Options(list(copied.options.values), list(copied.options.value_names))
    return dataclasses.replace(copied, options=options)


def row_options_weight(row: Filter) -> int:
    """What the row's options weigh as it keeps them (``OPTIONS_WEIGHT``, for one row read)."""
    return row.values_characters + row.value_names_characters


def options_weight(options: Options) -> int:
    """What ``options`` weigh once kept in a row (``option_columns``)."""
    return json_characters(options.values) + json_characters(options.value_names)


def option_columns(options: Options) -> dict[str, Any]:
    """A filter row's columns holding ``options``, their weights included, as the model's own
    setting of them writes them: for an update that does not go through the model."""
    return {
        "values": options.values,
        "value_names": options.value_names,
        "values_characters": json_characters(options.values),
        "value_names_characters": json_characters(options.value_names),
    }


def options_budget(settings: Settings) -> int:
    """The characters of options an organisation's filters may hold together."""
    return settings.max_filter_options_mb * MIB


def organization_options_weight(session: Session, organization_id: str) -> int:
    """What every filter's options of the organisation weigh together."""
    total = session.scalar(
        select(func.sum(OPTIONS_WEIGHT)).where(Filter.organization_id == organization_id)
    )
    return int(total or 0)
