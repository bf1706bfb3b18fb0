"""How many objects of each kind an organisation may have: without a bound, one key in a loop
(or a client gone wrong) fills the region's metadata database, a filter with up to a megabyte of
options at a time, and every listing of the kind grows with it.

Filters, SQL snippets, dashboards, reports and dashboard groups take
``DATAFERRY_MAX_OBJECTS_PER_KIND`` each; datasources their own ``DATAFERRY_MAX_DATASOURCES``. A
create beyond is a 409 ``<kind>_limit_reached`` naming the limit; a restore counts each object
it creates, so one that would pass a limit creates nothing.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from shared.errors import Conflict

# How a kind is named in an answer, where its table's name does not say it well.
_SPELLED = {"sql_snippets": "SQL snippets", "dashboard_groups": "dashboard groups"}


def require_room(
    session: Session,
    organization_id: str,
    model: Any,
    limit: int,
    *,
    counted: ColumnElement[bool] | None = None,
) -> None:
    """409 unless the organisation has fewer than ``limit`` rows of ``model`` (those
    ``counted``, if given). Without the organisation's lock (a create of a report or a group
    would take it after the rows it reads, against the order every other writer keeps), creates
    at the same moment may together pass the limit by as many as run at once; a caller that
    holds the lock (datasources) is exact."""
    where = model.organization_id == organization_id
    if counted is not None:
        where = where & counted
    count = session.scalar(select(func.count()).select_from(model).where(where)) or 0
    if count >= limit:
        raise Conflict(
            f"This organisation already has {limit:,} {_spelled(model)}, the most it may have.",
            code=_code(model),
        )


def limit_reached(model: Any) -> str:
    """The refusal as an operation's documentation names it."""
    return f"The organisation has the most {_spelled(model)} it may (`{_code(model)}`)"


def _spelled(model: Any) -> str:
    kind = model.__tablename__
    return _SPELLED.get(kind, kind)


def _code(model: Any) -> str:
    return f"{model.__tablename__.removesuffix('s')}_limit_reached"
