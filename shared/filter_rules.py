"""Filters' kinds (control type, value type, where options come from) and the rules an execution's
values keep for the variables that have a filter (docs/filters.md), read from the database into
``sql_templating.rules`` values. Here, not in the API server, because whatever creates an
execution (Run Execution, a report's run, a data server's scheduler) binds with the same rules.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from functools import partial
from typing import Literal, get_args

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from shared.db.models import Filter
from shared.filter_options import static_copy
from shared.results import open_result_store
from shared.settings import Settings
from sql_templating.parameters import TRUNCATION_UNITS, InputParameters, Scalar
from sql_templating.rules import VariableRule

logger = logging.getLogger(__name__)

ControlType = Literal["dropdown", "text", "date_range", "datetime_range", "aggregation"]
ValueType = Literal["text", "number", "date", "datetime", "boolean"]
OptionsSource = Literal["manual", "dynamic_sql", "static_sql"]
CONTROL_TYPES: tuple[str, ...] = get_args(ControlType)
VALUE_TYPES: tuple[str, ...] = get_args(ValueType)
OPTIONS_SOURCES: tuple[str, ...] = get_args(OptionsSource)

# The value types each control takes: a range is of dates or of instants, an aggregation's value
# is the name of a unit.
VALUE_TYPES_OF_CONTROL: dict[str, tuple[str, ...]] = {
    "dropdown": VALUE_TYPES,
    "text": ("text", "number"),
    "date_range": ("date",),
    "datetime_range": ("datetime",),
    "aggregation": ("text",),
}


def filters_within(
    organization_id: str, datasource_ids: Collection[str] | None
) -> ColumnElement[bool]:
    """The organisation's filters a key restricted to ``datasource_ids`` reaches (None: not
    restricted): those without a datasource, or on one of them."""
    where = Filter.organization_id == organization_id
    if datasource_ids is not None:
        where = where & (Filter.datasource_id.is_(None) | Filter.datasource_id.in_(datasource_ids))
    return where


def variable_rules(
    session: Session,
    organization_id: str,
    datasource_id: str,
    inputs: InputParameters,
    settings: Settings,
) -> dict[str, VariableRule]:
    """The rules a run on ``datasource_id`` keeps, for the variables ``inputs`` gives values
    for: those of the filters on no datasource or on that one. A filter on another datasource
    shapes none of its runs: a key that reaches only that other one would otherwise restrict
    runs it cannot see, and a key that reaches only this one would learn of a filter it cannot
    see, and which values it allows, one guess at a time."""
    names = [given.variable_name for given in inputs.filters or ()]
    if not names:
        return {}
    rows = session.scalars(
        select(Filter).where(
            filters_within(organization_id, (datasource_id,)), Filter.variable_name.in_(names)
        )
    )
    return {row.variable_name: rule_of(row, _newly_copied(session, row, settings)) for row in rows}


def _newly_copied(session: Session, row: Filter, settings: Settings) -> list[Scalar] | None:
    """The options a restricted static SQL filter's execution gave since its row's copy, which
    a read of the filter copies: a run checked against the row's alone was held to the old
    ones until then (and a filter never read allowed nothing). Read, not copied (a copy here,
    in the run's transaction, would wait for a change of the filter while holding what that
    change waits for), and kept for the next run (``static_copy``). None: the row's, also when
    the result cannot be read just now (the run goes on as it would have before)."""
    if not (row.restrict_to_options and row.options_source == "static_sql"):
        return None
    try:
        copy = static_copy(session, row, partial(open_result_store, settings), settings)
    except OSError as exc:  # the result store did not answer (an object store's outage)
        logger.warning("static options of filter %s not read: %s", row.id, type(exc).__name__)
        return None
    return copy.options.values if copy is not None and copy.options is not None else None


def rule_of(row: Filter, copied: list[Scalar] | None = None) -> VariableRule:
    """``restrict_to_options``: an aggregation's units (``aggregation_options``, null: all), or
    the manual options, or a static SQL's options: ``copied`` from an execution that ended
    since the row's copy, else the row's."""
    rule = VariableRule(
        multiple=row.multiple,
        allow_all_time=row.allow_all_time,
        value_type=row.value_type,
    )
    if not row.restrict_to_options:
        return rule
    options: list[Scalar]
    note = ""
    if row.control_type == "aggregation":
        options = [*(row.aggregation_options or TRUNCATION_UNITS)]
        options += ["all_time"] if row.allow_all_time else []
    else:
        options = list(copied if copied is not None else row.values or ())
        if copied is None and row.options_source == "static_sql" and row.options_updated_at is None:
            note = " (its options SQL has not completed yet, so it has none)"
    return rule.with_options(options, note)
