"""The region's Ed25519 signing keys: key files, the keyring that picks the key of the moment,
rotation and pruning, and the JWK Set that publishes the public halves.

Data tokens (``shared.tokens``) are signed and verified with these keys; this module knows
nothing of tokens, so the key lifecycle can be read (and changed) on its own.

<state dir>/keys/<region>/ holds per key: <kid>.pub.pem (published), the private key
(signing-key.pem for the first one, <kid>.key.pem for rotated-in ones; mode 0600) and, once a
rotation has scheduled it, <kid>.json with its ``not_before`` and ``retire_at``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import stat
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shared.datapaths import directory_locked
from shared.errors import ConfigurationError
from shared.settings import Settings

_logger = logging.getLogger(__name__)

ALGORITHM = "EdDSA"  # the JWS name of Ed25519 signatures: what tokens are signed with
FIRST_KEY_FILE = "signing-key.pem"
OVERLAP_MARGIN_SECONDS = 30
# The longest an old key may keep working after a rotation: tokens live minutes, and an overlap
# beyond that only keeps a key valid that the operator may be rotating because it leaked.
MAX_OVERLAP_SECONDS = 86_400
RECHECK_SECONDS = 5.0


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_key: Ed25519PrivateKey


@dataclass(frozen=True)
class KeySchedule:
    """When a key starts signing and when it stops verifying; without a file: always, never."""

    not_before: int = 0
    retire_at: int | None = None

    def retired(self, now: float) -> bool:
        return self.retire_at is not None and now >= self.retire_at


@dataclass(frozen=True)
class PublicKey:
    key: Ed25519PublicKey
    retire_at: int | None = None

    def retired(self, now: float) -> bool:
        return KeySchedule(retire_at=self.retire_at).retired(now)


def _kid_of(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def keys_dir(settings: Settings) -> Path:
    return settings.state_dir / "keys" / settings.region


class DirectoryWatch:
    """Whether a key directory may have changed since the last look, for the price of a stat:
    its mtime moved (every change renames a file into it), or a few seconds passed (shared
    mounts may show a new mtime late)."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._stamp: int | None = None
        self._looked_at = float("-inf")

    def changed(self) -> bool:
        try:
            stamp: int | None = self._directory.stat().st_mtime_ns
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp and time.monotonic() - self._looked_at < RECHECK_SECONDS:
            return False
        self._stamp, self._looked_at = stamp, time.monotonic()
        return True


class SigningKeyring:
    """The region's private keys with their schedules; a rotation applies without a restart."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._watch = DirectoryWatch(keys_dir(settings))
        self._keys = self._load()

    def _load(self) -> list[tuple[KeySchedule, SigningKey]]:
        self._watch.changed()
        key_file = self._settings.signing_key_file
        if key_file is not None:
            try:
                private = _read_private_key(key_file)
            except FileNotFoundError:  # named by its setting (outside probe: the path alone)
                raise ConfigurationError(
                    f"DATAFERRY_SIGNING_KEY_FILE={key_file}: no such file"
                ) from None
            return [(KeySchedule(), _publish(self._settings, private))]
        return _directory_signing_keys(self._settings)

    def signing_key(self, now: float | None = None) -> SigningKey:
        if self._watch.changed():
            self._keys = self._load()
        return _signer_at(self._keys, time.time() if now is None else now)


def _signer_at(keys: list[tuple[KeySchedule, SigningKey]], now: float) -> SigningKey:
    """The newest key past its publish delay; a pending one only when no other is left."""
    live = [(schedule, key) for schedule, key in keys if not schedule.retired(now)]
    ready = [entry for entry in live if entry[0].not_before <= now]
    if ready:
        return max(ready, key=lambda entry: entry[0].not_before)[1]
    if live:
        return min(live, key=lambda entry: entry[0].not_before)[1]
    raise ConfigurationError("every signing key is retired: run rotate-signing-key")


def _directory_signing_keys(
    settings: Settings, now: float | None = None
) -> list[tuple[KeySchedule, SigningKey]]:
    """The directory's live private keys; the first one is generated when there is no key at all."""
    directory = keys_dir(settings)
    if not _private_key_files(directory):
        _generate_key_pair(directory, directory / FIRST_KEY_FILE)
    now = time.time() if now is None else now
    keys = []
    for path in _private_key_files(directory):
        with contextlib.suppress(FileNotFoundError):  # pruned meanwhile: it was retired anyway
            private = _read_private_key(path)
            kid = _kid_of(private.public_key())
            schedule = _read_schedule(directory, kid)
            if schedule is None and path.name != FIRST_KEY_FILE:
                continue  # a rotation is still writing it: never sign before its schedule exists
            schedule = schedule or KeySchedule()
            if not schedule.retired(now):  # never re-publish what a prune is removing
                keys.append((schedule, _publish(settings, private)))
    return keys


def _private_key_files(directory: Path) -> list[Path]:
    first = directory / FIRST_KEY_FILE
    return ([first] if first.exists() else []) + sorted(directory.glob("*.key.pem"))


def _publish(settings: Settings, private: Ed25519PrivateKey) -> SigningKey:
    """Make sure the public half is in the key directory, where JWKS and data servers read it."""
    kid = _kid_of(private.public_key())
    public_path = keys_dir(settings) / f"{kid}.pub.pem"
    if not public_path.exists():
        _write_atomically(public_path, _public_pem(private.public_key()), mode=0o644)
    return SigningKey(kid=kid, private_key=private)


def _read_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise  # the caller knows whether a vanished key matters
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot read the signing key {path}: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigurationError(f"the signing key {path} is not an Ed25519 key")
    return key


def _private_pem(private: Ed25519PrivateKey) -> bytes:
    return private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _generate_key_pair(directory: Path, path: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    pem = _private_pem(Ed25519PrivateKey.generate())
    with contextlib.suppress(FileExistsError):  # another process generated it first: use theirs
        _write_atomically(path, pem, mode=0o600, exclusive=True)


def _public_pem(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _write_atomically(path: Path, content: bytes, *, mode: int, exclusive: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if exclusive and path.exists():
        raise FileExistsError(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    os.fchmod(fd, mode)  # as given, whatever the umask (a public key is for other users too)
    with os.fdopen(fd, "wb") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())
    if exclusive:
        try:
            os.link(tmp, path)
        finally:
            tmp.unlink()
    else:
        tmp.replace(path)


def _read_schedule(directory: Path, kid: str) -> KeySchedule | None:
    try:
        recorded = json.loads((directory / f"{kid}.json").read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot read the schedule of signing key {kid}: {exc}") from exc
    return KeySchedule(int(recorded["not_before"]), recorded.get("retire_at"))


def _write_schedule(directory: Path, kid: str, schedule: KeySchedule) -> None:
    record = {"kid": kid, "not_before": schedule.not_before, "retire_at": schedule.retire_at}
    _write_atomically(directory / f"{kid}.json", json.dumps(record).encode(), mode=0o644)


def written_by_this_user(path: Path) -> bool:
    """Whether ``path`` (not followed) is owned by this process's user and writable by no one
    else: a key another user could have written would let them sign data tokens."""
    status = path.lstat()
    return (
        stat.S_ISREG(status.st_mode)
        and status.st_uid == os.getuid()
        and not status.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    )


def load_public_keys(settings: Settings, now: float | None = None) -> dict[str, PublicKey]:
    """Every public key published in the region's key directory and not retired at ``now``."""
    now = time.time() if now is None else now
    directory = keys_dir(settings)
    keys: dict[str, PublicKey] = {}
    for path in sorted(directory.glob("*.pub.pem")):
        with contextlib.suppress(FileNotFoundError):  # pruned meanwhile
            if not written_by_this_user(path):
                _logger.warning("ignored signing key %s: not this user's alone to write", path.name)
                continue
            key = serialization.load_pem_public_key(path.read_bytes())
            if not isinstance(key, Ed25519PublicKey):
                continue
            kid = _kid_of(key)
            schedule = _read_schedule(directory, kid) or KeySchedule()
            if not schedule.retired(now):
                keys[kid] = PublicKey(key, schedule.retire_at)
    return keys


def jwks(public_keys: dict[str, PublicKey]) -> dict[str, Any]:
    """The JWK Set; ``retire_at`` (seconds since the epoch) tells data servers when to stop."""
    return {
        "keys": [
            {
                "kty": "OKP",
                "crv": "Ed25519",
                "alg": ALGORITHM,
                "use": "sig",
                "kid": kid,
                **_okp_x(published.key),
                **({} if published.retire_at is None else {"retire_at": published.retire_at}),
            }
            for kid, published in sorted(public_keys.items())
        ]
    }


def _okp_x(key: Ed25519PublicKey) -> dict[str, str]:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"x": base64.urlsafe_b64encode(raw).rstrip(b"=").decode()}


def public_keys_from_jwks(document: dict[str, Any]) -> dict[str, PublicKey]:
    keys: dict[str, PublicKey] = {}
    for entry in document.get("keys", []):
        if entry.get("kty") != "OKP" or entry.get("crv") != "Ed25519" or "x" not in entry:
            continue
        raw = base64.urlsafe_b64decode(entry["x"] + "=" * (-len(entry["x"]) % 4))
        key = Ed25519PublicKey.from_public_bytes(raw)
        retire_at = entry.get("retire_at")
        if entry.get("kid") == _kid_of(key):
            keys[entry["kid"]] = PublicKey(key, retire_at if isinstance(retire_at, int) else None)
    return keys


# ---------------------------------------------------------------- rotation


@dataclass(frozen=True)
class Rotation:
    """What ``rotate-signing-key`` did; kids and times only, never key material."""

    kid: str
    signs_from: int
    previous_kid: str
    previous_retire_at: int
    pruned: list[str]


def default_overlap_seconds(settings: Settings) -> int:
    """Long enough for the last token of the previous key to expire, with clock skew to spare."""
    return settings.data_token_ttl_seconds + OVERLAP_MARGIN_SECONDS


def rotate_signing_key(
    settings: Settings, *, overlap_seconds: int | None = None, now: float | None = None
) -> Rotation:
    """Publish a new key now, let it sign after the publish delay (so that data servers know it
    first), and retire every other key ``overlap_seconds`` after that. Retired keys are pruned."""
    if settings.signing_key_file is not None:
        raise ConfigurationError(
            "the signing key is DATAFERRY_SIGNING_KEY_FILE: replace that file to rotate it"
        )
    overlap = default_overlap_seconds(settings) if overlap_seconds is None else overlap_seconds
    if not 0 <= overlap <= MAX_OVERLAP_SECONDS:
        raise ConfigurationError(f"--overlap-seconds is 0 to {MAX_OVERLAP_SECONDS:,} (a day)")
    now = int(time.time() if now is None else now)
    directory = keys_dir(settings)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    with directory_locked(directory):  # two operators at once: one rotation after the other
        pruned = prune_signing_keys(settings, now=now)
        current = _directory_signing_keys(settings, now)
        previous = _signer_at(current, now)
        private = Ed25519PrivateKey.generate()
        kid = _kid_of(private.public_key())
        # Later than every key's start, the one of a rotation a moment ago included: of two
        # keys starting together, either could sign, and the one the other rotation retires
        # would sign tokens it outlives by less than their lifetime.
        signs_from = max(
            [
                now + settings.signing_key_publish_delay_seconds,
                *(schedule.not_before + 1 for schedule, _ in current),
            ]
        )
        retire_at = signs_from + overlap
        # The schedule first: an API server that sees the private key must already see when to
        # use it.
        _write_schedule(directory, kid, KeySchedule(not_before=signs_from))
        _publish(settings, private)
        _write_atomically(directory / f"{kid}.key.pem", _private_pem(private), mode=0o600)
        for schedule, key in current:
            if schedule.retire_at is None or schedule.retire_at > retire_at:
                _write_schedule(directory, key.kid, replace(schedule, retire_at=retire_at))
    return Rotation(kid, signs_from, previous.kid, retire_at, pruned)


def prune_signing_keys(settings: Settings, now: float | None = None) -> list[str]:
    """Delete the files of keys retired at ``now``; the schedule goes last, so that a key
    half-deleted by a crash still reads as retired."""
    now = time.time() if now is None else now
    directory = keys_dir(settings)
    pruned = []
    for schedule_path in sorted(directory.glob("*.json")):
        kid = schedule_path.name.removesuffix(".json")
        schedule = _read_schedule(directory, kid)
        if schedule is None or not schedule.retired(now):
            continue
        (directory / f"{kid}.key.pem").unlink(missing_ok=True)
        first = directory / FIRST_KEY_FILE
        with contextlib.suppress(FileNotFoundError):
            if _kid_of(_read_private_key(first).public_key()) == kid:
                first.unlink()
        (directory / f"{kid}.pub.pem").unlink(missing_ok=True)
        schedule_path.unlink(missing_ok=True)
        pruned.append(kid)
    return pruned
