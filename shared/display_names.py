"""The names people give things (organisations, API keys, datasources, reports, dashboards,
dashboard groups, filters): one line of text to show, with one rule for the API's models and
the operator's commands.

Blanks around a name are dropped (what Python's ``str.strip`` drops: spaces, tabs, line breaks,
the separators among the C0 controls); what is left keeps 1 to ``NAME_LENGTH`` characters, and no
control character (C0, DEL, C1), line or paragraph separator, or bidirectional embedding,
override or isolate. Names are shown in lists, terminals, logs and other tools. A control
character there clears a screen or starts a forged log line. U+202E shows ``a\u202egpj.exe`` as
``aexe.jpg``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, StringConstraints

from shared.db.models import NAME_LENGTH

# Unicode's control characters (category Cc), line and paragraph separators (Zl, Zp) and the
# bidirectional classes LRE, RLE, PDF, LRO, RLO, LRI, RLI, FSI and PDI, as a character class that
# regular expressions of JSON Schema (ECMA-262) and of Python read alike.
_REFUSED = r"\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069"
_REFUSED_CHARACTER = re.compile(f"[{_REFUSED}]")
REFUSED_DETAIL = "must hold no control character, line separator or bidirectional override"
# What a client may send: some character that is not blank, and none refused (also around it,
# where the server would drop blanks).
NAME_PATTERN = rf"^[^{_REFUSED}]*[^{_REFUSED}\s][^{_REFUSED}]*$"


def display_name(value: str) -> str:
    """``value`` as a name, or ValueError saying what is wrong with it."""
    name = value.strip()
    if not 1 <= len(name) <= NAME_LENGTH:
        raise ValueError(f"must have 1 to {NAME_LENGTH} characters once blanks around are dropped")
    return _without_refused_characters(name)


def refused_character(name: str) -> str | None:
    """The first character of ``name`` that a name may not hold, if any."""
    found = _REFUSED_CHARACTER.search(name)
    return None if found is None else found.group()


def _stripped(value: Any) -> Any:
    """Blanks dropped as ``display_name`` drops them (pydantic's own stripping keeps the C0
    separators \\x1c to \\x1f, which the rule then refused where the commands dropped them)."""
    return value.strip() if isinstance(value, str) else value


def _without_refused_characters(name: str) -> str:
    if refused_character(name) is not None:
        raise ValueError(REFUSED_DETAIL)
    return name


DisplayName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=NAME_LENGTH),
    BeforeValidator(_stripped),
    AfterValidator(_without_refused_characters),
    Field(
        json_schema_extra={"pattern": NAME_PATTERN},
        description="One line of text: blanks around it are dropped; no control character"
        " (U+0000 to U+001F, U+007F to U+009F), line or paragraph separator (U+2028, U+2029) or"
        " bidirectional embedding, override or isolate (U+202A to U+202E, U+2066 to U+2069).",
    ),
]
