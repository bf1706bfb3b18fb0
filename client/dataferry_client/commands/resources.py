"""``dataferry datasources|executions|snippets|whoami``: the API's resources, one subcommand per
action, printed as a table or, with ``--json``, as JSON."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from dataferry_client.client import Client
from dataferry_client.commands.exit_codes import ConnectionTestFailed, UsageError
from dataferry_client.terminal import print_document, print_resources

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


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Register the resource commands and their actions; ``common`` as for every command."""
    datasources = commands.add_parser("datasources", parents=[common], help="list, show, create, …")
    actions = datasources.add_subparsers(dest="action", required=True)
    actions.add_parser("list", parents=[common])
    for name in ("show", "delete", "test"):
        actions.add_parser(name, parents=[common]).add_argument("id")
    create = actions.add_parser("create", parents=[common])
    create.add_argument("--name", required=True)
    create.add_argument(
        "--type",
        required=True,
        help="duckdb, sqlite, files, postgres, mysql or s3 (README lists what each takes)",
    )
    create.add_argument(
        "--database",
        help="a path in your organisation's file area, or the remote database's name "
        "(a duckdb, sqlite or files datasource without one gets a place of its own)",
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
    wait.add_argument("--timeout", type=float, help="seconds to wait (default: until it ends)")
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
