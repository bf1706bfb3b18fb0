"""Where a file datasource's ``database`` may point: its organisation's own area, or a shared folder.

Each organisation owns ``<data root>/<organisation id>/`` (``organization_area`` is the one place
that names it). A ``files``, ``duckdb`` or ``sqlite`` datasource's ``database`` is a path relative
to that area, stored normalised; ``shared/<name>/…`` instead reaches a folder the operator granted
to the organisation (``shared`` is therefore reserved at the top of every area). The checks are
lexical first (what the text may say) and then physical (where it resolves, symlinks followed):

- refused as text: empty or ``.``, absolute, a ``..`` component, a backslash, NUL and every other
  control or invisible character, non-ASCII punctuation and symbols (U+2215 DIVISION SLASH, U+2024
  ONE DOT LEADER, U+3002 IDEOGRAPHIC FULL STOP … look like ``/`` or ``.``), and names that NFKC
  normalisation would change (U+FF0F FULLWIDTH SOLIDUS, U+FF0E FULLWIDTH FULL STOP, ligatures):
  no layer can later read them as separators or dots. Input is NFC-normalised first; nothing is percent-decoded (``%2e%2e`` is
  a name like any other);
- refused where it leads: anything that does not exist, or whose resolved path (``strict``, every
  symlink followed) leaves the area or the granted folder.

Run the physical check whenever the path is used: a symlink can change after it was checked.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import stat
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from shared.errors import Unprocessable
from shared.ids import is_resource_id

# database_type → whether its ``database`` names a folder (True) or a file (False) in the area.
FILE_DATABASE_TYPES: dict[str, bool] = {"files": True, "duckdb": False, "sqlite": False}
SHARED_PREFIX = "shared"  # reserved top-level name of every area: operator-granted folders
AREA_MODE = 0o700


class PathEmpty(Unprocessable):
    code = "path_empty"


class PathNotRelative(Unprocessable):
    code = "path_not_relative"


class PathTraversal(Unprocessable):
    code = "path_traversal"


class PathInvalidCharacter(Unprocessable):
    code = "path_invalid_character"


class PathOutsideArea(Unprocessable):
    code = "path_outside_area"


class PathNotFound(Unprocessable):
    code = "path_not_found"


class SharedFolderNotGranted(Unprocessable):
    code = "shared_folder_not_granted"


# Every refusal of a datasource path, for the API's documentation.
PATH_ERRORS: tuple[type[Unprocessable], ...] = (
    PathEmpty,
    PathNotRelative,
    PathTraversal,
    PathInvalidCharacter,
    PathOutsideArea,
    PathNotFound,
    SharedFolderNotGranted,
)


@dataclass(frozen=True)
class DatasourcePath:
    relative: str  # normalised, as stored in ``datasources.database``
    path: Path  # absolute, every symlink resolved, confined to the area or the granted folder


# The folder of an organisation's area where datasources created without a path keep their data.
PLACES_FOLDER = "datasources"


def default_datasource_path(database_type: str, datasource_id: str) -> str:
    """Where a file datasource created without ``database`` keeps its data: a folder (``files``)
    or a database file of its own, made or awaited for uploads to fill."""
    suffix = "" if FILE_DATABASE_TYPES[database_type] else f".{database_type}"
    return f"{PLACES_FOLDER}/{datasource_id}{suffix}"


def held_paths(
    area: Path, datasource_id: str, database_type: str, database: str | None
) -> list[Path]:
    """Where a file datasource of the area reads, every link resolved: its own place, and its
    path in the area (a path into a folder granted from outside it cannot hold the area's)."""
    held = [(area / default_datasource_path(database_type, datasource_id)).resolve()]
    if database:
        held.append((area / database).resolve())
    return held


def reads_in_or_around(path: Path, held: list[Path]) -> bool:
    """Whether any of ``held`` lies in ``path`` or holds it (both resolved)."""
    return any(path.is_relative_to(place) or place.is_relative_to(path) for place in held)


def remove_own_place(data_root: Path, organization_id: str, relative: str) -> None:
    """Delete a deleted datasource's own place (``default_datasource_path``) with what uploads
    put there. Links are removed, never followed: only what lies in the area goes. Under the
    area's lock, so that an upload committing meanwhile either finished before (and its file
    goes too) or finds the datasource gone."""
    area = organization_area(data_root, organization_id)
    place = area / relative
    if not area.is_dir() or not place.parent.resolve().is_relative_to(area):
        return  # no area: nothing was ever put there
    with area_locked(area):
        if place.is_symlink() or place.is_file():
            place.unlink(missing_ok=True)
        elif place.is_dir():
            shutil.rmtree(place, ignore_errors=True)


@contextlib.contextmanager
def directory_locked(directory: Path) -> Iterator[None]:
    """One holder of the directory at a time, across the processes of this host."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def area_locked(area: Path) -> contextlib.AbstractContextManager[None]:
    """One writer of an organisation's area at a time: an upload's commit, a deleted
    datasource's place being removed."""
    return directory_locked(area)


def organization_area(data_root: Path, organization_id: str) -> Path:
    """The one folder of the data root that holds an organisation's files (issue 11)."""
    if not is_resource_id(organization_id):
        raise ValueError("not an organisation id")
    return data_root.resolve() / organization_id


def ensure_organization_area(data_root: Path, organization_id: str) -> Path:
    """The area, created on demand with mode 0700 (and tightened to it if it was made looser)."""
    area = organization_area(data_root, organization_id)
    area.mkdir(mode=AREA_MODE, parents=True, exist_ok=True)
    info = area.lstat()
    loose = stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) != AREA_MODE
    if loose and info.st_uid == os.geteuid():
        area.chmod(AREA_MODE)
    return area


def normalize_datasource_path(value: str, *, pointer: str | None = None) -> str:
    """The path as stored: NFC, ``/``-separated, no empty or ``.`` components; or a refusal."""
    value = unicodedata.normalize("NFC", value)
    _check_characters(value, pointer)
    if value.startswith("/"):
        raise PathNotRelative(
            "The path is relative to your organisation's file area; absolute paths are refused.",
            pointer=pointer,
        )
    parts = [part for part in value.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise PathTraversal("The path must not contain a '..' component.", pointer=pointer)
    if not parts:
        raise PathEmpty(
            "Name a file or folder inside your organisation's file area.", pointer=pointer
        )
    return "/".join(parts)


def _check_characters(value: str, pointer: str | None) -> None:
    if "\\" in value:
        raise PathInvalidCharacter(
            "A backslash is not a path separator here (use '/'), and not allowed in names.",
            pointer=pointer,
        )
    for char in value:
        category = unicodedata.category(char)
        invisible = category[0] == "C" or (category[0] == "Z" and char != " ")
        lookalike = not char.isascii() and category[0] in "PS"
        if invisible or lookalike:
            kind = "a control or invisible" if invisible else "a non-ASCII punctuation or symbol"
            raise PathInvalidCharacter(
                f"The path holds {kind} character (U+{ord(char):04X}); paths may use letters, "
                "marks and digits of any script, spaces and ASCII punctuation.",
                pointer=pointer,
            )
    if unicodedata.normalize("NFKC", value) != value:
        raise PathInvalidCharacter(
            "The path holds compatibility characters (fullwidth or ligature forms, say) that "
            "Unicode NFKC normalisation would change; use their plain form.",
            pointer=pointer,
        )


def shared_folder_name(relative: str) -> str | None:
    """``shared/<name>/…`` → ``<name>``; None for a path inside the area itself."""
    head, _, rest = relative.partition("/")
    if head != SHARED_PREFIX:
        return None
    return rest.partition("/")[0]


def resolve_datasource_path(
    data_root: Path,
    organization_id: str,
    value: str,
    *,
    want_dir: bool,
    granted_folder: Callable[[str], Path | None],
    pointer: str | None = None,
    create_missing: bool = False,
) -> DatasourcePath:
    """Normalise ``value`` and resolve it inside the organisation's area or a folder granted to it.

    ``granted_folder(name)`` answers the organisation's grant of that name, or None; it is only
    asked for ``shared/<name>/…`` paths. With ``create_missing`` (a datasource being created or
    changed) missing folders inside the area are made and a missing database file is accepted,
    so that a new organisation can create a datasource first and upload its files after.
    """
    relative = normalize_datasource_path(value, pointer=pointer)
    name = shared_folder_name(relative)
    if name is None:
        base, rest = organization_area(data_root, organization_id), relative
    else:
        folder = granted_folder(name) if name else None
        if folder is None:
            raise SharedFolderNotGranted(
                f"No shared folder {name!r} is granted to this organisation "
                "(paths under 'shared/' name an operator's grant).",
                pointer=pointer,
            )
        base, rest = folder, relative.partition("/")[2].partition("/")[2]
    kind = "folder" if want_dir else "file"
    try:
        root = base.resolve(strict=True)
        if create_missing and name is None:
            awaited = _make_missing_folders(root, rest, want_dir=want_dir, pointer=pointer)
            if awaited is not None:
                return DatasourcePath(relative=relative, path=awaited)
        resolved = (root / rest).resolve(strict=True) if rest else root
        if not resolved.is_relative_to(root):
            raise PathOutsideArea(
                "The path leads outside your organisation's file area (through a symbolic link).",
                pointer=pointer,
            )
        found = resolved.is_dir() if want_dir else resolved.is_file()
    except (OSError, RuntimeError) as exc:  # missing, a loop of links, a name too long, no access
        raise PathNotFound(
            f"No {kind} at {relative!r} in your organisation's file area.", pointer=pointer
        ) from exc
    if not found:
        raise PathNotFound(
            f"No {kind} at {relative!r} in your organisation's file area.", pointer=pointer
        )
    return DatasourcePath(relative=relative, path=resolved)


def _make_missing_folders(
    root: Path, rest: str, *, want_dir: bool, pointer: str | None
) -> Path | None:
    """Make the missing folders of ``rest`` below ``root`` (mode 0700), each step confined to
    ``root`` as it is taken; answer where a database file that does not exist yet will lie."""
    parts = rest.split("/")
    current = root
    for part in parts if want_dir else parts[:-1]:
        step = current / part
        if not os.path.lexists(step):
            step.mkdir(mode=AREA_MODE)
        current = step.resolve(strict=True)
        if not current.is_relative_to(root) or not current.is_dir():
            raise PathOutsideArea(
                "The path leads outside your organisation's file area or through a file.",
                pointer=pointer,
            )
    if want_dir:
        return None
    target = current / parts[-1]
    return None if os.path.lexists(target) else target
