"""Reports of one organisation (SQL on one datasource, on a dashboard or not), and running a report
or every report of a dashboard as ordinary executions.

Scope: a key restricted to listed datasources reaches only the reports on them, and a dashboard
only when it sees it (``services.dashboards.visible_dashboards``: every report of it on them);
anything else answers exactly as an unknown id does. A locked dashboard (``is_locked``) keeps its
reports as they are: none is added, changed, moved away or deleted. A report that leaves a
dashboard leaves its ``layout`` too, in the same transaction.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from pydantic import Field
from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from api_server.principals import Principal
from api_server.services.dashboards import (
    ensure_unlocked,
    find_dashboard,
    reports_beyond_scope_on,
)
from api_server.services.datasources import get_datasource, within_scope
from api_server.services.executions import RunRequest, queue_run
from api_server.services.filters import used_filter_ids
from api_server.services.listing import CollectionQuery, list_page
from api_server.services.object_limits import require_room
from api_server.services.sql_snippets import named_snippet_ids
from shared.db.engine import write_lock_on_sqlite
from shared.db.models import Dashboard, Organization, Report, text_bytes, utcnow
from shared.errors import Conflict, NotFound, TooManyRequests, Unprocessable, ValidationErrors
from shared.input_models import InputModel, Problem, validate_input
from shared.runs import (
    AT_CAPACITY,
    NO_TEXT_ROOM,
    QueuedRun,
    ReportGone,
    execution_cap,
    reuse_window,
    text_budget_bytes,
)
from shared.settings import Settings
from sql_templating.parameters import InputParameters, parse_input_parameters

_NOT_FOUND_DETAIL = "No report with this id exists."
DATASOURCE_POINTER = "/data/relationships/datasource"
DASHBOARD_POINTER = "/data/relationships/dashboard"
# ``filter[name]`` → the column it compares (the relationships' filters name their ids).
_FILTERED_COLUMNS = {"datasource": Report.datasource_id, "dashboard": Report.dashboard_id}


# ---------------------------------------------------------------------------- scope


def _visible(principal: Principal) -> ColumnElement[bool]:
    """The reports the key reaches: its organisation's, on its datasources, and on no dashboard
    hidden from it (whose id, lock and default parameter values the report would reveal)."""
    where = within_scope(principal, Report.organization_id, Report.datasource_id)
    if principal.datasource_ids is not None:
        where = where & ~reports_beyond_scope_on(principal.datasource_ids, Report.dashboard_id)
    return where


# ---------------------------------------------------------------------------- CRUD


def list_reports(
    session: Session, principal: Principal, query: CollectionQuery
) -> tuple[list[Report], int]:
    return list_page(
        session, Report, _visible(principal), query, Report.name.asc(), _FILTERED_COLUMNS
    )


def get_report(
    session: Session, principal: Principal, report_id: str, *, for_update: bool = False
) -> Report:
    """404 alike for unknown, foreign and out-of-scope reports. ``for_update``: to change or
    delete it, locked until the transaction ends (the caller took SQLite's write lock)."""
    statement = select(Report).where(_visible(principal), Report.id == report_id)
    if for_update:
        statement = statement.with_for_update(of=Report, key_share=True).execution_options(
            populate_existing=True
        )  # FOR NO KEY UPDATE: runs holding it (FOR KEY SHARE) are not held up
    report = session.scalar(statement)
    if report is None:
        raise NotFound(_NOT_FOUND_DETAIL)
    return report


@dataclass(frozen=True)
class ReportView:
    """A report with the ids its relationships link to, as the key may see them: read in two
    queries for a whole page."""

    row: Report
    filter_ids: list[str]
    sql_snippet_ids: list[str]

    @property
    def id(self) -> str:
        return self.row.id


def report_views(
    session: Session, principal: Principal, rows: Sequence[Report]
) -> list[ReportView]:
    variables = {row.id: set(row.sql_variables or ()) for row in rows}
    filters = used_filter_ids(session, principal, variables)
    names = {row.id: set(row.sql_snippet_names or ()) for row in rows}
    snippets = named_snippet_ids(session, principal.organization_id, names)
    return [ReportView(row, filters[row.id], snippets[row.id]) for row in rows]


def create_report(
    session: Session,
    principal: Principal,
    values: Mapping[str, Any],
    related: Mapping[str, str | None],
    settings: Settings,
) -> Report:
    """``values``: the validated attributes; ``related``: the datasource's id and the dashboard's
    (or None)."""
    write_lock_on_sqlite(session)
    require_room(session, principal.organization_id, Report, settings.max_objects_per_kind)
    datasource_id = _reachable_datasource(session, principal, related["datasource"])
    dashboard_id = related.get("dashboard")
    if dashboard_id is not None:
        ensure_unlocked(_related_dashboard(session, principal, dashboard_id), DASHBOARD_POINTER)
    report = Report(
        organization_id=principal.organization_id,
        datasource_id=datasource_id,
        dashboard_id=dashboard_id,
        **values,
    )
    session.add(report)
    session.flush()
    return report


def update_report(
    session: Session,
    principal: Principal,
    report_id: str,
    changes: Mapping[str, Any],
    related: Mapping[str, str | None],
) -> Report:
    """``changes`` and ``related``: only what the request sent changes (a dashboard of None takes
    the report off its dashboard)."""
    write_lock_on_sqlite(session)
    report = _locked_report(session, principal, report_id, related.get("dashboard"))
    _refuse_if_on_locked_dashboard(session, report)
    if "datasource" in related:
        report.datasource_id = _reachable_datasource(session, principal, related["datasource"])
    if "dashboard" in related and related["dashboard"] != report.dashboard_id:
        moved_to = related["dashboard"]
        if moved_to is not None:
            ensure_unlocked(_related_dashboard(session, principal, moved_to), DASHBOARD_POINTER)
        _leave_dashboard(session, report)
        report.dashboard_id = moved_to
    for name, value in changes.items():
        setattr(report, name, value)
    session.flush()
    return report


def delete_report(session: Session, principal: Principal, report_id: str) -> None:
    """Its executions stay (their ``report`` turns null)."""
    write_lock_on_sqlite(session)
    report = _locked_report(session, principal, report_id)
    _refuse_if_on_locked_dashboard(session, report)
    _leave_dashboard(session, report)
    session.delete(report)
    session.flush()


def _locked_report(
    session: Session, principal: Principal, report_id: str, moved_to: str | None = None
) -> Report:
    """The report, locked to change or delete it (a request racing a delete then finds it gone,
    a 404), after the dashboards it is on and is moved to: dashboards before reports is the
    order a dashboard's delete takes them in, so the two cannot deadlock."""
    report = get_report(session, principal, report_id)
    read_on = report.dashboard_id
    _lock_in_id_order(session, principal, {read_on, moved_to})
    report = get_report(session, principal, report_id, for_update=True)
    if report.dashboard_id != read_on:  # moved meanwhile: its dashboard was not locked first
        raise Conflict(
            "The report was moved to another dashboard while this request ran; send it again.",
            code="concurrent_change",
        )
    return report


def _lock_in_id_order(
    session: Session, principal: Principal, dashboard_ids: Iterable[str | None]
) -> None:
    """Lock the dashboards a move touches in one order (by id) before either is read, so that
    two reports moving opposite ways between two dashboards cannot deadlock."""
    ids = sorted(i for i in dashboard_ids if i is not None)
    if ids:
        session.scalars(
            select(Dashboard.id)
            .where(Dashboard.organization_id == principal.organization_id, Dashboard.id.in_(ids))
            .order_by(Dashboard.id)
            .with_for_update()
        ).all()


def _reachable_datasource(session: Session, principal: Principal, datasource_id: str | None) -> str:
    """A datasource of the organisation inside the key's scope; any other id is the same 422, so
    that a restricted key never learns that a datasource outside its scope exists."""
    try:
        return get_datasource(session, principal, datasource_id or "", held=True).id
    except NotFound:
        raise Unprocessable(
            "No datasource with this id exists.",
            pointer=DATASOURCE_POINTER,
            code="datasource_not_found",
        ) from None


def _related_dashboard(session: Session, principal: Principal, dashboard_id: str) -> Dashboard:
    try:
        return find_dashboard(session, principal, dashboard_id, for_update=True)
    except NotFound as not_found:
        raise Unprocessable(
            not_found.detail, pointer=DASHBOARD_POINTER, code="dashboard_not_found"
        ) from None


def _refuse_if_on_locked_dashboard(session: Session, report: Report) -> None:
    if report.dashboard_id is not None:
        dashboard = session.get(Dashboard, report.dashboard_id, with_for_update=True)
        if dashboard is not None:
            ensure_unlocked(dashboard)


def _leave_dashboard(session: Session, report: Report) -> None:
    """The report's items leave its dashboard's ``layout`` (the row was locked above)."""
    if report.dashboard_id is None:
        return
    dashboard = session.get(Dashboard, report.dashboard_id)
    if dashboard is None:
        return
    kept = [
        item
        for item in dashboard.layout or []
        if not (item.get("type") == "report" and item.get("id") == report.id)
    ]
    if len(kept) != len(dashboard.layout or []):
        dashboard.layout = kept  # a new list: a JSON column sees only assignment


# ---------------------------------------------------------------------------- running


class RunReportRequest(InputModel):
    """Running a report or a dashboard: Run Execution's body without the SQL (the report's)."""

    not_an_object = Problem("invalid_attribute", "The body must be a JSON object.")

    parameters: Annotated[
        InputParameters | None,
        Field(
            description="Merged over the dashboard's `default_parameters`: each member given "
            "(`timerange`, `aggregation`, `tz`, null included) replaces the default's; `filters` "
            "merge by `variable_name`, a given filter replacing the default of its variable. A "
            "filter the report's SQL has no placeholder for is left out (not `unused_filter`): "
            "a dashboard's filters apply to the reports that use them."
        ),
    ] = None
    refresh: Annotated[
        bool,
        Field(
            description="Beyond Cluvio: true runs the SQL afresh even when an execution of the "
            "same query created within the dashboard's `data_refresh_rate` could answer "
            "(result reuse, docs/result-reuse.md)."
        ),
        Problem("invalid_attribute", "refresh is true or false."),
    ] = False


@dataclasses.dataclass(frozen=True)
class ReportRun:
    """A run's body as read: the parameters given, as sent, and whether reuse is refused."""

    parameters: dict[str, Any]
    refresh: bool = False


def parse_run_body(body: Any) -> ReportRun:
    """The body of a report's or dashboard's run (each problem a 422 at its member)."""
    run = validate_input(RunReportRequest, body)
    return ReportRun(dict(body.get("parameters") or {}), run.refresh)


@dataclass(frozen=True)
class MergedParameters:
    """A run's parameters: the request's (``given``) over its dashboard's defaults, both Cluvio
    InputParameters already valid; and where in the request each problem with them lies."""

    values: dict[str, Any]
    given: Mapping[str, Any]
    dashboard: Dashboard | None

    @classmethod
    def merged(cls, dashboard: Dashboard | None, given: Mapping[str, Any]) -> MergedParameters:
        defaults = (dashboard.default_parameters if dashboard is not None else None) or {}
        values = {**defaults, **{name: value for name, value in given.items() if name != "filters"}}
        filters = {f["variable_name"]: f for f in defaults.get("filters") or ()}
        filters.update({f["variable_name"]: f for f in given.get("filters") or ()})
        if filters:
            values["filters"] = list(filters.values())
        return cls(values, given, dashboard)

    def pointer_in_request(self, pointer: str) -> str | None:
        """The request body's pointer for ``pointer`` into ``values`` (a filter's index in the
        merged list is not its index in the body); None when it points into the defaults."""
        parts = pointer.split("/")  # "", "parameters", member, …
        if parts[:2] != ["", "parameters"] or len(parts) < 3:
            return pointer
        if parts[2] != "filters" or len(parts) < 4 or not parts[3].isdigit():
            return pointer if parts[2] in self.given else None
        merged = self.values.get("filters") or []
        if int(parts[3]) >= len(merged):
            return pointer  # not into the merged list: as the validator wrote it
        variable = merged[int(parts[3])]["variable_name"]
        sent = [f["variable_name"] for f in self.given.get("filters") or ()]
        if variable not in sent:
            return None
        return "/".join([*parts[:3], str(sent.index(variable)), *parts[4:]])


def run_report(
    session: Session,
    principal: Principal,
    report_id: str,
    given: ReportRun,
    idempotency_key: str | None,
    settings: Settings,
) -> QueuedRun:
    """An execution of the report's SQL with ``given`` over its dashboard's defaults, or one
    reused within the dashboard's refresh window."""
    report = get_report(session, principal, report_id)
    dashboard = session.get(Dashboard, report.dashboard_id) if report.dashboard_id else None
    parameters = MergedParameters.merged(dashboard, given.parameters)
    reuse_since = None if given.refresh else reuse_window(dashboard, utcnow())
    # What a retry with its Idempotency-Key is compared on: not ``refresh``, which chooses
    # whether to reuse, not what the key's execution is (docs/result-reuse.md).
    as_sent = {"report": report.id, "parameters": given.parameters}
    return _run(
        session, principal, report, parameters, idempotency_key, settings, reuse_since, as_sent
    )


def run_dashboard(
    session: Session,
    principal: Principal,
    dashboard_id: str,
    given: ReportRun,
    settings: Settings,
) -> list[QueuedRun]:
    """One execution per report of the dashboard (oldest report first), all or none; each
    may be reused within the dashboard's refresh window."""
    dashboard = find_dashboard(session, principal, dashboard_id)
    parameters = MergedParameters.merged(dashboard, given.parameters)
    reuse_since = None if given.refresh else reuse_window(dashboard, utcnow())
    reports = session.scalars(
        select(Report)
        .where(Report.dashboard_id == dashboard.id)
        .order_by(Report.created_at, Report.id)
    ).all()
    queued: list[QueuedRun] = []
    try:
        for report in reports:
            queued.append(_run(session, principal, report, parameters, None, settings, reuse_since))
    except ReportGone:
        raise Conflict(
            "A report of this dashboard was deleted while the dashboard was run, and nothing was "
            "queued; run it again.",
            code="dashboard_changed",
        ) from None
    except TooManyRequests as refusal:
        # What the run needs for certain: the new executions queued so far, the refused one
        # (never a reuse: a reusable run is answered before the refusals) and, without a reuse
        # window, every report after it. Within one, those may reuse an execution of this run
        # (identical reports share one): a retry that gets further counts them.
        new = [run.execution for run in queued if not run.reused]
        refused_and_after = reports[len(queued) :]
        unqueued = refused_and_after if reuse_since is None else refused_and_after[:1]
        if refusal.code == AT_CAPACITY:
            cap = execution_cap(session.get_one(Organization, principal.organization_id), settings)
            if len(new) + len(unqueued) > cap:
                raise _beyond_the_cap(len(new) + len(unqueued), cap) from None
        elif refusal.code == NO_TEXT_ROOM:
            needed = sum(execution.kept_bytes for execution in new)
            # Their SQL as sent and their parameters: what each keeps at least.
            needed += sum(text_bytes(r.sql_query, None, parameters, []) for r in unqueued)
            if needed > text_budget_bytes(settings):
                raise _beyond_the_text_budget(needed, settings) from None
        raise
    return queued


# A dashboard's run that no retry runs: 409s, named in the operation's description too.
BEYOND_THE_CAP = "dashboard_exceeds_execution_cap"
BEYOND_THE_TEXT_BUDGET = "dashboard_exceeds_execution_text_budget"


def _beyond_the_text_budget(needed: int, settings: Settings) -> Conflict:
    """Not a 429 either: no execution's end makes room for more than the whole budget."""
    return Conflict(
        f"Running this dashboard would keep at least {needed:,} bytes of SQL and parameters, "
        f"more than the {settings.max_execution_text_mb:,} MB an organisation's executions may "
        "keep together: no retry runs it. Run its reports one by one "
        "(POST /reports/{id}/executions), or ask the operator to raise "
        "DATAFERRY_MAX_EXECUTION_TEXT_MB.",
        code=BEYOND_THE_TEXT_BUDGET,
    )


def _beyond_the_cap(new_runs: int, cap: int) -> Conflict:
    """Not a 429: waiting would not help, the dashboard needs more than the cap at once."""
    return Conflict(
        f"Running this dashboard needs {new_runs} executions at once, and the organisation may "
        f"have at most {cap} starting or running: no retry runs them together. Run its reports "
        "one by one (POST /reports/{id}/executions), or ask the operator to raise the "
        "organisation's cap.",
        code=BEYOND_THE_CAP,
    )


def _run(
    session: Session,
    principal: Principal,
    report: Report,
    parameters: MergedParameters,
    idempotency_key: str | None,
    settings: Settings,
    reuse_since: datetime | None,
    as_sent: Mapping[str, Any] | None = None,
) -> QueuedRun:
    values = parameters.values
    datasource_id = report.datasource_id
    with _blaming(report, parameters):
        inputs = parse_input_parameters(values)
        run = RunRequest(report.sql_query, values, inputs, every_filter_used=False, as_sent=as_sent)
        return queue_run(
            session, principal, datasource_id, run, idempotency_key, settings, report, reuse_since
        )


@contextmanager
def _blaming(report: Report, parameters: MergedParameters) -> Iterator[None]:
    """A problem of the report's stored SQL (expansion and binding point it at ``/sql_query``)
    is the report's, and one of a value its dashboard's defaults gave is the dashboard's: named
    by it, with no pointer into the body. One of a value the request gave points at it there."""
    try:
        yield
    except Unprocessable as exc:
        for error in exc.errors if isinstance(exc, ValidationErrors) else [exc]:
            if error.pointer == "/sql_query":
                error.pointer = None
                error.detail = f"The SQL of report {report.id} ({report.name!r}): {error.detail}"
            elif error.pointer is not None:
                error.pointer = parameters.pointer_in_request(error.pointer)
                dashboard = parameters.dashboard
                if error.pointer is None and dashboard is not None:
                    error.detail = (
                        f"The default parameters of dashboard {dashboard.id} "
                        f"({dashboard.name!r}): {error.detail}"
                    )
        raise
