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
from shared.organization_rows import lock_organization
from shared.runs import snippet_lookup
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
    lock_organization(session, principal.organization_id)  # snippets change one at a time
    require_room(session, principal.organization_id, SqlSnippet, settings.max_objects_per_kind)
    snippet = SqlSnippet(organization_id=principal.organization_id, **values)
    _save(session, snippet)
    _require_no_cycle(session, snippet)
    return snippet


def update_snippet(
    session: Session, principal: Principal, snippet_id: str, changes: dict[str, Any]
) -> SqlSnippet:
    principal.require_every_datasource(_REFUSED_TO_RESTRICTED_KEYS)
    lock_organization(session, principal.organization_id)  # snippets change one at a time
    snippet = get_snippet(session, principal, snippet_id, for_update=True)
    _save(session, snippet, changes)
    _require_no_cycle(session, snippet, "sql" if "sql" in changes else "name")
    return snippet


def _require_no_cycle(session: Session, snippet: SqlSnippet, changed: str = "sql") -> None:
    """422 for a snippet (saved, not committed) that refers to itself through others: every SQL
    naming it would fail to expand (``sql_snippet_cycle``) from then on, and backups would carry
    the cycle; the caller's transaction is then rolled back. Under the organisation's lock, so
    that two changes, each harmless alone, cannot close a cycle together; after the name's check,
    so that a taken name is the 409 it is (its own name ends the walk before any lookup). The
    error points at the attribute ``changed``: a rename alone closes a cycle through the new
    name."""
    stored = snippet_lookup(session, snippet.organization_id)
    cycle = cycle_through(snippet.name, snippet.sql, stored)
    if cycle is not None:
        raise Unprocessable(
            f"SQL snippet [{snippet.name}] would refer to itself: {' → '.join(cycle)}.",
            pointer=f"/data/attributes/{changed}",
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
