"""Operator commands over organisations and their API keys: create them, disable, enable or
delete a key, set an organisation's rate limits and execution cap. Each but the creation of an
organisation is audited."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from sqlalchemy.orm import Session

from api_server.cli.conventions import (
    comma_list,
    datasource_ids,
    display_name,
    emit,
    record_operator_event,
    transaction,
    whole_number,
)
from api_server.permissions import parse_permissions
from api_server.services import api_keys, organizations
from shared.command_line import CommandParser
from shared.db.models import ApiKey
from shared.errors import ConfigurationError
from shared.settings import Settings
from shared.state_secrets import ServerSecrets


def cmd_create_organization(settings: Settings, args: argparse.Namespace) -> None:
    with transaction(settings, creating=True) as session:
        created = organizations.create_organization(
            session, ServerSecrets.load(settings), args.name
        )
    emit({"organization_id": created.organization_id, "api_key": created.api_key})


def cmd_ensure_demo_organization(settings: Settings, args: argparse.Namespace) -> None:
    with transaction(settings, creating=True) as session:
        created = organizations.ensure_demo_organization(
            session, ServerSecrets.load(settings), settings
        )
    emit({"organization_id": created.organization_id, "api_key": created.api_key})


def cmd_create_api_key(settings: Settings, args: argparse.Namespace) -> None:
    permissions = parse_permissions(comma_list(args.permissions) or [])
    with transaction(settings) as session:
        organizations.get_organization(session, args.organization)
        key, secret = api_keys.create_api_key(
            session,
            ServerSecrets.load(settings),
            organization_id=args.organization,
            name=args.name,
            permissions=permissions,
            datasource_ids=args.datasources,
        )
        key_id = key.id
        record_operator_event(session, args.organization, "api_key.create", key_id)
    emit({"id": key_id, "api_key": secret})


def _change_key(
    settings: Settings, key_id: str, action: str, change: Callable[[Session, ApiKey], None]
) -> None:
    """Operator changes to a key are audited like the API's, with no key as the actor."""
    with transaction(settings) as session:
        key = api_keys.find_key_anywhere(session, key_id)
        organization_id = key.organization_id
        change(session, key)
        record_operator_event(session, organization_id, action, key_id)
    emit({"id": key_id, "action": action})


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


def _largest(setting: str) -> int:
    """An organisation's limit stays within the bounds of the deployment setting it overrides."""
    bounds = Settings.model_fields[setting].metadata
    return next(bound.le for bound in bounds if isinstance(getattr(bound, "le", None), int))


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
    for name, value in changes.items():
        largest = _largest(name)
        if not 0 <= value <= largest:
            raise ConfigurationError(
                f"{name.replace('_', ' ')} is a whole number up to {largest:,}, "
                "0 for the deployment default"
            )
    with transaction(settings) as session:
        organization = organizations.get_organization(session, args.organization)
        for name, value in changes.items():
            setattr(organization, name, value or None)
        session.flush()
        if changes:  # a command that changed nothing leaves no event
            record_operator_event(session, organization.id, "organization.limits", organization.id)
        emit(
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


def add_commands(commands: argparse._SubParsersAction[CommandParser]) -> None:
    """Register these commands and their options, in the order ``--help`` lists them."""
    org = commands.add_parser(
        "create-organization", help="new organisation, sample datasource, key"
    )
    org.add_argument("--name", required=True, type=display_name)
    org.set_defaults(run=cmd_create_organization)

    demo = commands.add_parser(
        "ensure-demo-organization", help="the demo organisation of 'make run', created once"
    )
    demo.set_defaults(run=cmd_ensure_demo_organization)

    key = commands.add_parser("create-api-key", help="new API key for an organisation")
    key.add_argument("--organization", required=True)
    key.add_argument("--permissions", required=True, help="comma-separated Cluvio permission names")
    key.add_argument(
        "--datasources",
        type=datasource_ids,
        help="comma-separated datasource ids the key is limited to",
    )
    key.add_argument("--name", default="API key", type=display_name)
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
    limits.add_argument("--per-minute", type=whole_number, help="requests per key per minute")
    limits.add_argument("--per-hour", type=whole_number, help="requests per key per hour")
    limits.add_argument(
        "--max-running-executions", type=whole_number, help="unfinished executions at once"
    )
    limits.set_defaults(run=cmd_set_organization_limits)
