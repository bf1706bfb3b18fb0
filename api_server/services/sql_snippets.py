"""SQL snippets of one organisation: the CRUD service (expansion reads them through
``shared.runs.snippet_lookup``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api_server.principals import Principal
from api_server.services.listing import CollectionQuery, ids_named_by_owner, list_page
from api_server.services.object_limits import require_room
from shared.db.engine import locked_to_change
from shared.db.models import SqlSnippet
from shared.errors import Conflict, NotFound, Unprocessable
from shared.settings import Settings
from sql_templating.snippets import cycle_through

NAME_TAKEN = "sql_snippet_name_taken"  # a 409 of its own: the restore tells it apart
CYCLE = "sql_snippet_cycle"  # the restore points it at the backup's snippet

_NOT_FOUND_DETAIL = "No SQL snippet with this id exists."


def named_snippet_ids(
    session: Session, organization_id: str, names: Mapping[str, set[str]]
) -> dict[str, list[str]]:
    """Owner (a report, a dashboard) → the ids of the organisation's snippets of ``names``
    (the owner's ``snippet_names``), ordered by name. Unknown names and Cluvio's built-ins name
    no snippet."""
    visible = SqlSnippet.organization_id == organization_id
    return ids_named_by_owner(session, SqlSnippet.name, visible, names)


# ---------------------------------------------------------------------------- CRUD


def list_snippets(
    session: Session, principal: Principal, query: CollectionQuery
) -> tuple[list[SqlSnippet], int]:
    where = SqlSnippet.organization_id == principal.organization_id
    return list_page(session, SqlSnippet, where, query, SqlSnippet.name.asc())


def get_snippet(
    session: Session, principal: Principal, snippet_id: str, *, for_update: bool = False
) -> SqlSnippet:
    """``for_update``: to change or delete it, locked until the transaction ends (SQLite's write
    lock first): a request racing a delete finds it gone (404), not a row that vanished."""
    statement = select(SqlSnippet).where(
        SqlSnippet.organization_id == principal.organization_id, SqlSnippet.id == snippet_id
    )
    snippet = session.scalar(locked_to_change(session, statement) if for_update else statement)
    if snippet is None:
        raise NotFound(_NOT_FOUND_DETAIL)
    return snippet


# Snippets are the organisation's, for every datasource's SQL: a key restricted to some
# datasources reads them, but changing one would change what runs on the others.
_REFUSED_TO_RESTRICTED_KEYS = (
    "create, change or delete SQL snippets, which every datasource's SQL may use"
)


def create_snippet(
    session: Session, principal: Principal, values: dict[str, Any], settings: Settings
) -> SqlSnippet:
    principal.require_every_datasource(_REFUSED_TO_RESTRICTED_KEYS)
    require_room(session, principal.organization_id, SqlSnippet, settings.max_objects_per_kind)
    snippet = SqlSnippet(organization_id=principal.organization_id, **values)
    _require_no_cycle(session, principal.organization_id, None, snippet.name, snippet.sql)
    _save(session, snippet)
    return snippet


def update_snippet(
    session: Session, principal: Principal, snippet_id: str, changes: dict[str, Any]
) -> SqlSnippet:
    principal.require_every_datasource(_REFUSED_TO_RESTRICTED_KEYS)
    snippet = get_snippet(session, principal, snippet_id, for_update=True)
    name, sql = changes.get("name", snippet.name), changes.get("sql", snippet.sql)
    _require_no_cycle(session, principal.organization_id, snippet.id, name, sql)
    _save(session, snippet, changes)
    return snippet


def _require_no_cycle(
    session: Session, organization_id: str, snippet_id: str | None, name: str, sql: str
) -> None:
    """422 for a snippet that would refer to itself through others: every SQL naming it would
    fail to expand (``sql_snippet_cycle``) from then on, and backups would carry the cycle. The
    others are read as stored (this one's stored row left out: it may be renamed)."""

    def stored(other: str) -> str | None:
        statement = select(SqlSnippet.sql).where(
            SqlSnippet.organization_id == organization_id, SqlSnippet.name == other
        )
        if snippet_id is not None:
            statement = statement.where(SqlSnippet.id != snippet_id)
        return session.scalar(statement)

    cycle = cycle_through(name, sql, stored)
    if cycle is not None:
        raise Unprocessable(
            f"SQL snippet [{name}] would refer to itself: {' → '.join(cycle)}.",
            pointer="/data/attributes/sql",
            code=CYCLE,
        )


def delete_snippet(session: Session, principal: Principal, snippet_id: str) -> None:
    principal.require_every_datasource(_REFUSED_TO_RESTRICTED_KEYS)
    session.delete(get_snippet(session, principal, snippet_id, for_update=True))
    session.flush()


def _save(session: Session, snippet: SqlSnippet, changes: dict[str, Any] | None = None) -> None:
    """Change and flush in a savepoint, so a duplicate name is a 409 and the transaction lives on.

    The changes are made inside it: opening a savepoint flushes what is pending first, and a
    rename onto a taken name flushed there would fail the whole transaction (a 500), not the
    savepoint."""
    try:
        with session.begin_nested():
            for name, value in (changes or {}).items():
                setattr(snippet, name, value)
            session.add(snippet)
            session.flush()
    except IntegrityError:
        raise Conflict(
            f"This organisation already has a SQL snippet named {snippet.name!r}.",
            pointer="/data/attributes/name",
            code=NAME_TAKEN,
        ) from None
