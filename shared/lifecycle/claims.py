"""Claims: which queued execution a free worker starts, and starting it under a lease.

Fair scheduling, in three rules, all counted in the ``executions`` table (the region's queue):

- **Least served first.** A free worker takes the oldest queued execution of the (organisation,
  datasource) pair with the fewest running executions — organisation first, then datasource.
  One query ranks every pair with queued work, so no look-ahead window hides claimable work
  behind a full datasource.
- **Caps.** A pair is skipped while its datasource runs ``max_concurrent_executions``. An
  organisation runs at most its cap (``max_running_executions``, or the deployment's default)
  of the kinds in ``ORGANIZATION_CAP_COUNTS`` — SQL queries, as Run Execution's admission
  counts; at its cap its refreshes and connection tests still start.
- **A data server's share.** An organisation runs at most ``DATAFERRY_WORKER_PROCESSES``
  executions on one data server, which has one executor more than that
  (``data_server.worker.executor_count``). Alone, an organisation keeps every configured worker
  busy; another organisation's execution, queued meanwhile, starts on the spare executor at
  once instead of waiting for a slow query to end. Counted per data server (by lease owner), so
  it holds in a region of any size without coordination between data servers.

The counts are taken again under a lock per organisation (a datasource belongs to one
organisation), so the caps hold across every worker of the region: PostgreSQL takes a
transaction-scoped advisory lock and the row with ``FOR UPDATE SKIP LOCKED``; SQLite serialises
the whole claim with ``BEGIN IMMEDIATE``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Engine,
    Integer,
    Row,
    Select,
    String,
    bindparam,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.dml import ReturningUpdate

from shared.db.engine import (
    autocommit,
    database_now,
    one_of,
    quoted_name,
    write_lock_on_sqlite,
)
from shared.db.models import Datasource, Execution, Organization, UTCDateTime, table_of
from shared.execution_states import ExecutionStatus, ExecutionType
from shared.notifications import announce_new_work_now
from shared.settings import Settings

logger = logging.getLogger(__name__)

# The kinds an organisation's cap counts, at admission (Run Execution's 429) and at claim alike.
# Refreshes and connection tests are bounded by their datasource's cap and the data server's
# share instead, so that a Test Connection never waits behind the organisation's own backlog.
ORGANIZATION_CAP_COUNTS = frozenset({ExecutionType.SQL_QUERY})

# Pairs a claim tries per ranking, and rankings before it gives up: only lost races use them up
# (a pair another worker is claiming from, or that it filled meanwhile), never full datasources.
_PAIRS_PER_RANKING = 8
_RANKINGS_PER_CLAIM = 4
# PostgreSQL's two-key advisory lock of claims: "dfcl", then the organisation. A hash collision
# only makes two organisations' claims take turns.
_CLAIM_LOCK_KEY = f"{0x6466636C}, hashtext(:organization)"


@dataclass(frozen=True)
class Claim:
    execution_id: str
    attempt: int
    organization_id: str
    execution_type: str
    sql: str
    bound_parameters: list[Any]
    datasource_id: str
    database_type: str
    database: str | None
    data_time_zone: str
    # How a remote datasource is reached; the password stays encrypted until the worker hands
    # it to the sandbox child that connects.
    host: str | None = None
    port: int | None = None
    username: str | None = None
    password_encrypted: str | None = None
    require_ssl: bool = True
    verify_ssl: bool = False
    s3_region: str | None = None
    # A datasource disabled after the execution was queued runs nothing more (the worker fails it).
    enabled: bool = True
    # The ranking it was claimed from saw more claimable work: one more executor is worth waking.
    more_claimable: bool = False
    # The organisation's stored-results counter and file-area generation as the claim read them,
    # under its lock: the run's storage check needs no read of its own (shared.storage_quota).
    stored_results_bytes: int = 0
    area_generation: int = 0

    def __repr__(self) -> str:  # keep even the ciphertext out of logs and tracebacks
        return f"Claim(execution_id={self.execution_id!r}, attempt={self.attempt})"


def claim_next(
    sessions: sessionmaker[Session],
    worker_id: str,
    settings: Settings,
    *,
    at_their_share: frozenset[str] = frozenset(),
    queued_known: bool = False,
) -> Claim | None:
    """Take the oldest queued execution of the least-served (organisation, datasource) pair that
    the caps and this data server's share leave a slot to, or None when none may start now
    (``ClaimContended`` when the database was too busy to tell).
    ``worker_id`` names the data server: it becomes the lease owner. ``at_their_share``: the
    organisations the caller knows to run their share of this data server already (its own
    executors' jobs), whose queued work alone is not worth a ranking. ``queued_known``: the
    caller has just seen work queued (``announce_if_work_waits``) and leaves no one out: the
    probe would only ask again."""
    try:
        probe = not queued_known or bool(at_their_share)
        if probe and not _anything_queued(sessions.kw["bind"], at_their_share):
            return None
        with sessions.begin() as session:
            write_lock_on_sqlite(session)
            return _claim_in(session, worker_id, settings)
    except OperationalError as exc:
        busy = getattr(exc.orig, "sqlite_errorname", "").startswith(
            ("SQLITE_BUSY", "SQLITE_LOCKED")
        )
        if not busy:  # a database that is down or unreachable: the caller logs and backs off
            raise
        logger.debug("claim contention: %s", exc.orig.sqlite_errorname)  # type: ignore[union-attr]
        raise ClaimContended from exc


class ClaimContended(Exception):
    """The database was too busy to claim: nothing was claimed, but claimable work may be
    waiting, so the caller tries again soon rather than waiting for the next notification."""


# Plain text on a pooled connection: it runs several times per execution, mostly finding nothing,
# and costs a quarter of the same select through an ORM session. (The table's name is the model's.)
# Leaving nobody out, it has no list to expand: SQLAlchemy renders an expanding list again on each
# execution. The status is written into the text, not bound: psycopg prepares a statement run
# five times on a connection, and PostgreSQL's plan for a bound status, made without its value,
# expects most rows to match and so scans the table for the first queued one; with 50,000
# finished executions that took 2.7 ms instead of 0.1.
_QUEUED = (
    f"SELECT 1 FROM {Execution.__tablename__} "  # noqa: S608 - names and an enum value only
    f"WHERE status = {quoted_name(ExecutionStatus.STARTING)}"
)
_QUEUE_PROBE = text(f"{_QUEUED} LIMIT 1")
_QUEUE_PROBE_LEAVING_OUT = text(
    f"{_QUEUED} AND organization_id NOT IN :left_out LIMIT 1"
).bindparams(bindparam("left_out", expanding=True, type_=String))


def _anything_queued(engine: Engine, left_out: frozenset[str]) -> bool:
    """One index probe, before the ranking and (on SQLite) the database's write lock: most
    claims find nothing to start. The executor that finished one asks; and while one
    organisation fills this data server's share, the spare executor is woken by each of its new
    executions, and by each claim that saw more queued, only to find that organisation's work
    left to the others: 1.6 such rankings per execution with 16 clients of one organisation,
    each under SQLite's write lock. Its queued work is ``left_out`` of the probe (queued work
    is bounded by the organisations' caps, so the probe reads few rows)."""
    with autocommit(engine).connect() as connection:  # no BEGIN, no ROLLBACK
        if not left_out:
            return connection.execute(_QUEUE_PROBE).first() is not None
        probe = connection.execute(_QUEUE_PROBE_LEAVING_OUT, {"left_out": sorted(left_out)})
        return probe.first() is not None


def announce_if_work_waits(engine: Engine) -> bool:
    """Once a run ended and its end committed, a slot of its datasource, its organisation and
    its data server is free again: news to work already queued only (work queued later
    announces itself; should its claim come before the end committed and find the slot still
    taken, the executor that ended claims again next). Asked after the commit, not in the
    transaction that ends the run, which would hold the execution's waiters up by a statement
    (on PostgreSQL a round trip). Whether it told."""
    if not _anything_queued(engine, frozenset()):
        return False
    announce_new_work_now(engine)
    return True


def _claim_in(session: Session, worker_id: str, settings: Settings) -> Claim | None:
    started = _start_next(session, worker_id, settings)
    if started is None:
        return None
    claimed, datasource, more_claimable = started
    reached = {name: getattr(datasource, name) for name in _REACHED_BY}
    return Claim(
        execution_id=claimed.id,
        attempt=claimed.attempt,
        organization_id=claimed.organization_id,
        execution_type=claimed.execution_type,
        sql=claimed.expanded_sql or claimed.sql_query,
        bound_parameters=list(claimed.bound_parameters or []),
        datasource_id=reached.pop("id"),
        more_claimable=more_claimable,
        stored_results_bytes=int(datasource.stored_results_bytes),
        area_generation=int(datasource.area_generation),
        **reached,
    )


def _cap_parameters(worker_id: str, settings: Settings) -> dict[str, Any]:
    """The bound values every claim statement's caps read."""
    return {
        "claim_worker": worker_id,
        "default_cap": settings.max_running_executions,
        "server_share": settings.worker_processes,
    }


def _start_next(
    session: Session, worker_id: str, settings: Settings
) -> tuple[Row[Any], Row[Any], bool] | None:
    """Rank the pairs, then lock, recount and start from the first that still has a slot. A new
    ranking only after every pair of one was lost to other workers (or filled by them). With the
    started row and its datasource: whether the ranking held more than that one execution."""
    holding = False  # a claim lock, which only the end of this transaction releases
    for ranking in range(_RANKINGS_PER_CLAIM):
        pairs = session.execute(_RANKING, _cap_parameters(worker_id, settings)).all()
        if not pairs:
            return None
        for organization_id, datasource_id, queued in pairs:
            # In the last ranking, wait for an organisation another worker is claiming for
            # rather than give up, so that a busy organisation does not idle this worker; but
            # only while holding no other claim lock, so that two waiters never deadlock.
            wait = ranking == _RANKINGS_PER_CLAIM - 1 and not holding
            if not _lock_organization(session, organization_id, wait=wait):
                continue
            holding = True
            started = _start_in(session, organization_id, datasource_id, worker_id, settings)
            if started is not None:
                return (*started, len(pairs) > 1 or queued > 1)
    return None


def _start_in(
    session: Session, organization_id: str, datasource_id: str, worker_id: str, settings: Settings
) -> tuple[Row[Any], Row[Any]] | None:
    """Under the organisation's lock: start the pair's oldest queued execution if the caps and
    the share still leave a slot."""
    pair = {"pair_organization": organization_id, "pair_datasource": datasource_id}
    slot = session.execute(
        _WITH_FREE_SLOT, {**pair, **_cap_parameters(worker_id, settings)}
    ).first()
    if slot is None:
        return None
    now = database_now(session)
    claimed = session.execute(
        _START_OLDEST,
        {
            **pair,
            "under_organization_cap": bool(slot.under_organization_cap),
            "claim_worker": worker_id,
            "claim_now": now,
            "claim_until": now + timedelta(seconds=settings.lease_seconds),
        },
    ).one_or_none()
    return None if claimed is None else (claimed, slot)


def _lock_organization(session: Session, organization_id: str, *, wait: bool) -> bool:
    """Hold the organisation's claim lock until commit; False when another claim holds it and
    ``wait`` is off. On SQLite the claim already holds the database's write lock."""
    if session.get_bind().dialect.name != "postgresql":
        return True
    key = {"organization": organization_id}
    if wait:
        session.execute(text(f"SELECT pg_advisory_xact_lock({_CLAIM_LOCK_KEY})"), key)
        return True
    return bool(
        session.execute(text(f"SELECT pg_try_advisory_xact_lock({_CLAIM_LOCK_KEY})"), key).scalar()
    )


# The claim's statements are built once (a claim runs many times a second) and bound per call,
# on the tables: a statement on the models costs a session 60-70 µs more to run, and the claim
# needs rows, not objects.
_EXECUTIONS = table_of(Execution)
_DATASOURCES = table_of(Datasource)
_ORGANIZATIONS = table_of(Organization)

_RUNNING = one_of(_EXECUTIONS.c.status, [ExecutionStatus.RUNNING])
_ON_THIS_SERVER = _EXECUTIONS.c.lease_owner == bindparam("claim_worker")
_CAPPED = one_of(_EXECUTIONS.c.execution_type, ORGANIZATION_CAP_COUNTS)


def _organization_cap() -> ColumnElement[int]:
    """An organisation's running cap: its own, or the deployment's (``default_cap``) when unset."""
    return func.coalesce(
        func.nullif(_ORGANIZATIONS.c.max_running_executions, 0),
        bindparam("default_cap", type_=Integer),
    )


def _server_share() -> ColumnElement[int]:
    return bindparam("server_share", type_=Integer)


def _ranking() -> Select[str, str, int]:
    """Every (organisation, datasource) pair with queued work and a slot under the caps and the
    share, with how many executions it has queued, the least-served first: fewest running in
    the organisation (of every kind: a worker is a worker), then on the datasource, then the
    oldest queued execution. Full pairs are filtered out before the limit, never after it."""
    by_organization = (
        select(
            _EXECUTIONS.c.organization_id.label("id"),
            func.count().label("running"),
            func.count().filter(_CAPPED).label("capped"),
            func.count().filter(_ON_THIS_SERVER).label("here"),
        )
        .where(_RUNNING)
        .group_by(_EXECUTIONS.c.organization_id)
        .subquery()
    )
    by_datasource = (
        select(_EXECUTIONS.c.datasource_id.label("id"), func.count().label("running"))
        .where(_RUNNING)
        .group_by(_EXECUTIONS.c.datasource_id)
        .subquery()
    )
    queued = (
        select(
            _EXECUTIONS.c.organization_id,
            _EXECUTIONS.c.datasource_id,
            func.min(_EXECUTIONS.c.created_at).label("oldest"),
            func.count().label("queued"),
            func.count().filter(~_CAPPED).label("uncapped"),
        )
        .where(one_of(_EXECUTIONS.c.status, [ExecutionStatus.STARTING]))
        .group_by(_EXECUTIONS.c.organization_id, _EXECUTIONS.c.datasource_id)
        .subquery()
    )
    in_organization = func.coalesce(by_organization.c.running, 0)
    on_datasource = func.coalesce(by_datasource.c.running, 0)
    return (
        select(queued.c.organization_id, queued.c.datasource_id, queued.c.queued)
        .join(_ORGANIZATIONS, _ORGANIZATIONS.c.id == queued.c.organization_id)
        .join(_DATASOURCES, _DATASOURCES.c.id == queued.c.datasource_id)
        .outerjoin(by_organization, by_organization.c.id == queued.c.organization_id)
        .outerjoin(by_datasource, by_datasource.c.id == queued.c.datasource_id)
        .where(
            or_(
                func.coalesce(by_organization.c.capped, 0) < _organization_cap(),
                queued.c.uncapped > 0,
            ),
            func.coalesce(by_organization.c.here, 0) < _server_share(),
            on_datasource < _DATASOURCES.c.max_concurrent_executions,
        )
        .order_by(
            in_organization,
            on_datasource,
            queued.c.oldest,
            queued.c.organization_id,
            queued.c.datasource_id,
        )
        .limit(_PAIRS_PER_RANKING)
    )


# What a claim carries of its datasource, how to reach it: ``Claim``'s fields of these names
# (``id`` as ``datasource_id``).
_REACHED_BY = (
    "id",
    "database_type",
    "database",
    "data_time_zone",
    "host",
    "port",
    "username",
    "password_encrypted",
    "require_ssl",
    "verify_ssl",
    "s3_region",
    "enabled",
)


def _with_free_slot() -> Select[Any]:
    """The pair's datasource (``_REACHED_BY``), if neither its cap nor the organisation's share of
    this data server is reached (nothing if it was deleted), whether the organisation's cap
    leaves a slot to the kinds it counts, and what the organisation stores (``Claim``'s fields of
    those names). Run under the organisation's lock, it sees every claim committed before."""

    def running(*where: ColumnElement[bool]) -> Any:
        return select(func.count()).where(_RUNNING, *where).scalar_subquery()

    of_organization = _EXECUTIONS.c.organization_id == bindparam("pair_organization")
    under_organization_cap = running(of_organization, _CAPPED) < _organization_cap()
    return (
        select(
            *(_DATASOURCES.c[name] for name in _REACHED_BY),
            under_organization_cap.label("under_organization_cap"),
            _ORGANIZATIONS.c.stored_results_bytes,
            _ORGANIZATIONS.c.area_generation,
        )
        .join(_ORGANIZATIONS, _ORGANIZATIONS.c.id == _DATASOURCES.c.organization_id)
        .where(
            _DATASOURCES.c.id == bindparam("pair_datasource"),
            running(of_organization, _ON_THIS_SERVER) < _server_share(),
            running(_EXECUTIONS.c.datasource_id == bindparam("pair_datasource"))
            < _DATASOURCES.c.max_concurrent_executions,
        )
    )


def _start_oldest() -> ReturningUpdate[Any]:
    """Start the pair's oldest queued execution, of a kind the organisation's cap does not count
    if that is full; one that another transaction holds (a cancel under way) is skipped.
    Nothing when the pair has no such queued execution any more."""
    queued = _EXECUTIONS.alias("queued")
    oldest = (
        select(queued.c.id)
        .where(
            queued.c.organization_id == bindparam("pair_organization"),
            queued.c.datasource_id == bindparam("pair_datasource"),
            one_of(queued.c.status, [ExecutionStatus.STARTING]),
            or_(
                bindparam("under_organization_cap", type_=Boolean),
                ~one_of(queued.c.execution_type, ORGANIZATION_CAP_COUNTS),
            ),
        )
        .order_by(queued.c.created_at, queued.c.id)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    now = bindparam("claim_now", type_=UTCDateTime())
    return (
        update(_EXECUTIONS)
        .where(_EXECUTIONS.c.id == oldest, one_of(_EXECUTIONS.c.status, [ExecutionStatus.STARTING]))
        .values(
            status=ExecutionStatus.RUNNING,
            attempt=_EXECUTIONS.c.attempt + 1,
            lease_owner=bindparam("claim_worker"),
            lease_expires_at=bindparam("claim_until", type_=UTCDateTime()),
            started_at=func.coalesce(_EXECUTIONS.c.started_at, now),
            updated_at=now,
        )
        .returning(
            _EXECUTIONS.c.id,
            _EXECUTIONS.c.attempt,
            _EXECUTIONS.c.organization_id,
            _EXECUTIONS.c.execution_type,
            _EXECUTIONS.c.expanded_sql,
            _EXECUTIONS.c.sql_query,
            _EXECUTIONS.c.bound_parameters,
        )
    )


_RANKING = _ranking()
_WITH_FREE_SLOT = _with_free_slot()
_START_OLDEST = _start_oldest()
