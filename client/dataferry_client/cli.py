"""The ``dataferry`` command: the options every subcommand takes, the parser assembled from
dataferry_client/commands/, ``configure`` (it needs no server), and how a run ends.

Failures print one line on stderr and exit with a code of :class:`ExitCode` (documented in
docs/client.md and in ``dataferry --help``); progress goes to stderr only when it is a terminal.
"""

from __future__ import annotations

import argparse
import getpass
import os
import re
import sys
from collections.abc import Sequence
from typing import NoReturn, cast

from dataferry_client import __version__, errors
from dataferry_client.client import Client
from dataferry_client.commands import query, resources
from dataferry_client.commands.exit_codes import ExitCode, UsageError, exit_code_for, exit_code_help
from dataferry_client.config import (
    DEFAULT_PROFILE,
    ENV_PROFILE,
    profiles_path,
    server_url,
    write_profile,
)
from dataferry_client.terminal import ProgressLine, shown

# An API key or a data access token, wherever an answer echoed one (a proxy's error page, say),
# glued to what precedes it or not (``Api%20dfk_…``): what stderr shows, CI logs keep.
_SECRET = re.compile(r"(dfk_|eyJ)[A-Za-z0-9_.-]{8,}")


def one_line(text: str) -> str:
    """A message for stderr: one line, the characters a terminal would obey escaped
    (``terminal.shown``), keys and tokens cut to their kind."""
    return shown(_SECRET.sub(r"\1…", " ".join(str(text).split())))


def command_configure(args: argparse.Namespace) -> None:
    """Write a profile (mode 0600); the key comes from --api-key, stdin or a prompt."""
    key = args.api_key
    if not key:
        key = getpass.getpass("API key: ") if sys.stdin.isatty() else sys.stdin.readline()
    if not args.api_url or not key.strip():
        raise errors.ConfigurationError("configure needs --api-url and an API key")
    values = {
        "api_url": server_url(args.api_url, "API server URL"),
        "api_key": key.strip(),
        "data_url": server_url(args.data_url, "data server URL") if args.data_url else None,
    }
    path = profiles_path()
    name = args.profile or os.environ.get(ENV_PROFILE) or DEFAULT_PROFILE
    write_profile(path, name, values)
    sys.stderr.write(f"profile {name!r} written to {path}\n")


# ---------------------------------------------------------------------------- command line


class _Parser(argparse.ArgumentParser):
    """A usage error is one line, as every other failure (argparse printed its usage first);
    ``--help`` shows the usage. Subcommands' parsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        self.exit(ExitCode.USAGE, f"dataferry: {one_line(message)} ({self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    # Accepted before and after the subcommand; SUPPRESS keeps a subcommand's unset default
    # from overwriting a value given before it (COMMON_DEFAULTS fills the gaps after parsing).
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument(
        "--profile", help=f"profile in {profiles_path()} (default: {DEFAULT_PROFILE})"
    )
    common.add_argument("--api-url", help="API server URL (or DATAFERRY_API_URL)")
    common.add_argument("--data-url", help="data server URL (or DATAFERRY_DATA_URL)")
    common.add_argument("--json", action="store_true", help="print JSON, for scripts")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress output")

    parser = _Parser(
        prog="dataferry",
        description="Query dataferry and manage its resources.",
        epilog=exit_code_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    # Its parsers are _Parsers (argparse makes them of the parent's class); the commands' modules
    # take any parser.
    commands = cast(
        "argparse._SubParsersAction[argparse.ArgumentParser]",
        parser.add_subparsers(dest="command", required=True, metavar="COMMAND"),
    )

    query.add_command(commands, common)
    resources.add_commands(commands, common)

    configure = commands.add_parser(
        "configure", parents=[common], help="write a profile (mode 0600)"
    )
    configure.add_argument("--api-key", help="(default: prompt, or read from stdin)")
    configure.set_defaults(handler=None)
    return parser


COMMON_DEFAULTS = {
    "profile": None,
    "api_url": None,
    "data_url": None,
    "json": False,
    "quiet": False,
}


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name, default in COMMON_DEFAULTS.items():
        if not hasattr(args, name):
            setattr(args, name, default)
    progress = None if args.quiet or not sys.stderr.isatty() else ProgressLine(sys.stderr)
    try:
        if args.handler is None:
            command_configure(args)
            return ExitCode.OK
        with Client(api_url=args.api_url, data_url=args.data_url, profile=args.profile) as client:
            args.handler(client, args, progress)
        return ExitCode.OK
    except errors.DataferryError as exc:
        if progress:
            progress.clear()
        code = f" [{one_line(exc.code)}]" if exc.code and exc.code != UsageError.code else ""
        sys.stderr.write(f"dataferry: {one_line(str(exc))}{code}\n")
        return exit_code_for(exc)
    except BrokenPipeError:  # `dataferry query … | head`: ``main`` ends it quietly
        raise
    except OSError as exc:  # an unreadable SQL file, an unwritable output path
        sys.stderr.write(f"dataferry: {one_line(str(exc))}\n")
        return ExitCode.USAGE


def main(argv: Sequence[str] | None = None) -> None:
    try:
        code = run(argv)
    except KeyboardInterrupt as interrupted:
        cancelled = f"; {interrupted}" if isinstance(interrupted, errors.QueryInterrupted) else ""
        sys.stderr.write(f"\ndataferry: interrupted{cancelled}\n")
        code = ExitCode.INTERRUPTED
    except BrokenPipeError:  # `dataferry query … | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = ExitCode.OK
    except Exception as exc:  # one line, never a traceback
        sys.stderr.write(f"dataferry: internal error: {one_line(repr(exc))}\n")
        code = ExitCode.INTERNAL
    sys.exit(int(code))
