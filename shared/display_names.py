"""The names people give things (organisations, API keys, datasources, reports, dashboards,
dashboard groups, filters): one line of text to show, with one rule for the API's models and
the operator's commands.

Blanks around a name are dropped; it keeps 1 to ``NAME_LENGTH`` characters, and no control
character (C0, DEL, C1) and no bidirectional embedding, override or isolate. Names are shown in
lists, terminals, logs and other tools. A control character there clears a screen or starts a
forged log line. U+202E shows ``a\u202egpj.exe`` as ``aexe.jpg``.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field, StringConstraints

from shared.db.models import NAME_LENGTH

# Unicode's control characters (category Cc) and the bidirectional classes LRE, RLE, PDF, LRO,
# RLO, LRI, RLI, FSI and PDI, as a regular-expression class that JSON Schema (ECMA-262) and
# Python read alike.
_REFUSED = r"\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069"
_REFUSED_CHARACTER = re.compile(f"[{_REFUSED}]")
REFUSED_DETAIL = "must hold no control character or bidirectional override"
# The rule for the text as sent, before blanks are dropped: some character that is not blank.
NAME_PATTERN = rf"^[^{_REFUSED}]*[^{_REFUSED}\s][^{_REFUSED}]*$"


def refused_character(name: str) -> str | None:
    """The first character of ``name`` that a name may not hold, if any."""
    found = _REFUSED_CHARACTER.search(name)
    return None if found is None else found.group()


def _shown_whole(name: str) -> str:
    if refused_character(name) is not None:
        raise ValueError(REFUSED_DETAIL)
    return name


DisplayName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=NAME_LENGTH),
    AfterValidator(_shown_whole),
    Field(
        json_schema_extra={"pattern": NAME_PATTERN},
        description="One line of text: blanks around it are dropped; no control character"
        " (U+0000 to U+001F, U+007F to U+009F) or bidirectional embedding, override or isolate"
        " (U+202A to U+202E, U+2066 to U+2069).",
    ),
]
