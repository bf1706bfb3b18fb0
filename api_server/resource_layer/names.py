"""The ``name`` attribute of the resources people name: shared/display_names.py's rule as a
pydantic type, and an update's way to send back, unchanged, a name stored before the rule.

A name sent back as it is stored is no change: it passes even if it was stored before today's
rule (a client that sends every attribute on an update, as many do, could otherwise change
nothing else of such a resource), and the update leaves it out (a rename committed meanwhile
stays).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, StringConstraints, ValidationInfo
from sqlalchemy.orm import Session
from starlette.requests import Request

from shared.display_names import NAME_LENGTH, NAME_PATTERN, shown_without_refused_characters

# Validation context keys: a function answering the stored name (read only for a name the rule
# refuses), and the mark that the name sent is that one.
STORED_NAME = "stored_name"
NAME_UNCHANGED = "name_unchanged"


def keeping_stored_name(request: Request, stored: Callable[[Session], str]) -> dict[str, Any]:
    """An update's validation context in which a name sent back as it is stored passes:
    ``stored`` reads it, as the caller may see it (a 404 otherwise)."""

    def stored_name() -> str:
        with request.app.state.reads() as session:
            return stored(session)

    return {STORED_NAME: stored_name}


def _stripped(value: Any) -> Any:
    """Blanks dropped as ``display_name`` drops them (pydantic's own stripping keeps the C0
    separators \\x1c to \\x1f, which the rule then refused where the commands dropped them)."""
    return value.strip() if isinstance(value, str) else value


def _the_rule_or_as_stored(name: str, info: ValidationInfo) -> str:
    try:
        return shown_without_refused_characters(name)
    except ValueError:
        context = info.context if info.context is not None else {}
        stored = context.get(STORED_NAME)
        if stored is not None and stored().strip() == name:  # as sent, once stripped
            context[NAME_UNCHANGED] = True
            return name
        raise


DisplayName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=NAME_LENGTH),
    BeforeValidator(_stripped),
    AfterValidator(_the_rule_or_as_stored),
    Field(
        json_schema_extra={"pattern": NAME_PATTERN},
        description="One line of text: blanks around it are dropped; at least one character"
        " that shows (not only zero-width spaces, joiners or fillers); no control character"
        " (U+0000 to U+001F, U+007F to U+009F), line or paragraph separator (U+2028, U+2029) or"
        " bidirectional embedding, override or isolate (U+202A to U+202E, U+2066 to U+2069).",
    ),
]
