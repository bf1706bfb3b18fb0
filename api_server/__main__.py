"""``python -m api_server``: serve, migrate, and the operator commands that print one JSON object."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import orjson
import uvicorn
from sqlalchemy.orm import Session, sessionmaker

from api_server.app import create_app
from api_server.permissions import parse_permissions
from api_server.services import api_keys, organizations
from shared.db.engine import create_metadata_engine, create_session_factory
from shared.db.migrate import upgrade_to_head
from shared.errors import AppError, ConfigurationError
from shared.logging import configure_logging
from shared.settings import Settings
from shared.state_secrets import ServerSecrets


def _emit(payload: dict[str, str]) -> None:
    sys.stdout.write(orjson.dumps(payload).decode() + "\n")
    sys.stdout.flush()


def _split(value: str | None) -> list[str] | None:
    return None if value is None else [part.strip() for part in value.split(",") if part.strip()]


def _sessions(settings: Settings) -> sessionmaker[Session]:
    """Operator commands bring the schema up to date first, as ``serve`` does."""
    engine = create_metadata_engine(settings.database_url)
    upgrade_to_head(engine)
    return create_session_factory(engine)


def cmd_serve(settings: Settings, args: argparse.Namespace) -> None:
    upgrade_to_head(create_metadata_engine(settings.database_url))
    settings = settings.with_overrides(
        api_host=args.host or settings.api_host, api_port=args.port or settings.api_port
    )
    uvicorn.run(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=10,
    )


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> None:
    upgrade_to_head(create_metadata_engine(settings.database_url))


def cmd_create_organization(settings: Settings, args: argparse.Namespace) -> None:
    sessions = _sessions(settings)
    with sessions.begin() as session:
        created = organizations.create_organization(
            session, ServerSecrets.load(settings), args.name
        )
    _emit({"organization_id": created.organization_id, "api_key": created.api_key})


def cmd_ensure_demo_organization(settings: Settings, args: argparse.Namespace) -> None:
    sessions = _sessions(settings)
    with sessions() as session:
        created = organizations.ensure_demo_organization(
            session, ServerSecrets.load(settings), settings
        )
    _emit({"organization_id": created.organization_id, "api_key": created.api_key})


def cmd_create_api_key(settings: Settings, args: argparse.Namespace) -> None:
    permissions = parse_permissions(_split(args.permissions) or [])
    sessions = _sessions(settings)
    with sessions.begin() as session:
        organizations.get_organization(session, args.organization)
        key, secret = api_keys.create_api_key(
            session,
            ServerSecrets.load(settings),
            organization_id=args.organization,
            name=args.name,
            permissions=permissions,
            datasource_ids=_split(args.datasources),
        )
        key_id = key.id
    _emit({"id": key_id, "api_key": secret})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m api_server", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="migrate, then run the API server under uvicorn")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.set_defaults(run=cmd_serve)

    commands.add_parser("migrate", help="upgrade the metadata DB to head").set_defaults(
        run=cmd_migrate
    )

    org = commands.add_parser(
        "create-organization", help="new organisation, sample datasource, key"
    )
    org.add_argument("--name", required=True)
    org.set_defaults(run=cmd_create_organization)

    demo = commands.add_parser(
        "ensure-demo-organization", help="the demo organisation of 'make run', created once"
    )
    demo.set_defaults(run=cmd_ensure_demo_organization)

    key = commands.add_parser("create-api-key", help="new API key for an organisation")
    key.add_argument("--organization", required=True)
    key.add_argument("--permissions", required=True, help="comma-separated Cluvio permission names")
    key.add_argument("--datasources", help="comma-separated datasource ids the key is limited to")
    key.add_argument("--name", default="API key")
    key.set_defaults(run=cmd_create_api_key)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        configure_logging(settings.log_level)
        args.run(settings, args)
    except (AppError, ConfigurationError) as exc:
        detail = exc.detail if isinstance(exc, AppError) else str(exc)
        sys.stderr.write(f"error: {detail}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
