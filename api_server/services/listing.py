"""One page of an organisation's rows, filtered and sorted as a JSON:API collection query asks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session, defer

# A page holds at most this many resources, and a list asked for without ``page[size]`` answers
# that many: Cluvio's lists have no paging and answer whole, and a client written for them read
# the first 20 (the earlier default) as the whole list (found by an outside probe).
MAX_PAGE_SIZE = 1_000
DEFAULT_PAGE_SIZE = MAX_PAGE_SIZE


@dataclass
class CollectionQuery:
    page_number: int = 1
    page_size: int = DEFAULT_PAGE_SIZE
    sort: list[tuple[str, bool]] = field(default_factory=list)  # (attribute, descending)
    filters: dict[str, Any] = field(default_factory=dict)  # text, or a value parsed from it
    fields: dict[str, set[str]] = field(default_factory=dict)
    include: set[str] = field(default_factory=set)

    @property
    def offset(self) -> int:
        return (self.page_number - 1) * self.page_size


def list_page(
    session: Session,
    model: Any,
    where: ColumnElement[bool],
    query: CollectionQuery,
    default_order: Any,
    relationship_columns: Mapping[str, Any] | None = None,
    deferred: Sequence[Any] = (),
) -> tuple[list[Any], int]:
    """Rows of ``model`` matching ``where`` and ``filter[name]=value``, and their total count.
    ``name`` is an attribute, or a relationship whose id ``relationship_columns`` maps to its
    column (``filter[datasource]=<id>``). ``deferred`` columns are read only when touched.

    The id breaks ties so that pages never overlap or skip a row.
    """
    columns = relationship_columns or {}
    for name, value in query.filters.items():
        where = where & ((columns[name] if name in columns else getattr(model, name)) == value)
    total = session.scalar(select(func.count()).select_from(model).where(where)) or 0
    order = [
        getattr(model, name).desc() if descending else getattr(model, name).asc()
        for name, descending in query.sort
    ] or [default_order]
    rows = session.scalars(
        select(model)
        .options(*(defer(column) for column in deferred))
        .where(where)
        .order_by(*order, model.id)
        .offset(query.offset)
        .limit(query.page_size)
    ).all()
    return list(rows), total


def ids_named_by_owner(
    session: Session,
    name_column: Any,
    visible: ColumnElement[bool],
    names: Mapping[str, set[str]],
) -> dict[str, list[str]]:
    """Owner (a report, a dashboard) → the ids of the ``visible`` rows (the caller's) whose
    ``name_column`` is one of the names its SQL uses, ordered by name (one query for every
    owner); names no visible row has are left out."""
    model = name_column.class_
    wanted = set().union(*names.values())
    id_by_name: dict[str, str] = {}
    if wanted:
        rows = session.execute(
            select(name_column, model.id).where(visible, name_column.in_(wanted))
        )
        id_by_name = {name: row_id for name, row_id in rows}
    return {
        owner: [id_by_name[name] for name in sorted(found) if name in id_by_name]
        for owner, found in names.items()
    }
