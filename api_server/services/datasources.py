"""Datasources of one organisation, as the calling key may see and change them."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, bindparam, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api_server.principals import Principal
from api_server.services.listing import CollectionQuery
from api_server.services.object_limits import require_room
from shared import object_storage
from shared.database_types import CONNECTION_ATTRIBUTES, check_connection_attributes
from shared.datapaths import (
    FILE_DATABASE_TYPES,
    DatasourcePath,
    PathNotFound,
    default_datasource_path,
    ensure_organization_area,
    held_paths,
    organization_area,
    reads_in_or_around,
    resolve_datasource_path,
)
from shared.db.engine import held_against_delete, locked_to_change, write_lock_on_sqlite
from shared.db.models import Datasource, Execution, Filter, Report, read_only, table_of
from shared.egress import check_destination
from shared.errors import AppError, Conflict, NotFound, Unprocessable
from shared.ids import new_resource_id
from shared.lifecycle import delete_executions
from shared.organization_rows import lock_organization
from shared.settings import Settings
from shared.shared_folders import granted_folder
from shared.state_secrets import ServerSecrets

SAMPLE_DATASOURCE_NAME = "Sample Data"

_NOT_FOUND_DETAIL = "No datasource with this id exists."


def within_scope(principal: Principal, organization_id: Any, datasource_id: Any) -> Any:
    """The WHERE clause of rows the key reaches, given their organisation and datasource
    columns: its own organisation's, on the datasources it is restricted to (if it is)."""
    clause = organization_id == principal.organization_id
    if principal.datasource_ids is not None:
        clause = clause & datasource_id.in_(principal.datasource_ids)
    return clause


def _visible(principal: Principal) -> Any:
    """The WHERE clause every datasource query starts from."""
    return within_scope(principal, Datasource.organization_id, Datasource.id)


def list_datasources(
    session: Session, principal: Principal, query: CollectionQuery
) -> tuple[list[Datasource], int]:
    where = _visible(principal)
    for name, value in query.filters.items():
        where = where & (getattr(Datasource, name) == value)
    total = session.scalar(select(func.count()).select_from(Datasource).where(where)) or 0
    order = [
        _sort_key(name).desc() if descending else _sort_key(name).asc()
        for name, descending in query.sort
    ] or [Datasource.created_at.asc()]
    rows = session.scalars(
        select(Datasource)
        .where(where)
        .order_by(*order, Datasource.id)
        .offset(query.offset)
        .limit(query.page_size)
    ).all()
    return list(rows), total


def _sort_key(name: str) -> Any:
    """Text sorts case-insensitively, the same on SQLite and PostgreSQL whatever the collation."""
    column = getattr(Datasource, name)
    return func.lower(column) if name in ("name", "database_type") else column


_DATASOURCES = table_of(Datasource)
# Every run reads it: built once, bound per call; as an object of a session to change it, as a
# read-only row to read it. A key's datasource restriction is checked on the row
# (``Principal.reaches_datasource``), as ``within_scope`` would have filtered it.
_OWN = (
    _DATASOURCES.c.id == bindparam("id"),
    _DATASOURCES.c.organization_id == bindparam("organization_id"),
)
_OWN_DATASOURCE = select(Datasource).where(*_OWN)
_OWN_ROW = select(_DATASOURCES).where(*_OWN)


_LOCKED_FOR_DELETE = select(Datasource.id).where(Datasource.id == bindparam("id")).with_for_update()


def get_datasource(
    session: Session,
    principal: Principal,
    datasource_id: str,
    *,
    for_update: bool = False,
    held: bool = False,
) -> Datasource:
    """404 alike for a foreign, out-of-scope or unknown id: nothing tells them apart.
    ``for_update``: to change it, locked until the transaction ends (SQLite's write lock first),
    so that the checks of a change judge the row as it is written (a password required for a
    new destination, say), and a change racing a delete finds it gone (404). ``held``: a row
    about to reference it (a report) is inserted next; a delete waits until then (the caller
    holds SQLite's write lock)."""
    statement = _OWN_DATASOURCE
    if for_update:
        statement = locked_to_change(session, statement)
    elif held:
        statement = held_against_delete(statement)
    ds = session.scalar(statement, _ownership(principal, datasource_id))
    return _reached_or_404(principal, ds)


def read_datasource(connection: Connection, principal: Principal, datasource_id: str) -> Datasource:
    """``get_datasource`` for a caller that only reads it: a read-only row (``read_only``)."""
    row = connection.execute(_OWN_ROW, _ownership(principal, datasource_id)).first()
    return _reached_or_404(principal, None if row is None else read_only(Datasource, row))


def _ownership(principal: Principal, datasource_id: str) -> dict[str, str]:
    return {"id": datasource_id, "organization_id": principal.organization_id}


def _reached_or_404(principal: Principal, ds: Datasource | None) -> Datasource:
    if ds is None or not principal.reaches_datasource(ds.id):
        raise NotFound(_NOT_FOUND_DETAIL)
    return ds


def create_datasource(
    session: Session,
    principal: Principal,
    attributes: Mapping[str, Any],
    settings: Settings,
    server_secrets: ServerSecrets,
) -> Datasource:
    """``attributes``: every writable attribute, validated, defaults filled in."""
    principal.require_every_datasource("create datasources")
    password, database_type = attributes.get("password"), attributes["database_type"]
    values = {
        name: value
        for name, value in attributes.items()
        if value is not None and name != "password" and hasattr(Datasource, name)
    }
    datasource_id = new_resource_id()
    assigned = "database" not in values and database_type in FILE_DATABASE_TYPES
    if assigned:  # a folder or file of its own, which uploads then fill
        values["database"] = default_datasource_path(database_type, datasource_id)
    values.update(check_connection_attributes(database_type, {**values, "password": password}))
    _check_destination(
        settings,
        values.get("host"),
        _destination_port(database_type, values.get("port"), values["require_ssl"]),
    )
    # After the destination's check (a name lookup may take a while): the organisation's lock
    # is held from here until the commit.
    _check_datasource_limit(session, principal.organization_id, settings.max_datasources)
    # Last: for a file type it may make the datasource's folder, which no later check undoes.
    values["database"] = _checked_database_path(
        session,
        settings,
        principal,
        datasource_id,
        database_type,
        values.get("database"),
        create_missing=assigned,
    )
    ds = Datasource(id=datasource_id, organization_id=principal.organization_id, **values)
    if password is not None:
        ds.password_encrypted = server_secrets.encrypt(password)
    session.add(ds)
    session.flush()
    return ds


def update_datasource(
    session: Session,
    principal: Principal,
    datasource_id: str,
    changes: dict[str, Any],
    settings: Settings,
    server_secrets: ServerSecrets,
) -> Datasource:
    """``changes``: the attributes the request sent, validated (only these change)."""
    ds = get_datasource(session, principal, datasource_id, for_update=True)
    changes = dict(changes)
    if ds.database_type == "sample":
        fixed = set(changes) - {"name", "enabled", "data_time_zone", "max_concurrent_executions"}
        if fixed:
            raise Conflict(
                "The sample datasource only allows changing name, enabled, data_time_zone "
                "and max_concurrent_executions.",
                pointer=f"/data/attributes/{sorted(fixed)[0]}",
                code="sample_datasource_fixed",
            )
    if "database_type" in changes or "database" in changes:
        database_type = changes.get("database_type", ds.database_type)
        changes["database"] = _checked_database_path(
            session,
            settings,
            principal,
            ds.id,
            database_type,
            changes.get("database", ds.database),
        )
    _check_changed_connection(ds, changes)
    _check_destination(
        settings,
        changes.get("host"),
        _destination_port(
            changes.get("database_type", ds.database_type),
            changes.get("port"),
            changes.get("require_ssl", ds.require_ssl),
        ),
    )
    _require_password_for_new_destination(ds, changes)
    if "password" in changes:
        password = changes.pop("password")
        ds.password_encrypted = server_secrets.encrypt(password) if password is not None else None
    for name, value in changes.items():
        if hasattr(Datasource, name):
            setattr(ds, name, value)
    session.flush()
    return ds


# Where a datasource's stored password is sent: changing one of these sends it elsewhere. The
# account and database it logs in to count too: the password of one account tried on another of
# the same server, and a server's refusal quotes both, where a password among them shows
# redacted (an outside probe: `database` set to "aa <guess> bb" answered whether the guess was it).
_DESTINATION = ("database_type", "host", "port", "database", "username")
# An s3 datasource's secret signs requests for its bucket and prefix (``database``), and, with no
# ``host``, the region names AWS's endpoint: <bucket>.s3.<region>.amazonaws.com.
_S3_DESTINATION = ("s3_region",)
_TLS = ("require_ssl", "verify_ssl")


def _require_password_for_new_destination(ds: Datasource, changes: dict[str, Any]) -> None:
    """A stored password goes only where it was given for: a key that may manage a datasource
    but was never told its password could otherwise point it at a server (or a bucket) of its
    own, or drop TLS or its certificate check on the way, and be sent the password, in clear if
    that server asks for it so, or have requests signed with it. A change of type, host, port,
    database or username (an s3 datasource's region too), or TLS no longer required or no
    longer verified, sends the password again, or null."""
    if ds.password_encrypted is None or "password" in changes:
        return
    destination: tuple[str, ...] = _DESTINATION
    if "s3" in (ds.database_type, changes.get("database_type")):
        destination += _S3_DESTINATION
    moved = [
        name for name in destination if changes.get(name, getattr(ds, name)) != getattr(ds, name)
    ]
    moved += [name for name in _TLS if getattr(ds, name) and changes.get(name) is False]
    if moved:
        raise Unprocessable(
            f"Changing {', '.join(moved)} sends the datasource's password to a new "
            "destination: send the password again (or null to drop it).",
            pointer="/data/attributes/password",
            code="password_required",
        )


def _check_changed_connection(ds: Datasource, changes: dict[str, Any]) -> None:
    """What the datasource's type requires and takes, judged on its attributes after the change;
    fills the type's default port into ``changes``."""
    touched = {"database_type", *CONNECTION_ATTRIBUTES} & set(changes)
    if ds.database_type == "sample" or not touched:
        return
    after = {name: getattr(ds, name) for name in CONNECTION_ATTRIBUTES if name != "password"}
    after["password"] = ds.password_encrypted
    after.update({name: changes[name] for name in CONNECTION_ATTRIBUTES if name in changes})
    database_type = changes.get("database_type", ds.database_type)
    changes.update(check_connection_attributes(database_type, after))


def _destination_port(database_type: str, port: int | None, require_ssl: bool) -> int | None:
    """An s3 endpoint without a port is reached on the standard one of its scheme."""
    if database_type == object_storage.DATABASE_TYPE and port is None:
        return object_storage.default_port(require_ssl)
    return port


def _check_destination(settings: Settings, host: str | None, port: int | None) -> None:
    """The egress policy on a host being saved (an update re-judges it only when a connection
    attribute changes); the worker checks again right before it connects, and connects to the
    address that check returns."""
    if host and port:
        check_destination(host, port, settings, pointer="/data/attributes/host")


@dataclass(frozen=True)
class DeletedData:
    """What a deleted datasource had stored, for the caller to delete after the commit."""

    results: list[str]
    schemas: list[str]
    organization_id: str = ""
    # The datasource's own places in the area (``default_datasource_path``), that nothing else
    # reads: its uploads go with it.
    own_places: tuple[str, ...] = ()


def delete_datasource(
    session: Session, settings: Settings, principal: Principal, datasource_id: str
) -> DeletedData:
    """Delete the datasource with all its executions, as a purge would: their tokens find nothing.

    The organisation's row is locked first, as every writer of its stored results takes it
    (``shared.organization_rows``). Executions go next, row by row locked: a worker's completion
    committed before is returned here, and one after finds its row gone, so the queue refuses it
    and the worker deletes its own upload (a running query also loses its lease and stops). Then
    the datasource row is locked and read afresh for the newest schema. Execution rows before the
    datasource row: the order a worker's refresh takes them, so the two cannot deadlock."""
    write_lock_on_sqlite(session)
    ds = get_datasource(session, principal, datasource_id)
    lock_organization(session, ds.organization_id)
    _refuse_if_reports_use(session, ds)
    results = delete_executions(session, ds.organization_id, Execution.datasource_id == ds.id)
    if session.scalar(_LOCKED_FOR_DELETE, {"id": ds.id}) is None:  # a concurrent delete won
        raise NotFound(_NOT_FOUND_DETAIL)
    session.refresh(ds)
    schema = ds.schema_data_key
    own_places = _own_places_of(session, settings, ds)
    session.delete(ds)
    try:
        session.flush()
    except IntegrityError:  # a report, filter or execution created on it meanwhile committed
        raise Conflict(
            "A report, filter or execution was just created on this datasource; delete again, "
            "or first move or delete the report or filter.",
            code="datasource_in_use",
        ) from None
    return DeletedData(
        results=[key for key in results if key],
        schemas=[schema] if schema else [],
        organization_id=ds.organization_id,
        own_places=own_places,
    )


def _refuse_if_reports_use(session: Session, ds: Datasource) -> None:
    """A report runs on its datasource, a filter's options SQL too: 409 while any does (the
    database would refuse too)."""
    for model, what in ((Report, "report(s) run"), (Filter, "filter(s) take options")):
        count = session.scalar(
            select(func.count()).select_from(model).where(model.datasource_id == ds.id)
        )
        if count:
            raise Conflict(
                f"{count} {what} on this datasource; move them to another datasource or "
                "delete them first.",
                code="datasource_in_use",
            )


def _own_places_of(session: Session, settings: Settings, ds: Datasource) -> tuple[str, ...]:
    """The places the server may have assigned the datasource (one per file type: its type or
    its path may have changed since, which left its uploads there, out of every listing but
    counted in the quota), those that exist and that no other datasource of its organisation
    reads (one created with that path later, or with a path that a link makes the same place:
    found by the outside probe, a restricted key deleting its own datasource removed what
    another, beyond its scope, read through a link)."""
    area = organization_area(settings.data_root, ds.organization_id)
    places = []
    for database_type in FILE_DATABASE_TYPES:
        place = default_datasource_path(database_type, ds.id)
        if not os.path.lexists(area / place):
            continue
        if _read_by_another(session, settings, ds.organization_id, ds.id, (area / place).resolve()):
            continue
        shared = session.scalar(
            select(func.count())
            .select_from(Datasource)
            .where(
                Datasource.organization_id == ds.organization_id,
                Datasource.id != ds.id,
                (Datasource.database == place)
                | Datasource.database.startswith(f"{place}/", autoescape=True),
            )
        )
        if not shared:
            places.append(place)
    return tuple(places)


def create_sample_datasource(session: Session, organization_id: str) -> Datasource:
    ds = Datasource(
        organization_id=organization_id,
        name=SAMPLE_DATASOURCE_NAME,
        database_type="sample",
        default_schema_name="main",
        require_ssl=False,
    )
    session.add(ds)
    session.flush()
    return ds


def _check_datasource_limit(session: Session, organization_id: str, limit: int) -> None:
    """Under the organisation's lock, held until the new one is committed: creates at once
    cannot each count the same datasources and together pass the limit."""
    lock_organization(session, organization_id)
    require_room(
        session, organization_id, Datasource, limit, counted=Datasource.database_type != "sample"
    )


def _checked_database_path(
    session: Session,
    settings: Settings,
    principal: Principal,
    datasource_id: str,
    database_type: str,
    database: str | None,
    *,
    create_missing: bool = False,
) -> str | None:
    """A file type's path, normalised and confined to the organisation's area or a grant, and
    clear of what other datasources hold (``_refuse_others_data``)."""
    if database_type not in FILE_DATABASE_TYPES:
        return database
    organization_id = principal.organization_id
    ensure_organization_area(settings.data_root, organization_id)
    pointer = "/data/attributes/database"
    located = resolve_datasource_path(
        settings.data_root,
        organization_id,
        database or "",
        want_dir=FILE_DATABASE_TYPES[database_type],
        granted_folder=_granted_folders(session, settings, organization_id),
        pointer=pointer,
        create_missing=create_missing,
    )
    _refuse_others_data(session, settings, principal, datasource_id, located, pointer)
    return located.relative


def _granted_folders(
    session: Session, settings: Settings, organization_id: str
) -> Callable[[str], Path | None]:
    return lambda name: granted_folder(session, settings, organization_id, name)


def _located(
    session: Session, settings: Settings, organization_id: str, database_type: str, database: str
) -> Path | None:
    """Where a datasource's path leads; None if nothing is there."""
    try:
        return resolve_datasource_path(
            settings.data_root,
            organization_id,
            database,
            want_dir=FILE_DATABASE_TYPES[database_type],
            granted_folder=_granted_folders(session, settings, organization_id),
        ).path
    except AppError:
        return None


def _refuse_others_data(
    session: Session,
    settings: Settings,
    principal: Principal,
    datasource_id: str,
    located: DatasourcePath,
    pointer: str,
) -> None:
    """A key restricted to listed datasources may not point one of them into, or around, what a
    datasource beyond them reads. Else the key would read, fill or replace that one's data
    through its own. It is answered as a path that leads nowhere is, word for word, so that it
    tells nothing of the other. (A key of the whole organisation may point two datasources at
    one place: deleting one then leaves what the other reads.)"""
    if read_beyond_scope(session, settings, principal, datasource_id, located.path):
        kind = "folder" if located.path.is_dir() else "file"
        raise PathNotFound(
            f"No {kind} at {located.relative!r} in your organisation's file area.",
            pointer=pointer,
        )


def read_beyond_scope(
    session: Session, settings: Settings, principal: Principal, datasource_id: str, path: Path
) -> bool:
    """Whether a datasource beyond the scope of a key restricted to listed datasources reads in
    or around ``path``; never for a key of the whole organisation."""
    if principal.datasource_ids is None:
        return False
    return _read_by_another(
        session, settings, principal.organization_id, datasource_id, path, principal.datasource_ids
    )


def _read_by_another(
    session: Session,
    settings: Settings,
    organization_id: str,
    datasource_id: str,
    path: Path,
    besides: frozenset[str] = frozenset(),
) -> bool:
    """Whether another file datasource of the organisation (not one of ``besides``) reads in or
    around ``path``: its own place (``datasources/<id>``, made or awaited) or where its path
    leads, every link resolved (an alias of the path is the same place)."""
    area = organization_area(settings.data_root, organization_id)
    others = session.execute(
        select(Datasource.id, Datasource.database_type, Datasource.database).where(
            Datasource.organization_id == organization_id,
            Datasource.id != datasource_id,
            Datasource.id.not_in(besides),
            Datasource.database_type.in_(FILE_DATABASE_TYPES),
        )
    )
    for other_id, database_type, database in others:
        held = held_paths(area, other_id, database_type, None)  # where it leads: _located
        located = _located(session, settings, organization_id, database_type, database or "")
        if reads_in_or_around(path, held if located is None else [*held, located]):
            return True
    return False
