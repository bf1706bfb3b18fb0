"""``python -m data_server serve``: the data plane of one region under uvicorn."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence

from data_server.app import create_app, remove_dead_scratch, start_workers, stop_workers
from data_server.sample import ensure_sample_database
from shared.command_line import CommandParser, listen_options, run_command
from shared.db.engine import (
    create_metadata_engine,
    create_server_engine,
    create_session_factory,
)
from shared.db.migrate import upgrade_to_head
from shared.results import open_result_store
from shared.settings import Settings
from shared.web.serving import check_listen_address, serve


def cmd_serve(settings: Settings, args: argparse.Namespace) -> None:
    settings = settings.with_overrides(
        data_host=settings.data_host if args.host is None else args.host,
        data_port=settings.data_port if args.port is None else args.port,
    )
    check_listen_address(settings.data_host, settings.data_port)
    upgrade_to_head(create_metadata_engine(settings.database_url))
    ensure_sample_database(settings.state_dir, settings.sample_scale)
    serve(
        create_app(settings, run_workers=not args.no_workers),
        settings,
        host=settings.data_host,
        port=settings.data_port,
    )


def cmd_work(settings: Settings, args: argparse.Namespace) -> None:
    upgrade_to_head(create_metadata_engine(settings.database_url))
    ensure_sample_database(settings.state_dir, settings.sample_scale)
    engine = create_server_engine(settings)
    store = open_result_store(settings)
    remove_dead_scratch(store)
    worker = start_workers(settings, create_session_factory(engine, in_turn=True), store)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    stop_workers(worker)


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="python -m data_server", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the data server under uvicorn")
    listen_options(serve)
    serve.add_argument(
        "--no-workers", action="store_true", help="serve data only, run no executions"
    )
    serve.set_defaults(run=cmd_serve)
    work = commands.add_parser("work", help="run execution workers only, without HTTP")
    work.set_defaults(run=cmd_work)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
