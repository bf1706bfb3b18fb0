"""How a setting is declared and explained to an operator.

``setting()`` is a pydantic field plus the words an operator reads: what a value may be, why a
setting has no bounds, how a default derived at start-up is written. ``setting_docs()`` turns the
fields into what ``deploy/env.example`` documents, and ``refusal()`` a refused value into one line
naming the variable, the problem and the allowed values, never a hidden value. ``shared.settings``
declares the fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

from pydantic import Field
from pydantic.config import JsonDict
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

PREFIX = "DATAFERRY_"


def setting(
    default: Any,
    description: str,
    *,
    allowed: str = "",
    unbounded: str = "",
    shown: str = "",
    hidden: bool = False,
    **bounds: Any,
) -> Any:
    """One field. ``bounds`` are pydantic's (``ge``, ``le``, ``min_length``, ``pattern``...);
    ``allowed`` puts a pattern in words, ``unbounded`` says why a setting has no bounds, ``shown``
    is how env.example writes a default derived at start-up, and ``hidden`` keeps a value that may
    hold a password out of ``repr`` and error messages."""
    extra: JsonDict = {"allowed": allowed, "unbounded": unbounded, "shown": shown, "hidden": hidden}
    return Field(
        default, description=description, repr=not hidden, json_schema_extra=extra, **bounds
    )


# Bounds of a host a server binds to: a name or an IPv4/IPv6 address (a zone index included).
# A port to listen on: the servers' settings, and serve's --port (shared/command_line.py).
PORT_BOUNDS: dict[str, Any] = {"ge": 1, "le": 65535}

HOST_BOUNDS: dict[str, Any] = {
    "pattern": r"^[A-Za-z0-9._:%-]+$",
    "max_length": 253,
    "allowed": "a host name or IP address",
}


# A port from 1 to 65535, and a URL's authority: user information, then a host name or a bracketed
# IPv6 address, then that port if any; what a URL parser would refuse at the first connection.
_PORT = r"(?:6553[0-5]|655[0-2]\d|65[0-4]\d\d|6[0-4]\d{3}|[1-5]\d{4}|[1-9]\d{0,3})"
_AUTHORITY = rf"(?:[^\s/?#]*@)?(?:\[[\w:.%-]+\]|[^\s/?#@:\[\]]+)(?::{_PORT})?(?:[/?#]\S*)?"


def url_bounds(*schemes: str) -> dict[str, Any]:
    """Bounds of a URL setting: empty (its default applies) or a URL of one of ``schemes``,
    naming a host and at most a valid port (``unix://``: a socket's path, as in
    ``unix:///run/redis.sock``)."""
    starts = " or ".join(f"{scheme}://" for scheme in schemes)
    forms = [scheme + (r"://\S+" if scheme == "unix" else "://" + _AUTHORITY) for scheme in schemes]
    return {
        "pattern": rf"^$|^(?:{'|'.join(forms)})$",
        "allowed": f"a URL starting {starts}, with a port from 1 to 65535 if it names one",
    }


@dataclass(frozen=True)
class SettingDoc:
    """What an operator reads about one setting, derived from its field."""

    variable: str
    description: str
    default: str  # as deploy/env.example writes it
    allowed: str  # the bounds in words; "" when it has none
    unbounded: str  # why it has none
    hidden: bool


def setting_docs(fields: Mapping[str, FieldInfo]) -> dict[str, SettingDoc]:
    """Every setting by field name, in declaration order."""
    return {name: _doc(name, info) for name, info in fields.items()}


def _doc(name: str, info: FieldInfo) -> SettingDoc:
    extra = info.json_schema_extra
    if not isinstance(extra, dict):
        raise TypeError(f"settings field {name} is not declared with setting()")
    return SettingDoc(
        variable=PREFIX + name.upper(),
        description=info.description or "",
        default=str(extra["shown"] or ("" if info.default is None else info.default)),
        allowed=str(extra["allowed"] or bounds_in_words(info)),
        unbounded=str(extra["unbounded"]),
        hidden=bool(extra["hidden"]),
    )


def bounds_in_words(info: FieldInfo) -> str:
    """``1 to 65535``, ``more than 0, at most 100``, ``at least 32 characters``, ``one of ...``;
    a pattern is put in words by its field (``allowed``)."""
    if get_origin(info.annotation) is Literal:
        return "one of " + ", ".join(get_args(info.annotation))
    found = {
        key: getattr(item, key)
        for item in info.metadata
        for key in ("ge", "gt", "le", "lt", "min_length", "max_length")
        if hasattr(item, key)
    }
    if "ge" in found and "le" in found:
        words = [f"{found['ge']} to {found['le']}"]
    else:
        labels = {"ge": "at least", "gt": "more than", "le": "at most", "lt": "less than"}
        words = [f"{label} {found[key]}" for key, label in labels.items() if key in found]
    low, high = found.get("min_length"), found.get("max_length")
    if low is not None and low == high:
        words.append(f"exactly {low} characters")
    elif low is not None:
        words.append(f"at least {low} characters")
    return ", ".join(words)


_PROBLEMS = {
    "int_parsing": "is not a whole number",
    "int_from_float": "is not a whole number",
    "float_parsing": "is not a number",
    "finite_number": "is not a finite number",
    "greater_than": "is too small",
    "greater_than_equal": "is too small",
    "less_than": "is too large",
    "less_than_equal": "is too large",
    "too_short": "is too short",
    "too_long": "is too long",
    "string_pattern_mismatch": "does not have the expected form",
    "literal_error": "is not one of the choices",
}


def refusal(error: ErrorDetails, docs: Mapping[str, SettingDoc]) -> str:
    """One refused value in words: the variable, the value unless hidden, the problem, and what
    the setting allows."""
    name = str(error["loc"][0]) if error["loc"] else ""
    doc = docs.get(name)
    if doc is None:
        return f"{name or 'settings'}: {error['msg']}"
    value = " (value hidden)" if doc.hidden else f"={error['input']!r}"
    if error["type"] == "value_error":
        problem = f"is refused: {error.get('ctx', {}).get('error', error['msg'])}"
    else:
        problem = _PROBLEMS.get(error["type"], f"is refused: {error['msg']}")
    allowed = f"; allowed: {doc.allowed}" if doc.allowed else ""
    return f"{doc.variable}{value} {problem}{allowed}"
