"""``[name]`` references to SQL snippets, expanded into a query's text.

A reference is ``[name]`` where ``name`` is an identifier and the bracket does not index something
(``arr[i]``, ``ARRAY[x]``, ``m['k']`` stay as they are). Text in string literals, quoted
identifiers, comments and Cluvio ``{…}`` placeholders is never touched. Snippets nest at most
``MAX_DEPTH`` levels; a cycle, an unknown name or a too-deep chain is a 422 naming the snippet.
Where snippets are stored is the caller's business: it passes a lookup function (name → SQL, or
None for an unknown name).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

from shared.errors import Unprocessable
from sql_templating.scanning import skip_protected

MAX_DEPTH = 10
# Cluvio's built-ins describe the viewing user or dashboard; an API execution has neither. Each is
# text in Cluvio (a quoted literal), so none of them is a NULL of another type here.
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
BUILT_IN_VALUE = "CAST(NULL AS VARCHAR)"
_REFERENCE = re.compile(r"\[\s*([A-Za-z_][A-Za-z0-9_]*)\s*\]")
_INDEXABLE_BEFORE = re.compile(r"[A-Za-z0-9_\]\)\"'$]")


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


def snippet_names(sql: str) -> set[str]:
    """The names a SQL text references with ``[name]`` (snippets named inside snippets are not
    followed)."""
    return {name for _, _, name in snippet_references(sql)}


def cycle_through(
    name: str, sql: str, lookup: Callable[[str], str | None]
) -> tuple[str, ...] | None:
    """The chain by which ``sql``, saved as snippet ``name``'s, would reach ``name`` again
    (``("a", "b", "a")``), or None. Names ``lookup`` does not know and built-ins end a path; a
    cycle among other snippets alone is theirs (expansion names it). Walked with a stack, each
    snippet once: an organisation may have thousands."""
    seen: set[str] = set()
    stack: list[tuple[str, tuple[str, ...]]] = [(sql, (name,))]
    while stack:
        text, chain = stack.pop()
        for reference in sorted(snippet_names(text), reverse=True):
            if reference == name:
                return (*chain, reference)
            if reference in BUILT_INS or reference in seen:
                continue
            seen.add(reference)
            body = lookup(reference)
            if body is not None:
                stack.append((body, (*chain, reference)))
    return None


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
            text = BUILT_IN_VALUE
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
