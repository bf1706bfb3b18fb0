"""Logging set-up and the request id that ties a request's log lines together."""

from __future__ import annotations

import logging
import re
import sys
from contextvars import ContextVar
from typing import TextIO

from shared.secret_shapes import without_secrets

request_id_var: ContextVar[str] = ContextVar("request_id", default="-")


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record, not at set-up: a stream
    swapped out meanwhile (by a test runner's capture, say) is then never written after closing."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


class _OneLineFormatter(logging.Formatter):
    """A record is one line, whatever text it quotes: a control character a client sent (a
    decoded ``%0a`` in a path, say) is written escaped, so no client can forge a log line.
    Tracebacks, appended after the message, keep their lines. An API key's secret or a data
    token is never written, wherever a client put it (a path, a parameter): it shows as
    ``dfk_…`` or ``eyJ…`` (shared/secret_shapes.py)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return _CONTROL.sub(_escape, super().formatMessage(record))

    def format(self, record: logging.LogRecord) -> str:
        return without_secrets(super().format(record))  # the traceback's text too


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escape(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


def configure_logging(level: str = "INFO") -> None:
    """One line per record on stderr, with the request id; idempotent."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    for handler in root.handlers:
        if getattr(handler, "_dataferry", False):
            return
    handler = _StderrHandler()
    handler._dataferry = True  # type: ignore[attr-defined]
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(
        _OneLineFormatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
    )
    root.addHandler(handler)
