"""What the secrets a client may put in a URL look like, so that logs can mask them wherever a
client put them (a path, a parameter, a mistyped URL): an API key's secret is ``dfk_``, 40 base62
characters, ``_`` and a 6-character base62 checksum (the API server makes and checks them:
api_server/services/api_keys.py); a data access token is a JWT (shared/tokens.py). The logs
(shared/logging.py, shared/web/middleware.py) write ``dfk_…`` and ``eyJ…`` instead."""

from __future__ import annotations

import re

API_KEY_SHAPE = r"dfk_([0-9A-Za-z]{40})_([0-9A-Za-z]{6})"
# A secret is masked with the whole run of text it starts, up to a blank or a quote: a key or
# token that a stray character broke or split (a typo, a ``-``, a ``/``, a ``%`` left undecoded,
# a prefix in capitals) is read back as easily as a whole one. What follows it on the same
# word is lost to the log, which is the price.
_RUN = r"[^\s\"'<>]*"
# An API key's prefix and a run holding at least half a key's 40 base62 characters (the
# checksum is computed from those 40, so they alone are the key). ``dfk_notes.csv`` stays.
_API_KEY_RUN = re.compile(rf"(?i:dfk_){_RUN}")
_BASE62 = re.compile(r"[0-9A-Za-z]")
_KEY_CHARACTERS = 20
# A key's body and checksum with its prefix misspelt or left out (``dfk-…``, ``d-fk_…``).
_API_KEY_BODY = re.compile(r"[0-9A-Za-z]{40}_[0-9A-Za-z]{6}")
# A JWT: the base64url of a JSON header (which starts ``{"``, hence ``eyJ``), then of the claims
# and the signature, which PyJWT also accepts with padding. Its header alone is 36 characters.
_TOKEN_RUN = re.compile(rf"(?i:eyj){_RUN}")
_TOKEN_CHARACTERS = 20
# What may follow a secret in a sentence ("No organisation dfk_….") and ends neither a key nor
# a token (their last character is base62, base64url or padding): kept after the mask.
_TRAILING = ".:!)]},;"
HIDDEN_API_KEY = "dfk_…"
HIDDEN_TOKEN = "eyJ…"  # noqa: S105 - the mask, not a secret


def _key_masked(run: re.Match[str]) -> str:
    text = run.group()
    secret = text.rstrip(_TRAILING)
    if len(_BASE62.findall(secret, 4)) < _KEY_CHARACTERS:
        return text
    return HIDDEN_API_KEY + text[len(secret) :]


def _token_masked(run: re.Match[str]) -> str:
    text = run.group()
    secret = text.rstrip(_TRAILING)
    return HIDDEN_TOKEN + text[len(secret) :] if len(secret) >= _TOKEN_CHARACTERS else text


def without_secrets(text: str) -> str:
    """``text`` with each run shaped like an API key or a data access token masked. Linear in
    the text: no pattern here backtracks further than a key's length (this runs on what clients
    send)."""
    keys_masked = _API_KEY_BODY.sub(HIDDEN_API_KEY, _API_KEY_RUN.sub(_key_masked, text))
    return _TOKEN_RUN.sub(_token_masked, keys_masked)
