"""The dashboard scheduler in process: the due-instant arithmetic (anchors, time zones, DST), the
claim (two servers racing: exactly one wins, on SQLite and PostgreSQL), and a pass (one refresh
per period, only the latest period, reuse since the due instant, the organisation's cap, old
claims pruned). The one multi-process test is tests/e2e/test_dashboard_refreshes.py."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select, update

from data_server import scheduler
from data_server.scheduler import dashboard_zone, due_instant
from shared.db.engine import create_session_factory
from shared.db.models import DashboardRefresh, Execution, Organization, Report, utcnow
from shared.storage_quota import MIB

UTC_ZONE = ZoneInfo("UTC")
BERLIN = ZoneInfo("Europe/Berlin")


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


# ---------------------------------------------------------------------------- due instants


@pytest.mark.parametrize(
    ("now", "rate", "anchor", "zone", "due"),
    [
        # Every 15 minutes from midnight UTC.
        ("2024-05-01T10:07:00+00:00", 15, None, UTC_ZONE, "2024-05-01T10:00:00+00:00"),
        ("2024-05-01T10:15:00+00:00", 15, None, UTC_ZONE, "2024-05-01T10:15:00+00:00"),
        # Anchored at 00:05: the periods start at :05, :20, :35, :50.
        ("2024-05-01T10:04:59+00:00", 15, "00:05", UTC_ZONE, "2024-05-01T09:50:00+00:00"),
        # Daily at 06:30 Berlin (04:30 UTC in summer): before today's, yesterday's.
        ("2024-05-01T04:29:00+00:00", 1440, "06:30", BERLIN, "2024-04-30T04:30:00+00:00"),
        ("2024-05-01T04:30:00+00:00", 1440, "06:30", BERLIN, "2024-05-01T04:30:00+00:00"),
        # 7 minutes does not divide a day: the series restarts at each day's anchor.
        ("2024-05-02T00:03:00+00:00", 7, "00:00", UTC_ZONE, "2024-05-02T00:00:00+00:00"),
        ("2024-05-01T23:59:00+00:00", 7, "00:00", UTC_ZONE, "2024-05-01T23:55:00+00:00"),
        # Spring forward in Berlin (31 March 2024, 02:00 → 03:00): the anchor 02:30 does not
        # exist that day and is read with the offset before the change (01:30 UTC).
        ("2024-03-31T02:00:00+00:00", 1440, "02:30", BERLIN, "2024-03-31T01:30:00+00:00"),
        # Hourly from 00:00 Berlin across the change: one period per elapsed hour.
        ("2024-03-31T01:59:00+00:00", 60, None, BERLIN, "2024-03-31T01:00:00+00:00"),
        # Fall back (27 October 2024, 03:00 → 02:00): an anchor in the repeated hour is its
        # first occurrence (00:30 UTC), and periods stay 60 elapsed minutes long.
        ("2024-10-27T00:45:00+00:00", 1440, "02:30", BERLIN, "2024-10-27T00:30:00+00:00"),
        ("2024-10-27T01:30:00+00:00", 60, None, BERLIN, "2024-10-27T01:00:00+00:00"),
        # A zone east of UTC whose local day starts the previous UTC day.
        (
            "2024-05-01T16:00:00+00:00",
            1440,
            "00:00",
            ZoneInfo("Asia/Tokyo"),
            "2024-05-01T15:00:00+00:00",
        ),
    ],
)
def test_due_instant_is_the_latest_period_start_at_or_before_now(now, rate, anchor, zone, due):
    assert due_instant(_at(now), rate, anchor, zone) == _at(due)


def test_a_fixed_or_default_selectable_zone_anchors_and_others_are_utc():
    assert dashboard_zone({"type": "fixed", "fixed_time_zone": "Europe/Berlin"}) == BERLIN
    assert dashboard_zone(
        {
            "type": "selectable",
            "fixed_time_zone": "Asia/Tokyo",
            "allowed_time_zones": ["Asia/Tokyo"],
        }
    ) == ZoneInfo("Asia/Tokyo")
    for config in (
        None,
        {"type": "disabled"},
        {"type": "organization"},
        # A zone stored beside a type that has none is not the schedule's (outside probe).
        {"type": "organization", "fixed_time_zone": "Asia/Tokyo"},
        {"type": "disabled", "fixed_time_zone": "Asia/Tokyo"},
    ):
        assert dashboard_zone(config) == UTC_ZONE


# ---------------------------------------------------------------------------- the claim


def _scheduled_dashboard(api, org, reports=2, **values) -> str:
    values = {"prewarm": True, "data_refresh_rate": 15, **values}
    sqls = [f"SELECT {index} AS n" for index in range(reports)]
    return api.create_dashboard(org, sqls, **values)[0]


def _count(api, model, *where) -> int:
    with api.app.state.sessions() as session:
        return session.scalar(select(func.count()).select_from(model).where(*where)) or 0


def _refresh_executions(api) -> list[Execution]:
    with api.app.state.sessions() as session:
        return list(
            session.scalars(
                select(Execution).where(Execution.report_id.is_not(None)).order_by(Execution.id)
            )
        )


def test_two_servers_racing_for_one_claim_exactly_one_wins(api):
    org = api.create_org()
    dashboard_id = _scheduled_dashboard(api, org, reports=0)
    due_at = _at("2024-05-01T10:00:00+00:00")
    # Each server has its own sessions; one process's take turns on SQLite (TurnTakingSessions),
    # and a turn held at the barrier would keep the other server from reaching it.
    sessions = create_session_factory(api.app.state.engine)
    barrier = threading.Barrier(2)
    won: list[bool] = []

    def claim(server: str) -> None:
        with sessions.begin() as session:
            barrier.wait()
            won.append(scheduler.claim_refresh(session, dashboard_id, due_at, server))

    threads = [threading.Thread(target=claim, args=(f"server-{n}",)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(won) == [False, True]
    assert _count(api, DashboardRefresh) == 1


# ---------------------------------------------------------------------------- passes


def test_a_pass_refreshes_each_period_once_and_only_the_latest(api):
    org = api.create_org()
    dashboard_id = _scheduled_dashboard(api, org)
    _scheduled_dashboard(api, org, prewarm=False)  # neither prewarmed nor updated: never
    _scheduled_dashboard(api, org, data_refresh_rate=None)  # no rate: never
    settings, sessions = api.settings, api.app.state.sessions
    later = utcnow() + timedelta(hours=1)  # periods after every execution created here
    period = due_instant(later, 15, None, UTC_ZONE)

    assert scheduler.run_due_refreshes(sessions, settings, "a", now=later) == 1
    assert scheduler.run_due_refreshes(sessions, settings, "b", now=later) == 0
    assert (
        scheduler.run_due_refreshes(sessions, settings, "a", now=period + timedelta(minutes=14))
        == 0
    )
    first = _refresh_executions(api)
    assert len(first) == 2 and {e.api_key_id for e in first} == {None}
    assert all(e.parameters == {} for e in first)

    # Two periods later: one refresh, of the latest period (the missed one is not back-filled).
    skipped_to = period + timedelta(minutes=31)
    assert scheduler.run_due_refreshes(sessions, settings, "b", now=skipped_to) == 1
    with sessions() as session:
        claims = session.scalars(select(DashboardRefresh).order_by(DashboardRefresh.due_at)).all()
        assert [(c.dashboard_id, c.due_at, c.executions) for c in claims] == [
            (dashboard_id, period, 2),
            (dashboard_id, period + timedelta(minutes=30), 2),
        ]
        assert [c.claimed_by for c in claims] == ["a", "b"]
    assert len(_refresh_executions(api)) == 4


def test_a_refresh_reuses_what_was_created_since_its_due_instant(api):
    org = api.create_org()
    _scheduled_dashboard(api, org)
    settings, sessions = api.settings, api.app.state.sessions
    now = utcnow()
    assert scheduler.run_due_refreshes(sessions, settings, "a", now=now) == 1
    before = _refresh_executions(api)
    # The next period is due: what exists was created before it, so the refresh runs again...
    next_due = due_instant(now, 15, None, UTC_ZONE) + timedelta(minutes=15)
    with sessions.begin() as session:  # ...unless a run since the due instant answers
        session.execute(
            update(Execution)
            .where(Execution.id == before[0].id)
            .values(created_at=next_due + timedelta(seconds=1))
        )
    assert (
        scheduler.run_due_refreshes(sessions, settings, "a", now=next_due + timedelta(minutes=1))
        == 1
    )
    assert len(_refresh_executions(api)) == 3
    with sessions() as session:
        latest = session.scalars(
            select(DashboardRefresh).order_by(DashboardRefresh.due_at.desc())
        ).first()
        assert latest is not None and latest.executions == 1


def test_a_refresh_at_the_organisations_cap_is_logged_and_not_retried(api, caplog):
    org = api.create_org()
    _scheduled_dashboard(api, org, reports=3)
    settings, sessions = api.settings, api.app.state.sessions
    with sessions.begin() as session:
        session.get(Organization, org.id).max_running_executions = 1
    later = utcnow() + timedelta(hours=1)
    with caplog.at_level(logging.WARNING, logger="data_server.scheduler"):
        assert scheduler.run_due_refreshes(sessions, settings, "a", now=later) == 1
    assert "code=too_many_running_executions" in caplog.text and "SELECT" not in caplog.text
    assert len(_refresh_executions(api)) == 1
    assert scheduler.run_due_refreshes(sessions, settings, "a", now=later) == 0
    assert len(_refresh_executions(api)) == 1


def test_refreshes_take_half_the_cap_and_the_dashboards_skipped_go_first_next_period(api):
    """The probe's case: more refreshes than fit under the cap. They leave half of it to the
    organisation's own runs, and the dashboards skipped in one period run first in the next
    (before, the same ones lost every period)."""
    org = api.create_org()
    dashboards = [_scheduled_dashboard(api, org, reports=1) for _ in range(6)]
    settings, sessions = api.settings, api.app.state.sessions
    with sessions.begin() as session:
        session.get(Organization, org.id).max_running_executions = 4
    now = utcnow() + timedelta(hours=1)

    def refreshed_in(at: datetime) -> set[str]:
        scheduler.run_due_refreshes(sessions, settings, "a", now=at)
        due = due_instant(at, 15, None, UTC_ZONE)
        with sessions() as session:
            return {
                report.dashboard_id
                for report in session.scalars(
                    select(Report)
                    .join(Execution, Execution.report_id == Report.id)
                    .where(Execution.created_at >= utcnow() - timedelta(seconds=30))
                )
                if session.get(DashboardRefresh, (report.dashboard_id, due)) is not None
            }

    first = refreshed_in(now)
    assert len(first) == 2  # half of the cap of 4
    with sessions.begin() as session:  # the first period's executions end
        session.execute(update(Execution).values(status="completed"))
    second = refreshed_in(now + timedelta(minutes=15)) - first
    assert len(second) == 2 and not second & first
    with sessions.begin() as session:
        session.execute(update(Execution).values(status="completed"))
    third = refreshed_in(now + timedelta(minutes=30)) - first - second
    assert third == set(dashboards) - first - second


def test_a_broken_report_is_skipped_and_the_others_run(api):
    org = api.create_org()
    dashboard_id = _scheduled_dashboard(api, org, reports=2)
    with api.app.state.sessions.begin() as session:
        session.add(
            Report(
                organization_id=org.id,
                datasource_id=org.sample_datasource_id,
                dashboard_id=dashboard_id,
                name="broken",
                sql_query="SELECT * FROM [missing]",
            )
        )
    later = utcnow() + timedelta(hours=1)
    assert scheduler.run_due_refreshes(api.app.state.sessions, api.settings, "a", now=later) == 1
    assert len(_refresh_executions(api)) == 2


def test_invalid_stored_defaults_skip_the_refresh_once_instead_of_retrying(api):
    org = api.create_org()
    _scheduled_dashboard(api, org, default_parameters={"aggregation": "fortnight"})
    sessions, later = api.app.state.sessions, utcnow() + timedelta(hours=1)
    assert scheduler.run_due_refreshes(sessions, api.settings, "a", now=later) == 1
    assert scheduler.run_due_refreshes(sessions, api.settings, "a", now=later) == 0
    assert _refresh_executions(api) == []


def test_old_claims_are_pruned(api):
    org = api.create_org()
    dashboard_id = _scheduled_dashboard(api, org, reports=0)
    sessions = api.app.state.sessions
    now = utcnow()
    with sessions.begin() as session:
        for age in (timedelta(days=3), timedelta(hours=1)):
            session.add(
                DashboardRefresh(dashboard_id=dashboard_id, due_at=now - age, claimed_by="x")
            )
    assert scheduler.prune_claims(sessions) == 1
    assert _count(api, DashboardRefresh) == 1


def test_a_refresh_out_of_room_for_text_ends_for_this_period_and_is_logged(api, caplog):
    """Room for text comes back only as executions expire (hours): unlike at the cap, a refresh
    that queued nothing is not tried again on every pass meanwhile."""
    org = api.create_org()
    _scheduled_dashboard(api, org, reports=2)
    settings, sessions = api.settings, api.app.state.sessions
    with sessions.begin() as session:
        session.get_one(Organization, org.id).execution_text_bytes = (
            settings.max_execution_text_mb * MIB
        )
    later = utcnow() + timedelta(hours=1)
    with caplog.at_level(logging.WARNING, logger="data_server.scheduler"):
        assert scheduler.run_due_refreshes(sessions, settings, "a", now=later) == 1
    assert "code=execution_text_quota_exceeded" in caplog.text
    assert scheduler.run_due_refreshes(sessions, settings, "a", now=later) == 0
    assert _refresh_executions(api) == []
