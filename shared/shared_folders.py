"""Shared folders: a folder outside the data root that an operator granted one organisation to read.

Granted and revoked only by the operator's CLI (``python -m api_server grant-shared-folder`` …),
never through the API. Datasources reach a grant as ``shared/<name>/…`` (see ``shared.datapaths``);
the API server checks that at create/update and the data server again at every run, so a revoke
takes effect on the next execution. DuckDB attaches every datasource read-only.
"""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db.models import Datasource, SharedFolder
from shared.errors import Conflict, NotFound, Unprocessable
from shared.settings import Settings

# ``shared/<name>`` is also the audit log's resource id (64 characters at most).
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,47}\Z")


def granted_folder(
    session: Session, settings: Settings, organization_id: str, name: str
) -> Path | None:
    """The folder granted to the organisation under ``name``, resolved now, or None.

    Checked again at every use, not only when granted: if the folder (or a folder above it) is
    later replaced by a link into the server's own data, another organisation's area say, the
    grant reaches nothing."""
    path = session.scalar(
        select(SharedFolder.path).where(
            SharedFolder.organization_id == organization_id, SharedFolder.name == name
        )
    )
    if path is None:
        return None
    folder = Path(path).resolve()
    if _kernel_view(folder) is not None or _server_data_overlapping(settings, folder) is not None:
        return None  # a grant made before the rule, or a folder since swapped for a link
    return folder


# File systems the kernel makes up: their folders hold processes' memory maps, environments and
# descriptors, devices and settings (the servers' own included), never an organisation's data.
_KERNEL_VIEWS = (Path("/proc"), Path("/sys"), Path("/dev"))


def _kernel_view(folder: Path) -> Path | None:
    return next((place for place in _KERNEL_VIEWS if folder.is_relative_to(place)), None)


def _server_data_overlapping(settings: Settings, folder: Path) -> Path | None:
    """The server's own folder (data root, state, results) that ``folder`` overlaps, if any."""
    for own in (settings.data_root, settings.state_dir, settings.results_dir):
        own = own.resolve()
        if folder.is_relative_to(own) or own.is_relative_to(folder):
            return own
    return None


def list_shared_folders(session: Session, organization_id: str | None = None) -> list[SharedFolder]:
    query = select(SharedFolder).order_by(SharedFolder.organization_id, SharedFolder.name)
    if organization_id is not None:
        query = query.where(SharedFolder.organization_id == organization_id)
    return list(session.scalars(query).all())


def grant_shared_folder(
    session: Session, settings: Settings, organization_id: str, name: str, path: str
) -> SharedFolder:
    """Record the grant of an existing absolute folder that holds none of the server's own data."""
    if not NAME_PATTERN.match(name):
        raise Unprocessable(
            "A shared folder's name has 1 to 48 letters, digits, '-' or '_' (starting with a "
            "letter or digit).",
            code="invalid_shared_folder_name",
        )
    folder = Path(path)
    if not folder.is_absolute() or not folder.resolve().is_dir():
        raise Unprocessable(
            "The shared folder must be given as the absolute path of an existing directory.",
            code="invalid_shared_folder_path",
        )
    folder = folder.resolve()
    kernel = _kernel_view(folder)
    if kernel is not None:
        raise Unprocessable(
            f"{folder} is in {kernel}, the kernel's view of processes, devices and settings "
            "(/proc/self resolves to the granting command's own process): no data to share.",
            code="invalid_shared_folder_path",
        )
    own = _server_data_overlapping(settings, folder)
    if own is not None:
        raise Unprocessable(
            f"{folder} overlaps the server's own data ({own}): organisations' areas, results "
            "and secrets are never shared. Grant a folder outside them.",
            code="invalid_shared_folder_path",
        )
    exists = session.scalar(
        select(SharedFolder.id).where(
            SharedFolder.organization_id == organization_id, SharedFolder.name == name
        )
    )
    if exists is not None:
        raise Conflict(
            f"The organisation already has a shared folder {name!r}; revoke it first.",
            code="shared_folder_exists",
        )
    grant = SharedFolder(organization_id=organization_id, name=name, path=str(folder))
    session.add(grant)
    session.flush()
    return grant


def revoke_shared_folder(session: Session, organization_id: str, name: str) -> list[str]:
    """Delete the grant; the ids of the datasources that used it (they now fail), for the record."""
    grant = session.scalar(
        select(SharedFolder).where(
            SharedFolder.organization_id == organization_id, SharedFolder.name == name
        )
    )
    if grant is None:
        raise NotFound(f"The organisation has no shared folder {name!r}.")
    session.delete(grant)
    session.flush()
    prefix = f"shared/{name}"
    users = session.scalars(
        select(Datasource.id).where(
            Datasource.organization_id == organization_id,
            (Datasource.database == prefix)
            | Datasource.database.startswith(f"{prefix}/", autoescape=True),
        )
    )
    return sorted(users)
