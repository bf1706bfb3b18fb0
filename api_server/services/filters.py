"""Filters of one organisation (docs/filters.md): CRUD, how their attributes fit together, their
options (manual, copied from a static SQL's result, or from a dynamic SQL's execution) and which
filters a report's or a dashboard's SQL uses.

Scope: a filter without a datasource is the organisation's; one with a datasource (its options
SQL runs there) is reached only by keys that reach the datasource; anything else answers as an
unknown id does. Static SQL options are copied into the row when the filter is read after its
execution completed (``sync_static_options``): the API server reads the stored Arrow result, as
a run does for a restricted filter not read since (``shared.filter_options``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, defer
from sqlalchemy.orm.attributes import set_committed_value

from api_server.principals import Principal
from api_server.services.datasources import get_datasource
from api_server.services.executions import RunRequest, queue_run, run_execution
from api_server.services.listing import CollectionQuery, ids_named_by_owner, list_page
from api_server.services.object_limits import require_room
from shared.db.engine import write_lock_on_sqlite
from shared.db.models import Execution, Filter, utcnow
from shared.errors import (
    AppError,
    Conflict,
    NotFound,
    PayloadTooLarge,
    TooManyRequests,
    Unprocessable,
    ValidationErrors,
)
from shared.filter_options import (
    OPTIONS_WEIGHT,
    Options,
    is_value_of_type,
    option_columns,
    options_budget,
    organization_options_weight,
    read_options,
    row_options_weight,
    static_copy,
)
from shared.filter_rules import VALUE_TYPES_OF_CONTROL, filters_within
from shared.lifecycle import ExecutionStatus, request_cancel
from shared.organization_rows import lock_organization
from shared.results import ResultGone, ResultStore
from shared.settings import Settings
from sql_templating.parameters import (
    TRUNCATION_UNITS,
    InputParameters,
    TimeRange,
)
from sql_templating.placeholders import placeholder_variables
from sql_templating.rules import option_key

logger = logging.getLogger(__name__)
_NOT_FOUND_DETAIL = "No filter with this id exists."
# A dynamic filter's options completed this recently answer the same query again.
DYNAMIC_OPTIONS_FRESH_SECONDS = 10
ATTRIBUTES = "/data/attributes"
DATASOURCE_POINTER = "/data/relationships/datasource"
SQL_SOURCES = ("dynamic_sql", "static_sql")
# The attributes only a static SQL's run writes, cleared when a filter stops being one.
_STATIC_STATE = ("status", "status_message", "options_execution_id", "options_updated_at")
_FILTERED_COLUMNS = {"datasource": Filter.datasource_id}


# ---------------------------------------------------------------------------- scope


def _visible(principal: Principal) -> ColumnElement[bool]:
    """The organisation's filters without a datasource, or on one the key reaches."""
    return filters_within(principal.organization_id, principal.datasource_ids)


def list_filters(
    session: Session, principal: Principal, query: CollectionQuery
) -> tuple[list[Filter], int]:
    """A page of filters without their options (each up to a megabyte), which are read when
    touched: ``filters_in_order`` reads them a few filters at a time as the page is sent."""
    return list_page(
        session,
        Filter,
        _visible(principal),
        query,
        Filter.name.asc(),
        _FILTERED_COLUMNS,
        deferred=(Filter.values, Filter.value_names),
    )


def get_filter(
    session: Session, principal: Principal, filter_id: str, *, for_update: bool = False
) -> Filter:
    """404 alike for unknown, foreign and out-of-scope filters."""
    statement = select(Filter).where(_visible(principal), Filter.id == filter_id)
    row = session.scalar(statement.with_for_update() if for_update else statement)
    if row is None:
        raise NotFound(_NOT_FOUND_DETAIL)
    return row


def filters_by_ids(
    session: Session, principal: Principal, ids: Iterable[str], *, with_options: bool = True
) -> list[Filter]:
    """``with_options``: False leaves them unread (each up to a megabyte) unless touched."""
    deferred = () if with_options else (defer(Filter.values), defer(Filter.value_names))
    return list(
        session.scalars(
            select(Filter)
            .options(*deferred)
            .where(_visible(principal), Filter.id.in_(set(ids)))
            .order_by(Filter.variable_name, Filter.id)
        )
    )


def options_weights(session: Session, principal: Principal, ids: Collection[str]) -> dict[str, int]:
    """What the options of each filter of ``ids`` the key reaches weigh (their JSON's
    characters, values and labels), read from the row, not from the options."""
    rows = session.execute(
        select(Filter.id, OPTIONS_WEIGHT).where(_visible(principal), Filter.id.in_(set(ids)))
    )
    return {filter_id: int(characters) for filter_id, characters in rows}


def filters_in_order(
    session: Session, principal: Principal, ids: Sequence[str], *, with_options: bool = True
) -> list[Filter]:
    """The filters of ``ids`` the key reaches, in that order; one deleted meanwhile is left out."""
    found = {
        row.id: row for row in filters_by_ids(session, principal, ids, with_options=with_options)
    }
    return [found[filter_id] for filter_id in ids if filter_id in found]


def used_filter_ids(
    session: Session, principal: Principal, variables: Mapping[str, set[str]]
) -> dict[str, list[str]]:
    """Owner (a report, a dashboard) → the ids of the filters the key reaches of ``variables``
    (those its SQL texts' placeholders name, ``placeholder_variables``: as written,
    placeholders inside snippets are not followed), ordered by variable name. A filter the key
    does not reach is left out, as its id would answer 404."""
    return ids_named_by_owner(session, Filter.variable_name, _visible(principal), variables)


# ---------------------------------------------------------------------------- CRUD


def create_filter(
    session: Session,
    principal: Principal,
    values: Mapping[str, Any],
    sent: Collection[str],
    related: Mapping[str, str | None],
    settings: Settings,
) -> Filter:
    """``values``: every writable attribute (defaults filled in); ``sent``: those the request
    named; ``related``: the datasource's id (or None), if sent. The organisation is locked
    first, as restores and runs lock it, before the filter's row exists: a static filter's run
    locks it too, and a restore creating a filter of the same variable must not hold it then."""
    lock_organization(session, principal.organization_id)
    require_room(session, principal.organization_id, Filter, settings.max_objects_per_kind)
    datasource_id = _reachable_datasource(session, principal, related.get("datasource"))
    _refuse_organization_wide(principal, datasource_id)
    state = _settled(dict(values), sent, was_static=False)
    check_filter(state, sent, has_datasource=datasource_id is not None)
    row = Filter(organization_id=principal.organization_id, datasource_id=datasource_id, **state)
    _insert_or_409(session, principal, row)
    _require_options_room(session, row, (0, 0), settings)
    if row.options_source == "static_sql":
        _queue_static(session, principal, row, settings)
    return row


def update_filter(
    session: Session,
    principal: Principal,
    filter_id: str,
    changes: Mapping[str, Any],
    related: Mapping[str, str | None],
    store: ResultStore,
    settings: Settings,
) -> Filter:
    """Only what the request sent changes; a static SQL filter whose SQL or datasource changed
    (or that just became one) runs its SQL again, its old options answering until then; one
    whose value type changed runs it again with no options meanwhile (the old copy holds values
    of the old type). A run of the old SQL still going is cancelled (``_cancel_superseded``).
    The old options are its last run's, copied first if no read did (``_copy_ended_run``)."""
    lock_organization(session, principal.organization_id)  # first: see create_filter
    row = get_filter(session, principal, filter_id, for_update=True)
    _copy_ended_run(session, row, store, settings)
    was_static, before = row.options_source == "static_sql", _sql_of(row)
    weights_before = row.values_characters, row.value_names_characters
    earlier_run = row.options_execution_id
    type_before = row.value_type
    _refuse_organization_wide(principal, row.datasource_id)
    if "datasource" in related:
        row.datasource_id = _reachable_datasource(session, principal, related["datasource"])
        _refuse_organization_wide(principal, row.datasource_id)
    current = {name: getattr(row, name) for name in _WRITABLE}
    state = _settled({**current, **changes}, changes.keys(), was_static=was_static)
    check_filter(state, changes.keys(), has_datasource=row.datasource_id is not None)
    if state["variable_name"] != row.variable_name:
        _refuse_duplicate(session, principal, state["variable_name"])
    retyped = (  # stays static with another value type: the old copy is of the old one
        was_static
        and state["options_source"] == "static_sql"
        and state["value_type"] != type_before
    )
    if retyped:
        state.update(values=None, value_names=None)
    _save_or_409(session, row, state)
    _require_options_room(session, row, weights_before, settings)
    if retyped:
        row.options_updated_at = None
    again = row.options_source == "static_sql" and (
        not was_static or retyped or _sql_of(row) != before
    )
    if again or row.options_source != "static_sql":
        _cancel_superseded(session, earlier_run)
    if again:
        _queue_static(session, principal, row, settings)
    return row


def delete_filter(session: Session, principal: Principal, filter_id: str) -> None:
    """Executions of its options SQL stay (they are the organisation's, not the filter's)."""
    write_lock_on_sqlite(session)
    row = get_filter(session, principal, filter_id, for_update=True)
    _refuse_organization_wide(principal, row.datasource_id)
    session.delete(row)
    session.flush()


def refresh_filter(
    session: Session, principal: Principal, filter_id: str, store: ResultStore, settings: Settings
) -> Filter:
    """Run a static SQL filter's SQL again (409 ``not_static_sql`` for other sources), instead
    of a run of it still going; its last run's options answer until then (``_copy_ended_run``)."""
    lock_organization(session, principal.organization_id)  # first: see create_filter
    row = get_filter(session, principal, filter_id, for_update=True)
    _copy_ended_run(session, row, store, settings)
    if row.options_source != "static_sql":
        raise Conflict(
            "Only a filter with static_sql options is refreshed; manual options are written, "
            "dynamic ones run with each options request.",
            code="not_static_sql",
        )
    _cancel_superseded(session, row.options_execution_id)
    _queue_static(session, principal, row, settings, at_cap="raise")
    return row


def _copy_ended_run(session: Session, row: Filter, store: ResultStore, settings: Settings) -> None:
    """Before a change or refresh of ``row`` (locked to change it), the options of its run that
    ended copied in if no read did: runs are checked against them (``shared.filter_options``) only while the filter still
    waits for that run, and a new one would otherwise leave them with the copy before (none,
    for a filter never read: every value refused; an outside probe)."""
    sync_static_options(session, row, store, settings)


def _cancel_superseded(session: Session, execution_id: str | None) -> None:
    """A static filter's earlier options run, if still queued or running: its result would be
    ignored, and it would keep one of the organisation's places for running executions (a new
    run at the cap was refused behind it) until its time limit. The caller locked the
    organisation first, as a worker completing the run does before the execution."""
    execution = None if execution_id is None else session.get(Execution, execution_id)
    if execution is None or execution.cancel_requested:
        return
    with contextlib.suppress(Conflict):  # it ended already: nothing to stop
        request_cancel(session, execution)


# The columns a request writes: all but the keys, the timestamps, what the options weigh (kept
# by the model as they are set) and a static run's state.
_NOT_WRITTEN = {
    "id",
    "organization_id",
    "datasource_id",
    "created_at",
    "updated_at",
    "values_characters",
    "value_names_characters",
}
_WRITABLE = tuple(
    column.key
    for column in Filter.__mapper__.column_attrs
    if column.key not in _NOT_WRITTEN | set(_STATIC_STATE)
)


def _sql_of(row: Filter) -> tuple[str | None, str | None]:
    return row.options_sql_query, row.datasource_id


def _settled(state: dict[str, Any], sent: Collection[str], *, was_static: bool) -> dict[str, Any]:
    """What follows from the options source unless the request said otherwise: manual options
    have no SQL; SQL options have no written values (a static filter keeps its copied ones
    until its SQL runs again); leaving static SQL clears its run's state."""
    source = state["options_source"]
    if source == "manual" and "options_sql_query" not in sent:
        state["options_sql_query"] = None
    if source != ("static_sql" if was_static else "manual"):  # the options are not the source's
        for name in ("values", "value_names"):
            if name not in sent:
                state[name] = None
    if source != "static_sql":
        state.update(dict.fromkeys(_STATIC_STATE))
    return state


def _reachable_datasource(
    session: Session, principal: Principal, datasource_id: str | None
) -> str | None:
    """None, or a datasource of the organisation within the key's scope (else one 422 for
    unknown, foreign and out-of-scope ids)."""
    if datasource_id is None:
        return None
    try:
        return get_datasource(session, principal, datasource_id).id
    except NotFound:
        raise Unprocessable(
            "No datasource with this id exists.",
            pointer=DATASOURCE_POINTER,
            code="datasource_not_found",
        ) from None


def _refuse_organization_wide(principal: Principal, datasource_id: str | None) -> None:
    """A filter on no datasource applies to every datasource's runs: a key restricted to some
    reads it but may not create, change or delete it."""
    if datasource_id is None:
        principal.require_every_datasource(
            "create, change or delete a filter on no datasource, which every datasource's runs use"
        )


def _require_options_room(
    session: Session, row: Filter, weights_before: tuple[int, int], settings: Settings
) -> None:
    """413 (and the caller's transaction rolls back) when the write just flushed made the row's
    options heavier and the organisation's filters' options together exceed
    ``DATAFERRY_MAX_FILTER_OPTIONS_MB``. Weighed as the rows keep it, under the organisation's lock,
    which every create and update of a filter takes first. (A lighter write always passes: an
    organisation over the budget, say after the operator lowered it, can still shrink.)
    ``weights_before``: what the row's values and labels weighed before the write."""
    values_before, names_before = weights_before
    if _beyond_options_budget(session, row, values_before + names_before, settings):
        labels_grew = row.value_names_characters > names_before
        grown = (
            "value_names" if labels_grew and row.values_characters <= values_before else "values"
        )
        # Not the total: it counts filters on datasources beyond a restricted key's scope.
        raise PayloadTooLarge(
            "The organisation's filters would hold more than the "
            f"{options_budget(settings):,} characters of options they may hold together; remove "
            "options or filters first.",
            pointer=f"{ATTRIBUTES}/{grown}",
            code="filter_options_quota_exceeded",
        )


def _beyond_options_budget(
    session: Session, row: Filter, weight_before: int, settings: Settings
) -> bool:
    """The row's options grew past ``weight_before`` and the organisation's filters' options
    together (the row's flushed) exceed the budget."""
    if row_options_weight(row) <= weight_before:
        return False
    return organization_options_weight(session, row.organization_id) > options_budget(settings)


def _duplicate(variable_name: str) -> Conflict:
    return Conflict(
        f"The organisation already has a filter for the variable '{variable_name}'.",
        pointer=f"{ATTRIBUTES}/variable_name",
        code="duplicate_variable_name",
    )


def _refuse_duplicate(session: Session, principal: Principal, variable_name: str) -> None:
    """Checked first for a clear answer; the unique index decides a race (``_save_or_409``)."""
    taken = session.scalar(
        select(Filter.id).where(
            Filter.organization_id == principal.organization_id,
            Filter.variable_name == variable_name,
        )
    )
    if taken is not None:
        raise _duplicate(variable_name)


def _insert_or_409(session: Session, principal: Principal, row: Filter) -> None:
    _refuse_duplicate(session, principal, row.variable_name)
    _save_or_409(session, row, {})


def _save_or_409(session: Session, row: Filter, changes: Mapping[str, Any]) -> None:
    """Change and flush in a savepoint, so that a name a concurrent request took meanwhile is a
    409. The changes are made inside it: opening a savepoint flushes what is pending first, and
    a rename flushed there would fail outside the savepoint, and the request with a 500."""
    variable_name = changes.get("variable_name", row.variable_name)
    try:
        with session.begin_nested():
            for name, value in changes.items():
                setattr(row, name, value)
            session.add(row)
            session.flush()
    except IntegrityError:
        raise _duplicate(variable_name) from None


# ---------------------------------------------------------------------------- consistency


def check_filter(state: Mapping[str, Any], sent: Collection[str], *, has_datasource: bool) -> None:
    """How a filter's attributes (``state``: every writable one, as they would be) fit together;
    every problem at once, each pointing at an attribute the request ``sent`` if it can."""
    errors: list[AppError] = []

    def refuse(name: str, code: str, detail: str) -> None:
        errors.append(Unprocessable(detail, pointer=f"{ATTRIBUTES}/{name}", code=code))

    control, source = state["control_type"], state["options_source"]
    allowed_types = VALUE_TYPES_OF_CONTROL[control]
    if state["value_type"] not in allowed_types:
        refuse(
            "value_type",
            "invalid_value_type",
            f"A {control} control takes the value type {' or '.join(allowed_types)}.",
        )
    if control != "dropdown" and (source != "manual" or state["values"] is not None):
        name = "options_source" if source != "manual" else "values"
        refuse(name, "options_not_allowed", "Only a dropdown control has options.")
    if control != "aggregation":
        for name in ("allow_all_time", "aggregation_options"):
            if state[name] not in (False, None):
                refuse(name, "aggregation_only", f"{name} is for the aggregation control only.")
    if state["restrict_to_options"]:
        if control not in ("dropdown", "aggregation"):
            refuse(
                "restrict_to_options",
                "options_not_allowed",
                "Only a dropdown or aggregation control has options to restrict to.",
            )
        elif source == "dynamic_sql":
            refuse(
                "restrict_to_options",
                "restriction_not_supported",
                "dynamic_sql options depend on other filters' values, so an execution cannot "
                "be checked against them: restrict manual or static_sql options only.",
            )
    _check_sql(state, sent, has_datasource, refuse, errors)
    _check_options(state, sent, refuse)
    _check_defaults(state, refuse)
    if errors:
        raise ValidationErrors(errors)


def _check_sql(
    state: Mapping[str, Any],
    sent: Collection[str],
    has_datasource: bool,
    refuse: Any,
    errors: list[AppError],
) -> None:
    source, sql = state["options_source"], state["options_sql_query"]
    if source == "manual":
        if sql is not None:
            refuse(
                "options_sql_query",
                "conflicting_attributes",
                "Manual options take no SQL: send options_source dynamic_sql or static_sql.",
            )
        return
    for name in ("values", "value_names"):
        if name in sent and state[name] is not None:
            refuse(
                name,
                "conflicting_attributes",
                f"{name} are written for manual options only; {source} options come from the SQL.",
            )
    if sql is None:
        refuse("options_sql_query", "missing_attribute", f"{source} options need their SQL.")
    elif source == "static_sql" and placeholder_variables(sql):
        refuse(
            "options_sql_query",
            "placeholders_not_allowed",
            "Static SQL options take no {…} placeholders (they run once, with no filter "
            "values); use dynamic_sql for options that depend on other filters.",
        )
    if not has_datasource:
        errors.append(
            Unprocessable(
                f"{source} options run on a datasource: relationships.datasource.",
                pointer=DATASOURCE_POINTER,
                code="missing_relationship",
            )
        )


def _check_options(state: Mapping[str, Any], sent: Collection[str], refuse: Any) -> None:
    values, names = state["values"], state["value_names"]
    if names is not None and values is None:
        refuse("value_names", "conflicting_attributes", "value_names label values: send both.")
    elif names is not None and len(names) != len(values):
        refuse(
            "value_names",
            "length_mismatch",
            f"value_names has {len(names)} labels for {len(values)} values: one each.",
        )
    if values is None or state["options_source"] != "manual":
        return
    seen: set[Any] = set()
    for index, value in enumerate(values):
        if not is_value_of_type(value, state["value_type"]):
            refuse(f"values/{index}", "invalid_value", _type_detail(state["value_type"]))
        elif option_key(value) in seen:
            refuse(f"values/{index}", "duplicate_value", f"The option {value!r} is given twice.")
        seen.add(option_key(value))


def _check_defaults(state: Mapping[str, Any], refuse: Any) -> None:
    defaults, control = state["default_values"], state["control_type"]
    if not state["multiple"] and len(defaults) > 1:
        refuse("default_values", "too_many", "A filter without multiple takes one default.")
    options: set[Any] | None = None
    if control == "aggregation":
        units = list(state["aggregation_options"] or TRUNCATION_UNITS)
        options = {option_key(u) for u in units + (["all_time"] if state["allow_all_time"] else [])}
    elif state["restrict_to_options"] and state["options_source"] == "manual":
        options = {option_key(value) for value in state["values"] or ()}
    for index, value in enumerate(defaults):
        pointer = f"default_values/{index}"
        if control in ("date_range", "datetime_range"):
            if not _is_range(value):
                refuse(pointer, "invalid_value", "A range's default is one '<start>~<end>'.")
        elif not is_value_of_type(value, state["value_type"]):
            refuse(pointer, "invalid_value", _type_detail(state["value_type"]))
        elif options is not None and option_key(value) not in options:
            refuse(pointer, "value_not_in_options", f"{value!r} is not among the options.")


def _is_range(value: Any) -> bool:
    return isinstance(value, str) and _parses(TimeRange.parse, value)


def _parses(parse: Any, text: str) -> bool:
    try:
        parse(text)
    except ValueError:
        return False
    return True


def _type_detail(value_type: str) -> str:
    return {
        "text": "A text value is a string.",
        "number": "A number value is a JSON number.",
        "boolean": "A boolean value is true or false.",
        "date": "A date value is a 'YYYY-MM-DD' string.",
        "datetime": "A datetime value is an ISO 8601 string ('2024-06-01T12:00:00Z').",
    }[value_type]


# ---------------------------------------------------------------------------- static SQL


def _queue_static(
    session: Session,
    principal: Principal,
    row: Filter,
    settings: Settings,
    *,
    at_cap: str = "defer",
) -> None:
    """Queue the options SQL as an execution (no parameters); its problems point at it.

    At the organisation's cap of running executions, a filter being written (created, changed,
    restored with a dashboard) is kept with status ``failed`` and a message to refresh it: a
    write must not turn into a 429 that no retry cures when it carries more static filters than
    the cap (a restore). ``at_cap="raise"``: the 429 (an explicit refresh, which a retry cures)."""
    assert row.options_sql_query is not None and row.datasource_id is not None
    request = RunRequest(sql_query=row.options_sql_query, parameters={}, inputs=InputParameters())
    try:
        execution = run_execution(session, principal, row.datasource_id, request, None, settings)
    except TooManyRequests as refusal:
        if at_cap == "raise":
            raise
        row.options_execution_id, row.status = None, "failed"
        row.status_message = f"Not run: {refusal.detail} POST /filters/{row.id}/refresh runs it."
        session.flush()
        return
    except AppError as error:
        raise _pointing_at_options_sql(error) from None
    row.options_execution_id, row.status, row.status_message = execution.id, "pending", None
    session.flush()


def _pointing_at_options_sql(error: AppError) -> AppError:
    """A binding problem of the stored SQL points at the attribute, not at Run Execution's body."""
    for each in getattr(error, "errors", [error]):
        if each.pointer == "/sql_query":
            each.pointer = f"{ATTRIBUTES}/options_sql_query"
    return error


def sync_static_options(
    session: Session, row: Filter, store: ResultStore, settings: Settings
) -> bool:
    """Copy a static SQL filter's options into its row once its execution ended
    (``static_copy``), if the row still waits for that execution: a change of the filter
    committed since it was read (a new SQL, its own execution) is kept, not overwritten with
    the old execution's options. True when the copy was written (the caller commits), and
    ``row`` holds it; otherwise ``row`` stays as it was read (a change, or a delete, that came
    first answers the next read)."""
    try:
        copy = static_copy(session, row, lambda: store, settings)
    except OSError as exc:  # the store did not answer: copied by a later read, the row as it is
        logger.warning("static options of filter %s not copied: %s", row.id, type(exc).__name__)
        return False
    if copy is None:
        return False
    changes: dict[str, Any] = {
        "status": copy.status,
        "status_message": copy.status_message,
        "updated_at": utcnow(),  # as the model's own update would set it, kept on ``row`` too
    }
    if copy.options is not None:
        changes |= option_columns(copy.options) | {"options_updated_at": copy.updated_at}
    copied = session.execute(
        update(Filter)
        .where(
            Filter.id == row.id,
            Filter.status == "pending",
            Filter.options_execution_id == row.options_execution_id,
        )
        .values({getattr(Filter, name): value for name, value in changes.items()})
        .execution_options(synchronize_session=False)
    )
    if not copied.rowcount:  # type: ignore[attr-defined]
        return False
    for name, value in changes.items():  # what the row holds now, without reading it again
        set_committed_value(row, name, value)
    return True


def static_options(row: Filter) -> Options | None:
    """Manual options, or a static SQL's as last copied; None while a static SQL has none yet."""
    if row.options_source == "static_sql" and row.options_updated_at is None:
        return None
    return Options.of(row.values, row.value_names)


# ---------------------------------------------------------------------------- dynamic SQL


def queue_dynamic_options(
    session: Session,
    principal: Principal,
    row: Filter,
    parameters: dict[str, Any],
    inputs: InputParameters,
    settings: Settings,
) -> Execution:
    """Run a dynamic SQL filter's SQL with the other filters' values, as Run Execution does
    (scope, sandbox, limits); filters its SQL does not use are left out, as a dashboard's are.

    The same query (SQL and bound values) still queued or running is joined, not run again, and
    one completed in the last ``DYNAMIC_OPTIONS_FRESH_SECONDS`` answers: a client that asks
    again after a 409 (``Retry-After: 1``), or viewers opening one dashboard together, share
    one run (docs/result-reuse.md's coalescing)."""
    assert row.options_sql_query is not None and row.datasource_id is not None
    request = RunRequest(
        sql_query=row.options_sql_query,
        parameters=parameters,
        inputs=inputs,
        every_filter_used=False,
    )
    now = utcnow()
    queued = queue_run(
        session, principal, row.datasource_id, request, None, settings,
        reuse_since=now - timedelta(hours=settings.execution_retention_hours),
        reuse_completed_since=now - timedelta(seconds=DYNAMIC_OPTIONS_FRESH_SECONDS),
    )  # fmt: skip
    return queued.execution


def dynamic_options(execution: Execution, store: ResultStore, value_type: str) -> Options:
    """The options of a dynamic run once it ended: 422 ``filter_options_failed`` with the
    execution's error if it failed."""
    if execution.status == ExecutionStatus.COMPLETED and execution.data_key:
        try:
            return read_options(store, execution.data_key, value_type).options
        except ResultGone:
            pass
    raise Unprocessable(
        f"The options SQL (execution {execution.id}) ended {execution.status}: "
        f"{execution.error_message or 'no result'}",
        code="filter_options_failed",
    )
