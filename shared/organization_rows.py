"""An organisation's row as the place where its concurrent writers take turns, and the counter of
the bytes its stored results take there.

Runs against its cap (``shared.runs``) and writers of its stored results (storage quota,
retention, purges, datasource deletion) lock the row first, before any of its executions' rows:
so none of them can overshoot a limit, and two of them never wait for each other's rows in
opposite order (a deadlock on PostgreSQL). On SQLite the lock is the database's write lock.

``stored_results_bytes`` is kept equal to the sum, over the organisation's executions whose result
is still stored, of the result's Arrow file and its stored representations: each transition that
stores or forgets such bytes adjusts it in the same transaction (``count_stored_bytes``). The
storage quota then reads one row instead of summing every stored result on each execution.
``execution_text_bytes`` is kept the same way for the text its executions keep (each one's
``kept_bytes``: added by the run that queues it, taken off by the deletion that forgets it),
against the budget of ``shared.runs.require_text_room``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal, get_args

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Update,
    bindparam,
    func,
    select,
    update,
)
from sqlalchemy.orm import InstrumentedAttribute, Session

from shared.db.engine import write_lock_on_sqlite
from shared.db.models import Execution, Organization, table_of

# An execution whose result is still stored, and the bytes that result takes: what the counter
# adds up.
RESULT_STORED = Execution.data_key.is_not(None) & Execution.data_purged_at.is_(None)
RESULT_BYTES = func.coalesce(Execution.result_size, 0) + Execution.variants_size


def result_bytes(result_size: int | None, variants_size: int) -> int:
    """``RESULT_BYTES`` of a row already read."""
    return (result_size or 0) + variants_size


@dataclass(frozen=True)
class HeldOrganization:
    """What the holders of an organisation's lock read of its row, as the lock read it."""

    id: str
    max_running_executions: int | None
    stored_results_bytes: int
    execution_text_bytes: int
    area_generation: int


# Each run and each stored result lock the organisation and count its bytes: built once, bound
# per call, on the table (a model object, loaded afresh, cost twice as much).
_ORGANIZATIONS = table_of(Organization)
_HELD_COLUMNS = [_ORGANIZATIONS.c[field.name] for field in fields(HeldOrganization)]
_LOCKED_ORGANIZATION = (
    select(*_HELD_COLUMNS)
    .where(_ORGANIZATIONS.c.id == bindparam("organization"))
    .with_for_update(key_share=True)
)


def _counting(column: str) -> Update:
    """The statement adding ``delta`` to one of the organisation's counters."""
    return (
        update(_ORGANIZATIONS)
        .where(_ORGANIZATIONS.c.id == bindparam("organization"))
        .values(
            {
                column: _ORGANIZATIONS.c[column] + bindparam("delta", type_=BigInteger),
                # bookkeeping, not a change to the organisation
                "updated_at": _ORGANIZATIONS.c.updated_at,
            }
        )
    )


# The statements adding ``delta`` to each counter.
ByteCounter = Literal["stored_results_bytes", "execution_text_bytes"]
_COUNTING: dict[ByteCounter, Update] = {name: _counting(name) for name in get_args(ByteCounter)}
# A lock of the organisation counting bytes in the same statement (a run's text, a stored
# result's bytes): an UPDATE takes the row's lock as _LOCKED_ORGANIZATION does (FOR NO KEY
# UPDATE on PostgreSQL).
_LOCKED_COUNTING = {
    name: counting.returning(*_HELD_COLUMNS) for name, counting in _COUNTING.items()
}
_STORED_BYTES_AND_AREA = select(
    Organization.stored_results_bytes, Organization.area_generation
).where(Organization.id == bindparam("organization"))
_NOTE_AREA_CHANGED = (
    update(_ORGANIZATIONS)
    .where(_ORGANIZATIONS.c.id == bindparam("organization"))
    .values(
        area_generation=_ORGANIZATIONS.c.area_generation + 1,
        updated_at=_ORGANIZATIONS.c.updated_at,  # bookkeeping, as above
    )
)


def lock_organization(
    session: Session, organization_id: str, *, adding: tuple[ByteCounter, int] | None = None
) -> HeldOrganization:
    """Hold the organisation's row until the caller's transaction ends (the database's write lock
    on SQLite), read afresh. ``key_share``: the lock does not block inserts that only reference
    the organisation (audit events, other resources). ``adding``: bytes counted in one of its
    counters (a run's text, a result's stored bytes) by the statement that locks it, which reads
    the row as counted (a second statement under the lock cost 14% of one organisation's runs a
    second on PostgreSQL); the caller takes them off again if it stores nothing."""
    write_lock_on_sqlite(session)
    if adding is not None and adding[1]:
        counter, delta = adding
        bound = {"organization": organization_id, "delta": delta}
        return HeldOrganization(*session.execute(_LOCKED_COUNTING[counter], bound).one())
    return HeldOrganization(
        *session.execute(_LOCKED_ORGANIZATION, {"organization": organization_id}).one()
    )


def count_stored_bytes(session: Session, organization_id: str, delta: int) -> None:
    """Add ``delta`` (negative: forgotten) to the organisation's stored bytes, in the caller's
    transaction, which locked the organisation (``lock_organization``) before it changed any of
    the executions whose bytes these are."""
    if delta:
        session.execute(
            _COUNTING["stored_results_bytes"], {"organization": organization_id, "delta": delta}
        )


def count_execution_text(session: Session, organization_id: str, delta: int) -> None:
    """Add ``delta`` (negative: forgotten) to the bytes of text the organisation's executions
    keep, in the caller's transaction, which locked the organisation first."""
    if delta:
        session.execute(
            _COUNTING["execution_text_bytes"], {"organization": organization_id, "delta": delta}
        )


def recount_stored_bytes(session: Session, organization_id: str) -> tuple[int, int]:
    """Set the organisation's counter to the sum it stands for, under its lock; (what it was,
    what it is now). For an operator after something stored results without counting them: a
    data server of an older version still running while another migrated the database."""
    return _recount(session, organization_id, "stored_results_bytes", RESULT_BYTES, RESULT_STORED)


def recount_execution_text(session: Session, organization_id: str) -> tuple[int, int]:
    """Set the organisation's count of its executions' text to the sum of their ``kept_bytes``,
    as ``recount_stored_bytes`` does. For an operator after a rolling upgrade to the count
    (revision 0015), where a server of the older release deleted executions without taking them
    off it."""
    return _recount(session, organization_id, "execution_text_bytes", Execution.kept_bytes)


def _recount(
    session: Session,
    organization_id: str,
    counter: ByteCounter,
    amount: ColumnElement[int] | InstrumentedAttribute[int],
    *which: ColumnElement[bool],
) -> tuple[int, int]:
    """Under the organisation's lock, set its ``counter`` to the sum of ``amount`` over its
    executions ``which``; (what it was, what it is now)."""
    counted = getattr(lock_organization(session, organization_id), counter)
    summed = int(
        session.scalar(
            select(func.coalesce(func.sum(amount), 0)).where(
                Execution.organization_id == organization_id, *which
            )
        )
        or 0
    )
    if summed != counted:
        delta = {"organization": organization_id, "delta": summed - counted}
        session.execute(_COUNTING[counter], delta)
    return counted, summed


def stored_bytes_and_area_generation(
    connection: Session | Connection, organization_id: str
) -> tuple[int, int]:
    """The organisation's counter and its area's generation, as ``connection`` sees them (0, 0
    for an organisation deleted meanwhile)."""
    row = connection.execute(_STORED_BYTES_AND_AREA, {"organization": organization_id}).first()
    return (0, 0) if row is None else (int(row[0]), int(row[1]))


def note_area_changed(session: Session, organization_id: str) -> None:
    """Raise the generation of the organisation's file area, in the caller's transaction: the
    API stored or removed files there, so that no walk made before counts them any longer."""
    session.execute(_NOTE_AREA_CHANGED, {"organization": organization_id})
