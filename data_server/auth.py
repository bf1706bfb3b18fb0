"""``Authorization: Data <token>`` (or ``?token=``) → DataGrant, decided before any storage is
touched.

The data server holds public keys only. It reads them from the region's key directory, or from
the API server's JWKS document when ``DATAFERRY_JWKS_URL`` is set. A rotation (a new key, an old
one retired) is picked up without a restart: the directory is looked at every
``DIRECTORY_CHECK_SECONDS`` (re-read when it changed), the JWKS document fetched every
``REFRESH_SECONDS`` and, at most once per ``UNKNOWN_KID_RELOAD_SECONDS``, when a token names a kid
not yet known. A key past its ``retire_at`` verifies nothing.

Keys are loaded by one background thread, never on the event loop: a request reads the cached
set. A request whose token names an unknown kid waits (asynchronously, at most
``UNKNOWN_KID_WAIT_SECONDS``) for the one refresh it may trigger, so a slow or hanging JWKS
endpoint delays that request alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from starlette.requests import Request

from shared.settings import Settings
from shared.signing_keys import (
    DirectoryWatch,
    PublicKey,
    keys_dir,
    load_public_keys,
    public_keys_from_jwks,
)
from shared.tokens import (
    URL_TOKEN_PARAMETER,
    DataGrant,
    invalid_token,
    key_id,
    scope_of_data_key,
    unverified_header,
    verify_data_token,
)
from shared.web.request_headers import authorization

logger = logging.getLogger(__name__)
REFRESH_SECONDS = 30.0
DIRECTORY_CHECK_SECONDS = 1.0
UNKNOWN_KID_RELOAD_SECONDS = 10.0
UNKNOWN_KID_WAIT_SECONDS = 5.0
JWKS_FETCH_TIMEOUT_SECONDS = 5.0


class PublicKeyring:
    """The region's public keys by ``kid``, kept fresh as described above."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._keys: dict[str, PublicKey] = {}
        self._looked_at = float("-inf")  # the last refresh started (or the first load)
        self._unknown_kid_refresh_at = float("-inf")
        self._watch = None if settings.jwks_url else DirectoryWatch(keys_dir(settings))
        self._executor: ThreadPoolExecutor | None = None
        self._refreshing: Future[None] | None = None
        self.reload()

    def reload(self) -> None:
        """Load the keys now (blocking: start-up, readiness checks, the background thread)."""
        self._looked_at = time.monotonic()
        try:
            keys = self._fetch()
        except (OSError, ValueError) as exc:
            logger.warning("cannot load public keys: %s", exc)
            return
        with self._lock:
            self._keys = keys

    def _fetch(self) -> dict[str, PublicKey]:
        url = self._settings.jwks_url
        if not url:
            return load_public_keys(self._settings)
        if not url.startswith(("http://", "https://")):
            raise ValueError("DATAFERRY_JWKS_URL must be an http(s) URL")
        # scheme checked above
        with urllib.request.urlopen(url, timeout=JWKS_FETCH_TIMEOUT_SECONDS) as response:  # noqa: S310
            return public_keys_from_jwks(json.loads(response.read()))

    def get(self, kid: str) -> Ed25519PublicKey | None:
        """The key that may verify a token under ``kid`` now; None if unknown or retired. Never
        blocks: a stale set is refreshed in the background."""
        self.refresh_if_due()
        published = self._keys.get(kid)
        if published is None or published.retired(time.time()):
            return None
        return published.key

    def __len__(self) -> int:
        return len(self._keys)

    # ------------------------------------------------------------------ background refresh

    def refresh_if_due(self) -> None:
        interval = REFRESH_SECONDS if self._watch is None else DIRECTORY_CHECK_SECONDS
        if time.monotonic() - self._looked_at > interval:
            self._refresh_in_background()

    def _refresh_in_background(self) -> Future[None]:
        """The refresh under way, or a new one; one at a time."""
        with self._lock:
            if self._refreshing is None or self._refreshing.done():
                self._looked_at = time.monotonic()
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(1, thread_name_prefix="public-keys")
                self._refreshing = self._executor.submit(self._refresh)
            return self._refreshing

    def _refresh(self) -> None:
        if self._watch is None or self._watch.changed():
            self.reload()

    async def learn(self, kid: str) -> None:
        """Before a token under ``kid`` is verified: if the kid is unknown, trigger a refresh
        (JWKS: at most one per ``UNKNOWN_KID_RELOAD_SECONDS``; a directory costs a stat) and
        wait for it on the event loop, at most ``UNKNOWN_KID_WAIT_SECONDS``."""
        if not kid or kid in self._keys:
            return
        with self._lock:
            if self._watch is None:
                if time.monotonic() - self._unknown_kid_refresh_at < UNKNOWN_KID_RELOAD_SECONDS:
                    return  # looked a moment ago: the kid is not the region's
                self._unknown_kid_refresh_at = time.monotonic()
        refreshing = asyncio.wrap_future(self._refresh_in_background())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(refreshing), UNKNOWN_KID_WAIT_SECONDS)

    async def keep_fresh(self) -> None:
        """For the app's lifespan: refresh on schedule even while no request comes."""
        while True:
            self.refresh_if_due()
            await asyncio.sleep(DIRECTORY_CHECK_SECONDS)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)


async def authorize_data_request(request: Request, data_key: str) -> DataGrant:
    """One 401 for every kind of bad token; the data key's prefix says which scope is asked.

    The token comes from ``Authorization: Data <token>`` or, for clients that cannot send
    headers (URL readers, browsers), from ``?token=`` of a grant's ``data_url``; both are
    verified alike. The header wins when both are sent. The access log never holds the query."""
    header = authorization(request)
    if header is None:  # sent twice
        raise invalid_token()
    scheme, _, token = header.strip().partition(" ")
    if not header:
        scheme, token = "data", request.query_params.get(URL_TOKEN_PARAMETER, "")
    scope = scope_of_data_key(data_key)
    if scheme.lower() != "data" or not token.strip() or scope is None:
        raise invalid_token()
    state = request.app.state
    await state.keyring.learn(_unverified_kid(token.strip()))
    return verify_data_token(
        token.strip(), state.keyring, state.settings, data_key=data_key, scope=scope
    )


def _unverified_kid(token: str) -> str:
    """Which key the token names ("" if it names none or is not a JWT: verification refuses
    it next)."""
    return key_id(unverified_header(token))
