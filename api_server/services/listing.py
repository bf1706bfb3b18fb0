"""One page of an organisation's rows, filtered and sorted as a JSON:API collection query asks."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from api_server.jsonapi import CollectionQuery


def list_page(
    session: Session,
    model: Any,
    where: ColumnElement[bool],
    query: CollectionQuery,
    default_order: Any,
) -> tuple[list[Any], int]:
    """Rows of ``model`` matching ``where`` and ``filter[attr]=value``, and their total count.

    The id breaks ties so that pages never overlap or skip a row.
    """
    for name, value in query.filters.items():
        where = where & (getattr(model, name) == value)
    total = session.scalar(select(func.count()).select_from(model).where(where)) or 0
    order = [
        getattr(model, name).desc() if descending else getattr(model, name).asc()
        for name, descending in query.sort
    ] or [default_order]
    rows = session.scalars(
        select(model)
        .where(where)
        .order_by(*order, model.id)
        .offset(query.offset)
        .limit(query.page_size)
    ).all()
    return list(rows), total
