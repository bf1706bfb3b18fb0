"""SQL snippets of one organisation, and their expansion into a query's ``[name]`` references.

A reference is ``[name]`` where ``name`` is an identifier and the bracket does not index something
(``arr[i]``, ``ARRAY[x]``, ``m['k']`` stay as they are). Text in string literals, quoted
identifiers, comments and Cluvio ``{…}`` placeholders is never touched. Snippets nest at most
``MAX_DEPTH`` levels; a cycle, an unknown name or a too-deep chain is a 422 naming the snippet.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api_server.auth import Principal
from api_server.services.listing import CollectionQuery, list_page
from api_server.services.sql_text import skip_protected
from shared.db.models import SqlSnippet
from shared.errors import Conflict, NotFound, Unprocessable

MAX_DEPTH = 10
SORTABLE = ("name", "created_at", "updated_at")
FILTERABLE = ("name",)
# Cluvio's built-ins describe the viewing user or dashboard; an API execution has neither.
BUILT_INS = frozenset(
    {
        "CLUVIO_USER_EMAIL",
        "CLUVIO_USER_FIRSTNAME",
        "CLUVIO_USER_LASTNAME",
        "CLUVIO_USER_ROLE",
        "CLUVIO_DASHBOARD_NAME",
        "CLUVIO_DASHBOARD_ID",
    }
)
_REFERENCE = re.compile(r"\[\s*([A-Za-z_][A-Za-z0-9_]*)\s*\]")
_INDEXABLE_BEFORE = re.compile(r"[A-Za-z0-9_\]\)\"'$]")
_NOT_FOUND_DETAIL = "No SQL snippet with this id exists."


# ---------------------------------------------------------------------------- scanning


def _skip_placeholder(sql: str, start: int) -> int:
    """Index after a balanced ``{…}`` placeholder, literals inside it included."""
    depth, index = 0, start
    while index < len(sql):
        protected_end = skip_protected(sql, index)
        if protected_end is not None:
            index = protected_end
            continue
        depth += {"{": 1, "}": -1}.get(sql[index], 0)
        index += 1
        if depth == 0:
            return index
    return len(sql)


def snippet_references(sql: str) -> Iterator[tuple[int, int, str]]:
    """``(start, end, name)`` of each ``[name]`` reference outside literals and comments."""
    index = 0
    while index < len(sql):
        protected_end = skip_protected(sql, index)
        char = sql[index]
        if protected_end is not None:
            index = protected_end
        elif char == "{":
            index = _skip_placeholder(sql, index)
        elif char == "[":
            match = _REFERENCE.match(sql, index)
            indexing = index > 0 and _INDEXABLE_BEFORE.match(sql[index - 1])
            if match and not indexing:
                yield index, match.end(), match.group(1)
                index = match.end()
            else:
                index += 1
        else:
            index += 1


# ---------------------------------------------------------------------------- expansion


def expand_snippets(sql: str, lookup: Callable[[str], str | None], max_length: int) -> str:
    """The query with every reference replaced, recursively; built-ins become ``NULL``."""
    return _expand(sql, lookup, (), max_length)


def _expand(
    sql: str, lookup: Callable[[str], str | None], chain: tuple[str, ...], max_length: int
) -> str:
    parts: list[str] = []
    position = size = 0
    for start, end, name in snippet_references(sql):
        if name in BUILT_INS:
            text = "NULL"
        else:
            text = _expand(_resolve(name, lookup, chain), lookup, (*chain, name), max_length)
        parts += [sql[position:start], text]
        size += start - position + len(text)
        position = end
        if size > max_length:
            raise Unprocessable(
                f"With its SQL snippets expanded, sql_query exceeds {max_length} characters.",
                pointer="/sql_query",
                code="too_long",
            )
    parts.append(sql[position:])
    return "".join(parts)


def _resolve(name: str, lookup: Callable[[str], str | None], chain: tuple[str, ...]) -> str:
    if name in chain:
        path = " → ".join((*chain[chain.index(name) :], name))
        raise Unprocessable(
            f"SQL snippet [{name}] refers to itself: {path}.",
            pointer="/sql_query",
            code="sql_snippet_cycle",
        )
    if len(chain) >= MAX_DEPTH:
        raise Unprocessable(
            f"SQL snippet [{name}] is nested more than {MAX_DEPTH} levels deep "
            f"(via {' → '.join(chain)}).",
            pointer="/sql_query",
            code="sql_snippet_too_deep",
        )
    text = lookup(name)
    if text is None:
        where = f" (used in [{chain[-1]}])" if chain else ""
        raise Unprocessable(
            f"There is no SQL snippet named [{name}]{where}.",
            pointer="/sql_query",
            code="unknown_sql_snippet",
        )
    return text


def snippet_lookup(session: Session, organization_id: str) -> Callable[[str], str | None]:
    """Name → SQL for one organisation only, each name read at most once per expansion."""
    cache: dict[str, str | None] = {}

    def lookup(name: str) -> str | None:
        if name not in cache:
            cache[name] = session.scalar(
                select(SqlSnippet.sql).where(
                    SqlSnippet.organization_id == organization_id, SqlSnippet.name == name
                )
            )
        return cache[name]

    return lookup


# ---------------------------------------------------------------------------- CRUD


def list_snippets(
    session: Session, principal: Principal, query: CollectionQuery
) -> tuple[list[SqlSnippet], int]:
    where = SqlSnippet.organization_id == principal.organization_id
    return list_page(session, SqlSnippet, where, query, SqlSnippet.name.asc())


def get_snippet(session: Session, principal: Principal, snippet_id: str) -> SqlSnippet:
    snippet = session.scalar(
        select(SqlSnippet).where(
            SqlSnippet.organization_id == principal.organization_id, SqlSnippet.id == snippet_id
        )
    )
    if snippet is None:
        raise NotFound(_NOT_FOUND_DETAIL)
    return snippet


def create_snippet(session: Session, principal: Principal, values: dict[str, Any]) -> SqlSnippet:
    snippet = SqlSnippet(organization_id=principal.organization_id, **values)
    _save(session, snippet)
    return snippet


def update_snippet(
    session: Session, principal: Principal, snippet_id: str, changes: dict[str, Any]
) -> SqlSnippet:
    snippet = get_snippet(session, principal, snippet_id)
    _save(session, snippet, changes)
    return snippet


def delete_snippet(session: Session, principal: Principal, snippet_id: str) -> None:
    session.delete(get_snippet(session, principal, snippet_id))
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
            code="sql_snippet_name_taken",
        ) from None
