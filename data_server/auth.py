"""``Authorization: Data <token>`` (or ``?token=``) → DataGrant, decided before any storage is
touched.

The data server holds public keys only. It reads them from the region's key directory, or from
the API server's JWKS document when ``DATAFERRY_JWKS_URL`` is set. A rotation (a new key, an old
one retired) is picked up without a restart: the directory is re-read when it changes, the JWKS
document every ``REFRESH_SECONDS`` and, at most once per ``UNKNOWN_KID_RELOAD_SECONDS``, when a
token names a kid not yet known. A key past its ``retire_at`` verifies nothing.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from starlette.requests import Request

from shared.settings import Settings
from shared.tokens import (
    URL_TOKEN_PARAMETER,
    DataGrant,
    DirectoryWatch,
    PublicKey,
    invalid_token,
    keys_dir,
    load_public_keys,
    public_keys_from_jwks,
    scope_of_data_key,
    verify_data_token,
)

logger = logging.getLogger(__name__)
REFRESH_SECONDS = 30.0
UNKNOWN_KID_RELOAD_SECONDS = 10.0


class PublicKeyring:
    """The region's public keys by ``kid``, kept fresh as described above."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._keys: dict[str, PublicKey] = {}
        self._loaded_at = float("-inf")
        self._watch = None if settings.jwks_url else DirectoryWatch(keys_dir(settings))
        self.reload()

    def reload(self) -> None:
        try:
            keys = self._fetch()
        except (OSError, ValueError) as exc:
            logger.warning("cannot load public keys: %s", exc)
            return
        with self._lock:
            self._keys = keys
            self._loaded_at = time.monotonic()

    def _fetch(self) -> dict[str, PublicKey]:
        url = self._settings.jwks_url
        if not url:
            return load_public_keys(self._settings)
        if not url.startswith(("http://", "https://")):
            raise ValueError("DATAFERRY_JWKS_URL must be an http(s) URL")
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - scheme checked above
            return public_keys_from_jwks(json.loads(response.read()))

    def _stale(self, kid: str) -> bool:
        if self._watch is not None:
            return self._watch.changed()
        age = time.monotonic() - self._loaded_at
        return age > REFRESH_SECONDS or (kid not in self._keys and age > UNKNOWN_KID_RELOAD_SECONDS)

    def get(self, kid: str) -> Ed25519PublicKey | None:
        """The key that may verify a token under ``kid`` now; None if unknown or retired."""
        if self._stale(kid):
            self.reload()
        published = self._keys.get(kid)
        if published is None or published.retired(time.time()):
            return None
        return published.key

    def __len__(self) -> int:
        return len(self._keys)


def authorize_data_request(request: Request, data_key: str) -> DataGrant:
    """One 401 for every kind of bad token; the data key's prefix says which scope is asked.

    The token comes from ``Authorization: Data <token>`` or, for clients that cannot send
    headers (URL readers, browsers), from ``?token=`` of a grant's ``data_url``; both are
    verified alike. The header wins when both are sent. The access log never holds the query."""
    scheme, _, token = request.headers.get("authorization", "").strip().partition(" ")
    if not request.headers.get("authorization"):
        scheme, token = "data", request.query_params.get(URL_TOKEN_PARAMETER, "")
    scope = scope_of_data_key(data_key)
    if scheme.lower() != "data" or not token.strip() or scope is None:
        raise invalid_token()
    state = request.app.state
    return verify_data_token(
        token.strip(), state.keyring, state.settings, data_key=data_key, scope=scope
    )
