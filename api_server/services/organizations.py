"""Organisations: created with their sample datasource and a first all-permissions key."""

from __future__ import annotations

import os
from dataclasses import dataclass

import orjson
from sqlalchemy.orm import Session

from api_server.permissions import Permission
from api_server.services import api_keys, datasources, executions
from shared.db.models import Organization
from shared.display_names import display_name
from shared.errors import NotFound, Unprocessable
from shared.lifecycle import ExecutionType
from shared.settings import Settings
from shared.state_secrets import ServerSecrets

DEMO_CREDENTIALS_FILE = "demo-organization.json"


@dataclass(frozen=True)
class CreatedOrganization:
    organization_id: str
    api_key: str


def create_organization(
    session: Session, server_secrets: ServerSecrets, name: str
) -> CreatedOrganization:
    try:
        name = display_name(name)
    except ValueError as exc:
        raise Unprocessable(f"The organisation name {exc}.") from None
    organization = Organization(name=name)
    session.add(organization)
    session.flush()
    sample = datasources.create_sample_datasource(session, organization.id)
    executions.create_system_execution(session, sample, ExecutionType.DATASOURCE_REFRESH)
    _, secret = api_keys.create_api_key(
        session,
        server_secrets,
        organization_id=organization.id,
        name="Initial key",
        permissions=list(Permission),
    )
    return CreatedOrganization(organization_id=organization.id, api_key=secret)


def ensure_demo_organization(
    session: Session, server_secrets: ServerSecrets, settings: Settings
) -> CreatedOrganization:
    """The demo organisation of ``make run``: created once, its key kept in the state dir (0600)."""
    path = settings.state_dir / DEMO_CREDENTIALS_FILE
    if path.exists():
        stored = orjson.loads(path.read_bytes())
        caller = api_keys.find_caller(session.connection(), server_secrets, stored["api_key"])
        if caller is not None and caller.organization_id == stored["organization_id"]:
            return CreatedOrganization(**stored)
    created = create_organization(session, server_secrets, "Demo")
    session.commit()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(orjson.dumps(created.__dict__))
    tmp.replace(path)
    return created


def get_organization(session: Session, organization_id: str) -> Organization:
    organization = session.get(Organization, organization_id)
    if organization is None:
        raise NotFound(f"No organisation {organization_id}.")
    return organization
