"""What must never appear in a log, and every log line written while the suite runs.

Factories and clients ``remember`` each API key secret, data token, datasource password and
bound value they hand out; conftest installs ``CAPTURE`` on the root logger, and end-to-end
regions register their server log files. conftest's ``pytest_sessionfinish`` greps all of it once
every test has run, whatever their order; tests/contract/test_logs_hold_no_secrets.py runs a
scenario of its own and greps what it logged.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

SENSITIVE: set[str] = set()
LOG_FILES: set[Path] = set()
MIN_LENGTH = 6  # shorter values would match by accident


def remember(*values: object) -> None:
    SENSITIVE.update(str(v) for v in values if v is not None and len(str(v)) >= MIN_LENGTH)


class _Capture(logging.Handler):
    """Keeps every formatted record, tracebacks included."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


CAPTURE = _Capture()


# The launcher of ``make run`` shows the demo key on purpose (its banner, on its own stdout, which
# the servers it starts share): those two lines are the contract, not a leak.
_BANNER_LINES = re.compile(r"^(API key \(keep it secret\): |  export API=).*$", re.MULTILINE)


def everything_logged() -> str:
    files = [path.read_text(errors="replace") for path in sorted(LOG_FILES) if path.exists()]
    return _BANNER_LINES.sub("", "\n".join([*CAPTURE.lines, *files]))


def leaked_secrets() -> list[str]:
    """The start of each remembered secret that some log line holds."""
    logged = everything_logged()
    return sorted(value[:12] + "…" for value in SENSITIVE if value in logged)
