"""What an API key's secret looks like: ``dfk_``, 40 base62 characters, ``_`` and a 6-character
base62 checksum. The API server makes and checks them (api_server/services/api_keys.py); logs
mask any text of this shape (shared/logging.py, shared/web/middleware.py)."""

from __future__ import annotations

import re

API_KEY_SHAPE = r"dfk_([0-9A-Za-z]{40})_([0-9A-Za-z]{6})"
_ANY_API_KEY = re.compile(API_KEY_SHAPE)
HIDDEN_API_KEY = "dfk_…"


def without_api_keys(text: str) -> str:
    """``text`` with each API-key-shaped run masked."""
    return _ANY_API_KEY.sub(HIDDEN_API_KEY, text)
