"""Whether text is UTF-8, in the two forms it reaches the servers undecoded; what a whole number
is when an operator types one."""

from __future__ import annotations

import re

# A whole number as the API, the operator commands and the settings read one: ASCII digits only
# (``int`` also takes other scripts' digits and underscores: ``٣``, ``1_000``).
WHOLE_NUMBER = re.compile(r"-?[0-9]+")
# And a number with decimals (a setting's seconds): digits, a point, an exponent.
DECIMAL_NUMBER = re.compile(r"-?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?")


def is_text(value: str) -> bool:
    """Whether ``value`` encodes as UTF-8: Python keeps bytes it could not decode (a file name,
    a command-line argument) as lone surrogates, which no database, file or DuckDB text takes."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
