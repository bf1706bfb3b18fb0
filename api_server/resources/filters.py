"""Filters (``/filters``): Cluvio's named controls for a SQL variable, their options (manual, from
SQL run per request, or from SQL cached until refreshed), and Get Drop-Down Filter Options
(``GET /filters/{id}/options``, plain JSON). docs/filters.md says what each attribute means and
which rules an execution's values keep.

The attributes model (``FilterAttributes``) checks each attribute alone; how they fit together
(options of the value type, defaults among restricted options, SQL only with a datasource) is
``services.filters.check_filter``'s, on the filter as it would be after the request.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import orjson
from pydantic import AfterValidator, Field, PlainValidator, StringConstraints, WithJsonSchema
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from api_server import jsonapi
from api_server.execution_waits import ExecutionWaits
from api_server.permissions import Permission
from api_server.principals import Principal
from api_server.resource_layer import documentation as doc
from api_server.resource_layer.names import DisplayName, keeping_stored_name
from api_server.resource_layer.operations import Body, Operations
from api_server.resource_layer.resource_types import (
    READ_ONLY,
    Attributes,
    Filter,
    Relationship,
    ResourceType,
)
from api_server.resource_layer.responses import one, streamed_page
from api_server.resources.executions import NO_ROOM_TO_RUN
from api_server.services import api_keys, executions, filters
from api_server.services.executions import SqlQuery
from api_server.services.object_limits import limit_reached
from shared import lifecycle
from shared import openapi as oa
from shared.db.models import Execution
from shared.db.models import Filter as FilterRow
from shared.digits import natural_number
from shared.errors import Conflict, InvalidQueryParameter, Unprocessable, unauthorized
from shared.filter_options import (
    MAX_OPTION_LENGTH,
    MAX_OPTIONS,
    OptionsStatus,
    row_options_weight,
)
from shared.filter_rules import (
    CONTROL_TYPES,
    OPTIONS_SOURCES,
    ControlType,
    OptionsSource,
    ValueType,
)
from shared.input_models import Problem, problem
from sql_templating.parameters import (
    BUILT_IN_VARIABLES,
    MAX_INTEGER,
    MIN_INTEGER,
    NAME,
    TRUNCATION_UNITS,
    parse_input_parameters,
)

MAX_DEFAULT_VALUES = 1_000
MAX_VARIABLE_NAME_LENGTH = 64


def _option(value: Any) -> str | int | float | bool:
    """A JSON scalar other than null; an integer within BIGINT, a text within its bound."""
    if value is None or not isinstance(value, str | int | float | bool):
        raise problem("invalid_type", "An option or default is a string, number or boolean.")
    if isinstance(value, str) and len(value) > MAX_OPTION_LENGTH:
        raise problem("too_long", f"An option's text has at most {MAX_OPTION_LENGTH} characters.")
    if (
        isinstance(value, int)
        and not isinstance(value, bool)
        and not MIN_INTEGER <= value <= MAX_INTEGER
    ):
        raise problem("number_out_of_range", "Integers beyond 64 bits cannot be compared exactly.")
    return value


OptionValue = Annotated[
    str | int | float | bool,
    PlainValidator(_option),
    WithJsonSchema({"type": ["string", "number", "boolean"]}),
]


def _label(value: Any) -> str | None:
    """A label's text, within the bound an option's text has (not in the schema: a page of
    labels that long would not fit in a request)."""
    if value is not None and not isinstance(value, str):
        raise problem("invalid_type", "A label is a string or null.")
    if value is not None and len(value) > MAX_OPTION_LENGTH:
        raise problem("too_long", f"A label has at most {MAX_OPTION_LENGTH} characters.")
    return value


OptionName = Annotated[
    str | None, PlainValidator(_label), WithJsonSchema({"type": ["string", "null"]})
]


def _not_built_in(name: str) -> str:
    if name in BUILT_IN_VARIABLES:
        raise problem(
            "built_in_variable",
            f"'{name}' is a built-in variable ({', '.join(BUILT_IN_VARIABLES)}); a filter names "
            "a variable of its own.",
        )
    return name


class FilterAttributes(Attributes):
    name: Annotated[
        DisplayName,
        Field(description="The name the control shows: one line, no control character."),
    ]
    variable_name: Annotated[
        str,
        Field(
            pattern=rf"^{NAME}$",
            max_length=MAX_VARIABLE_NAME_LENGTH,
            description="The SQL variable it sets (`{column=variable_name}`): letters, digits "
            "and `_`, not a built-in (`timerange`, `aggregation`, `tz`); unique in the "
            "organisation (else 409 `duplicate_variable_name`).",
        ),
        Problem(
            "invalid_variable_name",
            "variable_name must be a name of letters, digits and underscores, not starting "
            f"with a digit, at most {MAX_VARIABLE_NAME_LENGTH} characters.",
        ),
        AfterValidator(_not_built_in),
    ]
    description: Annotated[str, StringConstraints(max_length=2000)] | None = None
    control_type: Annotated[
        ControlType,
        Field(
            description="The control: `dropdown` (options), `text` (typed input), `date_range` "
            "and `datetime_range` (one `<start>~<end>` value), `aggregation` (a date-time "
            "aggregation unit, for `{column:variable}`)."
        ),
    ]
    value_type: Annotated[
        ValueType,
        Field(
            description="How values are typed: `text`, `number`, `date` (`YYYY-MM-DD`), "
            "`datetime` (ISO 8601), `boolean`. A `text` control is `text` or `number`, "
            "`date_range` `date`, `datetime_range` `datetime`, `aggregation` `text`."
        ),
    ]
    multiple: Annotated[
        bool,
        Field(
            description="More than one value may be selected (else an execution giving "
            "several is 422 `multiple_values_not_allowed`)."
        ),
    ] = True
    default_values: Annotated[
        list[OptionValue],
        Field(
            max_length=MAX_DEFAULT_VALUES,
            description="The values selected unless a user selects others: of the value type, "
            "one at most unless `multiple`, among the options when `restrict_to_options`.",
        ),
    ] = Field(default_factory=list)
    options_source: Annotated[
        OptionsSource,
        Field(
            description="Where a `dropdown`'s options come from: `manual` (`values` and "
            "`value_names`), `dynamic_sql` (`options_sql_query` run on the datasource for each "
            "options request, with the other filters' values) or `static_sql` "
            "(`options_sql_query` run once, its result kept until refreshed). The SQL's first "
            "column holds the values, its second (if any) the labels."
        ),
    ] = "manual"
    options_sql_query: Annotated[
        SqlQuery | None,
        Field(
            description="The options' SQL (required for `dynamic_sql` and `static_sql`, refused "
            "otherwise). Static SQL takes no `{…}` placeholders (Cluvio: without filters "
            "syntax). Runs on the filter's datasource."
        ),
    ] = None
    values: Annotated[
        list[OptionValue] | None,
        Field(
            max_length=MAX_OPTIONS,
            description=f"The options (at most {MAX_OPTIONS}), each a value of the value "
            "type: written for `manual` options; for `static_sql`, the options as last copied "
            "from the SQL's result (read-only then).",
        ),
    ] = None
    value_names: Annotated[
        list[OptionName] | None,
        Field(
            max_length=MAX_OPTIONS,
            description="The labels of `values`, one each (null: that option has none); only "
            "with `values`.",
        ),
    ] = None
    allow_all_time: Annotated[
        bool,
        Field(
            description="An `aggregation` filter accepts `all_time` (which collapses the "
            "aggregation into one group); otherwise an execution giving it is 422 "
            "`all_time_not_allowed`. Only for the `aggregation` control."
        ),
    ] = False
    aggregation_options: Annotated[
        list[Annotated[str, Field(json_schema_extra={"enum": list(TRUNCATION_UNITS)})]] | None,
        AfterValidator(lambda units: _distinct_units(units)),
        Field(
            description="The units an `aggregation` filter offers (null: all of "
            f"{', '.join(TRUNCATION_UNITS)}); only for the `aggregation` control."
        ),
    ] = None
    restrict_to_options: Annotated[
        bool,
        Field(
            description="Beyond Cluvio: every execution giving this variable a value must pick "
            "among the options (manual, the static SQL's latest completed ones, or the "
            "aggregation units), else 422 `value_not_in_options`. Refused for `dynamic_sql` options, "
            "which depend on other values and cannot be checked when an execution runs."
        ),
    ] = False
    status: Annotated[
        OptionsStatus | None,
        READ_ONLY,
        Field(
            description="`static_sql` options: `pending` (the SQL runs; no options copied yet "
            "or not since the last change), `ready` or `failed` (see `status_message`); null "
            "for other sources."
        ),
    ]
    status_message: Annotated[
        str | None, READ_ONLY, Field(description="Why the options SQL failed (its error).")
    ]
    options_execution_id: Annotated[
        str | None,
        READ_ONLY,
        Field(description="The execution of the latest `static_sql` options run (a UUID)."),
    ]
    options_updated_at: Annotated[
        datetime | None,
        READ_ONLY,
        Field(description="When `static_sql` options were last copied from a result."),
    ]
    created_at: Annotated[datetime, READ_ONLY]
    updated_at: Annotated[datetime, READ_ONLY]


def _distinct_units(units: list[str] | None) -> list[str] | None:
    if units is None:
        return None
    if any(unit not in TRUNCATION_UNITS for unit in units):
        raise problem(
            "invalid_aggregation",
            f"aggregation_options are among {', '.join(TRUNCATION_UNITS)} (all_time is "
            "allow_all_time's).",
        )
    if len(set(units)) != len(units):
        raise problem("duplicate_value", "aggregation_options names each unit once.")
    return units


_TO_ONE_DATASOURCE = oa.obj({"type": oa.const("datasources"), "id": oa.string()}, ["type", "id"])

FILTERS = ResourceType(
    type="filters",
    schema_name="FilterDefinition",  # "Filter" is Run Execution's selection of one variable
    noun="filter",
    attributes=FilterAttributes,
    path="/filters",
    relationships={
        "datasource": Relationship(
            "datasources",
            linked=lambda row: row.datasource_id,
            description="Where the options SQL runs: required for `dynamic_sql` and "
            "`static_sql` options, settable (null: none); a datasource the key reaches (any "
            "other id is 422 `datasource_not_found`). A key restricted to datasources reaches "
            "only the filters without one or on one of them.",
            accepted=oa.obj(
                {"data": oa.nullable(_TO_ONE_DATASOURCE)},
                ["data"],
                "The datasource the options SQL runs on, or null.",
            ),
        ),
    },
    settable_relationships=("datasource",),
    sortable=("name", "variable_name", "created_at", "updated_at"),
    filters=(
        Filter("name"),
        Filter("variable_name"),
        Filter.one_of("control_type", CONTROL_TYPES),
        Filter.one_of("options_source", OPTIONS_SOURCES),
        Filter(
            "datasource", "Only the filters whose options SQL runs on this datasource (its id)."
        ),
    ),
)

# A filter's options in Get Drop-Down Filter Options' answer and its paging bounds: without
# ``page[size]``, as many as a page may hold (a Cluvio client reads one answer as all of them).
MAX_OPTIONS_PAGE_SIZE = 1_000
DEFAULT_OPTIONS_PAGE_SIZE = MAX_OPTIONS_PAGE_SIZE
MAX_SEARCH_LENGTH = MAX_OPTION_LENGTH
# How long a dynamic SQL's options are waited for before 409 `filter_options_pending`.
DYNAMIC_OPTIONS_WAIT_SECONDS = 10.0
_OPTION_SCHEMA = {"type": ["string", "number", "boolean"]}
FILTER_OPTIONS = oa.obj(
    {
        "values": oa.array(_OPTION_SCHEMA, "The page's option values."),
        "value_names": oa.array(
            oa.nullable(oa.string()), "Their labels, one each (null: the option has none)."
        ),
        "total": oa.integer("The options that match `search` (all without it)."),
        "page": oa.obj(
            {"number": oa.integer(), "size": oa.integer()}, ["number", "size"], "This page."
        ),
    },
    ["values", "value_names", "total", "page"],
)

OPERATIONS = Operations(
    "Filters",
    "JSON:API resource `filters`: named controls for a SQL variable, their options and the "
    "rules executions keep (docs/filters.md); Get Drop-Down Filter Options.",
    [FILTERS],
    schemas={"FilterOptions": FILTER_OPTIONS},
)
VIEW, MANAGE = (Permission.VIEW_DASHBOARDS,), (Permission.MANAGE_DASHBOARDS,)
_INVALID = (
    "An attribute is unknown, read-only or invalid, or the attributes do not fit together "
    "(`invalid_value_type`, `options_not_allowed`, `aggregation_only`, "
    "`restriction_not_supported`, `conflicting_attributes`, `missing_attribute`, "
    "`placeholders_not_allowed`, `length_mismatch`, `invalid_value`, `duplicate_value`, "
    "`value_not_in_options`, …); the relationship is malformed (`invalid_relationship`), "
    "missing for SQL options (`missing_relationship`) or names no datasource the key reaches "
    "(`datasource_not_found`); static SQL that does not expand (a snippet problem)."
)
_REFUSED = (
    "The key lacks the permission, or is restricted to listed datasources and the filter is, or "
    "would be, on no datasource (`datasource_scope_restricted`): such a filter serves every "
    "datasource's runs."
)
_CONFLICT = (
    "The organisation has a filter for this `variable_name` (`duplicate_variable_name`); a "
    "static SQL's datasource is disabled (`datasource_disabled`); or "
)
_OPTIONS_BUDGET = (
    "The body is larger than 1 MiB (`payload_too_large`), or the organisation's filters would "
    "hold more options together than `DATAFERRY_MAX_FILTER_OPTIONS_MB` lets them "
    "(`filter_options_quota_exceeded`, at `/data/attributes/values`)."
)
_CAPACITY = {
    429: f"The key's rate limit (`rate_limited`), or, for a static SQL's execution, {NO_ROOM_TO_RUN}."
}


# ---------------------------------------------------------------------------- reading requests


def _context(request: Request) -> dict[str, Any]:
    """What the attributes' validators read: the SQL's length bound is a setting."""
    return {"max_sql_length": request.app.state.settings.max_sql_length}


def _related(resource: jsonapi.ResourceInput) -> dict[str, str | None]:
    """``relationships.datasource`` if sent: exactly ``{"data": null}`` or ``{"data": {"type":
    "datasources", "id"}}``."""
    if "datasource" not in resource.relationships:
        return {}
    relationship = resource.relationships["datasource"]
    pointer = "/data/relationships/datasource"
    if not isinstance(relationship, dict) or set(relationship) != {"data"}:
        raise Unprocessable(
            "A relationship object holds only 'data'.",
            pointer=pointer,
            code="invalid_relationship",
        )
    data = relationship["data"]
    if data is None:
        return {"datasource": None}
    if (
        not isinstance(data, dict)
        or set(data) != {"type", "id"}
        or data["type"] != "datasources"
        or not isinstance(data["id"], str)
    ):
        raise Unprocessable(
            '\'data\' is null or {"type": "datasources", "id"}.',
            pointer=f"{pointer}/data",
            code="invalid_relationship",
        )
    return {"datasource": data["id"]}


def _synced(request: Request, session: Session, rows: Iterable[Any]) -> None:
    """Static SQL options whose execution ended are copied before they are shown; in id order,
    the one order every list copies in, as each copy holds its row until the list commits."""
    state = request.app.state
    for row in sorted(rows, key=lambda row: row.id):
        filters.sync_static_options(session, row, state.result_store, state.settings)


# ---------------------------------------------------------------------------- the resource


@OPERATIONS.get(
    "/filters",
    operation_id="listFilters",
    summary="List Filters",
    description="The organisation's filters the key reaches, paged.",
    permissions=VIEW,
    parameters=tuple(doc.collection_parameters(FILTERS)),
    responses={"200": doc.jsonapi_response("A page of filters.", "FilterDefinitionCollection")},
    errors={400: doc.BAD_QUERY},
)
def list_filters(request: Request, principal: Principal) -> Response:
    """The page's ids, total and options' weights in one transaction (which copies ended static
    options), then its filters read again and sent a batch at a time: each may hold a megabyte
    of options, and a page of a hundred held at once took 300 MB of one API server's memory."""
    query = FILTERS.query(request, collection=True)
    with request.app.state.sessions.begin() as session:
        rows, total = filters.list_filters(session, principal, query)
        _synced(request, session, rows)
        weights = {row.id: row_options_weight(row) for row in rows}
    fields = _fields_without_options(query)
    batches = _batches_by_weight(weights) if fields is None else [list(weights)]
    return streamed_page(
        request, query, _read_in_batches(request, principal, batches, fields), total
    )


# The options (values and labels, as stored JSON) that the filters another resource's answer
# includes may hold together: included resources are rendered whole, in memory (a dashboard
# including a hundred filters of a megabyte each took 300 MB of the API server's), while
# ``GET /filters`` sends its pages a batch at a time.
MAX_INCLUDED_OPTIONS_CHARACTERS = 16_000_000
_OPTIONS = frozenset({"values", "value_names"})


def included_filters(
    session: Session, principal: Principal, ids: set[str], query: jsonapi.CollectionQuery
) -> list[dict[str, Any]]:
    """The filters of ``ids`` as another resource's answer includes them: with their options
    while those weigh at most ``MAX_INCLUDED_OPTIONS_CHARACTERS`` together (400
    ``include_too_large`` beyond); any number of them without their options, which are then
    not read (``fields[filters]`` naming neither ``values`` nor ``value_names``)."""
    fields = _fields_without_options(query)
    if fields is not None:
        rows = filters.filters_by_ids(session, principal, ids, with_options=False)
        return [FILTERS.serialize(row, only=fields) for row in rows]
    weight = sum(filters.options_weights(session, principal, ids).values())
    if weight > MAX_INCLUDED_OPTIONS_CHARACTERS:
        raise InvalidQueryParameter(
            f"The filters this would include hold {weight:,} characters of options, more than "
            f"the {MAX_INCLUDED_OPTIONS_CHARACTERS:,} an answer includes: leave their options "
            "out (fields[filters] without values and value_names), or read them from "
            "GET /filters, which sends them a few at a time.",
            parameter="include",
            code="include_too_large",
        )
    return [FILTERS.serialize(row) for row in filters.filters_by_ids(session, principal, ids)]


def _fields_without_options(query: jsonapi.CollectionQuery) -> set[str] | None:
    """The filters' fields asked for (``fields[filters]``) when they leave the options out;
    None when the options are shown (then they are read)."""
    fields = query.fields.get(FILTERS.type)
    return fields if fields is not None and not fields & _OPTIONS else None


# The options JSON read and sent at once in a listing, at most (or one filter's, if more): each
# character becomes about three bytes of Python objects while its filter is rendered.
_OPTIONS_CHARACTERS_PER_READ = 2_000_000


def _batches_by_weight(weights: dict[str, int]) -> list[list[str]]:
    """Consecutive ids (in ``weights``' order), grouped while their options weigh at most the
    bound together."""
    batches: list[list[str]] = []
    weight = 0
    for filter_id, own in weights.items():
        if not batches or weight + own > _OPTIONS_CHARACTERS_PER_READ:
            batches.append([])
            weight = 0
        batches[-1].append(filter_id)
        weight += own
    return batches


def _read_in_batches(
    request: Request, principal: Principal, batches: list[list[str]], fields: set[str] | None
) -> Iterator[list[dict[str, Any]]]:
    """Each batch in a short read of its own, as the filters are when the body is sent (one
    changed meanwhile shows its change; one deleted meanwhile is left out), ended before the
    batch is sent: a slow reader holds no database connection. ``fields``: only those, and
    the options not read (``_fields_without_options``)."""
    for batch in batches:
        with request.app.state.reads() as session:
            rows = filters.filters_in_order(session, principal, batch, with_options=fields is None)
            resources = [FILTERS.serialize(row, only=fields) for row in rows]
        yield resources


@OPERATIONS.post(
    "/filters",
    operation_id="createFilter",
    summary="Create Filter",
    description="A filter for the variable `variable_name`. `static_sql` options queue their "
    "SQL as an execution at once (`status` `pending` until its result is copied).",
    permissions=MANAGE,
    audit="filter.create",
    parameters=tuple(doc.one_parameters(FILTERS)),
    body=Body.BOUNDED,
    request_body=doc.request_body("FilterDefinitionCreateDocument", "The new filter."),
    responses={
        "201": doc.jsonapi_response("Created.", "FilterDefinitionDocument", doc.CREATED_HEADERS)
    },
    errors={
        400: doc.BAD_DOCUMENT,
        403: f"{_REFUSED} {doc.NO_CLIENT_IDS}",
        409: f"{limit_reached(FilterRow)}. {_CONFLICT}{doc.WRONG_TYPE_OR_ID}",
        413: _OPTIONS_BUDGET,
        422: _INVALID,
        **_CAPACITY,
    },
)
def create_filter(request: Request, principal: Principal) -> Response:
    query = FILTERS.query(request, collection=False)
    resource = FILTERS.read(request)
    data = FILTERS.validate(resource, update=False, context=_context(request))
    related = _related(resource)
    state = request.app.state
    with state.sessions.begin() as session:
        row = filters.create_filter(
            session, principal, data.model_dump(), data.model_fields_set, related, state.settings
        )
        return one(FILTERS, query, row, status_code=201)


@OPERATIONS.get(
    "/filters/{id}",
    operation_id="showFilter",
    summary="Get Filter",
    description="One filter of the organisation that the key reaches.",
    permissions=VIEW,
    subject=FILTERS,
    parameters=tuple(doc.one_parameters(FILTERS)),
    responses={"200": doc.jsonapi_response("The filter.", "FilterDefinitionDocument")},
    errors={400: doc.BAD_QUERY, 404: None},
)
def show_filter(request: Request, principal: Principal) -> Response:
    query = FILTERS.query(request, collection=False)
    with request.app.state.sessions.begin() as session:
        row = filters.get_filter(session, principal, request.path_params["id"])
        _synced(request, session, [row])
        return one(FILTERS, query, row)


@OPERATIONS.patch(
    "/filters/{id}",
    operation_id="updateFilter",
    summary="Update Filter",
    description="Only the attributes and relationship sent change; the result must fit together "
    "as a created filter must. A `static_sql` filter whose SQL or datasource changes runs its "
    "SQL again (its previous options answer until the new ones are copied).",
    permissions=MANAGE,
    audit="filter.update",
    subject=FILTERS,
    parameters=tuple(doc.one_parameters(FILTERS)),
    body=Body.BOUNDED,
    request_body=doc.request_body("FilterDefinitionUpdateDocument", "What to change."),
    responses={"200": doc.jsonapi_response("The filter as it is now.", "FilterDefinitionDocument")},
    errors={
        400: doc.BAD_DOCUMENT,
        403: _REFUSED,
        404: None,
        409: f"{_CONFLICT}{doc.WRONG_TYPE_OR_ID}",
        413: _OPTIONS_BUDGET,
        422: _INVALID,
        **_CAPACITY,
    },
)
def update_filter(request: Request, principal: Principal) -> Response:
    filter_id = request.path_params["id"]
    query = FILTERS.query(request, collection=False)
    resource = FILTERS.read(request, filter_id)
    stored = keeping_stored_name(
        request, lambda session: filters.get_filter(session, principal, filter_id).name
    )
    data = FILTERS.validate(resource, update=True, context={**_context(request), **stored})
    related = _related(resource)
    state = request.app.state
    with state.sessions.begin() as session:
        row = filters.update_filter(
            session, principal, filter_id, data.changes(), related, state.result_store,
            state.settings,
        )  # fmt: skip
        return one(FILTERS, query, row)


@OPERATIONS.delete(
    "/filters/{id}",
    operation_id="deleteFilter",
    summary="Delete Filter",
    description="The variable becomes an ad hoc one again: executions no longer keep its rules.",
    permissions=MANAGE,
    audit="filter.delete",
    subject=FILTERS,
    responses=doc.DELETED,
    errors={403: _REFUSED, 404: None},
)
def delete_filter(request: Request, principal: Principal) -> Response:
    with request.app.state.sessions.begin() as session:
        filters.delete_filter(session, principal, request.path_params["id"])
    return Response(status_code=204)


@OPERATIONS.post(
    "/filters/{id}/refresh",
    operation_id="refreshFilter",
    summary="Refresh a filter's static options",
    description="Beyond Cluvio: runs a `static_sql` filter's SQL again (`status` `pending`); its "
    "options are copied from the result once the execution completed, the previous ones "
    "answering until then. Takes no body.",
    permissions=MANAGE,
    audit="filter.refresh",
    subject=FILTERS,
    parameters=tuple(doc.one_parameters(FILTERS)),
    responses={
        "200": doc.jsonapi_response("The filter, its SQL queued.", "FilterDefinitionDocument")
    },
    errors={
        400: doc.BAD_QUERY,
        404: None,
        409: "The filter's options are not `static_sql` (`not_static_sql`), or its datasource "
        "is disabled (`datasource_disabled`).",
        422: "The SQL no longer expands (a snippet problem).",
        **_CAPACITY,
    },
)
def refresh_filter(request: Request, principal: Principal) -> Response:
    query = FILTERS.query(request, collection=False)
    state = request.app.state
    with state.sessions.begin() as session:
        row = filters.refresh_filter(
            session, principal, request.path_params["id"], state.result_store, state.settings
        )
        return one(FILTERS, query, row)


# ---------------------------------------------------------------------------- options


_PAGE_NUMBER, _PAGE_SIZE, _SEARCH, _PARAMETERS = (
    "page[number]",
    "page[size]",
    "search",
    "parameters",
)


@dataclass(frozen=True)
class _OptionsQuery:
    number: int
    size: int
    search: str | None
    parameters: Any  # the JSON sent ({} when none was)


def _options_query(request: Request) -> _OptionsQuery:
    given = request.query_params  # admission let through only the declared names, each once
    search = given.get(_SEARCH)
    if search is not None and len(search) > MAX_SEARCH_LENGTH:
        raise InvalidQueryParameter(
            f"search has at most {MAX_SEARCH_LENGTH} characters.", parameter=_SEARCH
        )
    parameters: Any = {}  # none sent; null, like any other non-object, is a 422 later
    if (raw := given.get(_PARAMETERS)) is not None:
        try:
            parameters = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise InvalidQueryParameter(
                "parameters must be JSON: Run Execution's parameters object.",
                parameter=_PARAMETERS,
            ) from None
    return _OptionsQuery(
        number=_bounded(given.get(_PAGE_NUMBER), _PAGE_NUMBER, 1, jsonapi.MAX_PAGE_NUMBER),
        size=_bounded(
            given.get(_PAGE_SIZE), _PAGE_SIZE, DEFAULT_OPTIONS_PAGE_SIZE, MAX_OPTIONS_PAGE_SIZE
        ),
        search=search,
        parameters=parameters,
    )


def _bounded(text: str | None, name: str, default: int, maximum: int) -> int:
    if text is None:
        return default
    number = natural_number(text, maximum)
    if number is None or not 1 <= number <= maximum:
        raise InvalidQueryParameter(
            f"{name} must be a whole number from 1 to {maximum}.", parameter=name
        )
    return number


@OPERATIONS.get(
    "/filters/{id}/options",
    operation_id="getFilterOptions",
    summary="Get Drop-Down Filter Options",
    description="The filter's options as plain JSON, `values[i]` labelled by `value_names[i]`, "
    "paged (`page[size]` at most 1000, and 1000 when not given) and searched (`search`: a "
    "case-insensitive substring of a value or its label). Manual options answer from the filter; `static_sql` "
    "ones from their last copy (409 `filter_options_pending` before the first); `dynamic_sql` "
    "ones run the SQL on the filter's datasource now, with `parameters` (Run Execution's, as "
    "JSON: the other filters' values), as an execution (limits and sandbox apply), waited for "
    f"up to {DYNAMIC_OPTIONS_WAIT_SECONDS:g} seconds. View Dashboards suffices: the key runs "
    "the filter's stored SQL only, as running a report does.",
    permissions=VIEW,
    audit="filter.options",
    subject=FILTERS,
    produces=jsonapi.JSON_MEDIA_TYPE,
    parameters=(
        oa.query_parameter(_PAGE_NUMBER, "The page, from 1.", oa.integer(minimum=1, default=1)),
        oa.query_parameter(
            _PAGE_SIZE,
            "Options per page.",
            oa.integer(minimum=1, maximum=MAX_OPTIONS_PAGE_SIZE, default=DEFAULT_OPTIONS_PAGE_SIZE),
        ),
        oa.query_parameter(
            _SEARCH,
            "Only options whose value or label contains this text (any case).",
            oa.string(maxLength=MAX_SEARCH_LENGTH),
        ),
        oa.query_parameter(
            _PARAMETERS,
            "For `dynamic_sql` options: Run Execution's `parameters` as JSON (ignored "
            "otherwise); problems point below `/parameters`.",
            oa.string(),
        ),
    ),
    responses={"200": oa.response("A page of options.", oa.ref("FilterOptions"))},
    errors={
        400: "A query parameter is unknown or malformed (`invalid_query_parameter`).",
        401: "The key was deleted or disabled while a `dynamic_sql` filter's SQL ran.",
        404: "No such filter, or it was deleted while its `dynamic_sql` ran.",
        409: "No options yet: a `static_sql` filter's SQL has not completed, or a "
        "`dynamic_sql` one did not finish in time (`filter_options_pending`, `Retry-After`); "
        "the filter's options source, SQL, datasource or value type changed while its SQL ran "
        "(`filter_changed`: ask again); or the datasource is disabled (`datasource_disabled`).",
        422: "The `parameters` are not valid (the codes of docs/sql-parameters.md), the SQL "
        "does not expand or bind, or it failed (`filter_options_failed`: the execution's "
        "error in the detail).",
        429: f"The key's rate limit (`rate_limited`), or {NO_ROOM_TO_RUN}.",
    },
)
async def filter_options(request: Request, principal: Principal) -> Response:
    given = _options_query(request)
    answer = await run_in_threadpool(_options_or_execution, request, principal, given)
    if isinstance(answer, filters.Options):
        return jsonapi.json_response(answer.page(given.search, given.number, given.size))
    execution = await _until_ended(request, principal, answer.execution_id)
    if execution.status not in lifecycle.TERMINAL_STATUSES:
        raise _pending(f"The options SQL (execution {execution.id}) is still running.")
    await run_in_threadpool(_still_answerable, request, principal, answer.basis)
    store = request.app.state.result_store
    value_type = answer.basis.value_type
    options = await run_in_threadpool(filters.dynamic_options, execution, store, value_type)
    return jsonapi.json_response(options.page(given.search, given.number, given.size))


@dataclass(frozen=True)
class _OptionsBasis:
    """What a filter's dynamic options are computed from."""

    options_source: str
    options_sql_query: str | None
    datasource_id: str | None
    value_type: str

    @classmethod
    def of(cls, row: FilterRow) -> _OptionsBasis:
        return cls(row.options_source, row.options_sql_query, row.datasource_id, row.value_type)


@dataclass(frozen=True)
class _DynamicRun:
    execution_id: str
    basis: _OptionsBasis


def _still_answerable(request: Request, principal: Principal, basis: _OptionsBasis) -> None:
    """After the wait, the options are the data itself: the key must still be enabled (401, as
    its next request would be), the filter still there (404) and computing its options as it did
    when they were asked for (409 ``filter_changed``: ask again)."""
    state = request.app.state
    with state.reads() as session:
        if not api_keys.still_enabled(session.connection(), principal.api_key_id):
            raise unauthorized()
        row = filters.get_filter(session, principal, request.path_params["id"])
        if _OptionsBasis.of(row) != basis:
            raise Conflict(
                "The filter changed while its options were computed; ask again.",
                code="filter_changed",
            )


def _options_or_execution(
    request: Request, principal: Principal, given: _OptionsQuery
) -> filters.Options | _DynamicRun:
    """Stored options, or the dynamic SQL's execution (queued and committed) and what the
    filter computes its options from."""
    state = request.app.state
    with state.sessions.begin() as session:
        row = filters.get_filter(session, principal, request.path_params["id"])
        request.state.audit_resource_id = row.id
        inputs = parse_input_parameters(given.parameters)  # checked alike for every source
        if row.options_source == "dynamic_sql":
            execution = filters.queue_dynamic_options(
                session, principal, row, given.parameters, inputs, state.settings
            )
            # Recorded with the run it starts or joins and whatever it then answers (a 409
            # after the wait, a 422 when the SQL failed).
            request.state.audit_resource_id = execution.id
            request.state.audit_any_status = True
            return _DynamicRun(execution.id, _OptionsBasis.of(row))
        _synced(request, session, [row])
        options, status, message = filters.static_options(row), row.status, row.status_message
    if options is not None:
        return options
    if status == "failed":
        raise Unprocessable(
            f"The filter's static SQL failed: {message}", code="filter_options_failed"
        )
    raise _pending("The filter's static SQL has not completed yet.")


async def _until_ended(request: Request, principal: Principal, execution_id: str) -> Execution:
    """The execution once it ended or the bound passed: Get Execution's ``?wait``."""
    state = request.app.state

    def load() -> Execution:
        with state.sessions() as session:
            return executions.get_execution(session, principal, execution_id, state.settings)

    waits: ExecutionWaits = state.execution_waits
    return await waits.wait_until_ended(
        execution_id,
        DYNAMIC_OPTIONS_WAIT_SECONDS,
        lambda: run_in_threadpool(load),
        lambda execution: execution.status in lifecycle.TERMINAL_STATUSES,
    )


def _pending(detail: str) -> Conflict:
    return Conflict(
        f"{detail} Ask again in a moment.",
        code="filter_options_pending",
        headers={"Retry-After": "1"},
    )
