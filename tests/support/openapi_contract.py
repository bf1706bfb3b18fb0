"""What an OpenAPI document promises, reduced to comparable facts, wording left out.

Two documents are compared fact by fact: a path, method, parameter, status, schema member and every
constraint is a fact; descriptions and summaries are not. Path-level parameters count as each
operation's, and ``anyOf [X, null]`` as a type list, so that two spellings of one contract compare
equal.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

WORDING = frozenset({"description", "summary"})


def _normalised(value: Any) -> Any:
    if isinstance(value, list):
        return [_normalised(item) for item in value]
    if not isinstance(value, dict):
        return value
    value = {key: _normalised(item) for key, item in value.items()}
    members = value.get("anyOf")
    if isinstance(members, list) and len(members) == 2 and {"type": "null"} in members:
        other = next(member for member in members if member != {"type": "null"})
        if isinstance(other.get("type"), str):
            rest = {key: item for key, item in value.items() if key != "anyOf"}
            return {**other, **rest, "type": sorted([other["type"], "null"])}
    if isinstance(value.get("type"), list):
        value["type"] = sorted(value["type"])
    return value


def _with_operation_parameters(document: dict[str, Any]) -> dict[str, Any]:
    document = json.loads(json.dumps(document))
    for item in document.get("paths", {}).values():
        shared = item.pop("parameters", [])
        for operation in item.values():
            operation["parameters"] = shared + operation.get("parameters", [])
    return document


def _facts(value: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], str]]:
    if isinstance(value, dict):
        if not value:
            yield path, "{}"
        for key, item in value.items():
            if key not in WORDING:
                yield from _facts(item, (*path, key))
    elif (
        isinstance(value, list)
        and value
        and all(isinstance(item, dict) and {"name", "in"} <= set(item) for item in value)
    ):
        for item in value:
            yield from _facts(item, (*path, f"{item['in']}:{item['name']}"))
    elif not (path and path[-1] == "tags" and len(path) == 1):  # the tag list's order is wording
        yield path, json.dumps(value, sort_keys=True)


def facts(document: dict[str, Any]) -> dict[tuple[str, ...], str]:
    return dict(_facts(_normalised(_with_operation_parameters(document))))


def broken_promises(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Each fact of ``before`` that ``after`` no longer holds (removed or changed); additions
    and wording are free."""
    old, new = facts(before), facts(after)
    return [
        f"{'/'.join(key)}: {old[key][:120]} -> {new.get(key, '(removed)')[:120]}"
        for key in sorted(old)
        if new.get(key) != old[key]
    ]
