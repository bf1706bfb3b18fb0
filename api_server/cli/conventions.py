"""What every operator command shares: the one JSON object it prints on stdout, its transaction
(on a schema brought up to date first, as ``serve`` does) and its line in the audit log."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from api_server.audit import record_event
from shared import display_names as names
from shared.db.engine import create_metadata_engine, create_session_factory
from shared.db.migrate import require_head
from shared.errors import ConfigurationError
from shared.settings import Settings
from shared.text import WHOLE_NUMBER


def emit(payload: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(payload).decode() + "\n")
    sys.stdout.flush()


def comma_list(value: str | None) -> list[str] | None:
    """``--permissions a, b`` and the like: the non-empty items, None when the option is absent."""
    return None if value is None else [part.strip() for part in value.split(",") if part.strip()]


def datasource_ids(value: str) -> list[str]:
    """An argparse type for ``--datasources a, b``: the ids, refused when it names none (an
    empty shell variable made a key that reaches no datasource, found by the outside probe;
    leaving the option out makes one that reaches every datasource)."""
    ids = comma_list(value)
    if not ids:
        raise argparse.ArgumentTypeError(
            "names no datasource; leave it out for a key that reaches every datasource"
        )
    return ids


def display_name(value: str) -> str:
    """An argparse type for ``--name``, by the rule the API applies to names
    (shared/display_names.py): a longer one failed PostgreSQL's insert with a traceback, and a
    control character or bidirectional override would be obeyed by the terminal of an operator
    listing names."""
    try:
        return names.display_name(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"a name {exc}") from None


def whole_number(value: str) -> int:
    """An argparse type for a count (``WHOLE_NUMBER``)."""
    if not WHOLE_NUMBER.fullmatch(value):
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}")
    return int(value)


@contextmanager
def transaction(settings: Settings, *, creating: bool = False) -> Iterator[Session]:
    """One transaction of an operator command, on a schema that is this release's (it is never
    upgraded in passing: ``migrate`` does that), with the engine's connections closed
    afterwards. Only a command that is ``creating`` an organisation may start a database where
    there is none: for any other, a missing file means a mistyped state directory or URL, and a
    new empty database would answer as if nothing existed (and stay behind)."""
    url = make_url(settings.database_url)
    database = url.database if url.get_backend_name() == "sqlite" else None
    if not creating and database and database != ":memory:" and not Path(database).exists():
        raise ConfigurationError(
            f"no metadata database at {database}: is DATAFERRY_STATE_DIR (or "
            "DATAFERRY_DATABASE_URL) the deployment's? create-organization starts one"
        )
    engine = create_metadata_engine(settings.database_url)
    try:
        require_head(engine, may_create=creating)
        with create_session_factory(engine).begin() as session:
            yield session
    finally:
        engine.dispose()


def record_operator_event(
    session: Session, organization_id: str, action: str, resource_id: str
) -> None:
    """An operator's command in the organisation's audit log: method CLI, no key as the actor."""
    record_event(
        session,
        organization_id=organization_id,
        action=action,
        method="CLI",
        path=f"python -m api_server {action}",
        status=0,
        resource_id=resource_id,
    )
