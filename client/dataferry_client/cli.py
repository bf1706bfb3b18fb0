"""The ``dataferry`` command: queries to files or a terminal table, and the API's resources.

Failures print one line on stderr and exit with a code of :class:`ExitCode` (documented in
docs/client.md and in ``dataferry --help``); progress goes to stderr only when it is a terminal.
"""

from __future__ import annotations

import argparse
import datetime as dt
import enum
import getpass
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dataferry_client import __version__, errors
from dataferry_client.client import Client
from dataferry_client.config import DEFAULT_PROFILE, ENV_PROFILE, profiles_path, write_profile
from dataferry_client.result import SaveFormat
from dataferry_client.terminal import ProgressLine, print_document, print_resources, render_arrow


class ExitCode(enum.IntEnum):
    OK = 0
    INTERNAL = 1  # a bug in the client: please report it
    USAGE = 2  # bad command line
    CONFIGURATION = 3  # no API URL, key or data URL; unreadable profile file
    AUTHENTICATION = 4  # 401: wrong, disabled or deleted key
    PERMISSION = 5  # 403: the key lacks the permission
    NOT_FOUND = 6  # 404: unknown datasource, execution, snippet (or expired data)
    INVALID = 7  # 400, 409, 422: the server refused the request as given
    EXECUTION_FAILED = 8  # the execution failed or was cancelled
    TIMEOUT = 9  # --timeout passed before the execution ended
    RATE_LIMITED = 10  # still 429 after waiting out Retry-After (bounded)
    UNAVAILABLE = 11  # server unreachable, 5xx, or a transfer that could not be completed
    INTERRUPTED = 130  # Ctrl-C


class UsageError(errors.DataferryError):
    """The command line cannot be carried out as given."""

    code = "usage"


class ConnectionTestFailed(errors.DataferryError):
    code = "connection_test_failed"


_EXIT_FOR: list[tuple[type[errors.DataferryError], ExitCode]] = [
    (UsageError, ExitCode.USAGE),
    (ConnectionTestFailed, ExitCode.EXECUTION_FAILED),
    (errors.ConfigurationError, ExitCode.CONFIGURATION),
    (errors.AuthenticationError, ExitCode.AUTHENTICATION),
    (errors.PermissionDenied, ExitCode.PERMISSION),
    (errors.NotFound, ExitCode.NOT_FOUND),
    (errors.RateLimited, ExitCode.RATE_LIMITED),
    (errors.ExecutionFailed, ExitCode.EXECUTION_FAILED),
    (errors.DataNotAvailable, ExitCode.EXECUTION_FAILED),
    (errors.QueryTimeout, ExitCode.TIMEOUT),
    (errors.ServerError, ExitCode.UNAVAILABLE),
    (errors.TransportError, ExitCode.UNAVAILABLE),
    (errors.IncompleteResult, ExitCode.UNAVAILABLE),
    (errors.ApiError, ExitCode.INVALID),
]


def exit_code_for(error: errors.DataferryError) -> ExitCode:
    return next((code for cls, code in _EXIT_FOR if isinstance(error, cls)), ExitCode.INTERNAL)


def one_line(text: str) -> str:
    return " ".join(str(text).split())


# ---------------------------------------------------------------------------- query


def read_sql(args: argparse.Namespace) -> str:
    if args.file:
        sql = Path(str(args.file)).read_text(encoding="utf-8")
    elif args.sql and args.sql != "-":
        sql = str(args.sql)
    elif args.sql == "-" or not sys.stdin.isatty():
        sql = sys.stdin.read()
    else:
        sql = ""
    if not sql.strip():
        raise UsageError("no SQL: give it as an argument, with -f FILE or on stdin")
    return sql


def _unix_seconds(text: str) -> str:
    if text.isdigit():
        return text
    moment = dt.datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return str(int(moment.timestamp()))


def build_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """Cluvio parameters from --param NAME=VALUE (repeatable), --timerange, --aggregation, --tz."""
    parameters: dict[str, Any] = {}
    selected: dict[str, list[Any]] = {}
    for item in args.param or []:
        name, sep, raw = item.partition("=")
        if not sep or not name:
            raise UsageError(f"--param {item!r}: expected NAME=VALUE")
        try:
            value = json.loads(raw)  # numbers, true/false/null stay typed
        except ValueError:
            value = raw
        selected.setdefault(name, []).append(value)
    if selected:
        parameters["filters"] = [
            {"variable_name": n, "selected_values": v} for n, v in selected.items()
        ]
    if args.timerange:
        start, sep, end = args.timerange.partition("~")
        if not sep:
            raise UsageError("--timerange: expected START~END")
        try:
            parameters["timerange"] = f"{_unix_seconds(start)}~{_unix_seconds(end)}"
        except ValueError as exc:
            raise UsageError(f"--timerange: {exc}") from None
    if args.aggregation:
        parameters["aggregation"] = args.aggregation
    if args.tz:
        parameters["tz"] = args.tz
    return parameters


def output_format(args: argparse.Namespace) -> SaveFormat:
    """The file format of ``-o FILE``: ``--format``, else the file's suffix."""
    if args.format == "table":
        raise UsageError("--format table is for a terminal, not for -o FILE")
    if args.format:
        return SaveFormat(args.format)
    try:
        return SaveFormat.for_path(Path(args.output))
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def command_query(client: Client, args: argparse.Namespace, progress: ProgressLine | None) -> None:
    sql = read_sql(args)
    fmt = output_format(args) if args.output else None  # a bad name fails before the query runs
    result = client.query(
        args.datasource, sql, build_parameters(args), timeout=args.timeout, progress=progress
    )
    if args.output:
        result.save(args.output, fmt)
    elif (args.format or ("table" if sys.stdout.isatty() else "csv")) == "table":
        table = result.to_arrow()
        if progress:
            progress.clear()
        render_arrow(table, sys.stdout)
    else:
        sys.stdout.flush()
        result.write(sys.stdout.buffer, args.format or SaveFormat.CSV)
        sys.stdout.buffer.flush()
    if progress:
        progress.clear()
    if args.output and progress is not None:
        sys.stderr.write(f"wrote {result.row_count:,} rows to {args.output}\n")


# ---------------------------------------------------------------------------- resources

DATASOURCE_FIELDS = ("name", "database_type", "database", "enabled")
SNIPPET_FIELDS = ("name", "description")


def _attributes(pairs: Sequence[str] | None, **named: Any) -> dict[str, Any]:
    attributes = {k: v for k, v in named.items() if v is not None}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise UsageError(f"--set {pair!r}: expected NAME=VALUE")
        try:
            attributes[key] = json.loads(raw)
        except ValueError:
            attributes[key] = raw
    return attributes


def command_datasources(client: Client, args: argparse.Namespace, progress: Any) -> None:
    api = client.datasources
    action = args.action
    if action == "list":
        print_resources(api.list(), DATASOURCE_FIELDS, args.json)
    elif action == "show":
        print_document(api.get(args.id), args.json)
    elif action == "create":
        attributes = _attributes(
            args.set, name=args.name, database_type=args.type, database=args.database
        )
        print_document(api.create(**attributes), args.json)
    elif action == "update":
        print_document(api.update(args.id, **_attributes(args.set, name=args.name)), args.json)
    elif action == "delete":
        api.delete(args.id)
    elif action == "test":
        test = api.test_connection(args.id)
        print_document({"status": test.status, "error_message": test.error_message}, args.json)
        if test.status != "ok":
            raise ConnectionTestFailed(f"connection test failed: {test.error_message}")
    elif action == "refresh":
        execution_id = api.refresh(args.id)
        if args.wait:
            print_document(client.executions.wait(execution_id, progress=progress), args.json)
        else:
            print_document({"execution_id": execution_id}, args.json)
    elif action == "schema":
        print_document(api.schema(args.id, args.name), True)


def command_executions(client: Client, args: argparse.Namespace, progress: Any) -> None:
    api = client.executions
    if args.action == "show":
        execution = api.get(args.id)
    elif args.action == "wait":
        execution = api.wait(args.id, args.timeout, progress)
    else:
        execution = api.cancel(args.id)
    if progress:
        progress.clear()
    print_document(execution, args.json)


def command_snippets(client: Client, args: argparse.Namespace, progress: Any) -> None:
    api = client.snippets
    if args.action == "list":
        print_resources(api.list(), SNIPPET_FIELDS, args.json)
    elif args.action == "show":
        print_document(api.get(args.id), args.json)
    elif args.action == "create":
        print_document(api.create(args.name, args.sql, args.description), args.json)
    elif args.action == "update":
        attributes = _attributes(None, name=args.name, sql=args.sql, description=args.description)
        print_document(api.update(args.id, **attributes), args.json)
    else:
        api.delete(args.id)


def command_whoami(client: Client, args: argparse.Namespace, progress: Any) -> None:
    print_document(client.api_key(), args.json)


def command_configure(args: argparse.Namespace) -> None:
    """Write a profile (mode 0600); the key comes from --api-key, stdin or a prompt."""
    key = args.api_key
    if not key:
        key = getpass.getpass("API key: ") if sys.stdin.isatty() else sys.stdin.readline()
    values = {"api_url": args.api_url, "api_key": key.strip(), "data_url": args.data_url}
    if not values["api_url"] or not values["api_key"]:
        raise errors.ConfigurationError("configure needs --api-url and an API key")
    path = profiles_path()
    name = args.profile or os.environ.get(ENV_PROFILE) or DEFAULT_PROFILE
    write_profile(path, name, values)
    sys.stderr.write(f"profile {name!r} written to {path}\n")


# ---------------------------------------------------------------------------- command line


def _exit_code_help() -> str:
    lines = [f"  {code.value:>3}  {code.name.lower().replace('_', ' ')}" for code in ExitCode]
    return "exit codes:\n" + "\n".join(lines)


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

    parser = argparse.ArgumentParser(
        prog="dataferry",
        description="Query dataferry and manage its resources.",
        epilog=_exit_code_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    query = commands.add_parser(
        "query", parents=[common], help="run SQL and print or save the result"
    )
    query.add_argument("datasource", help="datasource id or name")
    query.add_argument("sql", nargs="?", help="the SQL ('-' or omitted: read stdin)")
    query.add_argument("-f", "--file", help="read the SQL from this file")
    query.add_argument(
        "--param", action="append", metavar="NAME=VALUE", help="a filter value (repeatable)"
    )
    query.add_argument("--timerange", metavar="START~END", help="unix seconds or ISO 8601")
    query.add_argument("--aggregation", help="second … year, all_time")
    query.add_argument("--tz", help="IANA time zone for {…:tz} placeholders")
    query.add_argument("--format", choices=["table", *(f.value for f in SaveFormat)])
    query.add_argument("-o", "--output", help="write to this file (format from its suffix)")
    query.add_argument("--timeout", type=float, help="seconds to wait for the execution")
    query.set_defaults(handler=command_query)

    datasources = commands.add_parser("datasources", parents=[common], help="list, show, create, …")
    actions = datasources.add_subparsers(dest="action", required=True)
    actions.add_parser("list", parents=[common])
    for name in ("show", "delete", "test"):
        actions.add_parser(name, parents=[common]).add_argument("id")
    create = actions.add_parser("create", parents=[common])
    create.add_argument("--name", required=True)
    create.add_argument("--type", required=True, help="duckdb or files")
    create.add_argument(
        "--database", required=True, help="path in your organisation's file area on the server"
    )
    create.add_argument("--set", action="append", metavar="ATTR=VALUE")
    update = actions.add_parser("update", parents=[common])
    update.add_argument("id")
    update.add_argument("--name")
    update.add_argument("--set", action="append", metavar="ATTR=VALUE")
    refresh = actions.add_parser("refresh", parents=[common])
    refresh.add_argument("id")
    refresh.add_argument("--wait", action="store_true", help="wait for the refresh to end")
    schema = actions.add_parser("schema", parents=[common])
    schema.add_argument("id")
    schema.add_argument("--name", help="only this schema")
    datasources.set_defaults(handler=command_datasources)

    executions = commands.add_parser("executions", parents=[common], help="show, wait, cancel")
    actions = executions.add_subparsers(dest="action", required=True)
    for name in ("show", "cancel"):
        actions.add_parser(name, parents=[common]).add_argument("id")
    wait = actions.add_parser("wait", parents=[common])
    wait.add_argument("id")
    wait.add_argument("--timeout", type=float)
    executions.set_defaults(handler=command_executions)

    snippets = commands.add_parser("snippets", parents=[common], help="SQL snippets")
    actions = snippets.add_subparsers(dest="action", required=True)
    actions.add_parser("list", parents=[common])
    for name in ("show", "delete"):
        actions.add_parser(name, parents=[common]).add_argument("id")
    for name in ("create", "update"):
        action = actions.add_parser(name, parents=[common])
        if name == "update":
            action.add_argument("id")
        action.add_argument("--name", required=name == "create")
        action.add_argument("--sql", required=name == "create")
        action.add_argument("--description")
    snippets.set_defaults(handler=command_snippets)

    whoami = commands.add_parser("whoami", parents=[common], help="the calling API key")
    whoami.set_defaults(handler=command_whoami)

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
        code = f" [{exc.code}]" if exc.code and exc.code != UsageError.code else ""
        sys.stderr.write(f"dataferry: {one_line(str(exc))}{code}\n")
        return exit_code_for(exc)
    except OSError as exc:  # an unreadable SQL file, an unwritable output path
        sys.stderr.write(f"dataferry: {one_line(str(exc))}\n")
        return ExitCode.USAGE


def main(argv: Sequence[str] | None = None) -> None:
    try:
        code = run(argv)
    except KeyboardInterrupt:
        sys.stderr.write("\ndataferry: interrupted\n")
        code = ExitCode.INTERRUPTED
    except BrokenPipeError:  # `dataferry query … | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = ExitCode.OK
    except Exception as exc:  # one line, never a traceback
        sys.stderr.write(f"dataferry: internal error: {one_line(repr(exc))}\n")
        code = ExitCode.INTERNAL
    sys.exit(int(code))
