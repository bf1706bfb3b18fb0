"""Resource identifiers shaped like Cluvio's: ``xxxx-xxxx-xxxx`` of lower-case letters and digits."""

from __future__ import annotations

import re
import secrets

_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
_IDS = len(_ALPHABET) ** 12
RESOURCE_ID_PATTERN = re.compile(r"^[a-z0-9]{4}-[a-z0-9]{4}-[a-z0-9]{4}$")


def new_resource_id() -> str:
    """62 random bits: unguessable enough for ids, which are never the only check. Drawn as one
    number below 36**12, spelled in base 36: twelve draws of one character each cost six times
    more, and every audited request draws an id."""
    number = secrets.randbelow(_IDS)
    digits = []
    for _ in range(12):
        number, digit = divmod(number, len(_ALPHABET))
        digits.append(_ALPHABET[digit])
    spelled = "".join(digits)
    return f"{spelled[0:4]}-{spelled[4:8]}-{spelled[8:12]}"


def is_resource_id(value: str) -> bool:
    return bool(RESOURCE_ID_PATTERN.match(value))
