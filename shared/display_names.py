"""The names people give things (organisations, API keys, datasources, reports, dashboards,
dashboard groups, filters): one line of text to show, with one rule for the API's models and
the operator's commands.

Blanks around a name are dropped (what Python's ``str.strip`` drops: spaces, tabs, line breaks,
the separators among the C0 controls); what is left keeps 1 to ``NAME_LENGTH`` characters, shows
at least one of them, and holds no control character (C0, DEL, C1), line or paragraph separator,
or bidirectional embedding, override or isolate. Names are shown in lists, terminals, logs and
other tools. A control character there clears a screen or starts a forged log line. U+202E shows
``a\u202egpj.exe`` as ``aexe.jpg``. A name of zero-width spaces or fillers shows as nothing.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, StringConstraints, ValidationInfo

# The longest name (the columns' length: shared/db/models.py). Declared here, not with the
# models, so that what imports the rule (the sandbox child, through shared/object_storage.py)
# does not import SQLAlchemy and the models: a third of a second of every child's start.
NAME_LENGTH = 255

# Unicode's control characters (category Cc), line and paragraph separators (Zl, Zp) and the
# bidirectional classes LRE, RLE, PDF, LRO, RLO, LRI, RLI, FSI and PDI, as a character class that
# regular expressions of JSON Schema (ECMA-262) and of Python read alike.
REFUSED_CHARACTERS = r"\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069"
_REFUSED_CHARACTER = re.compile(f"[{REFUSED_CHARACTERS}]")
REFUSED_DETAIL = "must hold no control character, line separator or bidirectional override"
# Characters that show as nothing: the default-ignorable code points of Unicode's basic plane
# (soft hyphen, zero-width spaces and joiners, marks, word joiner, variation selectors, Hangul
# fillers, the byte order mark), the blank braille pattern, the interlinear annotation marks,
# and the blanks ``\s`` does not name alike in both dialects.
_INVISIBLE = (
    r"\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u2060-\u206f"
    r"\u2800\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufffb"
)
# Beyond the basic plane: the shorthand format controls, the musical formatting marks, and the
# tags, variation selectors and reserved code points of U+E0000 to U+E0FFF, all default
# ignorable. ECMA-262 without its ``u`` flag reads a class of them as surrogate halves, so only
# the server's check knows them; the published pattern is the looser one.
_INVISIBLE_BEYOND_BASIC_PLANE = r"\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e0fff"
_SHOWN_CHARACTER = re.compile(
    rf"[^{REFUSED_CHARACTERS}{_INVISIBLE}{_INVISIBLE_BEYOND_BASIC_PLANE}\s]"
)
INVISIBLE_DETAIL = "must show some character: blanks and invisible characters alone are no name"
# What a client may send: some character that shows, and none refused (also around it, where
# the server would drop blanks).
NAME_PATTERN = (
    rf"^[^{REFUSED_CHARACTERS}]*[^{REFUSED_CHARACTERS}{_INVISIBLE}\s][^{REFUSED_CHARACTERS}]*$"
)


# A validation context's key (pydantic's ``context``): a function answering the stored name of
# what an update changes. A name sent back as it is stored is no change: it passes even if it
# was stored before today's rule (a client that sends every attribute back, as many do, could
# otherwise change nothing else). The function is called only for a name the rule refuses;
# one it let pass sets NAME_UNCHANGED in the context, and the update leaves the name out (a
# rename committed meanwhile stays).
STORED_NAME = "stored_name"
NAME_UNCHANGED = "name_unchanged"


def display_name(value: str) -> str:
    """``value`` as a name, or ValueError saying what is wrong with it."""
    name = value.strip()
    if not 1 <= len(name) <= NAME_LENGTH:
        raise ValueError(f"must have 1 to {NAME_LENGTH} characters once blanks around are dropped")
    return _shown_without_refused_characters(name)


def is_display_name(value: str) -> bool:
    """Whether ``value`` (one stored before today's rule, say) is a name the rule takes."""
    try:
        display_name(value)
    except ValueError:
        return False
    return True


def _stripped(value: Any) -> Any:
    """Blanks dropped as ``display_name`` drops them (pydantic's own stripping keeps the C0
    separators \\x1c to \\x1f, which the rule then refused where the commands dropped them)."""
    return value.strip() if isinstance(value, str) else value


def _shown_without_refused_characters(name: str) -> str:
    if _REFUSED_CHARACTER.search(name) is not None:
        raise ValueError(REFUSED_DETAIL)
    if _SHOWN_CHARACTER.search(name) is None:
        raise ValueError(INVISIBLE_DETAIL)
    return name


def _the_rule_or_as_stored(name: str, info: ValidationInfo) -> str:
    try:
        return _shown_without_refused_characters(name)
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
