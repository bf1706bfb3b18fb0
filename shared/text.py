"""Whether text is UTF-8, in the two forms it reaches the servers undecoded."""

from __future__ import annotations


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
