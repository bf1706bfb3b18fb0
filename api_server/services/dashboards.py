"""Dashboards and dashboard groups of one organisation: CRUD, what their relationships link to,
and which of them a key restricted to some datasources may see.

Datasource scope: a dashboard belongs to the datasources its reports run on, so a restricted key
sees (and changes) a dashboard only if every report on it is on a datasource in its scope; a
dashboard without reports is visible to every key. A dashboard group is not tied to a datasource:
every key sees every group, but only the dashboards in it that the key sees (and a replacement of
a group's dashboards by a restricted key leaves those it cannot see in the group).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import ColumnElement, SQLColumnExpression, delete, func, select
from sqlalchemy.orm import Session, aliased

from api_server.principals import Principal
from api_server.services.filters import used_filter_ids
from api_server.services.listing import CollectionQuery, list_page
from api_server.services.object_limits import require_room
from api_server.services.sql_snippets import named_snippet_ids
from shared.db.engine import locked_to_change, write_lock_on_sqlite
from shared.db.models import (
    Dashboard,
    DashboardGroup,
    DashboardGroupMember,
    Report,
    SqlSnippet,
    utcnow,
)
from shared.errors import AppError, Conflict, NotFound, Unprocessable, ValidationErrors
from shared.settings import Settings

_NO_DASHBOARD = "No dashboard with this id exists."
_NO_GROUP = "No dashboard group with this id exists."
DASHBOARD_LINKAGE_POINTER = "/data/relationships/dashboards/data"


class DashboardLocked(Conflict):
    """``is_locked``: the dashboard refuses changes (its own, and its reports') until unlocked."""

    code = "dashboard_locked"


def ensure_unlocked(dashboard: Dashboard, pointer: str | None = None) -> None:
    """``pointer``: where the request names the dashboard, if it does (a report's relationship)."""
    if dashboard.is_locked:
        raise DashboardLocked(
            f"Dashboard {dashboard.id} is locked: unlock it first (PATCH with only "
            '"is_locked": false).',
            pointer=pointer,
        )


# ---------------------------------------------------------------------------- views


@dataclass(frozen=True)
class DashboardView:
    """A dashboard with the ids its relationships link to, read in a few queries per page."""

    row: Dashboard
    report_ids: list[str]
    sql_snippet_ids: list[str]
    dashboard_group_ids: list[str]
    filter_ids: list[str]

    @property
    def id(self) -> str:
        return self.row.id


@dataclass(frozen=True)
class DashboardGroupView:
    """A group with the ids of its dashboards that the caller sees."""

    row: DashboardGroup
    dashboard_ids: list[str]

    @property
    def id(self) -> str:
        return self.row.id


def visible_dashboards(principal: Principal) -> ColumnElement[bool]:
    """The organisation's dashboards whose every report is within the key's datasource scope."""
    where = Dashboard.organization_id == principal.organization_id
    if principal.datasource_ids is not None:
        where = where & ~reports_beyond_scope_on(principal.datasource_ids, Dashboard.id)
    return where


def reports_beyond_scope_on(
    datasource_ids: frozenset[str], dashboard_id: SQLColumnExpression[str | None]
) -> ColumnElement[bool]:
    """Whether the dashboard ``dashboard_id`` holds a report on a datasource not in
    ``datasource_ids``: such a dashboard, and every report on it, is hidden from the key.
    An alias of its own: a query that selects reports (``reports_by_ids``, the reports' own
    scope) would otherwise correlate this subquery's reports with its own, leaving it no FROM."""
    other = aliased(Report)
    return (
        select(other.id)
        .where(other.dashboard_id == dashboard_id, other.datasource_id.not_in(datasource_ids))
        .exists()
    )


def _dashboard_views(
    session: Session, principal: Principal, rows: Sequence[Dashboard]
) -> list[DashboardView]:
    """The dashboards with their reports' ids, and the snippets and filters those reports' SQL
    names: the names each report keeps (``Report.sql_snippet_names``, ``sql_variables``), not
    its SQL (up to ``DATAFERRY_MAX_SQL_LENGTH`` characters, and a dashboard may hold thousands
    of reports: a thousand of 100,000 characters took 100 MB and a second on every answer)."""
    ids = [row.id for row in rows]
    reports: dict[str, list[str]] = defaultdict(list)
    names: dict[str, set[str]] = defaultdict(set)
    variables: dict[str, set[str]] = defaultdict(set)
    groups: dict[str, list[str]] = defaultdict(list)
    if ids:
        # dashboard_id is never null here (the WHERE names dashboards): typed as such.
        for report_id, dashboard_id, snippets_named, variables_named in session.execute(
            select(
                Report.id,
                cast(ColumnElement[str], Report.dashboard_id),
                Report.sql_snippet_names,
                Report.sql_variables,
            )
            .where(Report.dashboard_id.in_(ids))
            .order_by(Report.created_at, Report.id)
        ):
            reports[dashboard_id].append(report_id)
            names[dashboard_id].update(snippets_named or ())
            variables[dashboard_id].update(variables_named or ())
        for group_id, dashboard_id in session.execute(
            select(DashboardGroupMember.dashboard_group_id, DashboardGroupMember.dashboard_id)
            .join(DashboardGroup)
            .where(DashboardGroupMember.dashboard_id.in_(ids))
            .order_by(DashboardGroup.name, DashboardGroup.id)
        ):
            groups[dashboard_id].append(group_id)
    snippets = named_snippet_ids(session, principal.organization_id, names)
    used = used_filter_ids(session, principal, variables)
    return [
        DashboardView(
            row, reports[row.id], snippets.get(row.id, []), groups[row.id], used.get(row.id, [])
        )
        for row in rows
    ]


def _group_views(
    session: Session, principal: Principal, rows: Sequence[DashboardGroup]
) -> list[DashboardGroupView]:
    members: dict[str, list[str]] = defaultdict(list)
    if rows:
        for group_id, dashboard_id in session.execute(
            select(DashboardGroupMember.dashboard_group_id, Dashboard.id)
            .join(Dashboard, Dashboard.id == DashboardGroupMember.dashboard_id)
            .where(
                DashboardGroupMember.dashboard_group_id.in_([row.id for row in rows]),
                visible_dashboards(principal),
            )
            .order_by(Dashboard.name, Dashboard.id)
        ):
            members[group_id].append(dashboard_id)
    return [DashboardGroupView(row, members[row.id]) for row in rows]


# ---------------------------------------------------------------------------- dashboards


def list_dashboards(
    session: Session, principal: Principal, query: CollectionQuery
) -> tuple[list[DashboardView], int]:
    where = visible_dashboards(principal)
    rows, total = list_page(session, Dashboard, where, query, Dashboard.name.asc())
    return _dashboard_views(session, principal, rows), total


def find_dashboard(
    session: Session, principal: Principal, dashboard_id: str, *, for_update: bool = False
) -> Dashboard:
    """404 alike for unknown, foreign and out-of-scope dashboards. ``for_update`` locks it, as
    a report joining or leaving it does (services.reports), so that its reports stay what a
    layout or a lock was checked against until commit."""
    statement = select(Dashboard).where(visible_dashboards(principal), Dashboard.id == dashboard_id)
    if for_update:
        write_lock_on_sqlite(session)
        statement = statement.with_for_update()
    dashboard = session.scalar(statement)
    if dashboard is None or (for_update and _hidden_since(session, principal, {dashboard.id})):
        raise NotFound(_NO_DASHBOARD)
    return dashboard


def _hidden_since(session: Session, principal: Principal, locked: Collection[str]) -> set[str]:
    """Those of the ``locked`` dashboards that now hold a report beyond the key's scope. A
    statement of its own, after the lock: PostgreSQL checks a row that it waited to lock again,
    but a subquery of the locking statement (``visible_dashboards``) still sees the reports as
    they were before the wait, so a report just added beyond the scope went unseen, and the
    key deleted or locked a dashboard it may not see (an outside probe)."""
    if principal.datasource_ids is None or not locked:
        return set()
    hidden = reports_beyond_scope_on(principal.datasource_ids, Dashboard.id)
    return set(session.scalars(select(Dashboard.id).where(Dashboard.id.in_(locked), hidden)))


def get_dashboard(session: Session, principal: Principal, dashboard_id: str) -> DashboardView:
    return _dashboard_views(session, principal, [find_dashboard(session, principal, dashboard_id)])[
        0
    ]


def dashboards_by_ids(
    session: Session, principal: Principal, dashboard_ids: Iterable[str]
) -> list[DashboardView]:
    """The dashboards among ``dashboard_ids`` that the key sees (for ``include``)."""
    rows = session.scalars(
        select(Dashboard)
        .where(visible_dashboards(principal), Dashboard.id.in_(set(dashboard_ids)))
        .order_by(Dashboard.name, Dashboard.id)
    ).all()
    return _dashboard_views(session, principal, rows)


def create_dashboard(
    session: Session, principal: Principal, values: dict[str, Any], settings: Settings
) -> DashboardView:
    """A new dashboard has no reports yet, so its layout can name none."""
    require_room(session, principal.organization_id, Dashboard, settings.max_objects_per_kind)
    _check_layout(session, None, values.get("layout") or [])
    dashboard = Dashboard(organization_id=principal.organization_id, **values)
    session.add(dashboard)
    session.flush()
    return _dashboard_views(session, principal, [dashboard])[0]


def update_dashboard(
    session: Session, principal: Principal, dashboard_id: str, changes: dict[str, Any]
) -> DashboardView:
    """A locked dashboard takes one change only: ``is_locked`` alone, set to false (or to true,
    which changes nothing: a client that sends the state it wants again is answered 200)."""
    dashboard = find_dashboard(session, principal, dashboard_id, for_update=True)
    if set(changes) != {"is_locked"}:
        ensure_unlocked(dashboard)
    if "layout" in changes:
        _check_layout(session, dashboard.id, changes["layout"])
    for name, value in changes.items():
        setattr(dashboard, name, value)
    session.flush()
    return _dashboard_views(session, principal, [dashboard])[0]


def delete_dashboard(session: Session, principal: Principal, dashboard_id: str) -> None:
    """Its reports (and their place in executions) and its group memberships go with it."""
    dashboard = find_dashboard(session, principal, dashboard_id, for_update=True)
    ensure_unlocked(dashboard)
    session.delete(dashboard)
    session.flush()


def _check_layout(session: Session, dashboard_id: str | None, layout: list[dict[str, Any]]) -> None:
    """Every item names a report on this dashboard (each once: the attribute's validator)."""
    named = {item["id"] for item in layout}
    own: set[str] = set()
    if dashboard_id is not None and named:
        own = set(
            session.scalars(
                select(Report.id).where(Report.dashboard_id == dashboard_id, Report.id.in_(named))
            )
        )
    problems: list[AppError] = [
        Unprocessable(
            f"No report {item['id']!r} is on this dashboard: a layout places only the "
            "dashboard's own reports.",
            pointer=f"/data/attributes/layout/{index}/id",
            code="layout_report_unknown",
        )
        for index, item in enumerate(layout)
        if item["id"] not in own
    ]
    if problems:
        raise ValidationErrors(problems)


# ---------------------------------------------------------------------------- related rows


def sql_characters(session: Session, report_ids: Iterable[str]) -> int:
    """What the reports' SQL of ``report_ids`` weighs together, counted by the database."""
    total = session.scalar(
        select(func.sum(func.length(Report.sql_query))).where(Report.id.in_(set(report_ids)))
    )
    return int(total or 0)


def reports_by_ids(
    session: Session, principal: Principal, report_ids: Iterable[str]
) -> list[Report]:
    """Reports of dashboards the key sees (so each on a datasource in its scope)."""
    return list(
        session.scalars(
            select(Report)
            .join(Dashboard, Dashboard.id == Report.dashboard_id)
            .where(visible_dashboards(principal), Report.id.in_(set(report_ids)))
            .order_by(Report.created_at, Report.id)
        )
    )


def snippets_by_ids(
    session: Session, principal: Principal, snippet_ids: Iterable[str]
) -> list[SqlSnippet]:
    return list(
        session.scalars(
            select(SqlSnippet)
            .where(
                SqlSnippet.organization_id == principal.organization_id,
                SqlSnippet.id.in_(set(snippet_ids)),
            )
            .order_by(SqlSnippet.name, SqlSnippet.id)
        )
    )


def groups_by_ids(
    session: Session, principal: Principal, group_ids: Iterable[str]
) -> list[DashboardGroupView]:
    rows = session.scalars(
        select(DashboardGroup)
        .where(
            DashboardGroup.organization_id == principal.organization_id,
            DashboardGroup.id.in_(set(group_ids)),
        )
        .order_by(DashboardGroup.name, DashboardGroup.id)
    ).all()
    return _group_views(session, principal, rows)


# ---------------------------------------------------------------------------- groups


def list_groups(
    session: Session, principal: Principal, query: CollectionQuery
) -> tuple[list[DashboardGroupView], int]:
    where = DashboardGroup.organization_id == principal.organization_id
    rows, total = list_page(session, DashboardGroup, where, query, DashboardGroup.name.asc())
    return _group_views(session, principal, rows), total


def _group(
    session: Session, principal: Principal, group_id: str, *, for_update: bool = False
) -> DashboardGroup:
    """``for_update``: locked until the transaction ends, so that two requests replacing its
    members one after the other each replace the whole list (neither merges into the other's)."""
    statement = select(DashboardGroup).where(
        DashboardGroup.organization_id == principal.organization_id,
        DashboardGroup.id == group_id,
    )
    group = session.scalar(locked_to_change(session, statement) if for_update else statement)
    if group is None:
        raise NotFound(_NO_GROUP)
    return group


def get_group(session: Session, principal: Principal, group_id: str) -> DashboardGroupView:
    return _group_views(session, principal, [_group(session, principal, group_id)])[0]


def create_group(
    session: Session,
    principal: Principal,
    values: dict[str, Any],
    dashboard_ids: list[str] | None,
    settings: Settings,
) -> DashboardGroupView:
    write_lock_on_sqlite(session)  # SQLite ignores the share locks of _replace_members
    limit = settings.max_objects_per_kind
    require_room(session, principal.organization_id, DashboardGroup, limit)
    group = DashboardGroup(organization_id=principal.organization_id, **values)
    session.add(group)
    session.flush()
    if dashboard_ids is not None:
        _replace_members(session, principal, group, dashboard_ids)
    return get_group(session, principal, group.id)


def update_group(
    session: Session,
    principal: Principal,
    group_id: str,
    changes: dict[str, Any],
    dashboard_ids: list[str] | None,
) -> DashboardGroupView:
    """``dashboard_ids``: the group's dashboards from now on (None: unchanged)."""
    write_lock_on_sqlite(session)  # SQLite ignores the share locks of _replace_members
    group = _group(session, principal, group_id, for_update=True)
    if changes:  # its members it does not see stay whatever it sends (_replace_members)
        _refuse_if_holding_hidden(session, principal, group)
    for name, value in changes.items():
        setattr(group, name, value)
    if dashboard_ids is not None:
        _replace_members(session, principal, group, dashboard_ids)
    session.flush()
    return get_group(session, principal, group.id)


def delete_group(session: Session, principal: Principal, group_id: str) -> None:
    """Its dashboards stay; only the memberships go (the database cascades them)."""
    group = _group(session, principal, group_id, for_update=True)
    _refuse_if_holding_hidden(session, principal, group)
    session.delete(group)
    session.flush()


def _refuse_if_holding_hidden(
    session: Session, principal: Principal, group: DashboardGroup
) -> None:
    """A group is the organisation's: a restricted key renames (or redescribes) or deletes only
    one whose every dashboard it sees, or it would change or dissolve what others file their
    dashboards in."""
    if principal.datasource_ids is None:
        return
    hidden = session.scalar(
        select(DashboardGroupMember.dashboard_id)
        .join(Dashboard, Dashboard.id == DashboardGroupMember.dashboard_id)
        .where(DashboardGroupMember.dashboard_group_id == group.id, ~visible_dashboards(principal))
        .limit(1)
    )
    if hidden is not None:
        principal.require_every_datasource(
            "rename or delete a dashboard group that holds dashboards beyond its datasources"
        )


def _replace_members(
    session: Session, principal: Principal, group: DashboardGroup, dashboard_ids: list[str]
) -> None:
    """The visible dashboards of the group become ``dashboard_ids``; the others stay. Those
    named are share-locked, so that none is deleted before the memberships are written."""
    visible = set(
        session.scalars(
            select(Dashboard.id)
            .where(visible_dashboards(principal), Dashboard.id.in_(set(dashboard_ids)))
            .order_by(Dashboard.id)  # one order, as a report's move locks them: no deadlock
            .with_for_update(read=True)
        )
    )
    visible -= _hidden_since(session, principal, visible)
    problems: list[AppError] = [
        Unprocessable(
            f"No dashboard with id {dashboard_id!r} exists.",
            pointer=f"{DASHBOARD_LINKAGE_POINTER}/{index}",
            code="dashboard_not_found",
        )
        for index, dashboard_id in enumerate(dashboard_ids)
        if dashboard_id not in visible
    ]
    if problems:
        raise ValidationErrors(problems)
    session.execute(
        delete(DashboardGroupMember)
        .where(
            DashboardGroupMember.dashboard_group_id == group.id,
            DashboardGroupMember.dashboard_id.in_(
                select(Dashboard.id).where(visible_dashboards(principal))
            ),
        )
        .execution_options(synchronize_session=False)
    )
    session.add_all(
        DashboardGroupMember(dashboard_group_id=group.id, dashboard_id=dashboard_id)
        for dashboard_id in dashboard_ids
    )
    group.updated_at = utcnow()  # its members are part of what the group is
    session.flush()
