"""Resource identifiers shaped like Cluvio's: ``xxxx-xxxx-xxxx`` of lower-case letters and digits."""

from __future__ import annotations

import re
import secrets

_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
RESOURCE_ID_PATTERN = re.compile(r"^[a-z0-9]{4}-[a-z0-9]{4}-[a-z0-9]{4}$")


def new_resource_id() -> str:
    """62 random bits: unguessable enough for ids, which are never the only check."""
    chars = "".join(secrets.choice(_ALPHABET) for _ in range(12))
    return f"{chars[0:4]}-{chars[4:8]}-{chars[8:12]}"


def is_resource_id(value: str) -> bool:
    return bool(RESOURCE_ID_PATTERN.match(value))
