"""``python -m api_server``: serve, migrate, and the operator commands that print one JSON object."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from api_server.cli import files, organizations
from api_server.cli.conventions import emit, whole_number
from shared.command_line import CommandParser, listen_options, run_command
from shared.db.engine import create_metadata_engine
from shared.db.migrate import upgrade_to_head
from shared.settings import Settings
from shared.signing_keys import rotate_signing_key


def cmd_serve(settings: Settings, args: argparse.Namespace) -> None:
    # Imported here: the operator commands need neither the app nor uvicorn, and importing them
    # doubles every command's start-up time.
    from api_server.app import create_app
    from shared.web.serving import check_listen_address, serve

    settings = settings.with_overrides(
        api_host=settings.api_host if args.host is None else args.host,
        api_port=settings.api_port if args.port is None else args.port,
    )
    check_listen_address(settings.api_host, settings.api_port)
    upgrade_to_head(create_metadata_engine(settings.database_url))
    serve(create_app(settings), settings, host=settings.api_host, port=settings.api_port)


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> None:
    upgrade_to_head(create_metadata_engine(settings.database_url))


def cmd_rotate_signing_key(settings: Settings, args: argparse.Namespace) -> None:
    """Prints kids and times only: the private key never leaves its file."""
    rotation = rotate_signing_key(settings, overlap_seconds=args.overlap_seconds)
    emit(
        {
            "kid": rotation.kid,
            "signs_from": rotation.signs_from,
            "previous_kid": rotation.previous_kid,
            "previous_retire_at": rotation.previous_retire_at,
            "pruned": rotation.pruned,
        }
    )


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="python -m api_server", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="migrate, then run the API server under uvicorn")
    listen_options(serve)
    serve.set_defaults(run=cmd_serve)

    commands.add_parser("migrate", help="upgrade the metadata DB to head").set_defaults(
        run=cmd_migrate
    )

    organizations.add_commands(commands)
    files.add_commands(commands)

    rotate = commands.add_parser(
        "rotate-signing-key",
        help="publish a new data-token signing key; the old one works until the overlap ends",
    )
    rotate.add_argument(
        "--overlap-seconds",
        type=whole_number,
        help="how long tokens of the old key stay valid once the new one signs "
        "(default: the token lifetime + 30 s; at most a day). Shorter ends tokens the old key "
        "signed before they expire (0: at once, for a key that leaked)",
    )
    rotate.set_defaults(run=cmd_rotate_signing_key)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
