"""What the servers write is their own user's alone.

Stored results, schemas, representations and the SQLite metadata database hold tenants' rows, SQL
text and bound values. Tenant file areas are 0700 (shared/datapaths.py) and secrets 0600
(shared/state_secrets.py); everything else is made private too, by the process's umask, set as a
server or operator command starts. A state directory made by an earlier release under a looser
umask has its state directory, secrets, key directories, result store, data root and SQLite files
tightened then as well. A file meant for other users (a public signing key) is given its mode
explicitly (shared/signing_keys.py).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy.engine import make_url

from shared.settings import Settings

PRIVATE_UMASK = 0o077


def keep_private(settings: Settings) -> None:
    os.umask(PRIVATE_UMASK)
    for path in _state_paths(settings):
        with contextlib.suppress(OSError):  # absent yet, or another user's: left as it is
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode & PRIVATE_UMASK:
                path.chmod(mode & ~PRIVATE_UMASK)


def _state_paths(settings: Settings) -> Iterator[Path]:
    yield settings.state_dir
    secrets = settings.state_dir / "secrets"
    yield secrets
    if secrets.is_dir():
        yield from secrets.iterdir()
    keys = settings.state_dir / "keys"
    yield keys  # who may write here could publish a signing key of their own
    if keys.is_dir():
        yield from (path for path in keys.iterdir() if path.is_dir() and not path.is_symlink())
    yield settings.results_dir
    yield settings.data_root
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        for suffix in ("", "-wal", "-shm", "-journal"):
            yield Path(url.database + suffix)
