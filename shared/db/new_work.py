"""Prompt pick-up on PostgreSQL: writers NOTIFY when work appears or a slot frees, workers LISTEN.

A notification is sent inside the writer's transaction, so PostgreSQL delivers it only once the
new row is committed and visible. Workers still poll as a fallback (a missed notification, a
reconnect), but slowly. SQLite has no notifications; the embedded default polls.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

logger = logging.getLogger(__name__)

CHANNEL = "dataferry_new_work"
RECONNECT_SECONDS = 1.0


def announce(session: Session) -> None:
    """Tell listening workers to look at the queue once this transaction commits."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_notify(:channel, '')"), {"channel": CHANNEL})


def supported(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def listen(engine: Engine, wake: threading.Event, stopping: threading.Event) -> None:
    """Set ``wake`` on every notification until ``stopping``; reconnect after a lost connection."""
    while not stopping.is_set():
        try:
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                connection.exec_driver_sql(f"LISTEN {CHANNEL}")
                driver = connection.connection.driver_connection
                assert driver is not None  # an open psycopg connection
                wake.set()  # whatever arrived while not listening: look once
                while not stopping.is_set():
                    for _ in driver.notifies(timeout=0.5, stop_after=1):
                        wake.set()
        except Exception as exc:  # the server went away or our connection was terminated
            logger.warning("listening for new work failed (%s); reconnecting", type(exc).__name__)
            stopping.wait(RECONNECT_SECONDS)
