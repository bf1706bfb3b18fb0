"""``python -m api_server``: serve, migrate, and the operator commands that print one JSON object."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import orjson
import uvicorn
from sqlalchemy import select
from sqlalchemy.orm import Session

from api_server.app import create_app
from api_server.audit import record_event
from api_server.permissions import parse_permissions
from api_server.services import api_keys, organizations
from shared import shared_folders
from shared.datapaths import FILE_DATABASE_TYPES, resolve_datasource_path
from shared.db.engine import create_metadata_engine, create_session_factory
from shared.db.migrate import upgrade_to_head
from shared.db.models import ApiKey, Datasource
from shared.errors import AppError, ConfigurationError
from shared.http_limits import uvicorn_options
from shared.logging import configure_logging
from shared.settings import Settings
from shared.state_secrets import ServerSecrets
from shared.storage_quota import storage_usage
from shared.tokens import rotate_signing_key


def _emit(payload: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(payload).decode() + "\n")
    sys.stdout.flush()


def _split(value: str | None) -> list[str] | None:
    return None if value is None else [part.strip() for part in value.split(",") if part.strip()]


@contextmanager
def _transaction(settings: Settings) -> Iterator[Session]:
    """One transaction of an operator command; the schema is brought up to date first, as
    ``serve`` does, and the engine's connections are closed afterwards."""
    engine = create_metadata_engine(settings.database_url)
    try:
        upgrade_to_head(engine)
        with create_session_factory(engine).begin() as session:
            yield session
    finally:
        engine.dispose()


def cmd_serve(settings: Settings, args: argparse.Namespace) -> None:
    upgrade_to_head(create_metadata_engine(settings.database_url))
    settings = settings.with_overrides(
        api_host=args.host or settings.api_host, api_port=args.port or settings.api_port
    )
    uvicorn.run(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        **uvicorn_options(settings),
    )


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> None:
    upgrade_to_head(create_metadata_engine(settings.database_url))


def cmd_create_organization(settings: Settings, args: argparse.Namespace) -> None:
    with _transaction(settings) as session:
        created = organizations.create_organization(
            session, ServerSecrets.load(settings), args.name
        )
    _emit({"organization_id": created.organization_id, "api_key": created.api_key})


def cmd_ensure_demo_organization(settings: Settings, args: argparse.Namespace) -> None:
    with _transaction(settings) as session:
        created = organizations.ensure_demo_organization(
            session, ServerSecrets.load(settings), settings
        )
    _emit({"organization_id": created.organization_id, "api_key": created.api_key})


def cmd_create_api_key(settings: Settings, args: argparse.Namespace) -> None:
    permissions = parse_permissions(_split(args.permissions) or [])
    with _transaction(settings) as session:
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


def _change_key(
    settings: Settings, key_id: str, action: str, change: Callable[[Session, ApiKey], None]
) -> None:
    """Operator changes to a key are audited like the API's, with no key as the actor."""
    with _transaction(settings) as session:
        key = api_keys.find_key_anywhere(session, key_id)
        organization_id = key.organization_id
        change(session, key)
        _record_operator_event(session, organization_id, action, key_id)
    _emit({"id": key_id, "action": action})


def _record_operator_event(
    session: Session, organization_id: str, action: str, resource_id: str
) -> None:
    """An operator's command in the organisation's audit log: method CLI, no key as the actor."""
    record_event(
        session,
        organization_id=organization_id,
        action=action,
        method="CLI",
        path=f"python -m api_server {action}",
        status=0,
        resource_id=resource_id,
    )


def cmd_disable_api_key(settings: Settings, args: argparse.Namespace) -> None:
    _change_key(
        settings,
        args.id,
        "api_key.disable",
        lambda s, k: api_keys.set_enabled_by_operator(s, k, enabled=False),
    )


def cmd_enable_api_key(settings: Settings, args: argparse.Namespace) -> None:
    _change_key(
        settings,
        args.id,
        "api_key.enable",
        lambda s, k: api_keys.set_enabled_by_operator(s, k, enabled=True),
    )


def cmd_delete_api_key(settings: Settings, args: argparse.Namespace) -> None:
    _change_key(settings, args.id, "api_key.delete", api_keys.delete_key_by_operator)


def cmd_set_organization_limits(settings: Settings, args: argparse.Namespace) -> None:
    """0 returns a limit to the deployment's default."""
    changes = {
        name: value
        for name, value in (
            ("rate_limit_per_minute", args.per_minute),
            ("rate_limit_per_hour", args.per_hour),
            ("max_running_executions", args.max_running_executions),
        )
        if value is not None
    }
    if any(value < 0 for value in changes.values()):
        raise ConfigurationError("limits are whole numbers, 0 for the deployment default")
    with _transaction(settings) as session:
        organization = organizations.get_organization(session, args.organization)
        for name, value in changes.items():
            setattr(organization, name, value or None)
        session.flush()
        _emit(
            {
                "organization_id": organization.id,
                "rate_limit_per_minute": organization.rate_limit_per_minute
                or settings.rate_limit_per_minute,
                "rate_limit_per_hour": organization.rate_limit_per_hour
                or settings.rate_limit_per_hour,
                "max_running_executions": organization.max_running_executions
                or settings.max_running_executions,
            }
        )


def _shared_folder(grant: Any) -> dict[str, Any]:
    return {
        "id": grant.id,
        "organization_id": grant.organization_id,
        "name": grant.name,
        "path": grant.path,
        "datasource_path": f"shared/{grant.name}",
        "created_at": grant.created_at.isoformat(),
    }


def cmd_grant_shared_folder(settings: Settings, args: argparse.Namespace) -> None:
    """Let one organisation read a folder outside the data root, as ``shared/<name>/…``."""
    with _transaction(settings) as session:
        organizations.get_organization(session, args.organization)
        grant = shared_folders.grant_shared_folder(
            session, settings, args.organization, args.name, args.path
        )
        _record_operator_event(
            session, args.organization, "shared_folder.grant", f"shared/{grant.name}"
        )
        _emit(_shared_folder(grant))


def cmd_revoke_shared_folder(settings: Settings, args: argparse.Namespace) -> None:
    """Its datasources fail (datasource_unavailable) from their next execution on."""
    with _transaction(settings) as session:
        organizations.get_organization(session, args.organization)
        users = shared_folders.revoke_shared_folder(session, args.organization, args.name)
        _record_operator_event(
            session, args.organization, "shared_folder.revoke", f"shared/{args.name}"
        )
    _emit({"organization_id": args.organization, "name": args.name, "datasources": users})


def cmd_list_shared_folders(settings: Settings, args: argparse.Namespace) -> None:
    with _transaction(settings) as session:
        grants = shared_folders.list_shared_folders(session, args.organization)
        _emit({"shared_folders": [_shared_folder(grant) for grant in grants]})


def cmd_check_file_datasources(settings: Settings, args: argparse.Namespace) -> None:
    """Every file datasource with what its path resolves to now: ``ok`` or the refusal's code.

    After the upgrade to per-organisation areas this lists the datasources whose files still
    have to be moved into ``<data root>/<organisation id>/``."""
    query = select(Datasource).where(Datasource.database_type.in_(FILE_DATABASE_TYPES))
    if args.organization:
        query = query.where(Datasource.organization_id == args.organization)
    found = []
    with _transaction(settings) as session:
        for ds in session.scalars(query.order_by(Datasource.organization_id, Datasource.id)):
            problem = _file_problem(session, settings, ds)
            if problem is None and args.problems_only:
                continue
            found.append(
                {
                    "id": ds.id,
                    "organization_id": ds.organization_id,
                    "name": ds.name,
                    "database_type": ds.database_type,
                    "database": ds.database,
                    "enabled": ds.enabled,
                    "status": problem.code if problem else "ok",
                    "detail": problem.detail if problem else None,
                }
            )
    _emit({"datasources": found})


def _file_problem(session: Session, settings: Settings, ds: Datasource) -> AppError | None:
    try:
        resolve_datasource_path(
            settings.data_root,
            ds.organization_id,
            ds.database or "",
            want_dir=FILE_DATABASE_TYPES[ds.database_type],
            granted_folder=lambda name: shared_folders.granted_folder(
                session, settings, ds.organization_id, name
            ),
        )
    except AppError as exc:
        return exc
    return None


def cmd_storage_usage(settings: Settings, args: argparse.Namespace) -> None:
    """What one organisation stores against its quota: its area's files and its stored results."""
    with _transaction(settings) as session:
        organizations.get_organization(session, args.organization)
        usage = storage_usage(session, settings, args.organization)
    _emit({"organization_id": args.organization, **usage.as_meta()})


def cmd_rotate_signing_key(settings: Settings, args: argparse.Namespace) -> None:
    """Prints kids and times only: the private key never leaves its file."""
    rotation = rotate_signing_key(settings, overlap_seconds=args.overlap_seconds)
    _emit(
        {
            "kid": rotation.kid,
            "signs_from": rotation.signs_from,
            "previous_kid": rotation.previous_kid,
            "previous_retire_at": rotation.previous_retire_at,
            "pruned": rotation.pruned,
        }
    )


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

    for name, run, text in (
        (
            "disable-api-key",
            cmd_disable_api_key,
            "stop a key working (401), keeping it; only enable-api-key undoes it",
        ),
        ("enable-api-key", cmd_enable_api_key, "let a disabled key work again"),
        ("delete-api-key", cmd_delete_api_key, "remove a key for good"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("--id", required=True, help="the key's id (not its secret)")
        command.set_defaults(run=run)

    limits = commands.add_parser(
        "set-organization-limits", help="rate limits and execution cap of one organisation"
    )
    limits.add_argument("--organization", required=True)
    limits.add_argument("--per-minute", type=int, help="requests per key per minute")
    limits.add_argument("--per-hour", type=int, help="requests per key per hour")
    limits.add_argument("--max-running-executions", type=int, help="unfinished executions at once")
    limits.set_defaults(run=cmd_set_organization_limits)

    grant = commands.add_parser(
        "grant-shared-folder",
        help="let one organisation read a folder outside the data root (as shared/NAME/...)",
    )
    grant.add_argument("--organization", required=True)
    grant.add_argument("--name", required=True, help="what its datasources call it: shared/NAME")
    grant.add_argument("--path", required=True, help="absolute path of an existing directory")
    grant.set_defaults(run=cmd_grant_shared_folder)

    revoke = commands.add_parser(
        "revoke-shared-folder", help="take a shared folder back; its datasources stop working"
    )
    revoke.add_argument("--organization", required=True)
    revoke.add_argument("--name", required=True)
    revoke.set_defaults(run=cmd_revoke_shared_folder)

    listing = commands.add_parser("list-shared-folders", help="the shared-folder grants")
    listing.add_argument("--organization", help="only this organisation's")
    listing.set_defaults(run=cmd_list_shared_folders)

    check = commands.add_parser(
        "check-file-datasources",
        help="file datasources and whether their path resolves in their organisation's area",
    )
    check.add_argument("--organization", help="only this organisation's")
    check.add_argument(
        "--problems-only", action="store_true", help="only those that cannot read their path"
    )
    check.set_defaults(run=cmd_check_file_datasources)

    usage = commands.add_parser(
        "storage-usage",
        help="bytes an organisation stores (files, results) against DATAFERRY_MAX_ORGANIZATION_STORAGE_MB",
    )
    usage.add_argument("--organization", required=True)
    usage.set_defaults(run=cmd_storage_usage)

    rotate = commands.add_parser(
        "rotate-signing-key",
        help="publish a new data-token signing key; the old one works until the overlap ends",
    )
    rotate.add_argument(
        "--overlap-seconds",
        type=int,
        help="how long tokens of the old key stay valid once the new one signs "
        "(default: the token lifetime + 30 s)",
    )
    rotate.set_defaults(run=cmd_rotate_signing_key)
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
