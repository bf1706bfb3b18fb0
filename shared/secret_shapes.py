"""What the secrets a client may put in a URL look like, so that logs can mask them wherever a
client put them (a path, a parameter, a mistyped URL): an API key's secret is ``dfk_``, 40 base62
characters, ``_`` and a 6-character base62 checksum (the API server makes and checks them:
api_server/services/api_keys.py); a data access token is a JWT (shared/tokens.py). The logs
(shared/logging.py, shared/web/middleware.py) write ``dfk_…`` and ``eyJ…`` instead."""

from __future__ import annotations

import re

API_KEY_SHAPE = r"dfk_([0-9A-Za-z]{40})_([0-9A-Za-z]{6})"
# Masked with or without its checksum: the checksum is computed from the 40 characters before
# it, so those alone are the key.
_ANY_API_KEY = re.compile(r"dfk_[0-9A-Za-z]{40}(?:_[0-9A-Za-z]{6})?")
# A JWT: the base64url of a JSON header (which starts ``{"``, hence ``eyJ``), of the claims and
# of the signature, which PyJWT also accepts with padding.
_ANY_TOKEN = re.compile(r"eyJ[0-9A-Za-z_-]*\.[0-9A-Za-z_-]+\.[0-9A-Za-z_-]+=*")
HIDDEN_API_KEY = "dfk_…"
HIDDEN_TOKEN = "eyJ…"  # noqa: S105 - the mask, not a secret


def without_secrets(text: str) -> str:
    """``text`` with each run shaped like an API key or a data access token masked."""
    return _ANY_TOKEN.sub(HIDDEN_TOKEN, _ANY_API_KEY.sub(HIDDEN_API_KEY, text))
