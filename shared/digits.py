"""Whole numbers written in ASCII digits, as headers, query strings and URLs carry them.

``str.isdigit`` also admits digits such as ``²``, which ``int`` refuses, and ``int`` refuses a
string of more than 4,300 digits: both raised ``ValueError`` (a 500) where a client sent them.
"""

from __future__ import annotations


def natural_number(text: str, cap: int) -> int | None:
    """``text`` as a whole number, or None unless it is ASCII digits only; any value above
    ``cap`` comes back as ``cap + 1``, without converting its digits."""
    if not (text.isascii() and text.isdigit()):
        return None
    significant = text.lstrip("0") or "0"
    if len(significant) > len(str(cap)):
        return cap + 1
    return min(int(significant), cap + 1)
