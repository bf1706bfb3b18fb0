"""Run Execution's ``parameters``: Cluvio's InputParameters (``timerange``, ``aggregation``,
``tz``, ``filters``) as models that read the client's JSON into typed values and from which the
OpenAPI schemas ``RunParameters`` and ``Filter`` are derived. Each problem is a 422 pointing at the
member that has it, every problem reported at once (``shared.input_models``).

Nothing here touches SQL: ``sql_templating.binding`` turns these values into bound parameters.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    Field,
    GetCoreSchemaHandler,
    PlainValidator,
    PrivateAttr,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError, core_schema

from shared.errors import Unprocessable
from shared.input_models import (
    InputModel,
    Location,
    Problem,
    problem,
    problems_at,
    validate_input,
)
from shared.time_zones import known_time_zones

Scalar = str | int | float | bool | None


def as_text(value: Scalar) -> str:
    """A value as text, as JSON writes a number, a boolean or null (``0`` is ``'0'``, ``true``
    is ``'true'``): how an ad hoc variable's values bind (but null, which stays the absence of a
    value), and what a filter option's search reads."""
    return value if isinstance(value, str) else json.dumps(value)


Aggregation = Literal[
    "second", "minute", "hour", "day", "week", "month", "quarter", "year", "all_time"
]
AGGREGATIONS: tuple[str, ...] = get_args(Aggregation)
TRUNCATION_UNITS = AGGREGATIONS[:-1]
DEFAULT_AGGREGATION = "day"
BUILT_IN_VARIABLES = ("timerange", "aggregation", "tz")
MAX_FILTERS = 100
MAX_SELECTED_VALUES = 10_000
# Unix seconds of 0001-01-01 and 9999-12-31T23:59:59 UTC: the instants a TIMESTAMPTZ can carry.
MIN_UNIX_SECONDS, MAX_UNIX_SECONDS = -62_135_596_800, 253_402_300_799
# BIGINT: an integer is compared exactly (as it would not be as a double) and echoed exactly.
MIN_INTEGER, MAX_INTEGER = -(2**63), 2**63 - 1

NAME = r"[A-Za-z_][A-Za-z0-9_]*"  # a variable's name, in filters and in placeholders alike
# ASCII digits and blanks only: \d would read Arabic-Indic "\u0661~\u0662" as 1~2. The patterns
# are read by pydantic (Rust's regex), Python's re and the OpenAPI document's readers
# (ECMA-262), so they are written in the syntax all three read alike.
_BLANKS = r"[ \t\n\r\f\v]*"
TIMERANGE_PATTERN = rf"^{_BLANKS}(-?[0-9]{{1,15}}){_BLANKS}~{_BLANKS}(-?[0-9]{{1,15}}){_BLANKS}$"
_TIMERANGE = re.compile(TIMERANGE_PATTERN)
TIMERANGE_FORM = (
    "A time range is '<start>~<end>', two whole unix seconds, e.g. '1712233090~1712237090'."
)


@dataclass(frozen=True)
class TimeRange:
    """A half-open range of unix seconds: ``start`` belongs to it, ``end`` does not."""

    start: int
    end: int

    @classmethod
    def parse(cls, text: str) -> TimeRange:
        """``<start>~<end>``: two whole unix seconds within the years 1 to 9999, end after start."""
        match = _TIMERANGE.fullmatch(text)
        if match is None:
            raise problem("invalid_timerange", TIMERANGE_FORM)
        start, end = int(match.group(1)), int(match.group(2))
        for bound in (start, end):
            if not MIN_UNIX_SECONDS <= bound <= MAX_UNIX_SECONDS:
                raise problem(
                    "invalid_timerange",
                    f"{bound} is outside the years 1 to 9999 that a timestamp can hold.",
                )
        if end <= start:
            raise problem(
                "invalid_timerange",
                f"The time range ends ({end}) before it starts ({start}); the end is exclusive "
                "and must come after the start.",
            )
        return cls(start, end)

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        """Sent as its text, which the pattern admits before ``parse`` reads it."""
        text = core_schema.str_schema(pattern=TIMERANGE_PATTERN)
        return core_schema.no_info_after_validator_function(cls.parse, text)

    def following(self) -> TimeRange:
        """Cluvio's ``.next``: the range of equal length that starts where this one ends."""
        return TimeRange(self.end, self.end + (self.end - self.start))

    def bounds(self) -> tuple[str | None, str | None]:
        return _iso_instant(self.start), _iso_instant(self.end)


def _checked_value(value: Any) -> Scalar:
    """A JSON scalar; an integer only within BIGINT, which DuckDB compares exactly."""
    if not isinstance(value, Scalar):
        raise problem("invalid_type", "A selected value is a string, number, boolean or null.")
    if (
        isinstance(value, int)
        and not isinstance(value, bool)
        and not MIN_INTEGER <= value <= MAX_INTEGER
    ):
        raise problem(
            "number_out_of_range",
            "Integers beyond 64 bits (BIGINT) cannot be compared exactly; send the number as a "
            "string, which DuckDB converts to the column's type.",
        )
    return value


SelectedValue = Annotated[
    Scalar,
    PlainValidator(_checked_value),
    WithJsonSchema({"type": ["string", "number", "boolean", "null"]}),
]


def _not_built_in(name: str) -> str:
    if name in BUILT_IN_VARIABLES:
        raise problem(
            "built_in_variable",
            f"'{name}' is a built-in variable: send it as parameters.{name}, not as a filter.",
        )
    return name


class Filter(InputModel):
    """The selection of one of the query's own variables."""

    not_an_object = Problem(
        "invalid_type", 'A filter is an object {"variable_name", "selected_values"}.'
    )

    variable_name: Annotated[
        str,
        Field(pattern=rf"^{NAME}$"),
        Problem(
            "invalid_variable_name",
            "variable_name must be a name of letters, digits and underscores.",
        ),
        AfterValidator(_not_built_in),
    ]
    selected_values: Annotated[
        list[SelectedValue],
        Field(description="Empty for no selection; one `<start>~<end>` string is a range."),
        Problem("invalid_type", "selected_values must be an array (empty for no selection)."),
    ]
    _range: TimeRange | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _read_range(self) -> Filter:
        """One value that looks like ``<start>~<end>`` selects a range, as ``timerange`` does."""
        values = self.selected_values
        if len(values) == 1 and isinstance(values[0], str) and _TIMERANGE.match(values[0]):
            try:
                self._range = TimeRange.parse(values[0])
            except PydanticCustomError as error:
                raise problems_at([(("selected_values", 0), error)]) from None
        return self

    @property
    def range(self) -> TimeRange | None:
        return self._range

    @property
    def values(self) -> tuple[Scalar, ...]:
        """The values selected; none for a range."""
        return () if self._range is not None else tuple(self.selected_values)


def _distinct_and_within_total(filters: list[Filter]) -> list[Filter]:
    """Each variable once, and at most ``MAX_SELECTED_VALUES`` values over all filters."""
    found: list[tuple[Location, PydanticCustomError]] = []
    position: dict[str, int] = {}
    for index, given in enumerate(filters):
        name = given.variable_name
        if name in position:
            detail = f"The variable '{name}' is given twice (also filters/{position[name]})."
            found.append(((index, "variable_name"), problem("duplicate_filter", detail)))
        position[name] = index
    selected = sum(len(given.values) for given in filters)
    if selected > MAX_SELECTED_VALUES:
        detail = (
            f"The filters select {selected} values; at most {MAX_SELECTED_VALUES} are allowed "
            "in one execution."
        )
        found.append(((), problem("too_many", detail)))
    if found:
        raise problems_at(found)
    return filters


def _known_zone(name: str) -> str:
    if name not in known_time_zones():
        raise ValueError("not an IANA time zone")
    return name


class InputParameters(InputModel):
    """Values for the query's `{…}` placeholders (docs/sql-parameters.md)."""

    not_an_object = Problem("invalid_type", "parameters must be an object.")
    unknown_member = Problem("unknown_parameter", "Unknown parameter '{name}'.")

    timerange: Annotated[
        Annotated[TimeRange, Problem("invalid_timerange", TIMERANGE_FORM)] | None,
        Field(description="`<start>~<end>` in unix seconds, start included, end excluded."),
    ] = None
    aggregation: Annotated[
        Annotated[
            Aggregation,
            Problem(
                "invalid_aggregation", f"aggregation must be one of {', '.join(AGGREGATIONS)}."
            ),
        ]
        | None,
        Field(description="The unit of `{…:aggregation}` (default day)."),
    ] = None
    tz: Annotated[
        Annotated[
            str,
            AfterValidator(_known_zone),
            Problem(
                "invalid_time_zone", "tz must be an IANA time zone name such as 'Europe/Berlin'."
            ),
        ]
        | None,
        Field(description="An IANA zone for `{…:tz}`; default: the data zone."),
    ] = None
    filters: (
        Annotated[
            list[Filter],
            Field(max_length=MAX_FILTERS),
            Problem("too_many", f"At most {MAX_FILTERS} filters may be given.", only=("too_long",)),
            Problem("invalid_type", "filters must be an array."),
            AfterValidator(_distinct_and_within_total),
        ]
        | None
    ) = None

    @cached_property
    def filter_positions(self) -> dict[str, int]:
        """Each filter's variable and its index in ``filters`` (where its problems point)."""
        return {given.variable_name: index for index, given in enumerate(self.filters or ())}

    def filter_named(self, variable: str) -> Filter | None:
        index = self.filter_positions.get(variable)
        return None if index is None or self.filters is None else self.filters[index]


def parse_input_parameters(raw: Any) -> InputParameters:
    """Cluvio's InputParameters, each problem a 422 pointing at the member that has it."""
    return validate_input(InputParameters, raw, "/parameters")


def invalid_parameter(detail: str, pointer: str, code: str = "invalid_parameter") -> Unprocessable:
    return Unprocessable(detail, pointer=pointer, code=code)


def _iso_instant(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat()
