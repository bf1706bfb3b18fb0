"""A dashboard's nested settings as input models: its time zone, its layout, its filter bar.

Each problem is reported at the member that has it, with a code of its own (``Problem``,
``problem``); the bounds are documented in the attributes' schemas.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, Field, model_validator

from api_server.resources.datasources import check_time_zone
from shared.input_models import InputModel, Problem, problem, problems_at
from sql_templating.parameters import (
    AGGREGATIONS,
    BUILT_IN_VARIABLES,
    MAX_FILTERS,
    NAME,
    Aggregation,
)

MAX_LAYOUT_ITEMS = 300  # reports placed on one dashboard
GRID_COLUMNS = 100  # an item spans columns [column, column + width) of this many
MAX_ROW = 10_000
MAX_HEIGHT = 100  # grid rows one report may span
MAX_DASHBOARD_VARIABLES = MAX_FILTERS + len(BUILT_IN_VARIABLES)
MAX_ALLOWED_TIME_ZONES = 1000  # more than the IANA database names
TimeZoneMode = Literal["disabled", "organization", "fixed", "selectable"]


def distinct(
    code: str, what: str, key: Callable[[Any], Any] = lambda value: value, member: str = ""
) -> Callable[[list[Any]], list[Any]]:
    """A list validator: each value (its ``key``) once; a repeat is a problem at its second
    place (at its ``member``, if given)."""

    def check(values: list[Any]) -> list[Any]:
        seen: set[Any] = set()
        repeated = []
        for index, value in enumerate(values):
            if key(value) in seen:
                detail = f"{what} {key(value)!r} is given twice."
                place = (index, member) if member else (index,)
                repeated.append((place, problem(code, detail)))
            seen.add(key(value))
        if repeated:
            raise problems_at(repeated)
        return values

    return check


TimeZoneName = Annotated[
    str,
    AfterValidator(check_time_zone),
    Problem("invalid_time_zone", "A time zone is an IANA name such as 'Europe/Berlin'."),
]


class TimeZoneConfig(InputModel):
    """Cluvio's dashboard time zone: none (`disabled`), the organisation's, one `fixed` zone, or
    one the viewer picks (`selectable`) among `allowed_time_zones`."""

    not_an_object = Problem(
        "invalid_type",
        'time_zone_config is an object {"type", "fixed_time_zone", "allowed_time_zones"}.',
    )

    type: Annotated[
        TimeZoneMode,
        Problem(
            "invalid_time_zone_mode",
            f"type is one of {', '.join(get_args(TimeZoneMode))}.",
        ),
    ]
    fixed_time_zone: Annotated[
        TimeZoneName | None,
        Field(description="The zone of `fixed` (required there); of `selectable`, the default."),
    ] = None
    allowed_time_zones: Annotated[
        Annotated[
            list[TimeZoneName],
            Field(max_length=MAX_ALLOWED_TIME_ZONES, json_schema_extra={"uniqueItems": True}),
            Problem("invalid_type", "An array of IANA time zone names.", only=("list_type",)),
            Problem("too_many", f"At most {MAX_ALLOWED_TIME_ZONES} zones.", only=("too_long",)),
            AfterValidator(distinct("duplicate_time_zone", "The time zone")),
        ]
        | None,
        Field(description="The zones a viewer may pick (`selectable`: at least one)."),
    ] = None

    @model_validator(mode="after")
    def _complete_for_its_type(self) -> TimeZoneConfig:
        """`fixed` names its zone; `selectable` offers at least one, its default among them."""
        found = []
        if self.type == "fixed" and self.fixed_time_zone is None:
            detail = "A fixed time zone configuration names its fixed_time_zone."
            found.append((("fixed_time_zone",), problem("missing_time_zone", detail)))
        if self.type == "selectable":
            allowed = self.allowed_time_zones or []
            if not allowed:
                detail = "A selectable time zone offers at least one of allowed_time_zones."
                found.append((("allowed_time_zones",), problem("missing_time_zone", detail)))
            elif self.fixed_time_zone is not None and self.fixed_time_zone not in allowed:
                detail = "The default fixed_time_zone must be one of allowed_time_zones."
                found.append((("fixed_time_zone",), problem("time_zone_not_allowed", detail)))
        if found:
            raise problems_at(found)
        return self


def _grid_problem(name: str, low: int, high: int) -> Problem:
    return Problem("invalid_layout_position", f"{name} is a whole number from {low} to {high}.")


GridRow = Annotated[int, Field(ge=0, le=MAX_ROW), _grid_problem("row", 0, MAX_ROW)]
GridColumn = Annotated[
    int, Field(ge=0, le=GRID_COLUMNS - 1), _grid_problem("column", 0, GRID_COLUMNS - 1)
]
GridWidth = Annotated[int, Field(ge=1, le=GRID_COLUMNS), _grid_problem("width", 1, GRID_COLUMNS)]
GridHeight = Annotated[int, Field(ge=1, le=MAX_HEIGHT), _grid_problem("height", 1, MAX_HEIGHT)]


class LayoutItem(InputModel):
    """Where one report sits on the dashboard's grid."""

    not_an_object = Problem(
        "invalid_type",
        'A layout item is an object {"type", "id", "row", "column", "width", "height"}.',
    )

    type: Annotated[
        Literal["report"], Problem("invalid_layout_type", "A layout item's type is 'report'.")
    ]
    id: Annotated[
        str,
        Field(min_length=1, max_length=64, description="A report on this dashboard."),
        Problem("invalid_type", "A layout item's id is the id of a report on this dashboard."),
    ]
    row: GridRow
    column: GridColumn
    width: GridWidth
    height: GridHeight

    @model_validator(mode="after")
    def _inside_the_grid(self) -> LayoutItem:
        if self.column + self.width > GRID_COLUMNS:
            detail = f"column + width may be at most {GRID_COLUMNS}, the grid's width."
            raise problems_at([(("width",), problem("layout_outside_grid", detail))])
        return self


Layout = Annotated[
    list[LayoutItem],
    Field(
        max_length=MAX_LAYOUT_ITEMS,
        description=f"Where each report sits, at most {MAX_LAYOUT_ITEMS} items on a grid of "
        f"{GRID_COLUMNS} columns and {MAX_ROW + 1} rows; each a report on this dashboard (so a "
        "new dashboard's layout is empty), each report once.",
    ),
    Problem("invalid_type", "layout is an array of items.", only=("list_type",)),
    Problem("too_many", f"At most {MAX_LAYOUT_ITEMS} layout items.", only=("too_long",)),
    AfterValidator(
        distinct("duplicate_layout_report", "The report", key=lambda item: item.id, member="id")
    ),
]


VariableName = Annotated[
    str,
    Field(pattern=rf"^{NAME}$", max_length=128),
    Problem("invalid_variable_name", "A variable name is letters, digits and underscores."),
]
VariableNames = Annotated[
    list[VariableName],
    Field(max_length=MAX_DASHBOARD_VARIABLES, json_schema_extra={"uniqueItems": True}),
    Problem("invalid_type", "An array of variable names.", only=("list_type",)),
    Problem("too_many", f"At most {MAX_DASHBOARD_VARIABLES} names.", only=("too_long",)),
    AfterValidator(distinct("duplicate_variable", "The variable")),
]


class FiltersConfiguration(InputModel):
    """How the dashboard's filter bar behaves."""

    not_an_object = Problem("invalid_type", "filters_configuration is an object.")

    apply_immediately: Annotated[
        bool,
        Field(description="Filters apply as soon as a value changes (false: on a button)."),
        Problem("invalid_type", "apply_immediately is true or false."),
    ] = True
    aggregation_options: Annotated[
        Annotated[
            list[
                Annotated[
                    Aggregation,
                    Problem("invalid_aggregation", f"One of {', '.join(AGGREGATIONS)}."),
                ]
            ],
            Field(
                min_length=1,
                max_length=len(AGGREGATIONS),
                json_schema_extra={"uniqueItems": True},
            ),
            Problem("invalid_type", "An array of aggregation names.", only=("list_type",)),
            Problem("invalid_aggregation_options", "Between 1 and all aggregation names."),
            AfterValidator(distinct("duplicate_aggregation", "The aggregation")),
        ]
        | None,
        Field(description="The aggregations the built-in filter offers; null: every one."),
    ] = None
    filter_sorting: Annotated[
        VariableNames, Field(description="Filter variables in the filter bar's order.")
    ] = Field(default_factory=list)
    hidden_parameters: Annotated[
        VariableNames, Field(description="Filter variables the filter bar does not show.")
    ] = Field(default_factory=list)
