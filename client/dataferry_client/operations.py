"""Every API operation once, as a generator that yields :class:`Call` s and receives :class:`Reply` s.

The sync and the asyncio client drive the same generators (``transport.py``), so an operation's
URL, body and parsing are written once. A generator never does I/O itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import time
import uuid
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Generic, TypeVar
from urllib.parse import quote

from dataferry_client.errors import (
    Conflict,
    DataferryError,
    DataNotAvailable,
    ExecutionFailed,
    NotFound,
    PermissionDenied,
    QueryInterrupted,
    QueryTimeout,
    UnexpectedAnswer,
    api_error,
)
from dataferry_client.models import (
    ApiKey,
    ConnectionTest,
    Dashboard,
    DashboardGroup,
    DataGrant,
    Datasource,
    Execution,
    ExecutionStatus,
    Filter,
    FilterOptions,
    Report,
    Resource,
    SqlSnippet,
)

T = TypeVar("T")
R = TypeVar("R", bound=Resource)
JSON_API = "application/vnd.api+json"
MAX_WAIT_SECONDS = 30  # the server's cap on ?wait
PAGE_SIZE = 100


def _segment(value: str) -> str:
    """An id as one segment of a request path: percent-encoded, so that an id given by a caller
    (``../sql_snippets/ID``, ``x?include=…``, ``ID/files``) names no other endpoint; ``.`` and
    ``..`` are encoded too, which URL normalisation would otherwise remove."""
    encoded = quote(str(value), safe="")
    return encoded.replace(".", "%2E") if encoded in (".", "..") else encoded


@dataclass(frozen=True)
class Call:
    """One HTTP request to the API server (or, with ``data_token``, the data server)."""

    method: str
    path: str
    params: Mapping[str, Any] | None = None
    body: Any = None
    content_type: str = JSON_API
    headers: Mapping[str, str] = field(default_factory=dict)
    expect: tuple[int, ...] = (200,)
    read_timeout: float | None = None
    data_token: str | None = None  # set: a data-server request with this token
    # Sent once, given ``transport.SOON_SECONDS`` at most: what ends another call's work after
    # an interrupt (Ctrl-C, a cancelled task), which must not hold its caller for retries.
    soon: bool = False

    @property
    def retry_safe(self) -> bool:
        """Sending it twice does no harm (a run carries an Idempotency-Key)."""
        return self.method in ("GET", "PUT", "PATCH", "DELETE") or "Idempotency-Key" in (
            self.headers
        )


@dataclass(frozen=True)
class Reply:
    status: int
    content: bytes
    headers: Mapping[str, str]

    def json(self) -> Any:
        try:
            return json.loads(self.content)
        except (ValueError, RecursionError):  # RecursionError: nested past Python's depth
            kind = self.headers.get("content-type") or "no content type"
            raise UnexpectedAnswer(
                f"the server's answer is not JSON (HTTP {self.status}, {kind}): "
                "is the URL the dataferry server's?",
                status=self.status,
            ) from None


Operation = Generator[Call, Reply, T]
PollCallback = Callable[[Execution, float], None]


class Unchanged(enum.Enum):
    """The default of a to-one relationship that an update leaves as it is (None sets it to
    null)."""

    UNCHANGED = "unchanged"


UNCHANGED = Unchanged.UNCHANGED


def _document(
    type_: str,
    attributes: Mapping[str, Any],
    id_: str | None = None,
    relationships: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    data: dict[str, Any] = {"type": type_, "attributes": dict(attributes)}
    if id_ is not None:
        data["id"] = id_
    if relationships:
        data["relationships"] = dict(relationships)
    return {"data": data}


def _to_one(name: str, type_: str, id_: str | Unchanged | None) -> dict[str, Any]:
    """``{name: relationship object}``, or nothing when the relationship is left unchanged."""
    if id_ is UNCHANGED:
        return {}
    return {name: {"data": None if id_ is None else {"type": type_, "id": id_}}}


def _to_many(name: str, type_: str, ids: Sequence[str] | None) -> dict[str, Any]:
    """``{name: relationship object}`` replacing the linked set, or nothing when ``ids`` is None."""
    if ids is None:
        return {}
    return {name: {"data": [{"type": type_, "id": id_} for id_ in ids]}}


def _run_body(parameters: Mapping[str, Any] | None, refresh: bool) -> dict[str, Any]:
    """A report's or dashboard's run: Run Execution's parameters, and whether to refuse reuse."""
    return {"parameters": dict(parameters or {}), "refresh": refresh}


def _collection(path: str, params: Mapping[str, Any]) -> Operation[list[dict[str, Any]]]:
    """Every resource of a collection, page by page."""
    resources: list[dict[str, Any]] = []
    number = 1
    while True:
        query = {**params, "page[number]": number, "page[size]": PAGE_SIZE}
        document = (yield Call("GET", path, params=query)).json()
        resources.extend(document["data"])
        total = document.get("meta", {}).get("total", len(resources))
        if not document["data"] or len(resources) >= total:
            return resources
        number += 1


def _filters(filters: Mapping[str, Any], sort: str | None) -> dict[str, Any]:
    """``filter[name]`` parameters; None is refused, since it would be sent as an empty value,
    which matches nothing (no list filter means "unset")."""
    unset = [name for name, value in filters.items() if value is None]
    if unset:
        raise ValueError(f"a list filter needs a value: {', '.join(unset)} is None")
    params: dict[str, Any] = {f"filter[{k}]": v for k, v in filters.items()}
    if sort:
        params["sort"] = sort
    return params


# ---------------------------------------------------------------------------- the calling key


def calling_api_key() -> Operation[ApiKey]:
    reply = yield Call("GET", "/api_key")
    return ApiKey.from_resource(reply.json()["data"])


# ---------------------------------------------------------------------------- datasources


def list_datasources(sort: str | None = None, **filters: Any) -> Operation[list[Datasource]]:
    resources = yield from _collection("/datasources", _filters(filters, sort))
    return [Datasource.from_resource(r) for r in resources]


def get_datasource(datasource_id: str) -> Operation[Datasource]:
    reply = yield Call("GET", f"/datasources/{_segment(datasource_id)}")
    return Datasource.from_resource(reply.json()["data"])


def create_datasource(attributes: Mapping[str, Any]) -> Operation[Datasource]:
    body = _document("datasources", attributes)
    reply = yield Call("POST", "/datasources", body=body, expect=(201,))
    return Datasource.from_resource(reply.json()["data"])


def update_datasource(datasource_id: str, attributes: Mapping[str, Any]) -> Operation[Datasource]:
    body = _document("datasources", attributes, datasource_id)
    reply = yield Call("PATCH", f"/datasources/{_segment(datasource_id)}", body=body)
    return Datasource.from_resource(reply.json()["data"])


def delete_datasource(datasource_id: str) -> Operation[None]:
    yield Call("DELETE", f"/datasources/{_segment(datasource_id)}", expect=(204,))


def resolve_datasource(name_or_id: str) -> Operation[str]:
    """An id as given, or the id of the one datasource with that name. A key that may run SQL
    without reading datasources (Manage Dashboards alone) gets 403 for the read: what it gave is
    taken as an id, and the run says what the key may do with it. A text with a slash is a name
    only: no id holds one, and a path cannot carry it (the server refuses ``%2F``)."""
    if "/" not in name_or_id:
        try:
            return (yield from get_datasource(name_or_id)).id
        except PermissionDenied:
            return name_or_id
        except NotFound:
            pass
    named = yield from list_datasources(name=name_or_id)
    if len(named) > 1:
        raise Conflict(
            f"{len(named)} datasources are named {name_or_id!r}: give the id of one.",
            status=409,
            code="ambiguous_name",
        )
    if not named:
        raise NotFound(
            f"No datasource has the id or name {name_or_id!r}.", status=404, code="not_found"
        )
    return named[0].id


def test_datasource_connection(datasource_id: str) -> Operation[ConnectionTest]:
    reply = yield Call("POST", f"/datasources/{_segment(datasource_id)}/test_connection")
    answer = reply.json()
    return ConnectionTest(answer["status"], answer.get("error_message"))


def refresh_datasource(datasource_id: str) -> Operation[str]:
    """Starts a refresh; returns the id of its execution."""
    reply = yield Call("POST", f"/datasources/{_segment(datasource_id)}/refresh")
    return str(reply.json()["execution_id"])


def datasource_schema(datasource_id: str, name: str | None = None) -> Operation[Any]:
    """The recorded schema JSON (grant, then the data server)."""
    reply = yield Call("GET", f"/datasources/{_segment(datasource_id)}/schema")
    grant = DataGrant.from_json(reply.json())
    params = {"name": name} if name else None
    schema = yield Call(
        "GET",
        f"/data/{_segment(grant.data_key)}",
        params=params,
        data_token=grant.data_access_token,
    )
    return schema.json()


# ---------------------------------------------------------------------------- executions


def run_execution(
    datasource_id: str,
    sql: str,
    parameters: Mapping[str, Any] | None = None,
    idempotency_key: str | None = None,
    wait: float = 0,
) -> Operation[Execution]:
    """Queue an execution; the Idempotency-Key makes a retried POST return the same one.

    With ``wait`` (run-and-wait) the answer comes once the execution ended or ``wait`` seconds
    passed, a completed one with its grant. A server without run-and-wait refuses ``?wait``
    (400, before it queues anything): the run is then sent again without it."""
    key = idempotency_key or str(uuid.uuid4())
    reply = yield Call(
        "POST",
        f"/datasources/{_segment(datasource_id)}/executions",
        params={"wait": f"{wait:g}"} if wait > 0 else None,
        body={"sql_query": sql, "parameters": dict(parameters or {})},
        content_type="application/json",
        headers={"Idempotency-Key": key},
        expect=(200, 400) if wait > 0 else (200,),
        read_timeout=wait + 30 if wait > 0 else None,
    )
    if reply.status == 400:
        refused = api_error(reply.status, reply.content)
        if refused.pointer != "?wait":
            raise refused
        return (yield from run_execution(datasource_id, sql, parameters, key))
    return Execution.from_document(reply.json())


def get_execution(execution_id: str, wait: float = 0) -> Operation[Execution]:
    params = {"wait": f"{wait:g}"} if wait > 0 else None
    reply = yield Call(
        "GET", f"/executions/{_segment(execution_id)}", params=params, read_timeout=wait + 30
    )
    return Execution.from_resource(reply.json()["data"])


def _next_wait(deadline: float | None, on_poll: PollCallback | None) -> float:
    """How long the next long poll may last: the server's cap, 1 s while a progress line is
    shown (it wants frequent news), never past the caller's deadline."""
    longest = 1.0 if on_poll else MAX_WAIT_SECONDS
    remaining = longest if deadline is None else deadline - time.monotonic()
    return max(0.0, min(longest, remaining))


def wait_for_execution(
    execution_id: str, timeout: float | None = None, on_poll: PollCallback | None = None
) -> Operation[Execution]:
    """Long-polls until the execution ended (``query`` first waits in the run itself)."""
    started = time.monotonic()
    deadline = None if timeout is None else started + timeout
    while True:
        execution = yield from get_execution(execution_id, _next_wait(deadline, on_poll))
        if on_poll is not None:
            on_poll(execution, time.monotonic() - started)
        if execution.status.ended:
            return execution
        if deadline is not None and time.monotonic() >= deadline:
            raise QueryTimeout(
                f"execution {execution_id} still {execution.status} after {timeout:g} s",
                execution_id=execution_id,
            )


def cancel_execution(execution_id: str) -> Operation[Execution]:
    reply = yield Call("POST", f"/executions/{_segment(execution_id)}/cancel")
    return Execution.from_resource(reply.json()["data"])


def delete_execution(execution_id: str) -> Operation[None]:
    yield Call("DELETE", f"/executions/{_segment(execution_id)}", expect=(204,))


def grant_execution_data(execution_id: str) -> Operation[DataGrant]:
    reply = yield Call("GET", f"/executions/{_segment(execution_id)}/data", expect=(200, 204))
    if reply.status == 204:
        raise DataNotAvailable(
            f"execution {execution_id} has no data: it has not completed, or it failed"
        )
    return DataGrant.from_json(reply.json())


def soon(operation: Operation[T]) -> Operation[T]:
    """``operation`` with each of its calls ``soon``."""
    try:
        call = next(operation)
        while True:
            try:
                reply = yield replace(call, soon=True)
            except DataferryError as error:
                call = operation.throw(error)
            else:
                call = operation.send(reply)
    except StopIteration as done:
        result: T = done.value
        return result


def ensure_completed(execution: Execution) -> Execution:
    if execution.status is not ExecutionStatus.COMPLETED:
        raise ExecutionFailed(
            f"execution {execution.id} {execution.status}: "
            f"{execution.error_message or 'no message'}",
            execution_id=execution.id,
            execution_status=str(execution.status),
            code=execution.error_code,
        )
    return execution


def query(
    datasource: str,
    sql: str,
    parameters: Mapping[str, Any] | None = None,
    timeout: float | None = None,
    on_poll: PollCallback | None = None,
) -> Operation[Execution]:
    """Run and wait (in the run itself where the server offers run-and-wait, so a quick query
    takes one request and brings its grant); a completed execution or ExecutionFailed /
    QueryTimeout."""
    datasource_id = yield from resolve_datasource(datasource)
    started = time.monotonic()
    deadline = None if timeout is None else started + timeout
    first_wait = _next_wait(deadline, on_poll)
    key = str(uuid.uuid4())
    execution: Execution | None = None
    try:
        execution = yield from run_execution(datasource_id, sql, parameters, key, first_wait)
        if not execution.status.ended:
            if on_poll is not None:
                on_poll(execution, time.monotonic() - started)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise QueryTimeout(
                    f"execution {execution.id} still {execution.status} after {timeout:g} s",
                    execution_id=execution.id,
                )
            execution = yield from wait_for_execution(execution.id, remaining, on_poll)
    except (KeyboardInterrupt, asyncio.CancelledError) as interrupt:
        # Ctrl-C, or the async client's task cancelled (a timeout around it): the execution
        # would run on to its time limit. The task's cancellation goes on as it came.
        with contextlib.suppress(DataferryError):  # unless it cannot be told: as the stop came
            if execution is None:  # during the run, which waits: its key answers it at once
                execution = yield from soon(run_execution(datasource_id, sql, parameters, key))
            if not execution.status.ended:
                yield from soon(cancel_execution(execution.id))
                if isinstance(interrupt, KeyboardInterrupt):
                    raise QueryInterrupted(execution.id) from None
        raise
    return ensure_completed(execution)


# ---------------------------------------------------------------------------- SQL snippets


def list_snippets(sort: str | None = None, **filters: Any) -> Operation[list[SqlSnippet]]:
    resources = yield from _collection("/sql_snippets", _filters(filters, sort))
    return [SqlSnippet.from_resource(r) for r in resources]


def get_snippet(snippet_id: str) -> Operation[SqlSnippet]:
    reply = yield Call("GET", f"/sql_snippets/{_segment(snippet_id)}")
    return SqlSnippet.from_resource(reply.json()["data"])


def create_snippet(attributes: Mapping[str, Any]) -> Operation[SqlSnippet]:
    reply = yield Call(
        "POST", "/sql_snippets", body=_document("sql_snippets", attributes), expect=(201,)
    )
    return SqlSnippet.from_resource(reply.json()["data"])


def update_snippet(snippet_id: str, attributes: Mapping[str, Any]) -> Operation[SqlSnippet]:
    body = _document("sql_snippets", attributes, snippet_id)
    reply = yield Call("PATCH", f"/sql_snippets/{_segment(snippet_id)}", body=body)
    return SqlSnippet.from_resource(reply.json()["data"])


def delete_snippet(snippet_id: str) -> Operation[None]:
    yield Call("DELETE", f"/sql_snippets/{_segment(snippet_id)}", expect=(204,))


# ---------------------------------------------------------------------------- JSON:API resources


@dataclass(frozen=True)
class Resources(Generic[R]):
    """List, get, create, update and delete of one JSON:API resource type at ``/{type_name}``."""

    type_name: str
    model: type[R]

    def list(self, sort: str | None = None, **filters: Any) -> Operation[list[R]]:
        resources = yield from _collection(f"/{self.type_name}", _filters(filters, sort))
        return [self.model.from_resource(r) for r in resources]

    def get(self, id_: str) -> Operation[R]:
        reply = yield Call("GET", f"/{self.type_name}/{_segment(id_)}")
        return self.model.from_resource(reply.json()["data"])

    def create(
        self, attributes: Mapping[str, Any], relationships: Mapping[str, Any] | None = None
    ) -> Operation[R]:
        body = _document(self.type_name, attributes, relationships=relationships)
        reply = yield Call("POST", f"/{self.type_name}", body=body, expect=(201,))
        return self.model.from_resource(reply.json()["data"])

    def update(
        self,
        id_: str,
        attributes: Mapping[str, Any],
        relationships: Mapping[str, Any] | None = None,
    ) -> Operation[R]:
        body = _document(self.type_name, attributes, id_, relationships)
        reply = yield Call("PATCH", f"/{self.type_name}/{_segment(id_)}", body=body)
        return self.model.from_resource(reply.json()["data"])

    def delete(self, id_: str) -> Operation[None]:
        yield Call("DELETE", f"/{self.type_name}/{_segment(id_)}", expect=(204,))


REPORTS = Resources("reports", Report)
DASHBOARDS = Resources("dashboards", Dashboard)
DASHBOARD_GROUPS = Resources("dashboard_groups", DashboardGroup)
FILTERS = Resources("filters", Filter)


def create_report(
    name: str,
    sql_query: str,
    datasource_id: str,
    dashboard_id: str | None,
    attributes: Mapping[str, Any],
) -> Operation[Report]:
    values = {"name": name, "sql_query": sql_query, **attributes}
    related = _report_relationships(datasource_id, dashboard_id or UNCHANGED)
    return REPORTS.create(values, related)


def update_report(
    report_id: str,
    datasource_id: str | None,
    dashboard_id: str | Unchanged | None,
    attributes: Mapping[str, Any],
) -> Operation[Report]:
    """Only what is given changes; ``dashboard_id=None`` takes the report off its dashboard."""
    related = _report_relationships(datasource_id or UNCHANGED, dashboard_id)
    return REPORTS.update(report_id, attributes, related)


def _report_relationships(
    datasource_id: str | Unchanged | None, dashboard_id: str | Unchanged | None
) -> dict[str, Any]:
    return _to_one("datasource", "datasources", datasource_id) | _to_one(
        "dashboard", "dashboards", dashboard_id
    )


def create_filter(
    name: str,
    variable_name: str,
    control_type: str,
    value_type: str,
    datasource_id: str | None,
    attributes: Mapping[str, Any],
) -> Operation[Filter]:
    values = {
        "name": name,
        "variable_name": variable_name,
        "control_type": control_type,
        "value_type": value_type,
        **attributes,
    }
    related = _to_one("datasource", "datasources", datasource_id or UNCHANGED)
    return FILTERS.create(values, related)


def update_filter(
    filter_id: str, datasource_id: str | Unchanged | None, attributes: Mapping[str, Any]
) -> Operation[Filter]:
    """Only what is given changes; ``datasource_id=None`` leaves it without a datasource."""
    related = _to_one("datasource", "datasources", datasource_id)
    return FILTERS.update(filter_id, attributes, related)


def create_group(
    name: str, dashboard_ids: Sequence[str] | None, attributes: Mapping[str, Any]
) -> Operation[DashboardGroup]:
    related = _to_many("dashboards", "dashboards", dashboard_ids)
    return DASHBOARD_GROUPS.create({"name": name, **attributes}, related)


def update_group(
    group_id: str, dashboard_ids: Sequence[str] | None, attributes: Mapping[str, Any]
) -> Operation[DashboardGroup]:
    """``dashboard_ids``, when given, replaces the group's dashboards (None: unchanged)."""
    related = _to_many("dashboards", "dashboards", dashboard_ids)
    return DASHBOARD_GROUPS.update(group_id, attributes, related)


# ---------------------------------------------------------------------------- running reports


def run_report(
    report_id: str,
    parameters: Mapping[str, Any] | None = None,
    refresh: bool = False,
    idempotency_key: str | None = None,
    wait: float = 0,
) -> Operation[Execution]:
    """Run Execution for the report's SQL, its parameters merged over its dashboard's defaults;
    the execution may be an earlier one, reused (``reused``). With ``wait`` (at most 30 s) the
    answer comes once it ended or ``wait`` passed, a completed one with its grant."""
    reply = yield Call(
        "POST",
        f"/reports/{_segment(report_id)}/executions",
        params={"wait": f"{wait:g}"} if wait > 0 else None,
        body=_run_body(parameters, refresh),
        content_type="application/json",
        headers={"Idempotency-Key": idempotency_key or str(uuid.uuid4())},
        read_timeout=wait + 30 if wait > 0 else None,
    )
    return Execution.from_document(reply.json())


def run_dashboard(
    dashboard_id: str, parameters: Mapping[str, Any] | None = None, refresh: bool = False
) -> Operation[list[Execution]]:
    """Every report of the dashboard run at once: one execution each, queued or reused."""
    reply = yield Call(
        "POST",
        f"/dashboards/{_segment(dashboard_id)}/executions",
        body=_run_body(parameters, refresh),
        content_type="application/json",
    )
    return [Execution.from_resource(r) for r in reply.json()["data"]]


# ---------------------------------------------------------------------------- dashboard backups


def backup_dashboard(dashboard_id: str) -> Operation[dict[str, Any]]:
    """The backup document (docs/dashboard-backups.md), as plain JSON."""
    reply = yield Call("POST", f"/dashboards/{_segment(dashboard_id)}/backup")
    document: dict[str, Any] = reply.json()
    return document


def restore_dashboard(
    backup: Mapping[str, Any], datasource_map: Mapping[str, str] | None = None
) -> Operation[Dashboard]:
    """A new dashboard from a backup, its datasources mapped ``ref`` → datasource id (None:
    each onto itself, as a restore in the organisation the backup came from would)."""
    if datasource_map is None:
        datasource_map = {d["ref"]: d["ref"] for d in backup.get("datasources", [])}
    reply = yield Call(
        "POST",
        "/dashboards/restore",
        body={"backup": dict(backup), "datasource_map": dict(datasource_map)},
        content_type="application/json",
        expect=(201,),
    )
    return Dashboard.from_resource(reply.json()["data"])


# ---------------------------------------------------------------------------- filter options


def refresh_filter(filter_id: str) -> Operation[Filter]:
    """Runs a ``static_sql`` filter's SQL again; the filter answers ``status`` ``pending``."""
    reply = yield Call("POST", f"/filters/{_segment(filter_id)}/refresh")
    return Filter.from_resource(reply.json()["data"])


def filter_options(
    filter_id: str,
    page: int | None = None,
    page_size: int | None = None,
    search: str | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> Operation[FilterOptions]:
    """One page of Get Drop-Down Filter Options; ``parameters`` (Run Execution's: the other
    filters' values) are what ``dynamic_sql`` options run with."""
    given = {
        "page[number]": page,
        "page[size]": page_size,
        "search": search,
        "parameters": None if parameters is None else json.dumps(dict(parameters)),
    }
    params = {name: value for name, value in given.items() if value is not None}
    reply = yield Call("GET", f"/filters/{_segment(filter_id)}/options", params=params or None)
    return FilterOptions.from_json(reply.json())
