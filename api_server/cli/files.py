"""Operator commands over what file datasources read: the shared-folder grants, whether each
file datasource's path still resolves in its organisation's area, and the storage it uses."""

from __future__ import annotations

import argparse
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api_server.cli.conventions import emit, record_operator_event, transaction
from api_server.services import organizations
from shared import shared_folders
from shared.command_line import CommandParser
from shared.datapaths import FILE_DATABASE_TYPES, resolve_datasource_path
from shared.db.models import Datasource, Organization
from shared.errors import AppError
from shared.organization_rows import recount_execution_text, recount_stored_bytes
from shared.settings import Settings
from shared.storage_quota import storage_usage


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
    with transaction(settings) as session:
        organizations.get_organization(session, args.organization)
        grant = shared_folders.grant_shared_folder(
            session, settings, args.organization, args.name, args.path
        )
        record_operator_event(
            session, args.organization, "shared_folder.grant", f"shared/{grant.name}"
        )
        emit(_shared_folder(grant))


def cmd_revoke_shared_folder(settings: Settings, args: argparse.Namespace) -> None:
    """Its datasources fail (datasource_unavailable) from their next execution on."""
    with transaction(settings) as session:
        organizations.get_organization(session, args.organization)
        users = shared_folders.revoke_shared_folder(session, args.organization, args.name)
        record_operator_event(
            session, args.organization, "shared_folder.revoke", f"shared/{args.name}"
        )
    emit({"organization_id": args.organization, "name": args.name, "datasources": users})


def cmd_list_shared_folders(settings: Settings, args: argparse.Namespace) -> None:
    with transaction(settings) as session:
        if args.organization:  # an unknown one is a mistake, not an organisation with none
            organizations.get_organization(session, args.organization)
        grants = shared_folders.list_shared_folders(session, args.organization)
        emit({"shared_folders": [_shared_folder(grant) for grant in grants]})


def cmd_check_file_datasources(settings: Settings, args: argparse.Namespace) -> None:
    """Every file datasource with what its path resolves to now: ``ok`` or the refusal's code.

    After the upgrade to per-organisation areas this lists the datasources whose files still
    have to be moved into ``<data root>/<organisation id>/``."""
    query = select(Datasource).where(Datasource.database_type.in_(FILE_DATABASE_TYPES))
    if args.organization:
        query = query.where(Datasource.organization_id == args.organization)
    found = []
    with transaction(settings) as session:
        if args.organization:
            organizations.get_organization(session, args.organization)
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
    emit({"datasources": found})


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
    with transaction(settings) as session:
        organizations.get_organization(session, args.organization)
        usage = storage_usage(session, settings, args.organization)
    emit({"organization_id": args.organization, **usage.as_meta()})


def cmd_recount_storage(settings: Settings, args: argparse.Namespace) -> None:
    """Set each organisation's counts of its stored results' bytes and of its executions' text
    to what they add up to, one organisation per transaction: after a rolling upgrade to either
    count, where a server of the older release may have changed them without counting."""
    with transaction(settings) as session:
        if args.organization:
            organizations.get_organization(session, args.organization)
            ids = [args.organization]
        else:
            ids = list(session.scalars(select(Organization.id).order_by(Organization.id)))
    recounted = []
    for organization_id in ids:
        with transaction(settings) as session:
            was, now = recount_stored_bytes(session, organization_id)
            text_was, text_now = recount_execution_text(session, organization_id)
        recounted.append(
            {
                "organization_id": organization_id,
                "counted_bytes": was,
                "results_bytes": now,
                "counted_text_bytes": text_was,
                "text_bytes": text_now,
            }
        )
    emit({"recounted": recounted})


def add_commands(commands: argparse._SubParsersAction[CommandParser]) -> None:
    """Register these commands and their options, in the order ``--help`` lists them."""
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

    recount = commands.add_parser(
        "recount-storage",
        help="set organisations' stored-result bytes and executions' text bytes to what their "
        "results and executions add up to",
    )
    recount.add_argument("--organization", help="only this organisation (default: every one)")
    recount.set_defaults(run=cmd_recount_storage)
