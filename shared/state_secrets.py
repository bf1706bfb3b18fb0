"""Server-side secrets: taken from settings or generated once into the state dir, never hard-coded."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from shared.errors import ConfigurationError
from shared.settings import Settings


def load_or_create(path: Path, make: Callable[[], bytes]) -> bytes:
    """Read a secret file, or create it atomically (mode 0600) if it does not exist yet."""
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    value: bytes = make()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process won the race: use its value
        return path.read_bytes().strip()
    with os.fdopen(fd, "wb") as handle:
        handle.write(value)
        handle.flush()
        os.fsync(handle.fileno())
    return value


def load_fernet(settings: Settings) -> Fernet:
    """The key datasource credentials are encrypted with: the API server encrypts, and the data
    server decrypts for the sandbox child that connects, so both need the same one."""
    if settings.encryption_key is not None:
        key = settings.encryption_key.reveal().encode()
    else:
        key = load_or_create(settings.state_dir / "secrets" / "encryption_key", Fernet.generate_key)
    try:
        return Fernet(key)
    except ValueError as exc:
        raise ConfigurationError(
            "DATAFERRY_ENCRYPTION_KEY must be 32 url-safe base64-encoded bytes (a Fernet key)"
        ) from exc


@dataclass(frozen=True)
class ServerSecrets:
    api_key_pepper: bytes
    fernet: Fernet

    @classmethod
    def load(cls, settings: Settings) -> ServerSecrets:
        secrets_dir = settings.state_dir / "secrets"
        if settings.api_key_pepper is not None:
            pepper = settings.api_key_pepper.reveal().encode()
        else:
            pepper = load_or_create(
                secrets_dir / "api_key_pepper", lambda: secrets.token_urlsafe(48).encode()
            )
        if len(pepper) < 32:
            raise ConfigurationError("DATAFERRY_API_KEY_PEPPER must be at least 32 characters")
        return cls(api_key_pepper=pepper, fernet=load_fernet(settings))

    def encrypt(self, plaintext: str) -> str:
        return self.fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, ciphertext: str) -> str:
        try:
            return self.fernet.decrypt(ciphertext.encode()).decode()
        except InvalidToken as exc:
            raise ConfigurationError(
                "a stored datasource password cannot be decrypted: wrong DATAFERRY_ENCRYPTION_KEY?"
            ) from exc
