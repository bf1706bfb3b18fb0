"""``dataferry query``: SQL from an argument, a file or stdin, Cluvio parameters from options, and
the result printed as a table or CSV, or saved in the format of ``--format`` or the file's suffix."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from dataferry_client.client import Client
from dataferry_client.commands.exit_codes import UsageError
from dataferry_client.result import SaveFormat
from dataferry_client.terminal import ProgressLine, render_arrow


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


def _not_a_number(constant: str) -> Any:
    raise ValueError(f"{constant} has no JSON spelling")


def build_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """Cluvio parameters from --param NAME=VALUE (repeatable), --timerange, --aggregation, --tz."""
    parameters: dict[str, Any] = {}
    selected: dict[str, list[Any]] = {}
    for item in args.param or []:
        name, sep, raw = item.partition("=")
        if not sep or not name:
            raise UsageError(f"--param {item!r}: expected NAME=VALUE")
        try:  # numbers, true/false/null stay typed; NaN, Infinity and 1e400 are text
            value = json.loads(raw, parse_constant=_not_a_number)
        except ValueError:
            value = raw
        if isinstance(value, float) and not math.isfinite(value):
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


def _with_json_flag(args: argparse.Namespace) -> None:
    """``--json`` (every command's "print JSON") is ``--format json`` here, for what it prints:
    a file's format is its suffix's, or ``--format``'s."""
    if not args.json:
        return
    if args.output:
        raise UsageError("--json prints JSON; for a file, give its format with --format json")
    if args.format not in (None, SaveFormat.JSON.value):
        raise UsageError(f"--json and --format {args.format} ask for two formats: give one")
    args.format = SaveFormat.JSON.value


def _writable(output: str) -> None:
    """A file that cannot be written fails before the query runs, not after it ran."""
    target = Path(output)
    folder = target.parent  # "." for a bare name
    if target.is_dir():
        raise UsageError(f"-o {output}: is a folder")
    if not folder.is_dir():
        raise UsageError(f"-o {output}: no folder {folder}")
    if not os.access(target if target.exists() else folder, os.W_OK):
        raise UsageError(f"-o {output}: not writable")


def command_query(client: Client, args: argparse.Namespace, progress: ProgressLine | None) -> None:
    sql = read_sql(args)
    _with_json_flag(args)
    fmt = output_format(args) if args.output else None  # a bad name fails before the query runs
    if args.output:
        _writable(args.output)
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
        if args.format == SaveFormat.JSON:  # one document: a line of its own, as the rest end
            sys.stdout.buffer.write(b"\n")
        sys.stdout.buffer.flush()
    if progress:
        progress.clear()
    if args.output and progress is not None:
        sys.stderr.write(f"wrote {result.row_count:,} rows to {args.output}\n")


def add_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Register ``query`` and its options; ``common`` holds the options every command takes."""
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
