"""The region's scheduler: dashboards with ``prewarm`` or ``automatic_update_enabled`` and a
``data_refresh_rate`` are run at their default parameters once per period (docs/result-reuse.md).

Every data server with workers runs a pass every ``DATAFERRY_SCHEDULER_INTERVAL_SECONDS``; which
one runs a due refresh is decided in the metadata DB, not among the servers: the claim is a
``dashboard_refreshes`` row whose primary key is (dashboard, due instant), inserted in the same
transaction that queues the refresh's executions, so the first server's insert wins and every
other one conflicts and skips. Only the latest due period is run (missed ones are not
back-filled), and claims older than ``CLAIMS_KEPT`` are deleted. SQL alerts will run here too.

A refresh has no principal: its executions carry no API key, and they go through
``shared.runs`` as every run does (reuse included: a report whose query an execution created
since the due instant already answers is not run again). Refreshes take at most half of the
organisation's cap of running executions (``shared.runs.BACKGROUND_CAP_SHARE``): one that finds
no room is not claimed, and a later pass of the same period runs it once there is room, before
the dashboards refreshed more recently; one stopped midway is logged and keeps its claim (its
remaining reports wait for the next period).
"""

from __future__ import annotations

import logging
import time as clock
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import delete, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from shared.db.engine import database_now, write_lock_on_sqlite
from shared.db.models import Dashboard, DashboardRefresh, Datasource, Report
from shared.errors import AppError, TooManyRequests
from shared.runs import AT_CAPACITY, SqlRun, queue_sql_execution
from shared.settings import Settings
from shared.time_zones import known_time_zones
from sql_templating.parameters import parse_input_parameters

logger = logging.getLogger(__name__)

CLAIMS_KEPT = timedelta(days=2)  # a claim matters only during its own period (at most a day)
PRUNE_INTERVAL_SECONDS = 3600.0
DEFAULT_ANCHOR = time(0, 0)


# ---------------------------------------------------------------------------- when


def due_instant(now: datetime, rate_minutes: int, anchor: str | None, zone: ZoneInfo) -> datetime:
    """The latest refresh instant at or before ``now`` (UTC): every local day, the anchor
    (``HH:MM`` in ``zone``; midnight when unset) and every ``rate_minutes`` after it until the
    next day's anchor, counted in elapsed time (so a period is as long across a DST change). An
    anchor in a DST gap or overlap is read with the offset before the change (``fold=0``)."""
    anchor_time = _anchor_time(anchor)
    today = now.astimezone(zone).date()
    start = _local_instant(today, anchor_time, zone)
    if start > now:
        start = _local_instant(today - timedelta(days=1), anchor_time, zone)
    period = timedelta(minutes=rate_minutes)
    return start + period * ((now - start) // period)


def _anchor_time(anchor: str | None) -> time:
    if not anchor:
        return DEFAULT_ANCHOR
    hours, minutes = anchor.split(":")
    return time(int(hours), int(minutes))


def _local_instant(day: date, at: time, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, at, tzinfo=zone).astimezone(UTC)


def dashboard_zone(time_zone_config: dict[str, Any] | None) -> ZoneInfo:
    """The zone a dashboard's anchor is read in: its fixed zone (``fixed``, or the default of
    ``selectable``); UTC otherwise (``disabled``, ``organization``: organisations have no zone
    in dataferry, and a viewer's pick is no schedule's)."""
    config = time_zone_config or {}
    name = config.get("fixed_time_zone") if config.get("type") in _ZONED_TYPES else None
    return ZoneInfo(name if name in known_time_zones() else "UTC")


_ZONED_TYPES = ("fixed", "selectable")  # the configurations whose fixed_time_zone is the zone


# ---------------------------------------------------------------------------- who


def claim_refresh(session: Session, dashboard_id: str, due_at: datetime, server_id: str) -> bool:
    """Insert the claim of one due refresh in the caller's transaction: True when this server
    runs it, False when another's insert got there first (the primary key conflicts; on
    PostgreSQL a concurrent insert waits for the first transaction's end)."""
    write_lock_on_sqlite(session)
    claim = DashboardRefresh(
        dashboard_id=dashboard_id,
        due_at=due_at,
        claimed_by=server_id,
        claimed_at=database_now(session),
    )
    try:
        with session.begin_nested():
            session.add(claim)
    except IntegrityError:
        return False
    return True


# ---------------------------------------------------------------------------- what


@dataclass(frozen=True)
class Refreshed:
    """What one refresh did: executions queued, reused, and reports skipped."""

    created: int = 0
    reused: int = 0
    skipped: int = 0
    at_cap: bool = False  # stopped at the organisation's cap (for background runs)

    @property
    def found_no_room(self) -> bool:
        return self.at_cap and not (self.created or self.reused)


def refresh_dashboard(
    session: Session, dashboard: Dashboard, due_at: datetime, settings: Settings
) -> Refreshed:
    """Queue each report of the dashboard (oldest first) at its default parameters, reusing what
    was created since ``due_at``. A report whose SQL no longer expands or binds, or whose
    datasource is disabled, is skipped (logged); at the organisation's cap the rest are."""
    parameters = dict(dashboard.default_parameters or {})
    rows = session.execute(
        select(Report, Datasource)
        .join(Datasource, Report.datasource_id == Datasource.id)
        .where(
            Report.dashboard_id == dashboard.id,
            Datasource.organization_id == dashboard.organization_id,
        )
        .order_by(Report.created_at, Report.id)
    ).all()
    try:
        inputs = parse_input_parameters(parameters)
    except AppError as exc:  # stored valid; kept as a skipped refresh rather than retried
        logger.warning("dashboard refresh skipped dashboard=%s code=%s", dashboard.id, exc.code)
        return Refreshed(skipped=len(rows))
    created = reused = skipped = 0
    for index, (report, datasource) in enumerate(rows):
        run = SqlRun(
            datasource=datasource,
            sql_query=report.sql_query,
            parameters=parameters,
            inputs=inputs,
            every_filter_used=False,
            report_id=report.id,
            reuse_since=due_at,
            background=True,
        )
        try:
            with session.begin_nested():
                queued = queue_sql_execution(session, run, settings)
        except TooManyRequests as refusal:
            # At the cap a slot frees within seconds: a refresh that queued nothing is tried
            # again next pass. Out of room for text, room comes only as executions expire
            # (hours): this period's refresh ends here, as far as it got.
            at_cap = refusal.code == AT_CAPACITY
            if index or not at_cap:
                logger.warning(
                    "dashboard refresh stopped at the organisation's limit dashboard=%s "
                    "reports_left=%d code=%s",
                    dashboard.id,
                    len(rows) - index,
                    refusal.code,
                )
            return Refreshed(created, reused, skipped + len(rows) - index, at_cap=at_cap)
        except AppError as exc:
            logger.warning(
                "dashboard refresh skipped a report dashboard=%s report=%s code=%s",
                dashboard.id,
                report.id,
                exc.code,
            )
            skipped += 1
            continue
        reused += queued.reused
        created += not queued.reused
    return Refreshed(created, reused, skipped)


# ---------------------------------------------------------------------------- the pass


def scheduled_dashboards(session: Session, now: datetime) -> dict[str, datetime]:
    """Dashboard id → its latest due instant, for every dashboard the scheduler refreshes whose
    due instant nobody has claimed yet; those refreshed longest ago (never: first) first, so
    that an organisation whose refreshes do not all fit under its cap in one period has each
    dashboard's turn come round, not the same ones skipped every period."""
    rows = session.execute(
        select(
            Dashboard.id,
            Dashboard.data_refresh_rate,
            Dashboard.data_refresh_anchor_time,
            Dashboard.time_zone_config,
        ).where(
            or_(Dashboard.prewarm.is_(True), Dashboard.automatic_update_enabled.is_(True)),
            Dashboard.data_refresh_rate.is_not(None),
        )
    ).all()
    due = {
        dashboard_id: due_instant(now, rate, anchor, dashboard_zone(config))
        for dashboard_id, rate, anchor, config in rows
    }
    if not due:
        return {}
    last_claims = dict(
        session.execute(
            select(DashboardRefresh.dashboard_id, func.max(DashboardRefresh.due_at)).group_by(
                DashboardRefresh.dashboard_id
            )
        ).all()
    )
    unclaimed = [i for i, at in due.items() if (last := last_claims.get(i)) is None or last < at]
    unclaimed.sort(key=lambda i: (i in last_claims, last_claims.get(i) or due[i]))
    return {i: due[i] for i in unclaimed}


def run_due_refreshes(
    sessions: sessionmaker[Session],
    settings: Settings,
    server_id: str,
    now: datetime | None = None,
) -> int:
    """One pass: claim and run every due refresh no server has claimed; how many this one ran.
    Each refresh is its own transaction (the claim with its executions): one that fails is
    rolled back, claim included, and tried again by the next pass. ``now``: the database's
    clock unless given (every server of the region reads the same one)."""
    with sessions() as session:
        due = scheduled_dashboards(session, now or database_now(session))
    ran = 0
    for dashboard_id, due_at in due.items():
        try:
            ran += _refresh_once(sessions, settings, server_id, dashboard_id, due_at)
        except Exception:  # one dashboard's failure never stops the others'
            logger.exception("dashboard refresh failed dashboard=%s", dashboard_id)
    return ran


class _NoRoom(Exception):
    """A refresh that found the organisation's share for background runs full before it queued
    anything: its claim is rolled back with it, so that a later pass of the same period runs it
    once there is room, and its older last claim puts it first then."""


def _refresh_once(
    sessions: sessionmaker[Session],
    settings: Settings,
    server_id: str,
    dashboard_id: str,
    due_at: datetime,
) -> bool:
    try:
        with sessions.begin() as session:
            if not claim_refresh(session, dashboard_id, due_at, server_id):
                return False
            dashboard = session.get(Dashboard, dashboard_id)
            if dashboard is None:  # deleted meanwhile: its claim goes with it
                return False
            refreshed = refresh_dashboard(session, dashboard, due_at, settings)
            if refreshed.found_no_room:
                raise _NoRoom
            claim = session.get_one(DashboardRefresh, (dashboard_id, due_at))
            claim.executions = refreshed.created
    except _NoRoom:
        logger.debug("dashboard refresh waits for room dashboard=%s", dashboard_id)
        return False
    logger.info(
        "dashboard refresh dashboard=%s due=%s created=%d reused=%d skipped=%d",
        dashboard_id,
        due_at.isoformat(),
        refreshed.created,
        refreshed.reused,
        refreshed.skipped,
    )
    return True


def prune_claims(sessions: sessionmaker[Session]) -> int:
    """Delete claims older than ``CLAIMS_KEPT``: the table stays bounded."""
    with sessions.begin() as session:
        cutoff = database_now(session) - CLAIMS_KEPT
        result = session.execute(delete(DashboardRefresh).where(DashboardRefresh.due_at < cutoff))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


class Scheduler:
    """The loop a data server's worker runs in a thread of its own."""

    def __init__(self, sessions: sessionmaker[Session], settings: Settings, server_id: str) -> None:
        self.sessions = sessions
        self.settings = settings
        self.server_id = server_id
        self._last_prune = float("-inf")

    def run_pass(self) -> int:
        ran = run_due_refreshes(self.sessions, self.settings, self.server_id)
        if clock.monotonic() - self._last_prune > PRUNE_INTERVAL_SECONDS:
            pruned = prune_claims(self.sessions)
            self._last_prune = clock.monotonic()
            if pruned:
                logger.info("dashboard refresh claims pruned=%d", pruned)
        return ran
