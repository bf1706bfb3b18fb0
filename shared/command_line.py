"""What ``python -m api_server`` and ``python -m data_server`` share: the parser, the settings
a command runs with, and the one ``error:`` line (exit status 2) it ends with when refused.

An operator may paste a secret where another value belongs (an API key as ``--organization``, a
token as a command); the line echoes what was typed, so any key or token in it is masked, as in
the logs: terminals and job logs keep what they are shown."""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Sequence
from typing import NoReturn

from sqlalchemy.exc import DBAPIError

from shared.db.engine import unusable_database, unusable_database_line
from shared.errors import AppError, ConfigurationError
from shared.file_modes import keep_private
from shared.logging import configure_logging
from shared.secret_shapes import without_secrets
from shared.setting_fields import HOST_BOUNDS, PORT_BOUNDS
from shared.settings import Settings
from shared.text import is_text

REFUSED = 2  # argparse's own exit status for a usage error
_logger = logging.getLogger(__name__)


# A refusal quotes what was typed; an argument of thousands of characters is not repeated whole.
MAX_QUOTED_CHARACTERS = 600


class CommandParser(argparse.ArgumentParser):
    """argparse's parser (its sub-commands' too), its usage errors one ``error:`` line as every
    other refusal, secrets masked. argparse printed the usage first (found by the outside probe):
    ``--help`` shows it."""

    def error(self, message: str) -> NoReturn:
        self.exit(REFUSED, _error_line(f"{self.prog}: {message}", " (--help shows the usage)"))


def listen_options(serve: argparse.ArgumentParser) -> None:
    """``serve``'s ``--host`` and ``--port``, which take the place of the environment's: each
    checked as given, and named when refused (a port out of range named DATAFERRY_*_PORT, and
    ``--port 0`` or ``--host ''`` fell back to the environment's; found by the outside probe)."""
    serve.add_argument("--host", type=_host, help="address to listen on")
    serve.add_argument("--port", type=_port, help="port to listen on, 1 to 65535")


def _host(value: str) -> str:
    """As DATAFERRY_API_HOST and DATAFERRY_DATA_HOST take one (``HOST_BOUNDS``)."""
    fits = re.fullmatch(HOST_BOUNDS["pattern"], value) and len(value) <= HOST_BOUNDS["max_length"]
    if not fits:
        raise argparse.ArgumentTypeError(f"not {HOST_BOUNDS['allowed']}: {value!r}")
    return value


def _port(value: str) -> int:
    """As DATAFERRY_API_PORT and DATAFERRY_DATA_PORT take one (``PORT_BOUNDS``)."""
    low, high = PORT_BOUNDS["ge"], PORT_BOUNDS["le"]
    if not re.fullmatch(r"[0-9]{1,5}", value) or not low <= int(value) <= high:
        raise argparse.ArgumentTypeError(f"not a port from {low} to {high}: {value!r}")
    return int(value)


def run_command(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse ``argv``, then run the chosen command (``args.run``) with the settings of the
    environment; a refusal is one line on stderr, also when the file system refuses (a state
    directory that is a file, a full disk) or an argument is no UTF-8 text (Python keeps its
    undecodable bytes as surrogates, which no database or file takes)."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    for position, argument in enumerate(arguments, start=1):
        if not is_text(argument):
            return _refused(f"argument {position} is not UTF-8 text")
    args = parser.parse_args(arguments)
    settings: Settings | None = None
    try:
        settings = Settings.from_env()
        keep_private(settings)
        configure_logging(settings.log_level)
        args.run(settings, args)
    except (AppError, ConfigurationError) as exc:
        return _refused(exc.detail if isinstance(exc, AppError) else str(exc))
    except DBAPIError as exc:
        if not unusable_database(exc):
            raise
        _logger.debug("the command stopped", exc_info=True)  # DATAFERRY_LOG_LEVEL=DEBUG shows it
        return _refused(unusable_database_line(exc))
    except OSError as exc:
        _logger.debug("the command stopped", exc_info=True)  # DATAFERRY_LOG_LEVEL=DEBUG shows it
        where = f": {exc.filename}" if exc.filename is not None else ""
        return _refused(f"{exc.strerror or type(exc).__name__}{where}{_set_by(exc, settings)}")
    return 0


def _set_by(error: OSError, settings: Settings | None) -> str:
    """Which setting put the file where it is, when it lies in the state directory (the outside
    probe: a state directory too long for a file name was refused naming the file only)."""
    if settings is None or error.filename is None:
        return ""
    inside = str(error.filename).startswith(str(settings.state_dir))
    return " (in DATAFERRY_STATE_DIR)" if inside else ""


def _refused(detail: str) -> int:
    sys.stderr.write(_error_line(detail))
    return REFUSED


def _error_line(detail: str, then: str = "") -> str:
    """``error: DETAIL`` and ``then``, on one line, ``DETAIL`` shortened if it is long."""
    shown = " ".join(without_secrets(detail).split())  # one line, whatever was typed
    if len(shown) > MAX_QUOTED_CHARACTERS:
        shown = shown[: MAX_QUOTED_CHARACTERS - 1] + "…"
    return f"error: {shown}{then}\n"
