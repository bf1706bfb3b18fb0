"""The names people give things (organisations, API keys, datasources, reports, dashboards,
dashboard groups, filters): one line of text to show, with one rule for the API's models and
the operator's commands.

Blanks around a name are dropped (what Python's ``str.strip`` drops: spaces, tabs, line breaks,
the separators among the C0 controls); what is left keeps 1 to ``NAME_LENGTH`` characters, shows
at least one of them, and holds no control character (C0, DEL, C1), line or paragraph separator,
or bidirectional embedding, override or isolate. Names are shown in lists, terminals, logs and
other tools. A control character there clears a screen or starts a forged log line. U+202E shows
``a\u202egpj.exe`` as ``aexe.jpg``. A name of zero-width spaces or fillers shows as nothing.

The rule alone, without pydantic or the models: the sandbox child imports it (through
shared/object_storage.py) and starts faster without them. The API's attribute type is
api_server/resource_layer/names.py.
"""

from __future__ import annotations

import re

# The longest name (the columns' length: shared/db/models.py takes it from here).
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


def display_name(value: str) -> str:
    """``value`` as a name, or ValueError saying what is wrong with it."""
    name = value.strip()
    if not 1 <= len(name) <= NAME_LENGTH:
        raise ValueError(f"must have 1 to {NAME_LENGTH} characters once blanks around are dropped")
    return shown_without_refused_characters(name)


def is_display_name(value: str) -> bool:
    """Whether ``value`` (one stored before today's rule, say) is a name the rule takes."""
    try:
        display_name(value)
    except ValueError:
        return False
    return True


def holds_refused_character(text: str) -> bool:
    """Whether ``text`` holds a character no name may hold (also the rule of anything else
    shown where names are, an s3 prefix)."""
    return _REFUSED_CHARACTER.search(text) is not None


def shown_without_refused_characters(name: str) -> str:
    """``name`` (blanks already dropped), or ValueError saying which part of the rule it
    breaks."""
    if holds_refused_character(name):
        raise ValueError(REFUSED_DETAIL)
    if _SHOWN_CHARACTER.search(name) is None:
        raise ValueError(INVISIBLE_DETAIL)
    return name
