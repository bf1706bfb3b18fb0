"""Dashboard backups: the rows one holds (``collect_backup``), and restoring one as a new dashboard
with new ids (``restore_dashboard``), all of it in the caller's one transaction.

A backup holds a dashboard, its reports, the SQL snippets their SQL names (and those the snippets
name in turn), the filters of the variables that SQL uses, and the datasources all of them run on
— by reference, for the restore's map, never a connection attribute. The document's format is
the resource layer's (``api_server.resources.dashboard_backups``); here are the rows and rules.

Restore: every datasource of the backup is mapped to one the key reaches; a snippet or filter of
the same name (variable) already in the organisation is reused when identical and a 409
otherwise, never overwritten; everything else is created. A refusal raises before the caller's
transaction commits, so a failed restore leaves no row behind.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api_server.principals import Principal
from api_server.services import dashboards, filters, reports, sql_snippets
from api_server.services.dashboards import DashboardView
from api_server.services.datasources import within_scope
from shared.db.models import Dashboard, Datasource, Filter, Report, SqlSnippet, utcnow
from shared.errors import AppError, Conflict, Unprocessable, ValidationErrors
from shared.organization_rows import lock_organization
from shared.settings import Settings
from sql_templating.placeholders import placeholder_variables
from sql_templating.snippets import snippet_references

DATASOURCE_MAP_POINTER = "/datasource_map"
BACKUP_POINTER = "/backup"


# ---------------------------------------------------------------------------- backing up


@dataclass(frozen=True)
class BackupRows:
    """What a backup of one dashboard holds, each list in the backup's own order, so that two
    backups of equal dashboards are equal but for ids and their time."""

    dashboard: Dashboard
    reports: list[Report]  # oldest first, as the dashboard lists them: keys report-1, report-2, …
    sql_snippets: list[SqlSnippet]  # by name
    filters: list[Filter]  # by variable_name
    datasources: list[Datasource]  # in order of first use: by the reports, then the filters


def collect_backup(session: Session, principal: Principal, dashboard_id: str) -> BackupRows:
    """404 as Get Dashboard for a dashboard the key does not see (a restricted key sees one only
    when every report on it runs on its datasources)."""
    dashboard = dashboards.find_dashboard(session, principal, dashboard_id)
    rows = list(
        session.scalars(
            select(Report)
            .where(Report.dashboard_id == dashboard.id)
            .order_by(Report.created_at, Report.id)
        )
    )
    snippets, named_filters = _named(session, principal, [report.sql_query for report in rows])
    used = list(
        dict.fromkeys(
            [report.datasource_id for report in rows]
            + [f.datasource_id for f in named_filters if f.datasource_id is not None]
        )
    )
    found = {
        ds.id: ds
        for ds in session.scalars(
            select(Datasource).where(
                within_scope(principal, Datasource.organization_id, Datasource.id),
                Datasource.id.in_(used),
            )
        )
    }
    return BackupRows(dashboard, rows, snippets, named_filters, [found[i] for i in used])


def _named(
    session: Session, principal: Principal, texts: Iterable[str]
) -> tuple[list[SqlSnippet], list[Filter]]:
    """The organisation's snippets that ``texts`` name with ``[name]`` and the filters of the
    variables their placeholders use; then those that these snippets' SQL and filters' options
    SQL name, until none is new. Unknown names (and Cluvio's built-ins) name nothing; a filter
    on a datasource outside a restricted key's scope is left out."""
    snippets: dict[str, SqlSnippet] = {}
    found: dict[str, Filter] = {}
    seen_names: set[str] = set()
    seen_variables: set[str] = set()
    pending = list(texts)
    while pending:
        names = {name for sql in pending for _, _, name in snippet_references(sql)} - seen_names
        variables = set().union(*map(placeholder_variables, pending)) - seen_variables
        seen_names |= names
        seen_variables |= variables
        new_snippets = _snippets_named(session, principal.organization_id, names)
        new_filters = _filters_of(session, principal, variables)
        snippets.update((snippet.name, snippet) for snippet in new_snippets)
        found.update((row.variable_name, row) for row in new_filters)
        pending = [snippet.sql for snippet in new_snippets]
        pending += [row.options_sql_query for row in new_filters if row.options_sql_query]
    return (
        [snippets[name] for name in sorted(snippets)],
        [found[name] for name in sorted(found)],
    )


def _snippets_named(session: Session, organization_id: str, names: set[str]) -> list[SqlSnippet]:
    if not names:
        return []
    return list(
        session.scalars(
            select(SqlSnippet).where(
                SqlSnippet.organization_id == organization_id, SqlSnippet.name.in_(names)
            )
        )
    )


def _filters_of(session: Session, principal: Principal, variables: set[str]) -> list[Filter]:
    """The filters of ``variables`` the key reaches (as Get Filter does)."""
    if not variables:
        return []
    where = filters._visible(principal)
    return list(session.scalars(select(Filter).where(where, Filter.variable_name.in_(variables))))


def filter_definition(values: Mapping[str, Any]) -> dict[str, Any]:
    """A filter's attributes without its cached options: a ``static_sql`` filter's ``values``
    and ``value_names`` are its SQL's last result (computed again where it is restored), not
    part of what it is; only ``manual`` options are."""
    if values.get("options_source") == "manual":
        return dict(values)
    return {**values, "values": None, "value_names": None}


# ---------------------------------------------------------------------------- restoring


@dataclass(frozen=True)
class RestoredReport:
    key: str  # what the backup's layout names it by
    datasource: str  # the backup's datasource reference
    values: dict[str, Any]  # its attributes, validated


@dataclass(frozen=True)
class RestoredFilter:
    datasource: str | None  # the backup's datasource reference, if the filter has one
    values: dict[str, Any]  # its attributes, validated (defaults filled in)
    sent: frozenset[str]  # those the entry holds


@dataclass(frozen=True)
class Restore:
    """A backup as validated (each list in the backup's order: an index is its place in the
    document, which the pointers of refusals name), and the request's datasource map."""

    dashboard: dict[str, Any]  # attributes; the layout names reports by their keys
    reports: list[RestoredReport]
    filters: list[RestoredFilter]
    sql_snippets: list[dict[str, Any]]
    datasources: list[dict[str, Any]]  # {"ref", "name", "database_type"}
    datasource_map: dict[str, str] = field(default_factory=dict)


def restore_dashboard(
    session: Session, principal: Principal, restore: Restore, settings: Settings
) -> DashboardView:
    """A new dashboard with new reports, and the snippets and filters the organisation lacks;
    all or none.

    The organisation's row is locked first (SQLite's write lock), so restores run one after
    another: a restore sees the snippets and filters an identical one running at the same time
    created, and reuses them, instead of colliding with them and calling them different. (On
    SQLite, too, a snippet's savepoint released outside a transaction would commit it there.)"""
    lock_organization(session, principal.organization_id)
    targets = _mapped_datasources(session, principal, restore)
    new_snippets = _snippets_to_create(session, principal, restore.sql_snippets)
    for index, values in new_snippets:
        try:
            sql_snippets.create_snippet(session, principal, values, settings)
        except Conflict as conflict:
            if conflict.code != sql_snippets.NAME_TAKEN:  # the organisation's limit
                raise
            raise _snippet_conflict(index, values["name"]) from None  # created meanwhile
        except Unprocessable as refusal:
            if refusal.code == sql_snippets.CYCLE:  # pointed at the backup's snippet
                refusal.pointer = f"{BACKUP_POINTER}/sql_snippets/{index}/sql"
            raise
    _create_filters(session, principal, restore.filters, targets, settings)
    attributes = {**restore.dashboard, "layout": [], "is_locked": False}
    view = dashboards.create_dashboard(session, principal, attributes, settings)
    ids = _create_reports(session, principal, view.id, restore.reports, targets, settings)
    layout = [{**item, "id": ids[item["id"]]} for item in restore.dashboard.get("layout") or []]
    final = {"layout": layout, "is_locked": restore.dashboard.get("is_locked", False)}
    return dashboards.update_dashboard(session, principal, view.id, final)


def _create_reports(
    session: Session,
    principal: Principal,
    dashboard_id: str,
    restored: Sequence[RestoredReport],
    targets: Mapping[str, str],
    settings: Settings,
) -> dict[str, str]:
    """Key → new id. Each report is a microsecond older than the next, so that the dashboard
    lists them (oldest first) in the backup's order, and a new backup gives them the same keys."""
    start, ids = utcnow(), {}
    for index, report in enumerate(restored):
        created = start + timedelta(microseconds=index)
        values = {**report.values, "created_at": created, "updated_at": created}
        related = {"datasource": targets[report.datasource], "dashboard": dashboard_id}
        ids[report.key] = reports.create_report(session, principal, values, related, settings).id
    return ids


def _mapped_datasources(session: Session, principal: Principal, restore: Restore) -> dict[str, str]:
    """Reference → the datasource it maps to. Every reference is mapped, the map names no
    other, and each target is a datasource the key reaches (any other id: the 422 reports give
    an unknown datasource)."""
    mapping = restore.datasource_map
    declared = {entry["ref"]: entry for entry in restore.datasources}
    reachable = set(
        session.scalars(
            select(Datasource.id).where(
                within_scope(principal, Datasource.organization_id, Datasource.id),
                Datasource.id.in_(set(mapping.values())),
            )
        )
    )
    problems: list[AppError] = []
    for ref, entry in declared.items():
        pointer = f"{DATASOURCE_MAP_POINTER}/{_token(ref)}"
        if ref not in mapping:
            problems.append(
                Unprocessable(
                    f"Map the backup's datasource {entry['name']!r} ({entry['database_type']}) "
                    f"to a datasource of yours: datasource_map[{ref!r}].",
                    pointer=pointer,
                    code="datasource_map_incomplete",
                )
            )
        elif mapping[ref] not in reachable:
            problems.append(
                Unprocessable(
                    "No datasource with this id exists.",
                    pointer=pointer,
                    code="datasource_not_found",
                )
            )
    problems += [
        Unprocessable(
            f"The backup has no datasource {ref!r}: map only those of its `datasources`.",
            pointer=f"{DATASOURCE_MAP_POINTER}/{_token(ref)}",
            code="unknown_datasource_ref",
        )
        for ref in mapping
        if ref not in declared
    ]
    if problems:
        raise ValidationErrors(problems)
    return dict(mapping)


def _snippets_to_create(
    session: Session, principal: Principal, restored: Sequence[dict[str, Any]]
) -> list[tuple[int, dict[str, Any]]]:
    """(index, values) of the backup's snippets the organisation has no snippet of that name
    of; one it has is reused when identical, and a 409 otherwise."""
    names = [values["name"] for values in restored]
    existing = {
        snippet.name: snippet
        for snippet in session.scalars(
            select(SqlSnippet).where(
                SqlSnippet.organization_id == principal.organization_id,
                SqlSnippet.name.in_(names),
            )
        )
    }
    created = []
    for index, values in enumerate(restored):
        snippet = existing.get(values["name"])
        if snippet is None:
            created.append((index, values))
        elif any(getattr(snippet, name) != value for name, value in values.items()):
            raise _snippet_conflict(index, values["name"])
    return created


def _create_filters(
    session: Session,
    principal: Principal,
    restored: Sequence[RestoredFilter],
    targets: Mapping[str, str],
    settings: Settings,
) -> None:
    """The backup's filters the organisation has no filter of that variable of, created as
    Create Filter creates them (checked as a whole; a ``static_sql`` one queues its SQL); one it
    has is reused when its definition (``filter_definition``, its datasource mapped) is the
    same, and a 409 otherwise."""
    variables = [entry.values["variable_name"] for entry in restored]
    existing = {
        row.variable_name: row
        for row in session.scalars(
            select(Filter).where(
                Filter.organization_id == principal.organization_id,
                Filter.variable_name.in_(variables),
            )
        )
    }
    for index, entry in enumerate(restored):
        target = targets[entry.datasource] if entry.datasource is not None else None
        wanted = filter_definition(entry.values)
        row = existing.get(wanted["variable_name"])
        if row is not None:
            held = filter_definition({name: getattr(row, name) for name in wanted})
            if held != wanted or row.datasource_id != target:
                raise _filter_conflict(index, wanted["variable_name"])
            continue
        with _pointing_into(f"{BACKUP_POINTER}/filters/{index}"):
            filters.create_filter(
                session, principal, wanted, entry.sent, {"datasource": target}, settings
            )


@contextmanager
def _pointing_into(entry: str) -> Iterator[None]:
    """Create Filter's refusals point into its request document; here, at the entry (a filter
    of the same variable created meanwhile: ``filter_conflict``)."""
    try:
        yield
    except AppError as exc:
        for error in exc.errors if isinstance(exc, ValidationErrors) else [exc]:
            if error.code == "duplicate_variable_name":
                error.code, error.pointer = "filter_conflict", entry
            elif error.pointer is not None:
                error.pointer = entry + error.pointer.removeprefix(filters.ATTRIBUTES).removeprefix(
                    "/data/relationships"
                )
        raise


def _filter_conflict(index: int, variable: str) -> Conflict:
    return Conflict(
        f"This organisation has a different filter of the variable {variable!r}: change one of "
        "them (a restore never overwrites a filter).",
        pointer=f"{BACKUP_POINTER}/filters/{index}",
        code="filter_conflict",
    )


def _snippet_conflict(index: int, name: str) -> Conflict:
    return Conflict(
        f"This organisation has a different SQL snippet named {name!r}: rename or change one "
        "of them (a restore never overwrites a snippet).",
        pointer=f"{BACKUP_POINTER}/sql_snippets/{index}",
        code="sql_snippet_conflict",
    )


def _token(name: str) -> str:
    """One reference token of a JSON pointer (RFC 6901)."""
    return name.replace("~", "~0").replace("/", "~1")
